#!/usr/bin/env python
"""The Fis-V semi-supervised table: every method on the real Video-Swin features.

Runs ``pipeline.py sweep`` on the Fis-V bank (TES and PCS; 10 % and 25 % of the 400 training
programs labelled, the rest unlabelled; seeds 0-4; trs, supervised, mean-teacher, pseudo-label,
ridge; default preset, whose hyper-parameters were chosen on validation splits of the training
set by ``bench/tune_fisv.py``), then tabulates the test Spearman (final model, mean ± std over
seeds), the paired difference trs - supervised on identical splits, and the pseudo-label
diagnostics of the trs runs. Finished runs are kept, so a rerun only adds what is missing.

Two more views of the same question (issue 11, "a gain on the official split only is not yet a
result"):

* ``supervised`` with every training label (ratio 1, ``--full-seeds``), for the **label
  efficiency** of ``trs``: the share of the gap between ``supervised`` at a ratio and
  ``supervised`` with all labels that ``trs`` closes, ``mean(trs - supervised) / (full -
  mean(supervised))``;
* ``--resplits N``: N random 400 / 100 resplits of the 500 programs (resplit seeds 1..N, written
  as manifests under ``RUNS/resplit-<seed>/``), ``trs`` and ``supervised`` on each with
  ``--resplit-seeds``, and the same columns.

    python bench/bench_fisv.py [--fisv-dir ../shared/data/fisv-swin] [--jobs 2] [--resplits 5 --resplit-seeds 0-4]

(the README's tables: ``--seeds 0-9 --jobs 2 --resplits 5 --resplit-seeds 0-9``; five seeds until 2026-12-07)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, ensure_fisv_cache  # noqa: E402

METHODS = ["trs", "supervised", "mean-teacher", "pseudo-label", "ridge"]
TARGETS = ["TES", "PCS"]
RATIOS = [0.1, 0.25]


def _stats(values):
    values = [value for value in values if value is not None]
    if not values:
        return math.nan, math.nan, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std, len(values)


def _fmt(mean, std, count):
    if count == 0:
        return "—"
    return f"{mean:.3f} ± {std:.3f}" if count > 1 else f"{mean:.3f}"


def collect(runs: Path, seeds: list[int], dataset: str = "fis-v", methods=METHODS, ratios=RATIOS) -> dict:
    table = {}
    for target in TARGETS:
        for ratio in ratios:
            for method in methods:
                for seed in seeds:
                    folder = runs / dataset / target / method / f"r{ratio:g}" / f"s{seed}"
                    metrics_file = folder / "metrics.json"
                    if not metrics_file.is_file():
                        continue
                    record = json.loads(metrics_file.read_text())
                    diagnostics_file = folder / "diagnostics.json"
                    if diagnostics_file.is_file():
                        record["diagnostics"] = json.loads(diagnostics_file.read_text())
                    table[(target, ratio, method, seed)] = record
    return table


def render(table: dict, seeds: list[int], command: str) -> str:
    lines = ["## Fis-V (real Video-Swin features): test Spearman, final model, mean ± std over seeds", "",
             f"Regenerate: `{command}`", "",
             "| target | labels | " + " | ".join(METHODS) + " | trs − supervised (paired) | trs wins |",
             "|---|---|" + "---|" * len(METHODS) + "---|---|"]
    for target in TARGETS:
        for ratio in RATIOS:
            cells = []
            for method in METHODS:
                cells.append(_fmt(*_stats([table[(target, ratio, method, seed)]["spearman"] for seed in seeds
                                           if (target, ratio, method, seed) in table])))
            paired = [table[(target, ratio, "trs", seed)]["spearman"] - table[(target, ratio, "supervised", seed)]["spearman"]
                      for seed in seeds if (target, ratio, "trs", seed) in table and (target, ratio, "supervised", seed) in table]
            mean, std, count = _stats(paired)
            wins = sum(value > 0 for value in paired)
            lines.append(f"| {target} | {ratio:.0%} | " + " | ".join(cells) +
                         f" | {'—' if not count else f'{mean:+.3f} ± {std:.3f}'} | {wins}/{count} |")
    lines += ["", "### trs pseudo-label diagnostics (unlabelled training videos' true labels, never trained on)", "",
              "Spearman of each pseudo-label source with the truth at the last refresh, the Spearman between "
              "confidence and absolute error (negative = confidence ranks error), and the mean absolute error "
              "of the most and least confident fifth (score units); mean over seeds.", "",
              "| target | labels | teacher | reference | fused | graph-refined | student (unlabelled) | conf~err | MAE top 20 % conf | MAE bottom 20 % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        for ratio in RATIOS:
            last = [table[(target, ratio, "trs", seed)].get("diagnostics", {}) for seed in seeds
                    if (target, ratio, "trs", seed) in table]
            refreshes = [item.get("last_refresh") or {} for item in last]

            def mean_of(name):
                value, _, count = _stats([refresh.get(name) for refresh in refreshes])
                return "—" if not count else f"{value:.3f}"

            student, _, count = _stats([item.get("student_unlabelled_spearman") for item in last])
            top, _, top_count = _stats([(refresh.get("mae_by_confidence_quintile") or [None])[0] for refresh in refreshes])
            bottom, _, _ = _stats([(refresh.get("mae_by_confidence_quintile") or [None])[-1] for refresh in refreshes])
            lines.append(f"| {target} | {ratio:.0%} | {mean_of('teacher_spearman')} | {mean_of('reference_spearman')} | "
                         f"{mean_of('fused_spearman')} | {mean_of('refined_spearman')} | "
                         f"{'—' if not count else f'{student:.3f}'} | {mean_of('confidence_error_spearman')} | "
                         f"{'—' if not top_count else f'{top:.2f}'} | {'—' if not top_count else f'{bottom:.2f}'} |")
    seconds = {method: _stats([record["wall_seconds"] for key, record in table.items() if key[2] == method])
               for method in METHODS}
    lines += ["", "Mean wall time per run (s, one torch thread per run, two runs in parallel on this machine): " +
              ", ".join(f"{method} {value[0]:.1f}" for method, value in seconds.items() if value[2])]
    return "\n".join(lines) + "\n"


def gate_lines(tables: list[dict]) -> list[str]:
    """What trs's label-only gate did over every trs run of ``tables`` (from each run's
    ``diagnostics.json``): how often it kept the configured option, how often undecided (another
    option ahead out of fold by less than the margin) and with a leader without the graph, and the
    paired test Δ against ``supervised`` (same split and seed) in each group. Reported only."""
    from train.methods.gate import gate_verdict, out_of_fold_leader

    groups: dict[str, list[float]] = {"switched": [], "kept, a no-graph option ahead out of fold": [],
                                      "kept, otherwise": []}
    verdicts: dict[str, int] = {}
    for table in tables:
        for (target, ratio, method, seed), record in table.items():
            gate = (record.get("diagnostics") or {}).get("gate")
            partner = table.get((target, ratio, "supervised", seed))
            if method != "trs" or not gate or partner is None:
                continue
            verdict = gate_verdict(gate)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            leader = out_of_fold_leader(gate)[0] if verdict == "kept, undecided" else None
            option = gate["options"].get(leader) if leader else None
            if verdict == "switched":
                group = "switched"
            elif option is not None and option["graph_strength"] == 0:
                group = "kept, a no-graph option ahead out of fold"
            else:
                group = "kept, otherwise"
            groups[group].append(record["spearman"] - partner["spearman"])
    if not verdicts:
        return []
    lines = ["### What trs's label-only gate did (every trs run above)", "",
             "Verdicts: " + ", ".join(f"{name} {count}" for name, count in sorted(verdicts.items())) + ".", "",
             "| gate | runs | trs − supervised (paired, test) | trs ahead |", "|---|---|---|---|"]
    for name, deltas in groups.items():
        mean, _, count = _stats(deltas)
        lines.append(f"| {name} | {count} | {'—' if not count else f'{mean:+.3f}'} | "
                     f"{sum(delta > 0 for delta in deltas)}/{count} |")
    return lines + ["", ""]


def write_resplit_manifest(fisv_dir: Path, manifest: Path, resplit_seed: int, train_count: int = 400) -> Path:
    """A manifest of the 500 Fis-V programs with a random train/test split (seeded), TES and PCS as targets."""
    import numpy as np

    from aqa.files import atomic_writer

    rows = []
    for name in ("train.txt", "test.txt"):
        for line in (fisv_dir / name).read_text().splitlines():
            if line.strip():
                key, tes, pcs = line.split()[:3]
                rows.append((key, tes, pcs))
    rows.sort(key=lambda row: int(row[0]))  # independent of the official split's order
    in_train = np.zeros(len(rows), dtype=bool)
    in_train[np.random.default_rng(resplit_seed).permutation(len(rows))[:train_count]] = True
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(manifest, "w", encoding="utf-8", newline="") as handle:
        handle.write("key,path,score,split,TES,PCS\n")
        for (key, tes, pcs), train in zip(rows, in_train):
            handle.write(f"{key},{fisv_dir / 'features' / (key + '.npy')},{tes},{'train' if train else 'test'},{tes},{pcs}\n")
    return manifest


def efficiency_table(title: str, table: dict, full: dict, seeds: list[int], full_seeds: list[int]) -> list[str]:
    """trs against supervised per target x ratio, with supervised on all labels and the label efficiency."""
    lines = [f"#### {title}", "",
             "| target | labels | trs | supervised | trs − supervised (paired) | trs wins | supervised, all labels | "
             "label efficiency |", "|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        full_mean, full_std, full_count = _stats([full[(target, 1.0, "supervised", seed)]["spearman"]
                                                  for seed in full_seeds if (target, 1.0, "supervised", seed) in full])
        for ratio in RATIOS:
            pairs = [(table[(target, ratio, "trs", seed)]["spearman"], table[(target, ratio, "supervised", seed)]["spearman"])
                     for seed in seeds if (target, ratio, "trs", seed) in table and (target, ratio, "supervised", seed) in table]
            trs, supervised = _stats([a for a, _ in pairs]), _stats([b for _, b in pairs])
            delta = _stats([a - b for a, b in pairs])
            wins = sum(a > b for a, b in pairs)
            gap = full_mean - supervised[0]
            efficiency = "—" if not (pairs and full_count) or gap <= 0 else f"{round(100 * delta[0] / gap):+d} %"
            lines.append(f"| {target} | {ratio:.0%} | {_fmt(*trs)} | {_fmt(*supervised)} | "
                         f"{'—' if not delta[2] else f'{delta[0]:+.3f} ± {delta[1]:.3f}'} | {wins}/{len(pairs)} | "
                         f"{_fmt(full_mean, full_std, full_count)} | {efficiency} |")
    return lines + ["", ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fisv-dir", type=Path, default=DEFAULT_FISV_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "bench" / "results" / "fisv")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "fisv_table.md")
    parser.add_argument("--full-seeds", default="0-2", help="Seeds of supervised with all training labels.")
    parser.add_argument("--resplits", type=int, default=0, help="Random 400/100 resplits of the 500 programs.")
    parser.add_argument("--resplit-seeds", default="0-2", help="Training seeds on each resplit.")
    parser.add_argument("--table-only", action="store_true", help="Tabulate the finished runs; train nothing.")
    args = parser.parse_args()

    from train.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    cache = ensure_fisv_cache(args.fisv_dir, args.cache)
    sweep = [sys.executable, "pipeline.py", "sweep", "--features", str(cache), "--dataset", "fis-v", "--data-root",
             str(args.fisv_dir), "--targets", ",".join(TARGETS), "--ratios", ",".join(f"{r:g}" for r in RATIOS),
             "--seeds", args.seeds, "--methods", ",".join(METHODS), "--out", str(args.runs), "--jobs", str(args.jobs),
             "--threads", "1", "--no-progress"]
    common = ["--targets", ",".join(TARGETS), "--jobs", str(args.jobs), "--threads", "1", "--no-progress"]
    full_sweep = [sys.executable, "pipeline.py", "sweep", "--features", str(cache), "--dataset", "fis-v", "--data-root",
                  str(args.fisv_dir), "--ratios", "1", "--seeds", args.full_seeds, "--methods", "supervised",
                  "--out", str(args.runs), *common]
    resplit_sweeps = []
    for resplit in range(1, args.resplits + 1):
        folder = args.runs / f"resplit-{resplit}"
        manifest = write_resplit_manifest(args.fisv_dir, folder / "manifest.csv", resplit)
        for ratios, methods, run_seeds in ((RATIOS, "trs,supervised", args.resplit_seeds), ([1], "supervised", args.full_seeds)):
            resplit_sweeps.append([sys.executable, "pipeline.py", "sweep", "--features", str(cache), "--manifest",
                                   str(manifest), "--ratios", ",".join(f"{r:g}" for r in ratios), "--seeds", run_seeds,
                                   "--methods", methods, "--out", str(folder), *common])
    if not args.table_only:
        for command in [sweep, full_sweep, *resplit_sweeps]:
            subprocess.run(command, cwd=REPO_ROOT, check=False)
    official = collect(args.runs, seeds)  # each split's runs read once, for every table below
    resplits = {resplit: collect(args.runs / f"resplit-{resplit}", parse_seeds(args.resplit_seeds),
                                 dataset="manifest", methods=["trs", "supervised"])
                for resplit in range(1, args.resplits + 1)}
    text = render(official, seeds, "make bench-fisv  (= python bench/bench_fisv.py)")
    full_seeds, resplit_seeds = parse_seeds(args.full_seeds), parse_seeds(args.resplit_seeds)
    text += "\n### Label efficiency, and random resplits of the 500 programs\n\n"
    text += ("Label efficiency: the share of the gap between `supervised` at the ratio and `supervised` with all "
             "400 training labels that `trs` closes (paired mean difference / gap).\n\n")
    text += "\n".join(efficiency_table("Official split", official,
                                        collect(args.runs, full_seeds, ratios=[1.0], methods=["supervised"]),
                                        seeds, full_seeds))
    for resplit, table in resplits.items():
        folder = args.runs / f"resplit-{resplit}"
        text += "\n".join(efficiency_table(f"Resplit {resplit} (seeded random 400 / 100 split; training seeds {args.resplit_seeds})",
                                            table,
                                            collect(folder, full_seeds, dataset="manifest", ratios=[1.0], methods=["supervised"]),
                                            resplit_seeds, full_seeds))
    text += "\n".join(gate_lines([official, *resplits.values()]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

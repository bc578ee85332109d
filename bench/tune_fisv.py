#!/usr/bin/env python
"""Choosing hyper-parameters on validation splits of the Fis-V TRAIN split (never the test split).

Every run holds out 25 % of the 400 training programs as a validation set (true labels, never
trained on); the labelled subset is RATIO of the remaining 300 and the rest is unlabelled. Each
variant (a method plus ``--set`` overrides on the default preset) runs on the same splits for
every seed, so variants compare by paired differences. Results go to a JSONL file, one line per
(variant, target, ratio, seed), and finished lines are never rerun.

    python bench/tune_fisv.py --variants supervised,trs,trs-no-graph --seeds 0-9 --jobs 2
    python bench/tune_fisv.py --report          # the table of everything measured so far

The variants and what they showed are described in the report of stage 2 (README, "Tuning").
They are fixed points (ablations and the hand-made grid the defaults came from). A *search* over
a method's declared space is ``pipeline.py tune``; ``--search METHOD`` runs it on Fis-V for each
target x ratio (the same validation protocol: 25 % of the train split held out, paired against
``supervised``), one study per cell in bench/results/tune/studies.db, reports in
bench/results/tune/<method>-<target>-r<ratio>/:

    python bench/tune_fisv.py --search trs --targets TES --ratios 0.25 --trials 8 --seeds 0-2

A study's best trial is the best of several on the seeds it was chosen on, so its value is biased
upwards. ``--confirm METHODS`` reruns each study's best configuration on other seeds (fresh
validation splits, ``supervised`` on the same ones) and prints the tuning table of the README:

    python bench/tune_fisv.py --confirm ridge,mean-teacher,pseudo-label,trs --seeds 10-19
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import (  # noqa: E402
    DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, append_result, config_digest, ensure_fisv_cache, load_results,
    run_in_process,
)

VALIDATION_FRACTION = 0.25
# Part of every result's id: bump a method's number when the training code changes what its
# configurations compute (trs 2: the graph compares time-aligned tokens by default; trs 3:
# graph k = 3, strength 3 by default; trs 4: the gate averages 3 cross-fittings by default;
# trs 5: the reference learns in the semi-supervised phase, 50 burn-in epochs, balanced fusion and
# half of the test prediction by default (the trs-refsemi-balanced-ref50-test50 variant of 4); trs 6:
# the graph takes half of the test prediction when the run's pseudo-labels went through it; trs 7:
# the gate's margin on Fisher's z scale by default (research log, session 13; records of sessions
# 14-15 were written as 6 by mistake: their gate's margin, sqrt(1.06 / (n - 3)), shows the scale);
# ridge 2: fixed alpha 100 by default instead of leave-one-out; mean-teacher 2: 5 unlabelled
# epochs and EMA 0.999 by default, the best of the mt-* variants at version 1; pseudo-label 2:
# unlabelled weight 0.1 by default, the best of the pl-* variants at version 1; ridge 3: the means of
# 3 time segments side by side by default, research log session 19; trs 10: the ridge takes half the
# test prediction where it was the teacher, semi.ridge_test_share, research log session 22).
CODE_VERSIONS = {"trs": 12, "ridge": 3, "mean-teacher": 2, "pseudo-label": 2}


def code_version(method: str) -> int:
    return CODE_VERSIONS.get(method, 1)

# name -> (method, overrides of the default preset)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("supervised", []),
    "ridge": ("ridge", []),
    "mean-teacher": ("mean-teacher", []),
    "pseudo-label": ("pseudo-label", []),
    "trs": ("trs", []),
    "trs-no-graph": ("trs", ["semi.use_graph=false"]),
    "trs-no-reference": ("trs", ["semi.use_reference=false"]),
    "trs-no-memory": ("trs", ["semi.use_memory=false"]),
    "trs-no-confidence": ("trs", ["semi.use_confidence=false"]),
    "trs-no-gate": ("trs", ["semi.gate=false"]),
    # supervised head / optimisation (the burn-in of every semi-supervised method)
    "sup-epochs50": ("supervised", ["optim.epochs=50"]),
    "sup-epochs200": ("supervised", ["optim.epochs=200"]),
    "sup-dim128": ("supervised", ["head.dim=128", "head.token_hidden=128", "head.channel_hidden=256"]),
    "sup-depth2": ("supervised", ["head.depth=2"]),
    "sup-dropout0.3": ("supervised", ["head.dropout=0.3"]),
    "sup-lr3e-4-epochs200": ("supervised", ["optim.lr=3e-4", "optim.epochs=200"]),
    "sup-wd0.1": ("supervised", ["optim.weight_decay=0.1"]),
    "sup-no-input-norm": ("supervised", ["head.input_norm=false"]),
    "sup-weak-noise0.2": ("supervised", ["views.weak_noise=0.2"]),
    "sup-input-dropout0.2": ("supervised", ["head.input_dropout=0.2"]),
    # trs semi-supervised phase
    "trs-graph10": ("trs", ["semi.graph_strength=10"]),
    "trs-graph0.3": ("trs", ["semi.graph_strength=0.3"]),
    "trs-graph3": ("trs", ["semi.graph_strength=3"]),
    "trs-knn10": ("trs", ["semi.graph_neighbours=10"]),
    "trs-knn3": ("trs", ["semi.graph_neighbours=3"]),
    "trs-knn3-graph3": ("trs", ["semi.graph_neighbours=3", "semi.graph_strength=3"]),
    "trs-pooled-graph": ("trs", ["semi.graph_features=pooled"]),
    "trs-ref-epochs50": ("trs", ["reference.epochs=50"]),
    "trs-graph-raw": ("trs", ["semi.graph_standardised=false"]),
    "trs-semi30": ("trs", ["semi.semi_epochs=30"]),
    "trs-weight0.5": ("trs", ["semi.unlabelled_weight=0.5"]),
    "trs-weight2": ("trs", ["semi.unlabelled_weight=2"]),
    "trs-decay1": ("trs", ["semi.memory_decay=1.0"]),
    "trs-decay0.5": ("trs", ["semi.memory_decay=0.5"]),
    # the reference kept training on pseudo-labelled pairs; sources fused with balanced confidences
    "trs-refsemi": ("trs", ["reference.semi_training=true"]),
    "trs-refsemi-balanced": ("trs", ["reference.semi_training=true", "semi.fusion=balanced"]),
    "trs-refsemi-balanced-ref50": ("trs", ["reference.semi_training=true", "semi.fusion=balanced",
                                           "reference.epochs=50"]),
    # parts of today's default (trs 5) off in turn; trs-frozen-reference is the default of trs 4
    "trs-no-test-share": ("trs", ["reference.test_share=0"]),
    "trs-no-reference-learning": ("trs", ["reference.semi_training=false"]),
    "trs-frozen-reference": ("trs", ["reference.semi_training=false", "semi.fusion=precision", "reference.epochs=150",
                                     "reference.test_share=0"]),
    # pseudo-labels given the labelled targets' spread (they are shrunk towards the mean)
    "trs-spread-std": ("trs", ["semi.pseudo_spread=std"]),
    "trs-spread-quantiles": ("trs", ["semi.pseudo_spread=quantiles"]),
    # the reference network as a second predictor at test time (half of the prediction)
    "trs-test50": ("trs", ["reference.test_share=0.5"]),
    "trs-refsemi-balanced-ref50-test50": ("trs", ["reference.semi_training=true", "semi.fusion=balanced",
                                                  "reference.epochs=50", "reference.test_share=0.5"]),
    # mean-teacher and pseudo-label (their burn-in is the supervised model); measured at code
    # version 1, i.e. as overrides of semi_epochs 15, EMA 0.99, unlabelled weight 1
    "mt-weight0.3": ("mean-teacher", ["semi.unlabelled_weight=0.3"]),
    "mt-weight3": ("mean-teacher", ["semi.unlabelled_weight=3"]),
    "mt-ema0.999": ("mean-teacher", ["semi.ema_decay=0.999"]),
    "mt-semi30": ("mean-teacher", ["semi.semi_epochs=30"]),
    "mt-semi5": ("mean-teacher", ["semi.semi_epochs=5"]),
    "mt-semi5-ema0.999": ("mean-teacher", ["semi.semi_epochs=5", "semi.ema_decay=0.999"]),
    "pl-weight0.3": ("pseudo-label", ["semi.unlabelled_weight=0.3"]),
    "pl-weight3": ("pseudo-label", ["semi.unlabelled_weight=3"]),
    "pl-semi30": ("pseudo-label", ["semi.semi_epochs=30"]),
    "pl-semi5": ("pseudo-label", ["semi.semi_epochs=5"]),
    "pl-weight0.1": ("pseudo-label", ["semi.unlabelled_weight=0.1"]),
    "pl-semi5-weight0.3": ("pseudo-label", ["semi.semi_epochs=5", "semi.unlabelled_weight=0.3"]),
    "pl-semi5-weight0.1": ("pseudo-label", ["semi.semi_epochs=5", "semi.unlabelled_weight=0.1"]),
    # ridge
    "ridge-raw": ("ridge", ["ridge.standardise=false"]),
    "ridge-raw-a1": ("ridge", ["ridge.standardise=false", "ridge.alpha=1"]),
    "ridge-raw-a10": ("ridge", ["ridge.standardise=false", "ridge.alpha=10"]),
    "ridge-a1": ("ridge", ["ridge.alpha=1"]),
    "ridge-a10": ("ridge", ["ridge.alpha=10"]),
    "ridge-a100": ("ridge", ["ridge.alpha=100"]),
    "ridge-a300": ("ridge", ["ridge.alpha=300"]),
    "ridge-a1000": ("ridge", ["ridge.alpha=1000"]),
}


def parse_variant(name: str) -> tuple[str, list[str]]:
    """A registered name, or ``method:field=value;field=value`` for an ad-hoc variant."""
    if name in VARIANTS:
        return VARIANTS[name]
    if ":" in name:
        method, _, assignments = name.partition(":")
        return method, [item for item in assignments.split(";") if item]
    sys.exit(f"error: unknown variant {name!r} (registered: {', '.join(VARIANTS)}; or METHOD:field=value;...)")


def build(variant: str, target: str, ratio: float, seed: int, cache: Path, fisv_dir: Path,
          dataset: str = "fis-v") -> dict:
    """The variant's configuration (plain data) on a validation split of ``dataset`` at ``fisv_dir``."""
    from aqa.config import to_dict
    from train.config import apply_overrides, preset_config
    import dataclasses

    method, overrides = parse_variant(variant)
    config = preset_config("default", method)
    config = dataclasses.replace(config, features=str(cache), dataset=dataset, data_root=str(fisv_dir), target=target,
                                 ratio=ratio, seed=seed, validation_fraction=VALIDATION_FRACTION)
    config = apply_overrides(config, overrides)
    data = to_dict(config)
    data.pop("resolved", None)
    return data


def result_id(variant: str, target: str, ratio: float, seed: int) -> str:
    """What identifies a result: the variant's definition (not the whole config, so that adding a
    field with a default keeps old results), the cell, the seed and the code version."""
    method, overrides = parse_variant(variant)
    return config_digest({"variant": variant, "method": method, "overrides": overrides, "target": target,
                          "ratio": ratio, "seed": seed, "code_version": code_version(method),
                          "validation_fraction": VALIDATION_FRACTION})


def current_results(path: Path) -> dict[str, dict]:
    """The records of ``path`` that today's code would reproduce, by id: those of registered or
    ad-hoc variants at their method's current code version (older ones are left out, so they
    rerun instead of standing in for today's code). Ids are recomputed, so that adding a config
    field with a default keeps old results."""
    results = {}
    for record in load_results(path).values():
        known = record["variant"] in VARIANTS or ":" in record["variant"]
        if known and record.get("code_version", 1) == code_version(parse_variant(record["variant"])[0]):
            record["id"] = result_id(record["variant"], record["target"], record["ratio"], record["seed"])
            results[record["id"]] = record
    return results


def _task(record_id: str, config: dict) -> tuple[str, dict]:
    return record_id, run_in_process(config, threads=1)


def _mean_se(values: list[float]) -> tuple[float, float]:
    values = [value for value in values if value is not None and math.isfinite(value)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _paired(values: dict[int, float], base: dict[int, float]) -> tuple[float, float, int, int]:
    """Paired differences ``values - base`` over the seeds both have: mean, standard error, wins, n."""
    differences = [values[seed] - base[seed] for seed in values
                   if seed in base and values[seed] is not None and base[seed] is not None]
    mean, se = _mean_se(differences)
    return mean, se, sum(difference > 0 for difference in differences), len(differences)


def report(results: dict, baseline: str, variants: list[str] | None) -> str:
    cells: dict[tuple, dict[str, dict[int, dict]]] = {}
    for record in results.values():
        cells.setdefault((record["target"], record["ratio"]), {}).setdefault(record["variant"], {})[record["seed"]] = record
    lines = []
    for (target, ratio), by_variant in sorted(cells.items()):
        lines.append(f"\n{target} ratio {ratio:g} (validation Spearman; paired difference vs {baseline} on the same seeds)")
        lines.append(f"  {'variant':58s} {'n':>3s} {'val rho':>14s} {'vs base':>16s} {'pseudo rho':>10s} {'conf~err':>8s} {'s/run':>6s}")
        base = by_variant.get(baseline, {})
        names = [name for name in (variants or sorted(by_variant)) if name in by_variant]
        for name in names:
            runs = by_variant[name]
            rho, rho_se = _mean_se([run["validation_spearman"] for run in runs.values()])
            diff, diff_se, _, paired = _paired({seed: run["validation_spearman"] for seed, run in runs.items()},
                                                {seed: run["validation_spearman"] for seed, run in base.items()})
            pseudo, _ = _mean_se([(run.get("diagnostics") or {}).get("pseudo_spearman") for run in runs.values()])
            conf, _ = _mean_se([(run.get("diagnostics") or {}).get("confidence_error_spearman") for run in runs.values()])
            seconds, _ = _mean_se([run["seconds"] for run in runs.values()])
            versus = "" if name == baseline or not paired else f"{diff:+.3f} ± {diff_se:.3f}"
            lines.append(f"  {name[:58]:58s} {len(runs):3d} {rho:6.3f} ± {rho_se:5.3f} {versus:>16s} "
                         f"{'' if math.isnan(pseudo) else f'{pseudo:.3f}':>10s} {'' if math.isnan(conf) else f'{conf:+.3f}':>8s} "
                         f"{seconds:6.1f}")
    return "\n".join(lines)


def search(args) -> int:
    """``pipeline.py tune`` of ``args.search`` on Fis-V for each target x ratio (one study each)."""
    import subprocess

    from train.sweep import parse_list

    cache = ensure_fisv_cache(args.fisv_dir, args.cache)
    folder = REPO_ROOT / "bench" / "results" / "tune"
    status = 0
    for target in parse_list(args.targets, "targets"):
        for ratio in parse_list(args.ratios, "ratios", float):
            command = [sys.executable, str(REPO_ROOT / "pipeline.py"), "tune", "--features", str(cache),
                       "--dataset", "fis-v", "--data-root", str(args.fisv_dir), "--target", target,
                       "--method", args.search, "--ratio", f"{ratio:g}", "--trials", str(args.trials),
                       "--seeds", args.seeds, "--validation-fraction", str(VALIDATION_FRACTION),
                       "--study-db", str(folder / "studies.db"), "--threads", str(args.threads),
                       "--out", str(folder / f"{args.search}-{target}-r{ratio:g}")]
            if args.params:
                command += ["--params", args.params]
            status = max(status, subprocess.run(command).returncode)
    return status


def study_folder(method: str, target: str, ratio: float) -> Path:
    return REPO_ROOT / "bench" / "results" / "tune" / f"{method}-{target}-r{ratio:g}"


def tuned_variant(method: str, target: str, ratio: float) -> tuple[str, dict] | None:
    """The ad-hoc variant (``method:field=value;...``) of the best trial of a ``--search`` study,
    and the study's own summary of it; None when the study has not been run."""
    import json

    from train.search_spaces import assignment

    summary = study_folder(method, target, ratio) / "study.json"
    if not summary.is_file():
        return None
    best = json.loads(summary.read_text())["best"]
    if best is None:
        return None
    assignments = ";".join(assignment(name, value) for name, value in sorted(best["params"].items()))
    return f"{method}:{assignments}", best


def confirm_table(results: dict, plan: dict, targets: list[str], ratios: list[float], seeds: list[int],
                  baseline: str) -> str:
    """Markdown: per tuned method and cell, the chosen configuration's paired difference against
    ``baseline`` on ``seeds`` (mean ± standard error, wins), and the study's own (biased) value;
    above it the method's default settings on the same seeds, where they were run."""
    def cell_runs(variant, target, ratio):
        return {record["seed"]: record["validation_spearman"] for record in results.values()
                if record["variant"] == variant and record["target"] == target and record["ratio"] == ratio
                and record["seed"] in seeds and record["validation_spearman"] is not None}

    cells = [(target, ratio) for target in targets for ratio in ratios]
    header = "| method | " + " | ".join(f"{target} {ratio * 100:g} %" for target, ratio in cells) + " |"
    lines = [header, "|" + "---|" * (len(cells) + 1)]
    base_row = []
    for target, ratio in cells:
        mean, se = _mean_se(list(cell_runs(baseline, target, ratio).values()))
        base_row.append(f"{mean:.3f} ± {se:.3f}")
    lines.append(f"| `{baseline}`, default (validation ρ) | " + " | ".join(base_row) + " |")

    def paired_cell(variant, target, ratio, note=""):
        diff, diff_se, wins, n = _paired(cell_runs(variant, target, ratio), cell_runs(baseline, target, ratio))
        return f"{diff:+.3f} ± {diff_se:.3f} ({wins}/{n}{note})" if n else ""

    chosen = []
    for method, by_cell in plan.items():
        if method != baseline:  # the method's defaults on the same seeds, where they were run
            defaults = [paired_cell(method, *cell) for cell in cells]
            if any(defaults):
                lines.append(f"| `{method}` default | " + " | ".join(defaults) + " |")
        row = []
        for target, ratio in cells:
            entry = by_cell.get((target, ratio))
            if entry is None:
                row.append("not tuned")
                continue
            variant, best = entry
            row.append(paired_cell(variant, target, ratio, f"; study {best['value']:+.3f}"))
            chosen.append(f"- `{method}`, {target} {ratio * 100:g} %: `{variant.partition(':')[2]}`")
        lines.append(f"| `{method}` tuned | " + " | ".join(row) + " |")
    return "\n".join(lines + [""] + chosen)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="supervised,trs")
    parser.add_argument("--targets", default="TES,PCS")
    parser.add_argument("--ratios", default="0.1,0.25")
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fisv-dir", type=Path, default=DEFAULT_FISV_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results" / "tune_fisv.jsonl")
    parser.add_argument("--baseline", default="supervised")
    parser.add_argument("--report", action="store_true", help="Only print the table of stored results.")
    parser.add_argument("--search", metavar="METHOD", default=None,
                        help="Instead of the variants: `pipeline.py tune` of METHOD for each target x ratio.")
    parser.add_argument("--confirm", metavar="METHODS", default=None,
                        help="Rerun the best trial of each METHOD's --search studies on --seeds (fresh splits) "
                             "against the baseline, and print the tuning table.")
    parser.add_argument("--trials", type=int, default=20, help="--search: trials per study.")
    parser.add_argument("--params", default=None, help="--search: only these fields of the method's space.")
    parser.add_argument("--threads", type=int, default=1,
                        help="--search: torch threads of the tune process (1, so that two searches can share 2 cores).")
    args = parser.parse_args()
    if args.search:
        sys.exit(search(args))

    from train.sweep import parse_list, parse_seeds

    results = current_results(args.results)
    variants = parse_list(args.variants, "variants")
    targets, ratios = parse_list(args.targets, "targets"), parse_list(args.ratios, "ratios", float)
    plan: dict[str, dict] = {}
    per_cell: dict[tuple, list[str]] | None = None
    if args.confirm:
        per_cell = {(target, ratio): [args.baseline] for target in targets for ratio in ratios}
        for method in parse_list(args.confirm, "confirm"):
            plan[method] = {}
            for cell in per_cell:
                tuned = tuned_variant(method, *cell)
                if tuned is None:
                    print(f"{method} {cell[0]} {cell[1]:g}: no study in {study_folder(method, *cell)}; skipped")
                    continue
                plan[method][cell] = tuned
                per_cell[cell].append(tuned[0])
    if not args.report:
        cache = ensure_fisv_cache(args.fisv_dir, args.cache)
        tasks = []
        cells = per_cell or {(target, ratio): variants for target in targets for ratio in ratios}
        for (target, ratio), cell_variants in cells.items():
            for variant in cell_variants:
                for seed in parse_seeds(args.seeds):
                    record_id = result_id(variant, target, ratio, seed)
                    if record_id not in results:
                        config = build(variant, target, ratio, seed, cache, args.fisv_dir)
                        tasks.append((record_id, config, variant, target, ratio, seed))
        print(f"{len(tasks)} runs to do", flush=True)
        from joblib import Parallel, delayed

        runner = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
        meta = {task[0]: task for task in tasks}
        for record_id, result in runner(delayed(_task)(task[0], task[1]) for task in tasks):
            _, _, variant, target, ratio, seed = meta[record_id]
            record = {"id": record_id, "variant": variant, "target": target, "ratio": ratio, "seed": seed,
                      "code_version": code_version(parse_variant(variant)[0]), **result}
            append_result(args.results, record)
            results[record_id] = record
            print(f"{variant:40s} {target} {ratio:g} s{seed}: val {record['validation_spearman']:.3f} "
                  f"({record['seconds']:.1f} s)", flush=True)
    if args.confirm:
        print(confirm_table(results, plan, targets, ratios, parse_seeds(args.seeds), args.baseline))
    else:
        print(report(results, args.baseline, variants if not args.report else None))


if __name__ == "__main__":
    main()

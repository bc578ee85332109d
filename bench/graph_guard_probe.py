#!/usr/bin/env python
"""A closed-form guard for ``trs``'s graph (research log, session 19): can cheap cross-fittings of a
graph-regularised ridge tell, from the labelled videos alone, the features on which the graph
hurts (the dives) from those on which it helps (Fis-V)?

For each validation split (``bench/segment_ridge_study.py``'s six cells and protocol), the
*signal* is the mean out-of-fold Spearman of a Laplacian-regularised ridge with strength γ = 0.3
minus that of the plain ridge (γ = 0), over ``--repeats`` repetitions of 5-fold cross-fitting on
the labelled videos (held-out videos become unlabelled nodes of the same graph). Features: the
3-segment means of ``ridge``; graph: symmetrised 5-nearest neighbours by cosine similarity over
the labelled and unlabelled training videos (never validation or test), Laplacian divided by k,
penalty γ · (n_labelled / n_nodes) · fᵀLf; α = 100. The guard drops ``trs``'s graph
(``semi.use_graph=false``) where the signal is below ``-MARGIN``; ``trs`` is trained both ways
only where it drops (elsewhere the two are the same run), and the records are shared with the
segment study (bench/results/segment_ridge.jsonl).

    python bench/graph_guard_probe.py --seeds 20-29            # signals, then the runs it needs
    python bench/graph_guard_probe.py --seeds 20-29 --report
    python bench/graph_guard_probe.py --test-protocols --seeds 0-4   # the README's Fis-V test runs
    python bench/graph_guard_probe.py --pair teacher --seeds 30-39   # session 20: semi.teacher=auto
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import segment_ridge_study as study  # noqa: E402
from bench.fisv_common import REPO_ROOT, append_result, ensure_fisv_cache, load_results  # noqa: E402

SIGNALS = REPO_ROOT / "bench" / "results" / "graph_guard_signals.jsonl"
MARGIN = 0.1  # the margin the rule was registered with (trs's semi.graph_guard_margin default)


def signal(cell: tuple, seed: int, repeats: int) -> dict:
    """The split's out-of-fold estimates with and without the graph (no validation label read)."""
    return {"cell": list(cell), **signal_of(study.config_of("ridge-3", *cell, seed), repeats)}


def signal_of(config_dict: dict, repeats: int) -> dict:
    """The guard's estimates (train.methods.graph_guard, as trs's gate computes them) on the split
    of any saved training configuration (e.g. a finished run's config.json): only its labelled
    and unlabelled videos are read."""
    from train.config import config_from_json
    from train.data import prepare_data
    from train.methods.graph_guard import graph_guard
    from train.tune import without_test

    config = config_from_json(config_dict, "probe")
    record = graph_guard(without_test(prepare_data(config)), config.seed, repeats, MARGIN)
    return {"seed": config.seed, "repeats": repeats, "n_labelled": record["n_labelled"],
            "without_graph": record["without_graph"], "with_graph": record["with_graph"],
            "signal": record["signal"]}


def test_protocol_configs(resplits: int, seeds: list[int]) -> list[tuple[str, dict]]:
    """(name, trs configuration) of every ``trs`` run of the README's Fis-V tables (official split
    and ``resplits`` random resplits, as ``bench/bench_fisv.py`` writes them; 10 and 25 %; seeds)."""
    import dataclasses

    from aqa.config import to_dict
    from bench.bench_fisv import write_resplit_manifest
    from train.config import preset_config

    runs = REPO_ROOT / "bench" / "results" / "fisv"
    splits = [("official", {"dataset": "fis-v", "data_root": str(study.DEFAULT_FISV_DIR)})]
    for resplit in range(1, resplits + 1):
        manifest = write_resplit_manifest(study.DEFAULT_FISV_DIR, runs / f"resplit-{resplit}" / "manifest.csv", resplit)
        splits.append((f"resplit {resplit}", {"dataset": "manifest", "manifest": str(manifest)}))
    configs = []
    for split_name, data_fields in splits:
        for target in ("TES", "PCS"):
            for ratio in (0.1, 0.25):
                for seed in seeds:
                    config = dataclasses.replace(preset_config("default", "trs"), features=str(study.DEFAULT_CACHE),
                                                 target=target, ratio=ratio, seed=seed, **data_fields)
                    configs.append((f"{split_name} {target} {ratio:g} s{seed}", to_dict(config)))
    return configs


def load_signals(seeds: list[int]) -> dict[tuple, dict]:
    signals = {}
    if SIGNALS.is_file():
        for line in SIGNALS.read_text().splitlines():
            record = json.loads(line)
            signals[(*record["cell"], record["seed"])] = record
    return {key: value for key, value in signals.items() if key[-1] in seeds}


# The pair trained where the guard drops the graph: session 19's question (is trs better without
# its graph there?) and session 20's (is trs better with the ridge teacher there? semi.teacher=auto).
PAIRS = {"graph": ("trs", "trs-no-graph"), "teacher": ("trs-ema", "trs-ridge-teacher")}


def report(signals: dict, results: dict, seeds: list[int], pair: str = "graph") -> str:
    compared = "guard − trs" if pair == "graph" else "auto − ema teacher"
    lines = [f"| cell | splits | graph dropped | Δ per split, {compared} (mean ± se) | dropped runs ahead |",
             "|---|---|---|---|---|"]
    cell_means = []
    for cell in study.CELLS:
        differences, dropped, ahead, missing = [], 0, 0, 0
        for seed in seeds:
            record = signals.get((*cell, seed))
            if record is None:
                missing += 1
                continue
            if record["signal"] >= -MARGIN:
                differences.append(0.0)
                continue
            dropped += 1
            kept = results.get(study.record_id(PAIRS[pair][0], *cell, seed))
            guarded = results.get(study.record_id(PAIRS[pair][1], *cell, seed))
            if kept is None or guarded is None:
                missing += 1
                continue
            differences.append(guarded["validation_spearman"] - kept["validation_spearman"])
            ahead += differences[-1] > 0
        name = f"{cell[0]} {cell[1]} {cell[2]:g}"
        if missing or not differences:
            lines.append(f"| {name} | {len(differences)} | {dropped} | incomplete ({missing} missing) | |")
            continue
        mean = statistics.fmean(differences)
        se = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
        cell_means.append((cell, mean))
        lines.append(f"| {name} | {len(differences)} | {dropped} | {mean:+.4f} ± {se:.4f} | {ahead}/{dropped} |")
    if len(cell_means) == len(study.CELLS):
        dives = statistics.fmean(mean for cell, mean in cell_means if cell[0] == "dives")
        fisv_worst = min(mean for cell, mean in cell_means if cell[0] == "fis-v")
        overall = statistics.fmean(mean for _, mean in cell_means)
        dives_needed = 0.0 if pair == "graph" else 0.03
        build = dives > dives_needed and fisv_worst >= -0.01 and overall > 0
        verdict = ("BUILD it into the gate" if pair == "graph" else "ADOPT semi.teacher=auto") if build else (
            "do not build" if pair == "graph" else "do not adopt")
        lines.append(f"\nrule: dives mean {dives:+.4f} (> {dives_needed:g}), worst Fis-V cell {fisv_worst:+.4f} "
                     f"(≥ −0.01), six-cell mean {overall:+.4f} (> 0): {verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="20-29")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="Only print the table of stored signals and runs.")
    parser.add_argument("--test-protocols", action="store_true",
                        help="Instead: where trs's guard drops the graph in the README's Fis-V test runs "
                             "(official split and --resplits resplits, 10 and 25 %%, --seeds; reported only).")
    parser.add_argument("--resplits", type=int, default=5)
    parser.add_argument("--pair", choices=tuple(PAIRS), default="graph",
                        help="What to train where the guard drops the graph: trs with and without its graph "
                             "(session 19), or with the EMA and the ridge teacher (session 20, semi.teacher=auto).")
    args = parser.parse_args()

    from train.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.test_protocols:
        ensure_fisv_cache(study.DEFAULT_FISV_DIR, study.DEFAULT_CACHE)
        configs = test_protocol_configs(args.resplits, seeds)
        dropped = []
        for name, config in configs:
            record = signal_of(config, args.repeats)
            if record["signal"] < -MARGIN:
                dropped.append(name)
            print(f"{name}: signal {record['signal']:+.3f}", flush=True)
        print(f"the guard drops the graph in {len(dropped)} of {len(configs)} runs: {', '.join(dropped) or 'none'}")
        return 0
    signals = load_signals(seeds)
    results = load_results(study.RESULTS)
    if not args.report:
        from joblib import Parallel, delayed

        todo = [(cell, seed) for cell in study.CELLS for seed in seeds if (*cell, seed) not in signals]
        print(f"{len(todo)} signals to compute", flush=True)
        for record in Parallel(n_jobs=args.jobs, return_as="generator_unordered")(
                delayed(signal)(cell, seed, args.repeats) for cell, seed in todo):
            append_result(SIGNALS, record)
            signals[(*record["cell"], record["seed"])] = record
            print(f"{record['cell']} s{record['seed']}: signal {record['signal']:+.3f}", flush=True)
        study.run_missing([(variant, *cell, seed) for cell in study.CELLS for seed in seeds
                           if signals[(*cell, seed)]["signal"] < -MARGIN for variant in PAIRS[args.pair]],
                          results, args.jobs)
    print(report(signals, results, seeds, args.pair))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Session 19's pre-registered study (docs/research/issue11-2026-12-01.md): does a ridge on the
means of 3 time segments (``ridge.segments=3``) beat the one-mean ridge on validation splits?

Six cells: the embedded dives (``features/synth-dive.h5``, ``make extract``) at 10 % and 20 %
labels, and the real Fis-V bank, TES and PCS at 10 % and 25 %. Every run holds out 25 % of the
training videos as its validation set (``bench/tune_fisv.py``'s protocol; the test rows are cut
off before training). Variants run on identical splits per seed, so they compare by paired
differences. Records go to bench/results/segment_ridge.jsonl; finished ones are never rerun.

    python bench/segment_ridge_study.py --variants ridge-1,ridge-3 --seeds 10-19   # the decision
    python bench/segment_ridge_study.py --variants supervised,trs --seeds 10-19    # the context
    python bench/segment_ridge_study.py --variants trs-no-graph --seeds 10-19       # what the graph does
    python bench/segment_ridge_study.py --report --seeds 10-19

The rule (fixed before the runs): adopt 3 segments iff the mean over the six cells of the paired
ridge-3 − ridge-1 difference is above +0.01 and no cell's is below −0.01.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import (  # noqa: E402
    DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, append_result, config_digest, ensure_fisv_cache, load_results,
    run_in_process,
)
from bench.gate_rule_study import DEMO_CACHE, DEMO_ROOT  # noqa: E402
from bench.tune_fisv import build, code_version, parse_variant  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "segment_ridge.jsonl"
# The segment counts are spelled out, so that a record keeps its meaning whatever ridge's default.
VARIANTS = {"ridge-1": "ridge:ridge.segments=1", "ridge-3": "ridge:ridge.segments=3",
            "supervised": "supervised", "trs": "trs", "trs-no-graph": "trs:semi.use_graph=false",
            "trs-ema": "trs:semi.teacher=ema;semi.teacher_ridge_share=0",
            "trs-ridge-teacher": "trs:semi.teacher=ridge;semi.teacher_ridge_share=0"}
# Session 20's variants spell out trs's teacher (and, since version 12, the EMA teacher's ridge
# share), so their records keep trs version 8 in their identity whatever trs's default becomes.
SPELLED_TRS_VERSION = {"trs-ema": 8, "trs-ridge-teacher": 8}
TEACHER_DIVES_GAIN, TEACHER_WORST_FISV = 0.03, -0.01
CELLS = [("dives", "final_score", 0.1), ("dives", "final_score", 0.2),
         ("fis-v", "TES", 0.1), ("fis-v", "TES", 0.25), ("fis-v", "PCS", 0.1), ("fis-v", "PCS", 0.25)]
ADOPT_MEAN, WORST_CELL = 0.01, -0.01


def record_id(variant: str, dataset: str, target: str, ratio: float, seed: int) -> str:
    method = parse_variant(VARIANTS[variant])[0]
    # The ridge variants spell out every field that ridge's versions changed, so a new default of
    # ridge's leaves their records standing; the other methods' records go with their version.
    version = None if method == "ridge" else SPELLED_TRS_VERSION.get(variant, code_version(method))
    return config_digest({"variant": VARIANTS[variant], "dataset": dataset, "target": target, "ratio": ratio,
                          "seed": seed, "code_version": version})


def config_of(variant: str, dataset: str, target: str, ratio: float, seed: int) -> dict:
    if dataset == "dives":
        return build(VARIANTS[variant], target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    return build(VARIANTS[variant], target, ratio, seed, DEFAULT_CACHE, DEFAULT_FISV_DIR)


def _task(key: tuple, config: dict) -> tuple[tuple, dict]:
    return key, run_in_process(config, threads=1)


def values_of(results: dict, variant: str, cell: tuple, seeds: list[int]) -> dict[int, float]:
    values = {}
    for seed in seeds:
        record = results.get(record_id(variant, *cell, seed))
        if record is not None and record["validation_spearman"] is not None:
            values[seed] = record["validation_spearman"]
    return values


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int, int] | None:
    """Mean and sd of a − b over the seeds both have, the number of seeds and a's wins."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[seed] - b[seed] for seed in seeds]
    sd = statistics.stdev(differences) if len(differences) > 1 else math.nan
    return statistics.fmean(differences), sd, len(seeds), sum(difference > 0 for difference in differences)


def paired_text(a: dict[int, float], b: dict[int, float]) -> str:
    """:func:`paired` as a table cell, "mean ± sd (wins/seeds)" (sd 0 for one seed; "–" for none)."""
    result = paired(a, b)
    if result is None:
        return "–"
    mean, sd, count, wins = result
    return f"{mean:+.3f} ± {0.0 if math.isnan(sd) else sd:.3f} ({wins}/{count})"


def report(results: dict, seeds: list[int]) -> str:
    lines = ["| cell | " + " | ".join(VARIANTS) + " | ridge-3 − ridge-1 | ridge-3 − supervised | trs − ridge-3 |",
             "|---|" + "---|" * (len(VARIANTS) + 3)]
    decision = []
    for cell in CELLS:
        values = {variant: values_of(results, variant, cell, seeds) for variant in VARIANTS}
        row = [f"{cell[0]} {cell[1]} {cell[2]:g}"]
        for variant in VARIANTS:
            got = list(values[variant].values())
            row.append(f"{statistics.fmean(got):.3f} ± {statistics.stdev(got):.3f} ({len(got)})" if len(got) > 1
                       else "—")
        for a, b in (("ridge-3", "ridge-1"), ("ridge-3", "supervised"), ("trs", "ridge-3")):
            difference = paired(values[a], values[b])
            row.append("—" if difference is None else
                       f"{difference[0]:+.3f} ± {difference[1]:.3f} ({difference[3]}/{difference[2]})")
            if (a, b) == ("ridge-3", "ridge-1") and difference is not None and difference[2] == len(seeds):
                decision.append(difference[0])
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("(validation Spearman, mean ± sd over seeds (n); paired differences mean ± sd (wins/n))")
    if len(decision) == len(CELLS):
        mean, worst = statistics.fmean(decision), min(decision)
        adopt = mean > ADOPT_MEAN and worst >= WORST_CELL
        lines.append(f"rule: mean over cells {mean:+.4f} (needs > {ADOPT_MEAN:+g}), worst cell {worst:+.4f} "
                     f"(needs ≥ {WORST_CELL:+g}): {'ADOPT ridge.segments=3' if adopt else 'do not adopt'}")
    else:
        lines.append(f"rule: not decided ({len(decision)} of {len(CELLS)} cells have every seed of both ridges)")
    return "\n".join(lines)


def teacher_report(results: dict, seeds: list[int]) -> str:
    """Session 20's table and rule: ``trs-ridge-teacher`` against ``trs-ema`` (and both against
    ``supervised``), paired per seed on each cell."""
    lines = ["| cell | supervised | trs-ema | trs-ridge-teacher | ridge teacher − ema teacher | "
             "ridge teacher − supervised | ema teacher − supervised |", "|---|---|---|---|---|---|---|"]
    decision = {}
    for cell in CELLS:
        values = {variant: values_of(results, variant, cell, seeds)
                  for variant in ("supervised", "trs-ema", "trs-ridge-teacher")}
        row = [f"{cell[0]} {cell[1]} {cell[2]:g}"]
        for got in values.values():
            got = list(got.values())
            row.append(f"{statistics.fmean(got):.3f} ({len(got)})" if got else "—")
        for a, b in (("trs-ridge-teacher", "trs-ema"), ("trs-ridge-teacher", "supervised"), ("trs-ema", "supervised")):
            difference = paired(values[a], values[b])
            row.append("—" if difference is None else f"{difference[0]:+.3f} ± "
                       f"{difference[1] / math.sqrt(difference[2]):.3f} ({difference[3]}/{difference[2]})")
            if (a, b) == ("trs-ridge-teacher", "trs-ema") and difference is not None and difference[2] == len(seeds):
                decision[cell] = difference[0]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("\n(validation Spearman, mean (n); paired differences mean ± se (wins/n))")
    if len(decision) < len(CELLS):
        lines.append(f"rule: not decided ({len(decision)} of {len(CELLS)} cells have every seed of both)")
        return "\n".join(lines)
    dives = statistics.fmean(value for cell, value in decision.items() if cell[0] == "dives")
    fisv_worst = min(value for cell, value in decision.items() if cell[0] == "fis-v")
    overall = statistics.fmean(decision.values())
    adopt = dives > TEACHER_DIVES_GAIN and fisv_worst >= TEACHER_WORST_FISV and overall > 0
    lines.append(f"rule: dives mean {dives:+.4f} (needs > {TEACHER_DIVES_GAIN:+g}), worst Fis-V cell {fisv_worst:+.4f} "
                 f"(needs ≥ {TEACHER_WORST_FISV:+g}), six-cell mean {overall:+.4f} (needs > 0): "
                 f"{'ADOPT semi.teacher=ridge' if adopt else 'do not adopt'}")
    return "\n".join(lines)


def run_missing(keys: list[tuple], results: dict, jobs: int) -> None:
    """Train each ``(variant, dataset, target, ratio, seed)`` of ``keys`` that ``results`` lacks,
    two processes at a time, appending each record to RESULTS (and ``results``) as it finishes."""
    run_keyed(keys, results, jobs, identify=record_id, configure=config_of, task=_task, path=RESULTS, label="variant")


def run_keyed(keys: list[tuple], results: dict, jobs: int, *, identify, configure, task, path: Path,
              label: str) -> None:
    """Train each ``(name, dataset, target, ratio, seed)`` of ``keys`` whose ``identify(*key)`` is
    not in ``results``: ``task(key, configure(*key))`` in ``jobs`` processes, each record (``label``:
    the name's field) appended to ``path`` and ``results`` as it finishes. Shared by the studies
    on these six cells (bench/blend_study.py too)."""
    keys = [key for key in keys if identify(*key) not in results]
    print(f"{len(keys)} runs to do", flush=True)
    if not keys:
        return
    if not DEMO_CACHE.is_file():
        sys.exit(f"error: {DEMO_CACHE}: no demo features (run make extract first)")
    ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=jobs, return_as="generator_unordered")
    for key, result in runner(delayed(task)(key, configure(*key)) for key in keys):
        name, dataset, target, ratio, seed = key
        identity = identify(*key)
        record = {"id": identity, label: name, "dataset": dataset, "target": target, "ratio": ratio,
                  "seed": seed, **result}
        append_result(path, record)
        results[identity] = record
        print(f"{name:12s} {dataset} {target} {ratio:g} s{seed}: val {record['validation_spearman']:.3f} "
              f"({record['seconds']:.1f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="ridge-1,ridge-3", help=f"Comma-separated, of: {', '.join(VARIANTS)}.")
    parser.add_argument("--seeds", default="10-19")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="Only print the table of stored results.")
    parser.add_argument("--rule", choices=("segments", "teacher"), default="segments",
                        help="Which decision's table to print: session 19's segments, session 20's teacher.")
    args = parser.parse_args()

    from train.sweep import parse_list, parse_seeds

    seeds = parse_seeds(args.seeds)
    results = load_results(RESULTS)
    if not args.report:
        variants = parse_list(args.variants, "variants")
        unknown = [variant for variant in variants if variant not in VARIANTS]
        if unknown:
            sys.exit(f"error: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
        run_missing([(variant, *cell, seed) for variant in variants for cell in CELLS for seed in seeds],
                    results, args.jobs)
    print(teacher_report(results, seeds) if args.rule == "teacher" else report(results, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line the validation-split probes share (``rank_pairs_probe``, ``masked_pretrain_probe``).

A probe runs ``run((dataset, target, ratio, seed, variant))`` for every variant on the cells of
``--dataset`` (:func:`bench.gate_rule_study.cells`) and seeds, in ``--jobs`` processes, appending one
JSONL record per run to ``--results`` and skipping runs already there; ``--report`` prints
``report(records)`` instead (``--report-seeds``: of those seeds only). Validation splits only: the
runs never read a test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, append_result, ensure_fisv_cache
from bench.gate_rule_study import DEMO_CACHE, cells, load


def probe_main(argv, description: str, variants: Sequence[str], results: Path, run: Callable[[tuple], dict],
               report: Callable[[list[dict]], str], shown: Sequence[str] = ("seconds",),
               demo_ratio: float = 0.2) -> int:
    """Parse ``argv`` and run or report the probe; ``shown``: record fields printed after each run
    besides its cell, seed, variant and validation Spearman; ``demo_ratio``: the demo cell's
    labelled ratio."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["fis-v", "demo"], default="fis-v")
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--variants", default=",".join(variants))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=results)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--report-seeds", help="report only these seeds (e.g. 20-29; default: every seed recorded)")
    args = parser.parse_args(argv)
    from train.sweep import parse_seeds

    if args.report:
        records = load(args.results)
        if args.report_seeds:
            wanted = set(parse_seeds(args.report_seeds))
            records = [record for record in records if record["seed"] in wanted]
        print(report(records))
        return 0
    if args.dataset == "demo" and not DEMO_CACHE.is_file():
        sys.exit(f"error: {DEMO_CACHE}: no demo features (run make extract first)")
    if args.dataset == "fis-v":
        ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    seeds = parse_seeds(args.seeds)
    done = {(r["dataset"], r["target"], r["ratio"], r["seed"], r["variant"]) for r in load(args.results)}
    tasks = [(args.dataset, target, ratio, seed, variant) for seed in seeds
             for target, ratio in cells(args.dataset, demo_ratio) for variant in args.variants.split(",")
             if (args.dataset, target, ratio, seed, variant) not in done]
    fields = ("target", "ratio", "seed", "variant", "validation_spearman", *shown)
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(run, tasks):
            append_result(args.results, record)
            print(json.dumps({key: record[key] for key in fields}), flush=True)
    return 0

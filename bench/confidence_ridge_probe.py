#!/usr/bin/env python
"""Session 22's exploratory probe (docs/research/issue11-2026-12-01.md): does the agreement of two
different learners, the EMA teacher and the 3-segment ridge, rank `trs`'s pseudo-label error on
Fis-V better than the run's own confidence?

Trains `trs` (today's default) on ``bench/segment_ridge_study.py``'s Fis-V validation splits (TES
and PCS at 10 % and 25 % labels; the test rows cut off), fits the ridge on the same labelled
videos, and keeps, per unlabelled video of the last refresh, the hidden true target, the
pseudo-label, each source's value and confidence, and the ridge's value (standardised targets).
Records go to bench/results/confidence_ridge.jsonl (finished runs are not rerun); the report gives,
per cell, the mean over seeds of the Spearman of each candidate confidence with |pseudo-label −
truth| (negative: it ranks the error) and, in brackets, the most confident fifth's mean error over
the least confident fifth's.

    python bench/confidence_ridge_probe.py --seeds 50-54
    python bench/confidence_ridge_probe.py --seeds 50-54 --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import (  # noqa: E402
    DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, append_result, ensure_fisv_cache, fit_without_test,
)
from bench.segment_ridge_study import config_of  # noqa: E402
from bench.tune_fisv import code_version  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "confidence_ridge.jsonl"
CELLS = [("TES", 0.1), ("TES", 0.25), ("PCS", 0.1), ("PCS", 0.25)]


def last_refresh_with_ridge(target: str, ratio: float, seed: int) -> dict:
    from train.methods.pseudo_labels import RidgeTeacherSource

    fitted = fit_without_test(config_of("trs", "fis-v", target, ratio, seed), threads=1)
    config, data, method = fitted.config, fitted.data, fitted.method
    last = method.last_refresh
    rows = last["rows"]
    features, weights, bias = RidgeTeacherSource(config.ridge).fit(data, method.labelled, method.labelled_targets)
    return {"target": target, "ratio": ratio, "seed": seed, "code_version": code_version("trs"),
            "teacher": (method.gate or {}).get("teacher"),
            "truth": ((data.scores[rows] - method.target_mean) / method.target_std).tolist(),
            "ridge": (features[rows] @ weights + bias).tolist(),
            **{name: np.asarray(values).tolist() for name, values in last.items() if name != "rows"}}


def candidates(record: dict) -> dict[str, np.ndarray]:
    pseudo, teacher, ridge = (np.asarray(record[name]) for name in ("pseudo", "teacher_value", "ridge"))
    found = {"the run's (fused, the loss weight)": np.asarray(record["relative_confidence"]),
             "−|teacher − ridge|": -abs(teacher - ridge), "−|pseudo-label − ridge|": -abs(pseudo - ridge)}
    if "reference_value" in record:
        found["−|teacher − reference|"] = -abs(teacher - np.asarray(record["reference_value"]))
    found["oracle: −|truth − mean|"] = -abs(np.asarray(record["truth"]) - np.mean(record["truth"]))
    return found


def report(records: list[dict]) -> str:
    from aqa.metrics import spearman

    table: dict[tuple, dict[str, list]] = {}
    for record in records:
        error = abs(np.asarray(record["pseudo"]) - np.asarray(record["truth"]))
        for name, confidence in candidates(record).items():
            if np.ptp(confidence) == 0:  # e.g. the teacher was the ridge: no disagreement to rank by
                continue
            fifths = np.array_split(np.argsort(-confidence, kind="stable"), 5)
            table.setdefault((record["target"], record["ratio"]), {}).setdefault(name, []).append(
                (spearman(confidence, error), error[fifths[0]].mean() / error[fifths[-1]].mean()))
    names = list(dict.fromkeys(name for cell in table.values() for name in cell))
    lines = ["| confidence | " + " | ".join(f"{target} {ratio:.0%}" for target, ratio in CELLS) + " |",
             "|---|" + "---|" * len(CELLS)]
    for name in names:
        row = []
        for cell in CELLS:
            values = table.get(cell, {}).get(name, [])
            row.append(f"{statistics.fmean(v for v, _ in values):+.3f} ({statistics.fmean(r for _, r in values):.2f}; "
                       f"{len(values)} runs)" if values else "–")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="50-54")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="Only print the table of stored results.")
    args = parser.parse_args()

    from train.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    records = []
    if RESULTS.is_file():
        records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    records = [record for record in records if record["code_version"] == code_version("trs")]
    done = {(record["target"], record["ratio"], record["seed"]) for record in records}
    if not args.report:
        todo = [(target, ratio, seed) for seed in seeds for target, ratio in CELLS if (target, ratio, seed) not in done]
        print(f"{len(todo)} runs to do", flush=True)
        if todo:
            ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
            from joblib import Parallel, delayed

            runner = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
            for record in runner(delayed(last_refresh_with_ridge)(*key) for key in todo):
                append_result(RESULTS, record)
                records.append(record)
                print(f"{record['target']} {record['ratio']:g} s{record['seed']}", flush=True)
    print(report([record for record in records if record["seed"] in seeds]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

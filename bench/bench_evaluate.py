#!/usr/bin/env python
"""How long `pipeline.py evaluate` takes on many MTL-AQA-sized runs, against reading their files.

Generates RUNS run folders (1059 train + 353 test rows each, as MTL-AQA) in a temporary folder,
then times, in this one process:
  baseline  reading every predictions.csv with the csv module (the I/O floor, no measures);
  evaluate  `evaluate_runs` without plots (measures, metrics.json write-back, summaries, files);
  plots     the same with the summary plots.
Prints seconds and the ratio to the baseline. Usage: python bench/bench_evaluate.py [--runs 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate import EvaluateConfig, evaluate_runs  # noqa: E402


def write_runs(root: Path, count: int) -> None:
    generator = np.random.default_rng(0)
    methods, ratios = ("supervised", "trs", "mean_teacher", "core", "pseudo"), (0.05, 0.1, 0.2, 0.4)
    train_keys = [f"{video:02d}_{dive:02d}" for video in range(1, 30) for dive in range(1, 38)][:1059]
    test_keys = [f"{video:02d}_{dive:02d}" for video in range(30, 40) for dive in range(1, 37)][:353]
    for index in range(count):
        method, ratio, seed = methods[index % 5], ratios[(index // 5) % 4], index // 20
        folder = root / f"{method}_{ratio}_{seed}"
        folder.mkdir(parents=True)
        identity = {"dataset": "mtl-aqa", "target": "final_score", "method": method, "ratio": ratio, "seed": seed}
        (folder / "config.json").write_text(json.dumps(identity))
        labelled = int(ratio * len(train_keys))
        split = {"labelled": train_keys[:labelled], "unlabelled": train_keys[labelled:], "test": test_keys}
        (folder / "split.json").write_text(json.dumps(dict(split, validation=[])))
        (folder / "metrics.json").write_text(json.dumps(dict(identity, wall_seconds=1.0)))
        true_train = generator.uniform(20, 100, len(train_keys))
        true_test = generator.uniform(20, 100, len(test_keys))
        with open(folder / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "split", "true", "pred", "labelled", "group"])
            for position, key in enumerate(train_keys):
                score = true_train[position]
                writer.writerow([key, "train", score, score + generator.normal(0, 8), int(position < labelled), ""])
            for position, key in enumerate(test_keys):
                score = true_test[position]
                writer.writerow([key, "test", score, score + generator.normal(0, 12), 0, ""])


def read_only(root: Path) -> int:
    rows = 0
    for path in sorted(root.glob("*/predictions.csv")):
        with open(path, newline="") as handle:
            rows += sum(1 for row in csv.reader(handle) if row and row[1] == "test")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "runs"
        write_runs(root, args.runs)
        start = time.perf_counter()
        read_only(root)
        baseline = time.perf_counter() - start
        timings = {}
        for name, plots in (("evaluate", "none"), ("evaluate + summary plots", "summary")):
            start = time.perf_counter()
            evaluate_runs(EvaluateConfig(run_dirs=[str(root)], plots=plots), warn=lambda message: None)
            timings[name] = time.perf_counter() - start
    print(f"{args.runs} runs × 353 test rows (MTL-AQA size), one process")
    print(f"  baseline: read predictions.csv only  {baseline:6.2f} s")
    for name, seconds in timings.items():
        print(f"  {name:<34} {seconds:6.2f} s  ({seconds / baseline:.1f}× the baseline)")


if __name__ == "__main__":
    main()

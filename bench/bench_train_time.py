#!/usr/bin/env python
"""Wall time of one training run on MTL-AQA-sized features (generated), per preset.

Generates a cache the size of MTL-AQA after stage 1 with two augmentations (1412 dives, 10 clips,
6 views, 1024-d; features carry a weak linear signal of the score so that training is not
degenerate), keyed and labelled by the real MTL-AQA annotations (1059 train / 353 test), then
times ``pipeline.py train`` end to end (process start to exit) for each requested
method/preset at ``--ratio``.

The ``paper`` preset (mixer depth 8 over 1024-d tokens, 150 + 50 epochs) takes hours on two
cores (a ``trs`` unlabelled epoch alone costs minutes: four MC-dropout teacher passes and the
reference network against 32 exemplars for every unlabelled video, then the student's steps);
``--paper-scale K`` runs it with every epoch count divided by K and reports the
measured time next to the time scaled back to the full schedule (per-epoch cost × epochs:
epochs of one phase cost the same).

    python bench/bench_train_time.py                       # default preset, trs and supervised
    python bench/bench_train_time.py --runs trs:paper,supervised:paper --paper-scale 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import REPO_ROOT  # noqa: E402

VIEWS = ["original", "flip", "shift-4", "shift+4", "flip-shift-4", "flip-shift+4"]


def make_cache(path: Path, annotations_root: Path, clips: int, dim: int, seed: int = 0) -> Path:
    from aqa.annotations import load_mtl_aqa
    from aqa.cache import VideoEntry, write_cache

    if path.is_file():
        return path
    dataset = load_mtl_aqa(annotations_root, layout="none")
    generator = np.random.default_rng(seed)
    direction = generator.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    scores = np.array([record.targets["final_score"] / record.difficulty for record in dataset.records])
    standardised = (scores - scores.mean()) / scores.std()

    def entries():
        for record, quality in zip(dataset.records, standardised):
            base = generator.standard_normal((clips, dim), dtype=np.float32) + 0.5 * quality * direction
            views = [base, base[:, ::-1]]
            for view in range(2, len(VIEWS)):
                views.append(np.roll(views[view % 2], 1 if view < 4 else -1, axis=0) +
                             0.1 * generator.standard_normal((clips, dim), dtype=np.float32))
            yield VideoEntry(record.key, np.stack(views))

    config = {"backbone": "generated", "views": VIEWS, "dataset": "mtl-aqa-sized", "clips": clips}
    return write_cache(path, config, {"made_by": "bench/bench_train_time.py"}, entries())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtl-aqa-root", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mtl-aqa")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "features" / "bench-mtl-aqa-sized.h5")
    parser.add_argument("--runs", default="trs:default,supervised:default",
                        help="Comma-separated METHOD[:PRESET[:field=value;field=value]] runs to time (the fields go to --set).")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-scale", type=int, default=1,
                        help="Divide the paper preset's epoch counts by this (the report scales back).")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "results" / "train_time")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "train_time.json")
    args = parser.parse_args()

    started = time.perf_counter()
    cache = make_cache(args.cache, args.mtl_aqa_root, clips=10, dim=1024)
    print(f"cache {cache} ready ({time.perf_counter() - started:.1f} s)", flush=True)
    results = []
    for number, item in enumerate(args.runs.split(",")):
        # METHOD[:PRESET[:field=value;field=value]]: the overrides go to `train --set`.
        method, preset, overrides = (item.split(":", 2) + ["", ""])[:3]
        preset = preset or "default"
        overrides = [assignment for assignment in overrides.split(";") if assignment]
        run_dir = args.work / f"{number}-{method}-{preset}"
        command = [sys.executable, "pipeline.py", "train", "--features", str(cache), "--dataset", "mtl-aqa",
                   "--data-root", str(args.mtl_aqa_root), "--method", method, "--preset", preset, "--ratio",
                   f"{args.ratio:g}", "--seed", "0", "--run-dir", str(run_dir), "--threads", str(args.threads),
                   "--overwrite", "--no-progress"]
        for assignment in overrides:
            command += ["--set", assignment]
        scale = 1
        if preset == "paper" and args.paper_scale > 1:
            from train.config import preset_config

            scale = args.paper_scale
            config = preset_config("paper", method)
            for name, value in (("optim.epochs", config.optim.epochs), ("semi.semi_epochs", config.semi.semi_epochs),
                                ("reference.epochs", config.reference.epochs)):
                command += ["--set", f"{name}={max(1, value // scale)}"]
        began = time.perf_counter()
        subprocess.run(command, cwd=REPO_ROOT, check=True)
        wall = time.perf_counter() - began
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = {"method": method, "preset": preset, "overrides": overrides, "ratio": args.ratio, "threads": args.threads,
                  "process_seconds": round(wall, 1), "training_seconds": metrics["wall_seconds"],
                  "epochs": metrics["epochs"], "epoch_scale": scale, "spearman": metrics["spearman"],
                  "n_labelled": metrics["n_labelled"], "n_unlabelled": metrics["n_unlabelled"]}
        if scale > 1:
            # Every phase's epochs were divided by `scale`; start-up (data loading) is not.
            startup = wall - metrics["wall_seconds"]
            record["full_schedule_seconds_estimate"] = round(startup + metrics["wall_seconds"] * scale, 1)
        results.append(record)
        print(json.dumps(record), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The learning curve of the synthetic dives: Spearman's rho against the labelled share.

Renders the synthetic diving dataset for each generator seed (``--synth-seeds``), extracts its
features with the real Kinetics I3D exactly as ``make demo`` does (``--resize SIZE --crop SIZE
--views flip``), runs ``pipeline.py sweep`` with the fully supervised methods only (default:
``supervised`` and ``ridge``, default preset) at every labelled share of ``--ratios`` and every
training seed of ``--seeds``, and prints rho mean ± std over all (generator seed, training seed)
pairs, next to the published frozen-feature I3D + MLP curve on MTL-AQA (SAP-Net's table). This is
how the generator's difficulty was calibrated (README, "The embedded default: synthetic dives").

With ``--validation-fraction F`` every run also holds out F of the train split as a labelled
validation set and the table shows validation rho too: calibrate on that (and on generator seeds
you will not report), then report the test curve on fresh seeds. Nothing here is chosen on any
split: the table only reports.

Renders and caches are reused: a dataset that differs from an earlier one only in how it is
scored (``--judge-noise``, ``--panel-bias``, ``--unseen-weight``; the pictures are the same for
a seed) links the earlier one's frames and feature cache instead of rendering and extracting
again. Usage::

    .venv/bin/python bench/synth_learning_curve.py                       # the demo's dataset, seed 0
    .venv/bin/python bench/synth_learning_curve.py --synth-seeds 100,101 --validation-fraction 0.25
    .venv/bin/python bench/synth_learning_curve.py --cue-strength 1 --venue-variety 0 --shot-variety 0 \\
        --unseen-weight 0                                                 # the old, too easy generator

Everything goes under ``--work`` (default ``bench/results/synth-curve``); the table is also
written as ``curve-<name>.json`` and ``curve-<name>.md`` there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aqa.config import to_dict, write_json  # noqa: E402
from synth import CONFIG_FILE, SynthConfig, generate_dataset  # noqa: E402

# I3D + MLP on frozen features, MTL-AQA, as tabulated by SAP-Net (labelled share -> test rho).
MTL_AQA_REFERENCE = {0.1: 0.618, 0.2: 0.643, 0.3: 0.681, 0.4: 0.703}
# SynthConfig fields that change scores only: the same seed draws the same pictures whatever they are.
SCORE_ONLY_FIELDS = ("judge_noise", "panel_bias", "unseen_weight")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part.strip()[1:]:
            first, last = part.split("-", 1)
            seeds.extend(range(int(first), int(last) + 1))
        elif part.strip():
            seeds.append(int(part))
    return seeds


def short_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def picture_key(config: SynthConfig) -> str:
    fields = {name: value for name, value in to_dict(config).items() if name not in SCORE_ONLY_FIELDS}
    return short_hash(fields)


def prepare(config: SynthConfig, work: Path, size: int, workers: int, log) -> tuple[Path, Path]:
    """The dataset folder and feature cache of ``config`` (rendered and extracted if needed)."""
    name = f"synth-{short_hash(to_dict(config))}"
    data_root = work / "data" / name
    pictures = work / "pictures" / picture_key(config)
    cache = pictures / "features.h5"
    pictures.mkdir(parents=True, exist_ok=True)
    frames = pictures / "frames"
    if not (data_root / CONFIG_FILE).is_file():
        data_root.mkdir(parents=True, exist_ok=True)
        if frames.is_dir():  # same pictures, other scores: link them instead of drawing them again
            write_json(data_root / CONFIG_FILE, to_dict(config))
            (data_root / "frames").symlink_to(frames.resolve(), target_is_directory=True)
    started = time.perf_counter()
    result = generate_dataset(data_root, config, workers=workers, progress=False)
    if result.rendered:
        log(f"{data_root.name}: rendered {result.rendered} dives in {time.perf_counter() - started:.0f} s")
    if not frames.exists():
        os.replace(data_root / "frames", frames)
        (data_root / "frames").symlink_to(frames.resolve(), target_is_directory=True)
    if cache.is_file():  # written whole at the end of an extraction: these pictures' features
        return data_root, cache
    started = time.perf_counter()
    command = [sys.executable, str(REPO / "pipeline.py"), "extract", "--dataset", "mtl-aqa", "--data-root",
               str(data_root), "--out", str(cache), "--resize", str(size), "--crop", str(size), "--views", "flip",
               "--workers", str(workers), "--no-progress"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if seconds > 20:
        log(f"{data_root.name}: extracted in {seconds:.0f} s")
    return data_root, cache


def sweep(data_root: Path, cache: Path, runs: Path, args) -> None:
    command = [sys.executable, str(REPO / "pipeline.py"), "sweep", "--features", str(cache), "--dataset", "mtl-aqa",
               "--data-root", str(data_root), "--ratios", args.ratios, "--seeds", args.seeds, "--methods",
               args.methods, "--out", str(runs), "--jobs", str(args.jobs)]
    if args.validation_fraction:
        command += ["--validation-fraction", str(args.validation_fraction)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def collect(runs: Path) -> dict[tuple[str, float], dict[str, list[float]]]:
    """(method, ratio) -> {"test": [...], "validation": [...]} from every run's metrics.json."""
    table: dict[tuple[str, float], dict[str, list[float]]] = {}
    for metrics_path in sorted(runs.rglob("metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        config = json.loads((metrics_path.parent / "config.json").read_text())
        method = config.get("method") or metrics_path.parents[2].name
        ratio = float(config.get("ratio"))
        cell = table.setdefault((method, ratio), {"test": [], "validation": []})
        if metrics.get("spearman") is not None:
            cell["test"].append(float(metrics["spearman"]))
        if metrics.get("validation_spearman") is not None:
            cell["validation"].append(float(metrics["validation_spearman"]))
    return table


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    defaults = SynthConfig()
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "synth-curve")
    parser.add_argument("--synth-seeds", default="0", help="generator seeds, e.g. 0 or 100,101 or 0-2 [default: 0]")
    parser.add_argument("--seeds", default="0-4", help="training seeds of every run [default: 0-4]")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,1.0")
    parser.add_argument("--methods", default="supervised,ridge",
                        help="fully supervised methods only: this calibrates the data, not a method")
    parser.add_argument("--validation-fraction", type=float, default=0.0,
                        help="hold out this share of the train split; the table adds validation rho")
    parser.add_argument("--jobs", type=int, default=2, help="parallel training runs")
    parser.add_argument("--workers", type=int, default=2, help="rendering and decoding processes")
    parser.add_argument("--dives", type=int, default=defaults.num_dives)
    parser.add_argument("--frames", type=int, default=defaults.frames_per_dive)
    parser.add_argument("--size", type=int, default=defaults.width, help="frame width, height and extraction size")
    for field in ("judge_noise", "panel_bias", "unseen_weight", "cue_strength", "venue_variety", "shot_variety"):
        parser.add_argument("--" + field.replace("_", "-"), type=float, default=getattr(defaults, field),
                            help=f"SynthConfig.{field} [default: {getattr(defaults, field)}]")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    overrides = {field: getattr(args, field) for field in
                 ("judge_noise", "panel_bias", "unseen_weight", "cue_strength", "venue_variety", "shot_variety")}
    synth_seeds = parse_seeds(args.synth_seeds)
    configs = [dataclasses.replace(defaults, seed=seed, num_dives=args.dives, frames_per_dive=args.frames,
                                   width=args.size, height=args.size, **overrides) for seed in synth_seeds]
    run_roots = []
    for config in configs:
        data_root, cache = prepare(config, args.work, args.size, args.workers, log)
        runs = args.work / "runs" / data_root.name
        started = time.perf_counter()
        sweep(data_root, cache, runs, args)
        log(f"{data_root.name} (seed {config.seed}): sweep in {time.perf_counter() - started:.0f} s")
        run_roots.append(runs)

    merged: dict[tuple[str, float], dict[str, list[float]]] = {}
    for runs in run_roots:
        for key, cell in collect(runs).items():
            target = merged.setdefault(key, {"test": [], "validation": []})
            for split in cell:
                target[split].extend(cell[split])

    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    ratios = sorted({ratio for _, ratio in merged})
    splits = ["validation", "test"] if args.validation_fraction else ["test"]
    header = "| method | split | " + " | ".join(f"{ratio:.0%}" for ratio in ratios) + " |"
    lines = [header, "|" + "---|" * (len(ratios) + 2)]
    for method in methods:
        for split in splits:
            cells = [mean_std(merged.get((method, ratio), {}).get(split, [])) for ratio in ratios]
            lines.append(f"| `{method}` | {split} | " + " | ".join(cells) + " |")
    reference = [f"{MTL_AQA_REFERENCE[ratio]:.3f}" if ratio in MTL_AQA_REFERENCE else "–" for ratio in ratios]
    lines.append("| MTL-AQA, I3D + MLP (SAP-Net) | test | " + " | ".join(reference) + " |")
    count = max((len(cell["test"]) for cell in merged.values()), default=0)
    caption = (f"rho mean ± std over {count} runs per cell (generator seeds {args.synth_seeds}, training seeds "
               f"{args.seeds}); {args.dives} dives at {args.size} px, " +
               ", ".join(f"{name}={value:g}" for name, value in overrides.items()))
    table = "\n".join(lines)
    print(caption)
    print(table)
    name = short_hash({"configs": [to_dict(config) for config in configs], "seeds": args.seeds,
                       "ratios": args.ratios, "methods": args.methods, "validation": args.validation_fraction})
    (args.work / f"curve-{name}.md").write_text(caption + "\n\n" + table + "\n")
    write_json(args.work / f"curve-{name}.json", {
        "caption": caption,
        "synth_configs": [to_dict(config) for config in configs],
        "cells": {f"{method}@{ratio}": cell for (method, ratio), cell in sorted(merged.items())},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

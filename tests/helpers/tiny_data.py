"""Tiny generated datasets for stage 2 (and bench) tests: a feature cache whose scores are a known
function of the features, and a CSV manifest with the labels and the split (on ``sys.path``
through setup.cfg's ``[tool:pytest] pythonpath``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from aqa.cache import VideoEntry, write_cache

NUM_VIDEOS = 40
NUM_TEST = 12
CLIPS = 4
VIEWS = 2
DIM = 16

# Small, fast hyper-parameters for every neural method (a few seconds per run on 2 cores).
FAST = [
    "optim.epochs=12", "semi.semi_epochs=3", "reference.epochs=4", "head.dim=16", "head.token_hidden=8",
    "head.channel_hidden=16", "reference.dim=16", "reference.heads=2", "reference.exemplars=6",
    "semi.mc_samples=2", "optim.lr=3e-3",
]


def set_flags(assignments: list[str]) -> list[str]:
    flags = []
    for assignment in assignments:
        flags += ["--set", assignment]
    return flags


def make_features(num_videos: int = NUM_VIDEOS, seed: int = 0, clips=CLIPS, views=VIEWS, dim=DIM):
    """{key: [views, clips, dim]} and the quality that determines each score."""
    generator = np.random.default_rng(seed)
    direction = generator.normal(size=dim)
    direction /= np.linalg.norm(direction)
    quality = generator.uniform(0, 1, num_videos)
    features, keys = {}, [f"v{index:03d}" for index in range(num_videos)]
    for key, value in zip(keys, quality):
        count = clips if not callable(clips) else clips(key)
        base = generator.normal(size=(count, dim)) * 0.5 + 3.0 * value * direction
        view_list = [base]
        for _ in range(views - 1):
            view_list.append(base[::-1] + generator.normal(size=base.shape) * 0.05)
        features[key] = np.stack(view_list).astype(np.float32)
    return keys, features, quality


def write_dataset(folder: Path, *, num_videos: int = NUM_VIDEOS, seed: int = 0, with_difficulty: bool = False,
                  extra_column: bool = True, clips=CLIPS, views=VIEWS):
    """Write cache.h5 and manifest.csv under ``folder``; returns (cache, manifest, keys, scores)."""
    keys, features, quality = make_features(num_videos, seed, clips=clips, views=views)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "cache.h5"
    config = {"backbone": "imported", "views": ["original"] + [f"view{i}" for i in range(1, views)], "dataset": "tiny"}
    write_cache(cache, config, {"made_by": "tests"}, [VideoEntry(key, features[key]) for key in keys])
    scores = np.round(50 + 40 * quality, 2)
    difficulty = np.round(1.5 + np.arange(num_videos) % 3 * 0.5, 1)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["key", "path", "score", "split"] + (["difficulty"] if with_difficulty else []) + (
            ["execution"] if extra_column else [])
        writer.writerow(header)
        for index, key in enumerate(keys):
            split = "test" if index >= num_videos - NUM_TEST else "train"
            score = scores[index] * (difficulty[index] if with_difficulty else 1.0)
            row = [key, f"videos/{key}.mp4", f"{score:.4f}", split]
            if with_difficulty:
                row.append(f"{difficulty[index]}")
            if extra_column:
                row.append(f"{scores[index] / 2:.3f}")
            writer.writerow(row)
    return cache, manifest, keys, scores

"""Evaluation's measures over classes and seeds, on top of the shared ones in :mod:`aqa.metrics`.

``spearman``, ``rl2`` and ``mse`` (and their conventions: undefined ρ is ``None``, never 0; no
overflow into infinity) are :mod:`aqa.metrics`, shared with training. This module adds what only
evaluation computes:

- ``fisher_z_average``: the AQA-7 convention for several action classes: average the classes'
  ρ through Fisher's z (``tanh(mean(arctanh ρ))``), unweighted, classes with undefined ρ left out.
  :func:`score_metrics` averages only classes with at least ``MIN_CLASS_SIZE`` (10) test samples:
  the ρ of a tiny class is noise (two samples always give ±1), and a ``group`` column holding,
  say, MTL-AQA dive numbers would otherwise give a meaningless average near 1. Every class's ρ
  is still reported.
- ``bootstrap_mean_ci`` and ``std_over_seeds``: the spread of one cell's results over seeds.

Every function refuses NaN/inf and length mismatches with ``ValueError``: a number computed from
broken predictions would look like a result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from aqa.metrics import mse, paired_arrays, rl2, spearman

# |ρ| = 1 (always the case for a class with two samples) has an infinite Fisher z, which would
# make the average exactly ±1 whatever the other classes say. It is clipped to this magnitude
# first (arctanh ≈ 4.95, the z of ρ = 0.9999); the docs of fisher_z_average say so.
FISHER_Z_CLIP = 0.9999
# Classes with fewer test samples than this are listed but left out of the Fisher-z average.
MIN_CLASS_SIZE = 10


def fisher_z_average(rhos: Iterable[float | None]) -> float | None:
    """``tanh`` of the mean Fisher z (``arctanh``) of the defined correlations; ``None`` if none is.

    |ρ| is clipped to ``FISHER_Z_CLIP`` (0.9999) before ``arctanh`` so that a class whose ρ is
    exactly ±1 (a class with two samples always is) weighs like ρ = ±0.9999 instead of
    forcing the average to ±1.
    """
    defined = [float(rho) for rho in rhos if rho is not None and not math.isnan(float(rho))]
    if not defined:
        return None
    clipped = np.clip(np.asarray(defined), -FISHER_Z_CLIP, FISHER_Z_CLIP)
    return float(np.tanh(np.mean(np.arctanh(clipped))))


def per_class_spearman(
    true: Iterable[float], pred: Iterable[float], groups: Sequence[str | None]
) -> dict[str, dict[str, Any]]:
    """``{class: {"spearman": ρ or None, "n": samples}}`` over the samples that have a class.

    Samples whose class is empty or ``None`` belong to no class and are left out.
    """
    true_scores, predicted = paired_arrays(true, pred)
    if len(groups) != true_scores.size:
        raise ValueError(f"{len(groups)} class labels for {true_scores.size} scores")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        if group is None or str(group) == "":
            continue
        members.setdefault(str(group), []).append(index)
    return {
        group: {"spearman": spearman(true_scores[indices], predicted[indices]), "n": len(indices)}
        for group, indices in sorted(members.items())
    }


def score_metrics(
    true: Iterable[float],
    pred: Iterable[float],
    groups: Sequence[str | None] | None = None,
    label_range: float | None = None,
    min_class_size: int = MIN_CLASS_SIZE,
) -> dict[str, Any]:
    """All measures of one set of predictions, as the keys ``metrics.json`` uses.

    ``spearman``, ``rl2`` (× 100), ``mse``, ``n_test``; with classes also ``per_class``
    (see :func:`per_class_spearman`), ``spearman_fisher_z`` (the Fisher-z average of the classes
    with at least ``min_class_size`` samples and a defined ρ) and ``fisher_z_classes`` (how many
    classes that average covers).
    """
    true_scores, predicted = paired_arrays(true, pred)
    result: dict[str, Any] = {
        "spearman": spearman(true_scores, predicted),
        "rl2": rl2(true_scores, predicted, label_range),
        "mse": mse(true_scores, predicted),
        "n_test": int(true_scores.size),
    }
    if groups is not None and any(group not in (None, "") for group in groups):
        classes = per_class_spearman(true_scores, predicted, groups)
        result["per_class"] = classes
        averaged = [
            entry["spearman"]
            for entry in classes.values()
            if entry["n"] >= min_class_size and entry["spearman"] is not None
        ]
        result["spearman_fisher_z"] = fisher_z_average(averaged)
        result["fisher_z_classes"] = len(averaged)
    return result


def bootstrap_mean_ci(
    values: Iterable[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. one ρ per seed).

    ``None`` with fewer than two values: one seed says nothing about seed-to-seed spread.
    Seeded, so the same runs give the same interval.
    """
    sample = np.asarray(list(values), dtype=np.float64)
    if sample.size < 2:
        return None
    if not np.isfinite(sample).all():
        raise ValueError("values contain NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} is not between 0 and 1")
    generator = np.random.default_rng(seed)
    # Chunked so that many seeds × many resamples never needs one huge index array.
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // sample.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        indices = generator.integers(0, sample.size, size=(stop - start, sample.size))
        means[start:stop] = sample[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def std_over_seeds(values: Iterable[float]) -> float | None:
    """Sample standard deviation (ddof = 1); ``None`` with fewer than two values."""
    sample = np.asarray(list(values), dtype=np.float64)
    if sample.size < 2:
        return None
    return float(np.std(sample, ddof=1))

"""The field's measures of score prediction, computed one way for the whole project.

Conventions (shared by training's own ``metrics.json`` and by ``pipeline.py evaluate``):

- ``spearman``: Spearman's rank correlation (``scipy.stats.spearmanr``, average ranks for ties).
  It is *undefined* when either side is constant or there are fewer than two samples; these
  functions return ``None`` then (JSON ``null``), never 0, because a collapsed model is not a
  model with no rank information, it is a model with no ranking at all.
- ``rl2``: relative L2 distance × 100, ``100 * mean(((y - ŷ) / (max y - min y))²)`` with the range
  taken over the labels it is given (the test labels, unless ``label_range`` says otherwise).
  Undefined (``None``) when the labels are all equal.
- ``mse``: mean squared error in the score's own units.
- ``rl2`` and ``mse`` are computed with scaling, so that tiny or huge (finite) scores neither
  underflow nor overflow on the way; a result beyond the float range is ``None``, never ``inf``
  (``metrics.json`` is JSON, which has no infinity).
- ``fisher_z_average``: the AQA-7 convention for several action classes: average the classes'
  ρ through Fisher's z (``tanh(mean(arctanh ρ))``), unweighted, classes with undefined ρ left out.
  :func:`score_metrics` averages only classes with at least ``MIN_CLASS_SIZE`` (10) test samples:
  the ρ of a tiny class is noise (two samples always give ±1), and a ``group`` column holding,
  say, MTL-AQA dive numbers would otherwise give a meaningless average near 1. Every class's ρ
  is still reported.

Every function refuses NaN/inf and length mismatches with ``ValueError``: a number computed from
broken predictions would look like a result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

# |ρ| = 1 (always the case for a class with two samples) has an infinite Fisher z, which would
# make the average exactly ±1 whatever the other classes say. It is clipped to this magnitude
# first (arctanh ≈ 4.95, the z of ρ = 0.9999); the docs of fisher_z_average say so.
FISHER_Z_CLIP = 0.9999
# Classes with fewer test samples than this are listed but left out of the Fisher-z average.
MIN_CLASS_SIZE = 10


def _paired_arrays(true: Iterable[float], pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    true_scores = np.asarray(true, dtype=np.float64).reshape(-1)
    predicted = np.asarray(pred, dtype=np.float64).reshape(-1)
    if true_scores.shape != predicted.shape:
        raise ValueError(f"{true_scores.size} true scores but {predicted.size} predictions")
    if not (np.isfinite(true_scores).all() and np.isfinite(predicted).all()):
        raise ValueError("scores contain NaN or infinity")
    return true_scores, predicted


def spearman(true: Iterable[float], pred: Iterable[float]) -> float | None:
    """Spearman's ρ of predictions against true scores, or ``None`` where it is undefined."""
    true_scores, predicted = _paired_arrays(true, pred)
    # max == min rather than ptp == 0: max - min of huge finite scores overflows.
    if true_scores.size < 2 or true_scores.max() == true_scores.min() or predicted.max() == predicted.min():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; handled above
        rho = stats.spearmanr(true_scores, predicted).statistic
    rho = float(rho)
    return None if math.isnan(rho) else rho


def rl2(true: Iterable[float], pred: Iterable[float], label_range: float | None = None) -> float | None:
    """Relative L2 × 100; the range is ``max - min`` of ``true`` unless ``label_range`` is given."""
    true_scores, predicted = _paired_arrays(true, pred)
    if true_scores.size == 0:
        return None
    # Halves throughout: max - min of finite floats can overflow, max/2 - min/2 cannot.
    if label_range is None:
        half_range = float(np.max(true_scores) / 2.0 - np.min(true_scores) / 2.0)
    else:
        half_range = float(label_range) / 2.0
    if not half_range > 0:
        return None
    return _scaled_mean_square(true_scores, predicted, 100.0, half_range)


def mse(true: Iterable[float], pred: Iterable[float]) -> float | None:
    """Mean squared error; ``None`` for no samples (or a value beyond the float range)."""
    true_scores, predicted = _paired_arrays(true, pred)
    if true_scores.size == 0:
        return None
    return _scaled_mean_square(true_scores, predicted, 1.0, 0.5)


def _scaled_mean_square(true_scores: np.ndarray, predicted: np.ndarray, factor: float, half_unit: float) -> float | None:
    """``factor * mean(((true - pred) / (2 * half_unit))²)`` without intermediate overflow or
    underflow: the (halved) errors are divided by their largest magnitude, and the scale is
    applied once at the end. ``None`` if the result itself is beyond the float range."""
    half_errors = true_scores / 2.0 - predicted / 2.0  # cannot overflow, unlike true - pred
    largest = float(np.max(np.abs(half_errors)))
    if largest == 0.0:
        return 0.0
    mean_square = float(np.mean((half_errors / largest) ** 2))  # in [1/n, 1]
    with np.errstate(over="ignore", under="ignore"):
        scale = np.float64(largest) / np.float64(half_unit)
        value = float(factor * mean_square * scale * scale)
    return value if math.isfinite(value) else None


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
    true_scores, predicted = _paired_arrays(true, pred)
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
    true_scores, predicted = _paired_arrays(true, pred)
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

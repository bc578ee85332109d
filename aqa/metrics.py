"""The field's measures of score prediction, computed one way for the whole project.

Training (its own ``metrics.json``, validation and pseudo-label diagnostics) and evaluation
(``pipeline.py evaluate``, which recomputes every run's measures from ``predictions.csv``) both
use these, so they live on the floor both stages stand on. Evaluation's summaries over classes
and seeds (Fisher-z averages, bootstrap intervals) are in :mod:`evaluate.metrics`.

Conventions:

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
- Unlabelled videos may have no true score (NaN): :func:`known_pairs` keeps the pairs whose truth
  is known (``spearman(*pairs)`` is ρ over them). Every other function refuses NaN/inf
  and length mismatches with ``ValueError``: a number computed from broken predictions would look
  like a result.

scipy is imported on the first ρ, not with this module: training imports this module, and
importing training (or a command line that never computes a correlation) should not pay for scipy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np


def paired_arrays(true: Iterable[float], pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """``true`` and ``pred`` as flat float64 arrays of one length, all finite, else ``ValueError``."""
    true_scores = np.asarray(true, dtype=np.float64).reshape(-1)
    predicted = np.asarray(pred, dtype=np.float64).reshape(-1)
    if true_scores.shape != predicted.shape:
        raise ValueError(f"{true_scores.size} true scores but {predicted.size} predictions")
    if not (np.isfinite(true_scores).all() and np.isfinite(predicted).all()):
        raise ValueError("scores contain NaN or infinity")
    return true_scores, predicted


def spearman(true: Iterable[float], pred: Iterable[float]) -> float | None:
    """Spearman's ρ of predictions against true scores, or ``None`` where it is undefined."""
    true_scores, predicted = paired_arrays(true, pred)
    # max == min rather than ptp == 0: max - min of huge finite scores overflows.
    if true_scores.size < 2 or true_scores.max() == true_scores.min() or predicted.max() == predicted.min():
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; handled above
        rho = stats.spearmanr(true_scores, predicted).statistic
    rho = float(rho)
    return None if math.isnan(rho) else rho


def known_pairs(true: Iterable[float], pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(true, pred)`` pairs whose true score is known (finite); ``None`` with fewer than two.

    ``None`` means "nothing to measure" (e.g. a run with every training video labelled has no
    unlabelled videos), which callers keep apart from an undefined ρ over known pairs: the first
    leaves a measure out of ``metrics.json``, the second writes it as ``null``.
    """
    true_scores = np.asarray(true, dtype=np.float64).reshape(-1)
    predicted = np.asarray(pred, dtype=np.float64).reshape(-1)
    if true_scores.shape != predicted.shape:
        raise ValueError(f"{true_scores.size} true scores but {predicted.size} predictions")
    known = np.isfinite(true_scores)
    if known.sum() < 2:
        return None
    return true_scores[known], predicted[known]


def rl2(true: Iterable[float], pred: Iterable[float], label_range: float | None = None) -> float | None:
    """Relative L2 × 100; the range is ``max - min`` of ``true`` unless ``label_range`` is given."""
    true_scores, predicted = paired_arrays(true, pred)
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
    true_scores, predicted = paired_arrays(true, pred)
    if true_scores.size == 0:
        return None
    return _scaled_mean_square(true_scores, predicted, 1.0, 0.5)


def measures(true: Iterable[float], pred: Iterable[float]) -> dict[str, float | None]:
    """``{"spearman", "rl2", "mse"}`` of one set of predictions (the keys ``metrics.json`` uses)."""
    true_scores, predicted = paired_arrays(true, pred)
    return {"spearman": spearman(true_scores, predicted), "rl2": rl2(true_scores, predicted),
            "mse": mse(true_scores, predicted)}


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

"""Evaluation's class and seed summaries against direct scipy / numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aqa.metrics import mse, spearman
from evaluate.metrics import (
    FISHER_Z_CLIP,
    MIN_CLASS_SIZE,
    bootstrap_mean_ci,
    fisher_z_average,
    per_class_spearman,
    score_metrics,
    std_over_seeds,
)


def generated_predictions(seed: int, size: int = 60):
    generator = np.random.default_rng(seed)
    true_scores = generator.uniform(20, 100, size)
    predicted = true_scores + generator.normal(0, 15, size)
    return true_scores, predicted


def test_constant_predictions_give_undefined_rho_not_zero():
    true_scores, _ = generated_predictions(3)
    constant = np.full_like(true_scores, 70.0)
    assert spearman(true_scores, constant) is None
    assert spearman(constant, true_scores) is None
    # The other measures stay defined for a collapsed model.
    assert mse(true_scores, constant) == pytest.approx(np.mean((true_scores - 70.0) ** 2))
    metrics = score_metrics(true_scores, constant)
    assert metrics["spearman"] is None and metrics["n_test"] == true_scores.size


def test_per_class_rho_and_fisher_z_average_with_a_one_sample_class():
    generator = np.random.default_rng(7)
    groups, true_parts, pred_parts = [], [], []
    for group, size, noise in (("diving", 30, 5.0), ("vault", 25, 20.0), ("skiing", 1, 1.0), ("trampoline", 18, 10.0)):
        true_scores = generator.uniform(30, 100, size)
        true_parts.append(true_scores)
        pred_parts.append(true_scores + generator.normal(0, noise, size))
        groups += [group] * size
    true_scores, predicted = np.concatenate(true_parts), np.concatenate(pred_parts)
    classes = per_class_spearman(true_scores, predicted, groups)
    assert classes["skiing"] == {"spearman": None, "n": 1}
    expected_rhos = []
    for group in ("diving", "vault", "trampoline"):
        mask = np.array(groups) == group
        expected = stats.spearmanr(true_scores[mask], predicted[mask])[0]
        assert classes[group]["spearman"] == pytest.approx(expected, abs=1e-12)
        assert classes[group]["n"] == mask.sum()
        expected_rhos.append(expected)
    expected_average = np.tanh(np.mean(np.arctanh(expected_rhos)))
    assert fisher_z_average(entry["spearman"] for entry in classes.values()) == pytest.approx(expected_average)
    metrics = score_metrics(true_scores, predicted, groups)
    assert metrics["spearman_fisher_z"] == pytest.approx(expected_average)
    assert metrics["per_class"]["skiing"]["spearman"] is None
    # The Fisher-z average is not the plain mean of the class correlations.
    assert not math.isclose(metrics["spearman_fisher_z"], float(np.mean(expected_rhos)), abs_tol=1e-6)


def test_fisher_z_edge_cases():
    assert fisher_z_average([None, None]) is None
    assert fisher_z_average([]) is None
    # A perfect class (two samples) is clipped, so it does not force the average to 1.
    expected = np.tanh((np.arctanh(FISHER_Z_CLIP) + np.arctanh(0.5)) / 2)
    assert fisher_z_average([1.0, 0.5]) == pytest.approx(expected)
    assert fisher_z_average([1.0, 0.5]) < 1.0


def test_samples_without_class_are_left_out_and_no_classes_means_no_per_class():
    true_scores, predicted = generated_predictions(4, size=10)
    groups = ["a"] * 5 + [""] * 3 + [None] * 2
    classes = per_class_spearman(true_scores, predicted, groups)
    assert list(classes) == ["a"] and classes["a"]["n"] == 5
    assert "per_class" not in score_metrics(true_scores, predicted, [""] * 10)
    assert "per_class" not in score_metrics(true_scores, predicted)


def test_bootstrap_interval_and_std_over_seeds():
    rhos = np.array([0.71, 0.74, 0.69, 0.78, 0.73])
    low, high = bootstrap_mean_ci(rhos, resamples=10_000, seed=0)
    # Direct computation of the same percentile bootstrap.
    generator = np.random.default_rng(123)
    means = rhos[generator.integers(0, rhos.size, size=(20_000, rhos.size))].mean(axis=1)
    direct_low, direct_high = np.percentile(means, [2.5, 97.5])
    assert low == pytest.approx(direct_low, abs=0.004) and high == pytest.approx(direct_high, abs=0.004)
    assert low < rhos.mean() < high
    assert bootstrap_mean_ci(rhos, seed=5) == bootstrap_mean_ci(rhos, seed=5)  # seeded
    assert bootstrap_mean_ci([0.7]) is None
    assert std_over_seeds(rhos) == pytest.approx(np.std(rhos, ddof=1))
    assert std_over_seeds([0.7]) is None


def test_fisher_z_average_leaves_out_small_classes_but_lists_them():
    generator = np.random.default_rng(11)
    sizes = {"armstand": 14, "twist": 12, "pike": 3, "tuck": 2}
    groups = [name for name, size in sizes.items() for _ in range(size)]
    true_scores = generator.uniform(30, 100, len(groups))
    predicted = true_scores + generator.normal(0, 12, len(groups))
    metrics = score_metrics(true_scores, predicted, groups)
    labels = np.array(groups)
    large = [
        stats.spearmanr(true_scores[labels == name], predicted[labels == name])[0] for name in ("armstand", "twist")
    ]
    assert MIN_CLASS_SIZE == 10 and metrics["fisher_z_classes"] == 2
    assert metrics["spearman_fisher_z"] == pytest.approx(np.tanh(np.mean(np.arctanh(large))))
    assert abs(metrics["per_class"]["tuck"]["spearman"]) == pytest.approx(1.0)  # listed, not averaged
    assert metrics["per_class"]["pike"]["n"] == 3
    everything = score_metrics(true_scores, predicted, groups, min_class_size=1)
    assert everything["fisher_z_classes"] == 4
    assert everything["spearman_fisher_z"] != pytest.approx(metrics["spearman_fisher_z"])

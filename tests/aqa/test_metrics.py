"""The measures shared by training and evaluation against direct scipy / numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aqa.metrics import known_pairs, measures, mse, rl2, spearman


def generated_predictions(seed: int, size: int = 60):
    generator = np.random.default_rng(seed)
    true_scores = generator.uniform(20, 100, size)
    predicted = true_scores + generator.normal(0, 15, size)
    return true_scores, predicted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_rl2_mse_match_direct_computation(seed):
    true_scores, predicted = generated_predictions(seed)
    assert spearman(true_scores, predicted) == pytest.approx(stats.spearmanr(true_scores, predicted)[0], abs=1e-12)
    label_range = true_scores.max() - true_scores.min()
    expected_rl2 = 100 * np.mean(((true_scores - predicted) / label_range) ** 2)
    assert rl2(true_scores, predicted) == pytest.approx(expected_rl2, rel=1e-12)
    assert rl2(true_scores, predicted, label_range=104.5) == pytest.approx(
        100 * np.mean(((true_scores - predicted) / 104.5) ** 2), rel=1e-12
    )
    assert mse(true_scores, predicted) == pytest.approx(np.mean((true_scores - predicted) ** 2), rel=1e-12)


def test_spearman_with_ties_uses_average_ranks():
    true_scores = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 8.0])
    predicted = np.array([1.5, 1.5, 2.0, 4.0, 4.0, 6.0, 3.0, 9.0])
    expected = np.corrcoef(stats.rankdata(true_scores), stats.rankdata(predicted))[0, 1]
    assert spearman(true_scores, predicted) == pytest.approx(expected, abs=1e-12)
    assert spearman(true_scores, predicted) == pytest.approx(stats.spearmanr(true_scores, predicted)[0], abs=1e-12)


def test_degenerate_inputs():
    assert spearman([1.0], [2.0]) is None
    assert spearman([], []) is None
    assert spearman([1.0, 2.0], [5.0, 3.0]) == pytest.approx(-1.0)
    assert rl2([3.0, 3.0], [1.0, 2.0]) is None  # no label range
    assert mse([], []) is None
    with pytest.raises(ValueError, match="NaN"):
        spearman([1.0, 2.0, 3.0], [1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="3 true scores but 2"):
        mse([1.0, 2.0, 3.0], [1.0, 2.0])


def test_known_pairs_leave_out_unknown_truths_and_say_when_nothing_is_measurable():
    true_scores = np.array([1.0, np.nan, 3.0, 2.0, np.nan])
    predicted = np.array([1.5, 9.0, 2.5, 2.0, 4.0])
    kept_true, kept_pred = known_pairs(true_scores, predicted)
    assert kept_true.tolist() == [1.0, 3.0, 2.0] and kept_pred.tolist() == [1.5, 2.5, 2.0]
    assert spearman(kept_true, kept_pred) == pytest.approx(stats.spearmanr([1, 3, 2], [1.5, 2.5, 2.0])[0])
    assert known_pairs([np.nan, 2.0], [1.0, 2.0]) is None
    assert known_pairs([], []) is None
    # Known pairs with constant predictions are measurable, and their ρ is undefined (None).
    assert spearman(*known_pairs([1.0, 2.0, np.nan], [3.0, 3.0, 1.0])) is None
    with pytest.raises(ValueError, match="3 true scores but 2"):
        known_pairs([1.0, 2.0, 3.0], [1.0, 2.0])


def test_measures_are_the_keys_metrics_json_uses():
    true_scores, predicted = generated_predictions(5)
    assert measures(true_scores, predicted) == {
        "spearman": spearman(true_scores, predicted), "rl2": rl2(true_scores, predicted),
        "mse": mse(true_scores, predicted)}


def test_importing_the_measures_does_not_import_scipy():
    import subprocess
    import sys

    code = "import sys, aqa.metrics; print('scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

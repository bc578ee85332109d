"""bench/probe_predictors.py, behind the README's confidence and test-time-mixture rows: the
fifths ratio of issue 11's confidence target, the mixtures scored from one run's predictions, and
records of an older code version labelled as such."""

from __future__ import annotations

import numpy as np
import pytest

from bench import probe_predictors, tune_fisv


def test_the_fifths_ratio_is_the_most_confident_fifth_s_error_over_the_least_confident_one_s():
    error = np.arange(1.0, 11.0)  # ten videos: two per fifth
    confidence = -error  # the most confident have the smallest errors
    assert probe_predictors._fifths_ratio(confidence, error) == pytest.approx((1 + 2) / (9 + 10))
    assert probe_predictors._fifths_ratio(error, error) == pytest.approx((9 + 10) / (1 + 2))
    # ties keep the given order (a stable sort), so the ratio does not depend on the machine
    assert probe_predictors._fifths_ratio(np.zeros(10), error) == pytest.approx((1 + 2) / (9 + 10))


def test_the_mixtures_are_scored_against_the_truth_from_one_run_s_predictions():
    truth = [1.0, 2.0, 3.0, 4.0, 5.0]
    predictors = {"student": [1.0, 2.0, 3.0, 5.0, 4.0], "reference": [5.0, 4.0, 3.0, 2.0, 1.0],
                  "teacher": [1.0, 2.0, 3.0, 4.0, 5.0]}
    record = {"truth": truth, "predictors": predictors}
    scores = probe_predictors.mixtures(record)
    assert scores["teacher"] == pytest.approx(1.0) and scores["reference"] == pytest.approx(-1.0)
    assert scores["student"] == pytest.approx(0.9)
    # half student, half reference: [3, 3, 3, 3.5, 2.5]
    assert scores["student+reference 0.5"] == pytest.approx(probe_predictors.spearman(truth, [3, 3, 3, 3.5, 2.5]))
    assert set(scores) == {"student", "reference", "teacher", "student+reference 0.25", "student+reference 0.5",
                           "student+reference 0.75", "thirds"}


def test_a_record_of_an_older_code_version_is_labelled_with_it():
    current = tune_fisv.code_version("trs")
    assert probe_predictors.label({"variant": "trs", "code_version": current}) == "trs"
    assert probe_predictors.label({"variant": "trs", "code_version": current - 3}) == f"trs@v{current - 3}"

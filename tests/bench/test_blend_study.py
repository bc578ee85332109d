"""bench/blend_study.py (research log, session 22): its `trs` runs are version 9's prediction
whatever today's default, version 10 is scored after the fact as the ridge's half where it taught,
and the decision table applies both rules written before their seeds."""

from __future__ import annotations

import numpy as np
import pytest

from aqa.metrics import spearman
from bench import blend_study as study


def test_the_trs_runs_are_version_9s_prediction_and_the_check_runs_todays():
    version_9 = study.config_of("trs", "fis-v", "TES", 0.1, 3)
    today = study.config_of("trs-v10", "fis-v", "TES", 0.1, 3)
    assert version_9["semi"]["ridge_test_share"] == 0.0
    assert today["semi"]["ridge_test_share"] == 0.5  # version 10's default
    assert {key: value for key, value in version_9.items() if key != "semi"} == \
        {key: value for key, value in today.items() if key != "semi"}
    assert study.config_of("ridge", "dives", "final_score", 0.2, 3)["ridge"]["segments"] == 3
    assert study.config_of("supervised", "dives", "final_score", 0.2, 3)["validation_fraction"] == 0.25
    ids = {study.record_id(method, "fis-v", "TES", 0.1, 3) for method in study.STUDY_VARIANT}
    assert len(ids) == len(study.STUDY_VARIANT)
    assert study.record_id("trs", "fis-v", "TES", 0.1, 3) == study.record_id("trs", "fis-v", "TES", 0.1, 3, 9)


def test_a_blend_is_scored_on_the_runs_validation_videos_and_refuses_other_videos():
    truth = [1.0, 2.0, 3.0, 4.0, 5.0]
    trs = {"keys": list("abcde"), "truth": truth, "predicted": [1.0, 3.0, 2.0, 5.0, 4.0]}
    ridge = {"keys": list("abcde"), "truth": truth, "predicted": [5.0, 1.0, 4.0, 2.0, 3.0]}
    assert study.blend_spearman(trs, ridge, 0.0) == pytest.approx(spearman(np.array(truth), np.array(trs["predicted"])))
    expected = spearman(np.array(truth), 0.25 * np.array(trs["predicted"]) + 0.75 * np.array(ridge["predicted"]))
    assert study.blend_spearman(trs, ridge, 0.75) == pytest.approx(expected)
    with pytest.raises(AssertionError, match="different validation videos"):
        study.blend_spearman(trs, {**ridge, "keys": list("abcdf")}, 0.5)


def _records(dives_gain_by_ridge: bool, fisv_teacher: str, seeds=range(3)) -> dict:
    """Version-9, ridge and supervised runs on every cell: on the dives the ridge predicts the truth
    exactly and teaches (so version 10 gains), on Fis-V the teacher is ``fisv_teacher``."""
    rng = np.random.default_rng(0)
    results = {}
    for cell in study.CELLS:
        for seed in seeds:
            truth = rng.normal(size=12)
            noisy = truth + rng.normal(scale=1.5, size=12)
            ridge_values = truth if dives_gain_by_ridge and cell[0] == "dives" else -truth
            teacher = "ridge" if cell[0] == "dives" else fisv_teacher
            keys = [f"v{index}" for index in range(12)]
            for method, predicted in (("trs", noisy), ("ridge", ridge_values), ("supervised", noisy - 0.1)):
                record = {"keys": keys, "truth": truth.tolist(), "predicted": predicted.tolist(),
                          "validation_spearman": spearman(truth, predicted), "teacher": teacher}
                results[study.record_id(method, *cell, seed)] = record
    return results


def test_the_rule_table_scores_version_10_where_the_ridge_taught_and_applies_both_rules():
    table = study.rule_report(_records(dives_gain_by_ridge=True, fisv_teacher="ema"), list(range(3)))
    lines = table.splitlines()
    fisv = [line for line in lines if line.startswith("| fis-v")]
    assert len(fisv) == 4 and all("+0.000 ± 0.000 (0/3)" in line and "| 0/3 |" in line for line in fisv)
    assert all("| 3/3 |" in line for line in lines if line.startswith("| dives"))
    assert "do not adopt" not in lines[-2] and "ADOPT" in lines[-2]  # the dives gain is large
    assert lines[-1].startswith("second rule") and lines[-1].endswith("ADOPT")

    # a ridge that ranks the truth backwards costs the dives where it teaches: neither rule adopts
    table = study.rule_report(_records(dives_gain_by_ridge=False, fisv_teacher="ema"), list(range(3)))
    assert "do not adopt" in table.splitlines()[-2] and table.splitlines()[-1].endswith("do not adopt")
    # and where it taught on Fis-V too, Fis-V pays: the second rule's Fis-V bar fails
    table = study.rule_report(_records(dives_gain_by_ridge=True, fisv_teacher="ridge"), list(range(3)))
    assert table.splitlines()[-1].endswith("do not adopt")


def test_runs_from_before_the_teacher_was_recorded_are_left_out():
    results = _records(dives_gain_by_ridge=True, fisv_teacher="ema")
    for record in results.values():
        record.pop("teacher")
    table = study.rule_report(results, list(range(3)))
    assert all(line.endswith("| – | – | – | – | – | – |") for line in table.splitlines()[2:])

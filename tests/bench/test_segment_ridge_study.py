"""bench/segment_ridge_study.py (research log, session 19): its ridge variants spell out the segment
count, so they mean the same whatever ridge's default; the report pairs seeds and applies the rule
written before the runs."""

from __future__ import annotations

import pytest

from bench import segment_ridge_study as study


def test_the_ridge_variants_spell_out_their_segments_and_build_on_the_validation_protocol(tmp_path):
    one = study.config_of("ridge-1", "fis-v", "TES", 0.1, 3)
    three = study.config_of("ridge-3", "fis-v", "TES", 0.1, 3)
    assert (one["method"], one["ridge"]["segments"]) == ("ridge", 1)
    assert (three["method"], three["ridge"]["segments"]) == ("ridge", 3)
    assert one["validation_fraction"] == three["validation_fraction"] == 0.25
    assert {key: value for key, value in one.items() if key != "ridge"} == \
        {key: value for key, value in three.items() if key != "ridge"}
    # a record's identity: cell, seed and variant; the ridge ones do not move with ridge's version
    assert study.record_id("ridge-3", "fis-v", "TES", 0.1, 3) != study.record_id("ridge-1", "fis-v", "TES", 0.1, 3)
    assert study.record_id("ridge-3", "fis-v", "TES", 0.1, 3) != study.record_id("ridge-3", "fis-v", "TES", 0.1, 4)


def results_from(values: dict[tuple[str, tuple], list[float]]) -> dict:
    results = {}
    for (variant, cell), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            identity = study.record_id(variant, *cell, seed)
            results[identity] = {"id": identity, "variant": variant, "validation_spearman": value}
    return results


@pytest.mark.parametrize("gain, worst, adopted", [(0.05, 0.05, True), (0.05, -0.02, False), (0.005, 0.005, False)])
def test_the_report_applies_the_rule_to_paired_differences(gain, worst, adopted):
    values = {}
    for index, cell in enumerate(study.CELLS):
        base = [0.3 + 0.1 * seed for seed in range(3)]
        shift = worst if index == 0 else gain
        values[("ridge-1", cell)] = base
        values[("ridge-3", cell)] = [value + shift for value in base]
    text = study.report(results_from(values), [0, 1, 2])
    assert ("ADOPT ridge.segments=3" in text) == adopted
    assert f"{worst:+.3f} ± 0.000 ({3 if worst > 0 else 0}/3)" in text  # the first cell's paired row


def test_the_report_decides_nothing_while_a_cell_misses_seeds():
    values = {(variant, cell): [0.4, 0.5] for variant in ("ridge-1", "ridge-3") for cell in study.CELLS}
    values[("ridge-3", study.CELLS[-1])] = [0.6]  # one seed short
    assert "not decided (5 of 6 cells" in study.report(results_from(values), [0, 1])


def test_the_teacher_variants_spell_out_the_teacher_and_keep_their_identity(monkeypatch):
    ema, ridge = study.config_of("trs-ema", "dives", "final_score", 0.1, 3), study.config_of(
        "trs-ridge-teacher", "dives", "final_score", 0.1, 3)
    assert (ema["semi"]["teacher"], ridge["semi"]["teacher"]) == ("ema", "ridge")
    assert {key: value for key, value in ema.items() if key != "semi"} == \
        {key: value for key, value in ridge.items() if key != "semi"}
    pinned = study.record_id("trs-ema", "dives", "final_score", 0.1, 3)
    default = study.record_id("trs", "dives", "final_score", 0.1, 3)
    monkeypatch.setattr(study, "code_version", lambda method: 99)  # a later trs version
    assert study.record_id("trs-ema", "dives", "final_score", 0.1, 3) == pinned
    assert study.record_id("trs", "dives", "final_score", 0.1, 3) != default  # the default's runs go with it


@pytest.mark.parametrize("dives_gain, fisv_gain, adopted", [(0.05, 0.0, True), (0.02, 0.0, False),
                                                             (0.1, -0.02, False), (0.05, 0.01, True)])
def test_the_teacher_report_applies_its_rule(dives_gain, fisv_gain, adopted):
    values = {}
    for cell in study.CELLS:
        base = [0.3 + 0.1 * seed for seed in range(3)]
        shift = dives_gain if cell[0] == "dives" else fisv_gain
        values[("trs-ema", cell)] = base
        values[("trs-ridge-teacher", cell)] = [value + shift for value in base]
        values[("supervised", cell)] = [value - 0.01 for value in base]
    text = study.teacher_report(results_from(values), [0, 1, 2])
    assert ("ADOPT semi.teacher=ridge" in text) == adopted
    assert "do not adopt" in text or adopted

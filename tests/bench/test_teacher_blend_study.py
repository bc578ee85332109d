"""bench/teacher_blend_study.py (research log, session 24): the blend's runs and version 11's
differ only by the ridge's share of the teacher, the blend counts as version 11's own run where
the guard dropped the graph, and the registered rule pools the dives' and Fis-V's runs."""

from __future__ import annotations

from bench import teacher_blend_study as study


def test_the_variants_differ_only_by_the_share_and_have_their_own_identities():
    blend = study.config_of("trs-blend", "fis-v", "TES", 0.1, 3)
    plain = study.config_of("trs-v11", "fis-v", "TES", 0.1, 3)
    assert blend["semi"]["teacher_ridge_share"] == 0.5 and plain["semi"]["teacher_ridge_share"] == 0.0
    assert {key: value for key, value in blend["semi"].items() if key != "teacher_ridge_share"} == \
        {key: value for key, value in plain["semi"].items() if key != "teacher_ridge_share"}
    assert {key: value for key, value in blend.items() if key != "semi"} == \
        {key: value for key, value in plain.items() if key != "semi"}
    assert study.config_of("trs-blend", "dives", "final_score", 0.1, 3)["validation_fraction"] == 0.25
    ids = {study.record_id(variant, *cell, seed) for variant in study.VARIANTS for cell in study.CELLS
           for seed in (0, 1)}
    assert len(ids) == len(study.VARIANTS) * len(study.CELLS) * 2


def _results(dives_gain: float, fisv_gain: float, seeds=range(4)) -> dict:
    """Every cell: supervised 0.5, version 11 0.7. On the dives the guard dropped the graph in
    seeds 1-3 (signal -0.2: the blend cannot act) and kept it in seed 0, where the blend read
    0.7 + ``dives_gain``; on Fis-V it kept it everywhere and the blend read 0.7 + ``fisv_gain``."""
    results = {}
    for cell in study.CELLS:
        for seed in seeds:
            kept = cell[0] == "fis-v" or seed == 0
            results[study.record_id("supervised", *cell, seed)] = {"validation_spearman": 0.5}
            results[study.record_id("trs-v11", *cell, seed)] = {"validation_spearman": 0.7,
                                                                 "guard_signal": 0.02 if kept else -0.2}
            if kept:
                gain = fisv_gain if cell[0] == "fis-v" else dives_gain
                results[study.record_id("trs-blend", *cell, seed)] = {"validation_spearman": 0.7 + gain}
    return results


def test_the_blend_is_version_11s_run_where_the_guard_dropped_the_graph():
    assert study.blend_acts({"guard_signal": -0.1}) and study.blend_acts({"guard_signal": 0.3})
    assert not study.blend_acts({"guard_signal": -0.11})
    values = study.cell_values(_results(0.2, 0.0), study.CELLS[0], [0, 1, 2, 3])
    assert values["trs-blend"] == {0: 0.7 + 0.2, 1: 0.7, 2: 0.7, 3: 0.7}
    assert values["acted"] == {0: 1.0}
    # where the blend acted but its run is missing, the seed is left out rather than paired with itself
    results = _results(0.2, 0.0)
    del results[study.record_id("trs-blend", *study.CELLS[2], 1)]
    assert 1 not in study.cell_values(results, study.CELLS[2], [0, 1, 2, 3])["trs-blend"]
    assert study.rule_line(results, [0, 1, 2, 3]) == "rule: not every run is there yet"


def test_the_rule_pools_the_dives_and_fisv_runs():
    def decision(dives_gain, fisv_gain):
        return study.rule_line(_results(dives_gain, fisv_gain), [0, 1, 2, 3])

    # one dive run of four per cell gains 0.04: +0.01 over the dives' 8 runs
    assert decision(0.04, 0.0).endswith(": ADOPT")
    assert "the dives' 8 runs +0.0100" in decision(0.04, 0.0) and "Fis-V's 16 runs +0.0000" in decision(0.04, 0.0)
    assert decision(0.016, 0.0).endswith("do not adopt")  # +0.004: not above +0.005
    assert decision(0.04, -0.002).endswith(": ADOPT")  # Fis-V -0.002: within -0.003
    assert decision(0.04, -0.004).endswith("do not adopt")
    assert decision(-0.2, 0.0).endswith("do not adopt")  # a dives cell -0.05
    table = study.report(_results(0.04, 0.0), [0, 1, 2, 3])
    assert "| dives final_score 10% | 0.500 | 0.700 | 0.710 | +0.010 ± 0.020 (1/4) |" in table
    assert "| 1/4 |" in table and "| 4/4 |" in table

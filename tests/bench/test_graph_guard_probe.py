"""bench/graph_guard_probe.py (research log, session 19): the report counts kept graphs as zero and
applies the rule written before the runs (the guard itself: tests/train/test_graph_guard.py)."""

from __future__ import annotations

import pytest

from bench import graph_guard_probe as probe
from bench import segment_ridge_study as study


def records(signal_by_cell: dict, dropped_gain: float) -> tuple[dict, dict]:
    signals, results = {}, {}
    for cell in study.CELLS:
        for seed in (0, 1):
            signals[(*cell, seed)] = {"signal": signal_by_cell[cell[0]]}
            for variant, value in (("trs", 0.5), ("trs-no-graph", 0.5 + dropped_gain)):
                results[study.record_id(variant, *cell, seed)] = {"validation_spearman": value}
    return signals, results


@pytest.mark.parametrize("signal_by_cell, gain, build", [
    ({"dives": -0.2, "fis-v": 0.05}, 0.1, True),    # dropped on the dives only, and that helps
    ({"dives": -0.2, "fis-v": 0.05}, -0.1, False),  # dropping hurts the dives
    ({"dives": -0.2, "fis-v": -0.2}, 0.1, True),    # dropped everywhere, and it helps everywhere
    ({"dives": -0.2, "fis-v": -0.2}, -0.02, False),  # dropped on Fis-V at a cost
])
def test_the_report_applies_the_rule(signal_by_cell, gain, build):
    signals, results = records(signal_by_cell, gain)
    text = probe.report(signals, results, [0, 1])
    assert ("BUILD it into the gate" in text) == build
    kept_everywhere = probe.report({key: {"signal": 0.0} for key in signals}, {}, [0, 1])
    assert kept_everywhere.count("+0.0000 ± 0.0000") == len(study.CELLS)  # nothing trained, nothing changed


def test_a_dropped_split_without_its_runs_leaves_the_cell_incomplete():
    signals, results = records({"dives": -0.2, "fis-v": 0.05}, 0.1)
    del results[study.record_id("trs-no-graph", *study.CELLS[0], 1)]
    text = probe.report(signals, results, [0, 1])
    assert "incomplete (1 missing)" in text and "rule:" not in text


def test_the_test_protocol_runs_are_the_fisv_tables_trs_runs():
    configs = probe.test_protocol_configs(0, [0, 1])  # the official split only: no manifest written
    assert [name for name, _ in configs][:3] == ["official TES 0.1 s0", "official TES 0.1 s1", "official TES 0.25 s0"]
    assert len(configs) == 2 * 2 * 2
    for _, config in configs:
        assert config["method"] == "trs" and config["dataset"] == "fis-v" and config["validation_fraction"] == 0
        assert config["semi"]["graph_guard"] is True  # today's trs


@pytest.mark.parametrize("dives_gain, adopted", [(0.05, True), (0.02, False)])
def test_the_teacher_pair_reports_the_auto_teachers_rule(dives_gain, adopted):
    signals, results = {}, {}
    for cell in study.CELLS:
        for seed in (0, 1):
            signals[(*cell, seed)] = {"signal": -0.2 if cell[0] == "dives" else 0.05}
            for variant, value in (("trs-ema", 0.5), ("trs-ridge-teacher", 0.5 + dives_gain)):
                results[study.record_id(variant, *cell, seed)] = {"validation_spearman": value}
    text = probe.report(signals, results, [0, 1], "teacher")
    assert ("ADOPT semi.teacher=auto" in text) == adopted and "BUILD" not in text

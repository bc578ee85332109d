"""Measures never overflow into Infinity/NaN (metrics.json stays JSON, with null where a value is
beyond the float range), and a symbolic-link cycle under an evaluated folder ends the walk."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from aqa.metrics import mse, rl2
from evaluate.metrics import score_metrics
from evaluate.runs import find_run_dirs
from pipeline import main

TRUE = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
PRED = np.array([1.5, 2.0, 2.0, 5.0, 5.5])


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("scale", [1e-312, 1e-200, 1e-20, 1.0, 1e20, 1e200, 1e300])
def test_relative_l2_is_the_same_at_any_scale_of_the_scores(scale):
    expected = 100.0 * np.mean(((TRUE - PRED) / np.ptp(TRUE)) ** 2)
    assert rl2(TRUE * scale, PRED * scale) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("true, pred, expected_rl2, expected_mse", [
    ([1e308, -1e308, 0.0], [-1e308, 1e308, 0.0], 100.0 * 2 / 3, None),  # max - min overflows
    ([0.0, 1e-310], [1e300, 0.0], None, 5e599),  # beyond the float range
    ([1e-312, 2e-312], [1e-312, 2e-312], 0.0, 0.0),
    ([1.0, 1.0], [1.0, 2.0], None, 0.5),  # constant labels: rl2 undefined
])
def test_results_beyond_the_float_range_are_none_never_infinity(true, pred, expected_rl2, expected_mse):
    if expected_mse is not None and expected_mse > 1e308:
        expected_mse = None
    got_rl2, got_mse = rl2(true, pred), mse(true, pred)
    assert (got_rl2 is None) == (expected_rl2 is None)
    if expected_rl2 is not None:
        assert got_rl2 == pytest.approx(expected_rl2, rel=1e-9)
    assert (got_mse is None) == (expected_mse is None)
    if expected_mse is not None:
        assert got_mse == pytest.approx(expected_mse, rel=1e-9)
    json.dumps(score_metrics(true, pred), allow_nan=False)


def write_run(folder, true, pred, stored_extra: dict | None = None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dataset": "d", "target": "score", "method": "ridge",
                                                    "ratio": 0.5, "seed": 0}))
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "split", "true", "pred", "labelled", "group"])
        for index, (value, guess) in enumerate(zip(true, pred)):
            writer.writerow([f"k{index}", "test", repr(float(value)), repr(float(guess)), 0, ""])
    stored = {"dataset": "d", "target": "score", "method": "ridge", "ratio": 0.5, "seed": 0, **(stored_extra or {})}
    # What an older training wrote: json.dumps's default allow_nan writes Infinity and NaN.
    (folder / "metrics.json").write_text(json.dumps(stored))


@pytest.mark.parametrize("scale", [1e-312, 1e300])
def test_evaluating_runs_with_extreme_scores_writes_only_json(tmp_path, capsys, scale):
    runs = tmp_path / "runs"
    for seed in range(2):
        write_run(runs / f"s{seed}", TRUE * scale, (PRED + seed) * scale,
                  {"seed": seed, "rl2": float("inf"), "validation_mse": float("nan"), "best_on_test": {"rl2": float("inf")}})
    out = tmp_path / "summary"
    assert main(["evaluate", str(runs), "--out", str(out), "--plots", "none", "--bootstrap", "100"]) == 0
    for seed in range(2):
        metrics = strict_json(runs / f"s{seed}" / "metrics.json")
        assert metrics["validation_mse"] is None and metrics["rl2"] is not None
    strict_json(out / "summary.json")


def test_a_symlink_cycle_under_an_evaluated_folder_is_walked_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "a" / "s0", TRUE, PRED)
    write_run(runs / "b" / "s1", TRUE, PRED + 1)
    os.symlink(runs, runs / "a" / "up")  # a/up/a/up/... forever if followed blindly
    os.symlink(runs / "b", runs / "b-again")  # the same folder twice
    os.symlink(tmp_path / "loop2", tmp_path / "runs" / "loop1")  # a loop of links: no folder at all
    os.symlink(tmp_path / "runs" / "loop1", tmp_path / "loop2")
    assert find_run_dirs([runs]) == [runs / "a" / "s0", runs / "b" / "s1"]
    out = tmp_path / "summary"
    assert main(["evaluate", str(runs), "--out", str(out), "--plots", "none", "--bootstrap", "100"]) == 0
    assert "2 run(s) evaluated" in capsys.readouterr().out

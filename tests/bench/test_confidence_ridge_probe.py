"""bench/confidence_ridge_probe.py (research log, session 22): each candidate confidence is ranked
against the pseudo-labels' error per cell, and a confidence that cannot rank (the teacher was the
ridge: no disagreement) is left out rather than counted as zero."""

from __future__ import annotations

import numpy as np

from bench import confidence_ridge_probe as probe


def _record(target: str, ratio: float, seed: int, teacher_is_ridge: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=40)
    pseudo = truth + rng.normal(scale=0.5, size=40)
    ridge = truth + rng.normal(scale=0.5, size=40)
    teacher = ridge if teacher_is_ridge else pseudo  # the teacher's value, here the pseudo-label itself
    return {"target": target, "ratio": ratio, "seed": seed, "truth": truth.tolist(), "pseudo": pseudo.tolist(),
            "teacher_value": teacher.tolist(), "ridge": ridge.tolist(),
            "relative_confidence": (-np.abs(pseudo - truth)).tolist()}  # a perfect confidence


def test_a_perfect_confidence_ranks_the_error_and_the_oracle_row_is_computed():
    table = probe.report([_record("TES", 0.1, seed) for seed in range(3)])
    def row(name: str) -> str:
        return next(line for line in table.splitlines() if line.startswith(f"| {name} | "))

    perfect = row("the run's (fused, the loss weight)").split(" | ")[1]
    assert perfect.startswith("-1.000 (0.") and perfect.endswith("; 3 runs)")
    assert float(perfect.split("(")[1].split(";")[0]) < 0.2  # the most confident fifth errs far less
    assert "3 runs" in row("oracle: −|truth − mean|")
    assert row("−|teacher − ridge|").count("| – ") == 3  # the cells without runs


def test_a_confidence_without_spread_is_left_out():
    table = probe.report([_record("PCS", 0.25, 0, teacher_is_ridge=True), _record("PCS", 0.25, 1)])
    row = next(line for line in table.splitlines() if line.startswith("| −|teacher − ridge|"))
    assert "1 runs" in row  # the run the ridge taught has no disagreement to rank by

"""bench/graph_guard_probe.py (research log, session 19): its graph-regularised ridge is ridge at
strength 0 and smooths along the graph above it; the report counts kept graphs as zero and applies
the rule written before the runs."""

from __future__ import annotations

import numpy as np
import pytest

from bench import graph_guard_probe as probe
from bench import segment_ridge_study as study


def test_the_laplacian_is_symmetric_with_rows_summing_to_zero():
    features = np.random.default_rng(0).normal(size=(12, 5))
    laplacian = probe.knn_laplacian(features, 3)
    np.testing.assert_allclose(laplacian, laplacian.T)
    np.testing.assert_allclose(laplacian.sum(axis=1), 0.0, atol=1e-12)
    assert (np.diag(laplacian) >= 1.0).all()  # every node has at least its k neighbours, over k


def test_at_strength_zero_it_is_ridge_and_a_graph_pulls_neighbours_together():
    rng = np.random.default_rng(1)
    features, targets = rng.normal(size=(30, 8)), rng.normal(size=10)
    labelled, queries = features[:10], features[10:]
    mean = labelled.mean(axis=0)
    weights = np.linalg.solve((labelled - mean).T @ (labelled - mean) + probe.ALPHA * np.eye(8),
                              (labelled - mean).T @ (targets - targets.mean()))
    centred = features - mean
    gram = centred @ centred.T
    laplacian = probe.knn_laplacian(features, 3)
    dual = probe.laplacian_ridge(gram, 10, targets, 0.0, laplacian)
    np.testing.assert_allclose(gram[10:] @ dual, (queries - mean) @ weights, atol=1e-10)
    # along the graph the fitted values differ less with a penalty on their differences
    roughness = [float((gram @ probe.laplacian_ridge(gram, 10, targets, strength, laplacian)) @ laplacian
                       @ (gram @ probe.laplacian_ridge(gram, 10, targets, strength, laplacian)))
                 for strength in (0.0, 10.0)]
    assert roughness[1] < roughness[0]


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

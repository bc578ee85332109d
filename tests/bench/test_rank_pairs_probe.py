"""bench/rank_pairs_probe.py (research log, session 12): with the rank term's weight at 0 its
``trs`` is the product's ``trs`` exactly (the premise of its paired table), with weight 1 it
trains differently and counts the pairs it trusted; the report pairs variants per seed."""

from __future__ import annotations

import numpy as np

from bench import rank_pairs_probe
from train.methods import METHOD_CLASSES
from training import fit_on_one_thread


def fitted_with(monkeypatch, method_class, config):
    monkeypatch.setitem(METHOD_CLASSES, "trs", method_class)
    return fit_on_one_thread(config)


def probe_class(weight: float, unlabelled: str | None):
    cls = rank_pairs_probe.rank_method_class()
    cls.rank_weight, cls.rank_unlabelled = weight, unlabelled
    return cls


def test_weight_zero_is_the_product_trs_and_weight_one_trains_on_trusted_pairs(monkeypatch, tiny_config):
    config = tiny_config("trs")
    product = fitted_with(monkeypatch, METHOD_CLASSES["trs"], config)
    silent = fitted_with(monkeypatch, probe_class(0.0, None), config)
    np.testing.assert_array_equal(silent.predictions, product.predictions)
    ranked = fitted_with(monkeypatch, probe_class(1.0, "gaussian"), config)
    assert not np.array_equal(ranked.predictions, product.predictions)
    counts = ranked.method.rank_counts
    assert counts["pairs"] > 0 and 0 <= counts["trusted_correct"] <= counts["trusted"] <= counts["pairs"]


def record(seed: int, variant: str, spearman: float, trusted: int = 0, correct: int = 0) -> dict:
    return {"dataset": "demo", "target": "final_score", "ratio": 0.2, "seed": seed, "variant": variant,
            "validation_spearman": spearman, "rank_counts": {"trusted": trusted, "trusted_correct": correct}}


def test_the_report_pairs_each_variant_with_trs_on_the_same_seeds():
    records = [record(0, "trs", 0.70), record(0, "trs-rank", 0.72, 10, 6), record(1, "trs", 0.60),
               record(1, "trs-rank", 0.59, 10, 9), record(2, "trs-rank", 0.99, 5, 5)]  # seed 2: no trs partner
    rows = [line for line in rank_pairs_probe.report(records).splitlines() if "trs-rank" in line]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[2] == "+0.0050 ± 0.0150" and cells[3:5] == ["1/2", "2"]
    assert cells[5] == "20 (75%)"  # trusted pairs (correct) over the paired seeds only

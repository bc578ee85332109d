"""bench/masked_pretrain_probe.py (research log, session 14): its plain variant is the product's
``supervised``, its joint variant on the labelled videos is the product's
``optim.recovery_weight=1`` digit for digit (as the README says), pretraining changes the run,
and the report pairs each comparison per seed."""

from __future__ import annotations

import numpy as np

from bench import masked_pretrain_probe
from train.methods import METHOD_CLASSES
from training import fit_on_one_thread

PRETRAIN_STEPS = 20  # the probe's 600 steps, shortened for the test


def fitted(monkeypatch, variant: str | None, config):
    if variant is not None:
        monkeypatch.setitem(METHOD_CLASSES, "supervised",
                            masked_pretrain_probe.masked_method_class(*masked_pretrain_probe.VARIANTS[variant]))
    return fit_on_one_thread(config)


def test_the_probe_s_variants_are_the_product_s_runs_where_they_say_so(monkeypatch, tiny_config):
    monkeypatch.setattr(masked_pretrain_probe, "STEPS", PRETRAIN_STEPS)
    plain_config = tiny_config("supervised")
    joint_config = tiny_config("supervised", "optim.recovery_weight=1")
    product = fitted(monkeypatch, None, plain_config)
    product_joint = fitted(monkeypatch, None, joint_config)
    np.testing.assert_array_equal(fitted(monkeypatch, "supervised", plain_config).predictions, product.predictions)
    joint = fitted(monkeypatch, "supervised-aux-labelled", joint_config)
    np.testing.assert_array_equal(joint.predictions, product_joint.predictions)
    assert len(joint.method.pretraining_loss) == 2  # first and last epoch's recovery loss
    pretrained = fitted(monkeypatch, "supervised-mask", plain_config)
    assert not np.array_equal(pretrained.predictions, product.predictions)
    first, last = pretrained.method.pretraining_loss
    assert np.isfinite(first) and np.isfinite(last)


def record(seed: int, variant: str, spearman: float) -> dict:
    return {"dataset": "fis-v", "target": "TES", "ratio": 0.1, "seed": seed, "variant": variant,
            "validation_spearman": spearman}


def test_the_report_pairs_each_comparison_per_seed_and_averages_the_cells():
    records = [record(0, "supervised", 0.30), record(0, "supervised-mask", 0.35), record(1, "supervised", 0.20),
               record(1, "supervised-mask", 0.19), record(2, "supervised-mask", 0.90)]  # seed 2 unpaired
    lines = masked_pretrain_probe.report(records).splitlines()
    row = next(line for line in lines if "supervised-mask − supervised |" in line and line.startswith("| fis-v"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "+0.0200 ± 0.0300" and cells[3:6] == ["1/2", "2", "0.250"]
    assert any(line.startswith("| mean over 1 cells | supervised-mask − supervised | +0.0200") for line in lines)

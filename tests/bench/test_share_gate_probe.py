"""bench/share_gate_probe.py (research log, session 11): its "realised" blend at the default shares
is the run's own validation Spearman (the premise of its table), the out-of-fold blends come from
the gate's own fold jobs, and the rules read the records as the README describes."""

from __future__ import annotations

import pytest
import torch

from bench import share_gate_probe
from train.data import prepare_data
from train.tune import without_test
from training import fit_on_one_thread


@pytest.fixture(scope="module")
def graph_run(tiny_config):
    """A trs run whose pseudo-labels went through the graph (the gate off, so the graph is kept;
    one cross-fitting for the probe's own fold jobs, to keep the test short)."""
    config = tiny_config("trs", "semi.gate=false", "semi.gate_repeats=1", validation_fraction=0.25)
    data = without_test(prepare_data(config))
    return fit_on_one_thread(config, data), data


def test_the_realised_default_blend_is_the_run_s_own_prediction(graph_run):
    fitted, data = graph_run
    realised = share_gate_probe.realised(fitted.method, data)
    assert realised[share_gate_probe.DEFAULT] == pytest.approx(fitted.validation["spearman"], abs=1e-9)
    assert set(realised) == {name for grid in ("", "wide ") for name in
                             (f"{grid}r{r:g}/g{g:g}" for r in share_gate_probe.REFERENCE_SHARES
                              for g in share_gate_probe.SHARES)}


def test_the_out_of_fold_blends_follow_the_gate_s_folds(graph_run):
    fitted, data = graph_run
    threads = torch.get_num_threads()
    result = share_gate_probe.out_of_fold(fitted.method, data)
    assert torch.get_num_threads() == threads  # restored
    folds = min(fitted.config.semi.gate_folds, len(fitted.method.labelled) // 2)
    for name, values in result["fold_estimates"].items():
        assert len(values) == folds * fitted.config.semi.gate_repeats, name
        assert -1 <= result["estimates"][name] <= 1


def probe_record(realised: dict, estimates: dict, margin: float = 0.1) -> dict:
    names = [f"r{r:g}/g{g:g}" for r in share_gate_probe.REFERENCE_SHARES for g in share_gate_probe.SHARES]
    return {"target": "TES", "ratio": 0.1, "gate": "graph", "gate_default": "graph", "margin": margin,
            "realised": {**{name: 0.5 for name in names}, **{"wide " + name: 0.5 for name in names}, **realised},
            "out_of_fold": {"estimates": {**{name: 0.3 for name in names}, **estimates}}}


def test_the_margin_rule_keeps_the_default_unless_a_share_leads_out_of_fold_by_the_margin():
    close = probe_record({}, {"r0/g0.75": 0.35})
    assert share_gate_probe._margin_rule(close) == share_gate_probe.DEFAULT
    clear = probe_record({}, {"r0/g0.75": 0.45})
    assert share_gate_probe._margin_rule(clear) == "r0/g0.75"
    assert share_gate_probe.RULES["oof argmax, grid"](close) == "r0/g0.75"
    # the graph-share rule looks only at the reference share 0.5
    assert share_gate_probe.RULES["oof argmax, graph share"](clear) == share_gate_probe.DEFAULT
    oracle = probe_record({"r1/g0": 0.9}, {})
    assert share_gate_probe.RULES["oracle (best realised, grid)"](oracle) == "r1/g0"


def test_the_report_leaves_out_runs_whose_gate_dropped_the_graph():
    default = share_gate_probe.DEFAULT
    kept = [probe_record({default: 0.6 + 0.01 * seed}, {default: 0.3 + 0.02 * seed ** 2}) for seed in range(3)]
    dropped = {**probe_record({}, {}), "gate": "no graph"}
    lines = share_gate_probe.report(kept + [dropped]).splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"TES 0.1", "all"} and rows["TES 0.1"].split("|")[2].strip() == "3"

"""``semi.gate_ridge_check``: where the graph guard kept the graph, the gate also scores the ridge
teacher on its own folds and lets the ridge teach (without the graph) where it clearly beats the
option the gate chose (train.methods.gate.ridge_check)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from aqa.metrics import spearman
from train.config import apply_overrides, preset_config
from train.data import prepare_data
from train.methods import CheckpointMismatch, make_method
from train.methods import gate as gate_module
from train.methods.gate import (
    GateOption, chosen_option, describe_outcome, gate_verdict, plan_gate, ridge_check, run_gate,
)
from train.methods.pseudo_labels import BlendedTeacherSource, GraphRefiner, RidgeTeacherSource, TeacherSource
from training import fit_on_one_thread

pytestmark = pytest.mark.usefixtures("one_thread")

KEEPS_THE_GRAPH = "semi.graph_guard_margin=2"  # the guard never drops it: the check's case


def guard_signal(monkeypatch, signal: float) -> None:
    """The graph guard's real record, with its signal replaced (kept or dropped by the margin as
    the guard decides)."""
    import train.methods.graph_guard as guard_module

    real = guard_module.graph_guard

    def replaced(data, seed, repeats, margin):
        record = real(data, seed, repeats, margin)
        return {**record, "signal": signal, "drops_graph": bool(signal < -margin)}

    monkeypatch.setattr(guard_module, "graph_guard", replaced)


@pytest.fixture
def losing_graph(monkeypatch):
    """The check's case: the guard saw the graph lose out of fold, by less than its margin."""
    guard_signal(monkeypatch, -0.05)


def config_of(tiny_dataset, fast_flags, *overrides):
    config = dataclasses.replace(preset_config("default", "trs"), features=str(tiny_dataset["cache"]),
                                 dataset="manifest", manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    return apply_overrides(config, [*fast_flags[1::2], "semi.gate_ridge_check=true", *overrides])


def gated_method(config):
    """A trs method with its gate plan and a real gate outcome (no burn-in needed: the fold jobs
    train their own models)."""
    method = make_method(config, prepare_data(config))
    return method, plan_gate(method), run_gate(method)


def ridge_on_the_folds(method, plan) -> float:
    """The ``ridge`` method itself, fitted on each fold job's training folds, its held-out values
    pooled per cross-fitting as the gate pools its options', the repeats' Spearman averaged."""
    data, labelled = method.data, method.data.labelled
    truth = data.training_target(labelled)
    pooled: dict[int, np.ndarray] = {}
    for job in plan.jobs:
        fold_data = dataclasses.replace(data, labelled=labelled[job.train])
        ridge = make_method(dataclasses.replace(method.config, method="ridge"), fold_data)
        pooled.setdefault(job.repeat, np.zeros(len(labelled)))[job.held] = ridge.predict_scores(labelled[job.held])
    return float(np.mean([spearman(truth, values) for values in pooled.values()]))


def test_the_ridge_is_scored_on_the_gates_own_folds(tiny_dataset, fast_flags, losing_graph):
    method, plan, outcome = gated_method(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH))
    assert len(plan.jobs) > 1 and outcome["teacher"] == "ema"
    check = outcome["ridge_check"]
    assert check["estimate"] == pytest.approx(ridge_on_the_folds(method, plan), abs=1e-9)
    assert check["compared_with"] == outcome["chosen"]


def test_it_switches_only_where_the_ridge_leads_by_more_than_the_margin(tiny_dataset, fast_flags, losing_graph):
    method, plan, outcome = gated_method(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH))
    estimate, chosen = outcome["ridge_check"]["estimate"], outcome["chosen"]
    before = {key: value for key, value in outcome.items() if key != "ridge_check"}
    needed = outcome["margin"]  # semi.gate_ridge_margin: the gate's own margin by default (version 11)
    assert outcome["ridge_check"]["needed"] == pytest.approx(needed)
    z = math.atanh(estimate)
    for chosen_z, switches in [(z - needed - 0.02, True), (z - needed + 0.02, False), (z + 0.3, False)]:
        given = {**before, "estimates": {**before["estimates"], chosen: math.tanh(chosen_z)}}
        checked = ridge_check(method, plan, given)
        assert checked["ridge_check"]["switches"] is switches
        assert checked["ridge_check"]["lead"] == pytest.approx(z - chosen_z, abs=1e-9)
        if switches:  # the ridge teaches, the chosen sources without the graph
            assert checked["teacher"] == "ridge"
            assert chosen_option(checked) == GateOption(chosen_option(given).sources, 0.0)
            assert gate_verdict(checked) == "switched to the ridge teacher"
            assert "the ridge teaches" in describe_outcome(checked)
        else:  # nothing else changes
            assert {key: value for key, value in checked.items() if key != "ridge_check"} == given
            assert gate_verdict(checked) != "switched to the ridge teacher"


def test_an_undefined_estimate_never_wins(tiny_dataset, fast_flags, losing_graph, monkeypatch):
    method, plan, outcome = gated_method(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH))
    chosen = outcome["chosen"]
    undefined_chosen = ridge_check(method, plan, {**outcome, "estimates": {**outcome["estimates"], chosen: None}})
    assert undefined_chosen["ridge_check"]["switches"] and undefined_chosen["ridge_check"]["lead"] is None
    fit = RidgeTeacherSource.fit

    def constant(self, data, labelled, targets):  # a ridge that predicts one value: Spearman undefined
        features, weights, bias = fit(self, data, labelled, targets)
        return features, np.zeros_like(weights), 0.0

    monkeypatch.setattr(RidgeTeacherSource, "fit", constant)
    checked = ridge_check(method, plan, {**outcome, "estimates": {**outcome["estimates"], chosen: -0.99}})
    assert checked["ridge_check"]["estimate"] is None and not checked["ridge_check"]["switches"]
    assert checked["teacher"] == "ema"


def test_a_run_the_check_switches_goes_on_with_the_ridge_teacher_and_without_the_graph(
        tiny_dataset, fast_flags, monkeypatch, losing_graph):
    monkeypatch.setattr(gate_module, "gate_margin", lambda count, scale: -10.0)  # any defined lead switches
    run = fit_on_one_thread(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH))
    gate = run.diagnostics["gate"]
    assert not gate["graph_guard"]["drops_graph"] and gate["ridge_check"]["switches"]
    assert gate["teacher"] == "ridge" and gate["options"][gate["chosen"]]["graph_strength"] == 0
    assert isinstance(run.method.labelling.sources[0].source, RidgeTeacherSource)
    assert not any(isinstance(refiner, GraphRefiner) for refiner in run.method.labelling.refiners)
    summary = run.method.model_summary()
    assert summary["ridge_test_share"] == 0.5 and summary["gate_teacher"] == "ridge"
    assert summary["gate_verdict"] == "switched to the ridge teacher"


def test_where_it_does_not_switch_the_run_is_version_10s(tiny_dataset, fast_flags, losing_graph, monkeypatch):
    monkeypatch.setattr(gate_module, "gate_margin", lambda count, scale: 10.0)  # never switches
    checked = fit_on_one_thread(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH))
    plain = fit_on_one_thread(config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH, "semi.gate_ridge_check=false"))
    assert checked.diagnostics["gate"]["ridge_check"]["switches"] is False
    assert "ridge_check" not in plain.diagnostics["gate"]
    teacher = checked.method.labelling.sources[0].source  # the EMA teacher, blended (version 12)
    assert isinstance(teacher, BlendedTeacherSource) and isinstance(teacher.ema, TeacherSource)
    np.testing.assert_array_equal(checked.predictions, plain.predictions)


@pytest.mark.parametrize("signal, overrides", [
    (-0.05, ("semi.graph_guard_margin=0.01",)),  # the guard dropped the graph: the ridge teaches already
    (0.0, (KEEPS_THE_GRAPH,)), (0.05, (KEEPS_THE_GRAPH,)),  # the graph did not lose out of fold
    (-0.05, ("semi.teacher=ema", KEEPS_THE_GRAPH)), (-0.05, ("semi.teacher=ridge", KEEPS_THE_GRAPH)),  # by hand
    (-0.05, ("semi.gate_ridge_check=false", KEEPS_THE_GRAPH)),
])
def test_it_runs_only_where_auto_left_the_ema_teacher_on_a_losing_graph(tiny_dataset, fast_flags, monkeypatch,
                                                                         signal, overrides):
    guard_signal(monkeypatch, signal)
    _, _, outcome = gated_method(config_of(tiny_dataset, fast_flags, *overrides))
    assert "ridge_check" not in outcome


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_margin_that_is_not_a_number_is_refused(tiny_dataset, fast_flags, value):
    from aqa.errors import UserError

    with pytest.raises(UserError, match="gate_ridge_margin"):
        config_of(tiny_dataset, fast_flags, f"semi.gate_ridge_margin={value}")


def test_a_resumed_run_keeps_the_switch_and_a_tampered_one_is_refused(tiny_dataset, fast_flags, losing_graph, monkeypatch):
    import io

    monkeypatch.setattr(gate_module, "gate_margin", lambda count, scale: -10.0)
    config = config_of(tiny_dataset, fast_flags, KEEPS_THE_GRAPH)
    data = prepare_data(config)
    straight = make_method(config, data)
    while not straight.finished:
        straight.run_unit()
    interrupted = make_method(config, data)
    while interrupted.completed == 0 or interrupted.units[interrupted.completed - 1].phase != "gate":
        interrupted.run_unit()
    buffer = io.BytesIO()
    torch.save(interrupted.state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = make_method(config, data)
    resumed.load_state(state)
    while not resumed.finished:
        resumed.run_unit()
    assert resumed.gate["teacher"] == "ridge"
    assert np.array_equal(resumed.predict_scores(data.test), straight.predict_scores(data.test))
    gate = state["gate"]
    for tampered in ({**gate, "teacher": "ema"}, {**gate, "ridge_check": {**gate["ridge_check"], "switches": "yes"}},
                     {key: value for key, value in gate.items() if key != "ridge_check"}):
        with pytest.raises(CheckpointMismatch, match="gate"):
            make_method(config, data).check_state({**state, "gate": tampered})


def test_version_11_turns_it_on_and_older_configurations_repeat_without_it(tiny_dataset, fast_flags):
    from aqa.config import to_dict
    from train.config import config_from_json

    today = preset_config("default", "trs").semi
    assert today.gate_ridge_check is True and today.gate_ridge_margin == 1.0
    saved = to_dict(config_of(tiny_dataset, fast_flags))
    saved.pop("resolved", None)
    del saved["semi"]["gate_ridge_check"]
    assert config_from_json(saved, "config.json").semi.gate_ridge_check is False  # a version-10 run folder


def test_predict_scores_a_switched_run_as_it_ran(tiny_dataset, fast_flags, tmp_path, monkeypatch, losing_graph):
    import csv

    from pipeline import main

    monkeypatch.setattr(gate_module, "gate_margin", lambda count, scale: -10.0)
    run_dir = tmp_path / "switched"
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
                     "--ratio", "0.5", "--seed", "0", "--run-dir", str(run_dir), "--threads", "1", "--no-progress",
                     *fast_flags, "--set", KEEPS_THE_GRAPH]) == 0
        out = tmp_path / "scores.csv"
        assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--out", str(out),
                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["gate_verdict"] == "switched to the ridge teacher" and metrics["ridge_test_share"] == 0.5
    with open(run_dir / "predictions.csv", newline="") as handle:
        stored = {row["key"]: float(row["pred"]) for row in csv.DictReader(handle)}
    with open(out, newline="") as handle:
        predicted = {row["key"]: float(row["pred"]) for row in csv.DictReader(handle)}
    assert predicted and all(predicted[key] == pytest.approx(stored[key], abs=1e-4) for key in predicted)

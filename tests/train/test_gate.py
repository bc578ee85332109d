"""trs's label-only gate (train/methods/gate.py): cross-fitting on the labelled videos after the
burn-in decides which pseudo-labels the semi-supervised phase uses; validation and test labels
never enter the decision; ``semi.gate=false`` is the run without it; the outcome is state."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import torch

from aqa.config import read_json
from aqa.errors import UserError
from train import build_config, fit
from train.data import prepare_data
from train.methods import CheckpointMismatch, make_method
from train.methods import gate as gate_module
from train.methods.gate import (
    VERDICTS, GateOption, describe_outcome, gate_margin, gate_options, gate_verdict, graph_must_earn_its_place,
    margin_choice, on_scale, paired_choice, paired_differences, run_gate,
)
from train.methods.pseudo_labels import GraphRefiner
from training import fit_on_one_thread


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fast(fast_flags) -> list[str]:
    return fast_flags[1::2]  # the assignments of the --set flags


def config_for(dataset, fast, *extra, **options):
    fields = dict(features=str(dataset["cache"]), manifest=str(dataset["manifest"]), method="trs", ratio=0.5,
                  seed=0, validation_fraction=0.2)
    fields.update(options)
    return build_config(overrides=[*fast, *extra], **fields)


@pytest.fixture(scope="module")
def gated(tiny_dataset, fast):
    """A trs run with the gate (default configuration) and the same run with semi.gate=false."""
    return {"on": fit_on_one_thread(config_for(tiny_dataset, fast)),
            "off": fit_on_one_thread(config_for(tiny_dataset, fast, "semi.gate=false"))}


def force_choice(monkeypatch, name: str) -> None:
    """Make the gate choose ``name`` whatever the fold estimates say."""
    monkeypatch.setattr(gate_module, "margin_choice", lambda scores, default, margin: name)


# ------------------------------------------------------------------ the rule


def test_options_are_sources_times_graph_strength_with_the_configuration_first(tiny_dataset, fast):
    names = [option.name for option in gate_options(config_for(tiny_dataset, fast))]
    assert names == ["teacher+reference, graph 3", "teacher+reference, graph 0", "teacher, graph 3",
                     "teacher, graph 0"]
    assert [o.name for o in gate_options(config_for(tiny_dataset, fast, "semi.use_reference=false"))] == [
        "teacher, graph 3", "teacher, graph 0"]
    assert [o.name for o in gate_options(config_for(tiny_dataset, fast, "semi.use_graph=false"))] == [
        "teacher+reference, graph 0", "teacher, graph 0"]


def test_the_default_is_kept_unless_another_option_beats_it_by_more_than_the_margin():
    scores = {"default": 0.40, "other": 0.55, "third": 0.10}
    assert margin_choice(scores, "default", margin=0.2) == "default"
    assert margin_choice(scores, "default", margin=0.1) == "other"
    assert margin_choice({"default": 0.4, "other": 0.4}, "default", margin=0.0) == "default"  # ties keep it
    assert margin_choice({"default": None, "other": 0.1}, "default", margin=0.5) == "other"  # undefined loses
    assert margin_choice({"default": None, "other": None}, "default", margin=0.0) == "default"


def test_with_a_graph_margin_the_graph_must_beat_the_best_option_without_it(tiny_dataset, fast):
    options = gate_options(config_for(tiny_dataset, fast))
    default = options[0]
    names = [option.name for option in options]
    margin = 0.18

    def rule(estimates, graph_margin):
        candidates, start = graph_must_earn_its_place(options, dict(zip(names, estimates)), default, graph_margin,
                                                      margin)
        return [option.name for option in candidates], start.name

    without = (["teacher+reference, graph 0", "teacher, graph 0"], "teacher+reference, graph 0")
    # The demo's tie (graph 0.467, no graph 0.473): no margin keeps the default; margin 0 drops the graph.
    tie = [0.467, 0.473, 0.40, 0.41]
    assert rule(tie, None) == (names, default.name)
    assert rule(tie, 0.0) == without
    clear = [0.60, 0.40, 0.55, 0.38]  # the graph ahead by 0.20
    assert rule(clear, 0.0) == (names, default.name)
    assert rule(clear, 1.0) == (names, default.name)  # 0.20 > 1 x 0.18
    assert rule(clear, 2.0) == without  # 0.20 < 2 x 0.18
    assert rule([0.60, None, 0.55, 0.38], 0.0) == (names, default.name)  # an undefined estimate loses
    assert rule([None, 0.3, None, 0.2], 0.0) == without
    # Without the reference in the configuration, the no-graph start keeps the default's sources.
    plain = gate_options(config_for(tiny_dataset, fast, "semi.use_reference=false"))
    candidates, start = graph_must_earn_its_place(plain, {o.name: 0.1 for o in plain}, plain[0], 0.0, margin)
    assert [o.name for o in candidates] == ["teacher, graph 0"] and start.name == "teacher, graph 0"


def test_a_run_with_a_graph_margin_drops_a_graph_that_does_not_beat_the_options_without_it(tiny_dataset, fast):
    result = fit(config_for(tiny_dataset, fast, "semi.gate_graph_margin=1e6"), progress=False)
    outcome = result.diagnostics["gate"]
    assert outcome["chosen"].endswith("graph 0")
    assert not any(isinstance(refiner, GraphRefiner) for refiner in result.method.labelling.refiners)


def test_repeated_cross_fitting_averages_new_folds_and_starts_with_the_single_one(tiny_dataset, fast):
    once = fit(config_for(tiny_dataset, fast, "semi.gate_repeats=1"), progress=False).diagnostics["gate"]
    twice = fit(config_for(tiny_dataset, fast, "semi.gate_repeats=2"), progress=False).diagnostics["gate"]
    for name, per_fold in twice["fold_estimates"].items():
        assert len(per_fold) == 6
        assert per_fold[:3] == once["fold_estimates"][name]  # repeat 0 is the single cross-fitting
    # Repeat 1 deals other folds (a fold of 2-3 tiny videos can score the same by chance: compare all).
    assert [per_fold[3:] for per_fold in twice["fold_estimates"].values()] != [
        per_fold[:3] for per_fold in twice["fold_estimates"].values()]
    # Each repeat's pooled estimate is in [-1, 1]; their mean is the option's estimate.
    assert all(-1 <= value <= 1 for value in twice["estimates"].values())
    assert twice["estimates"] != once["estimates"]


def test_the_paired_rule_compares_each_option_with_the_default_fold_by_fold():
    folds = {"default": [0.30, 0.50, 0.20, 0.40],
             "steady": [0.35, 0.56, 0.24, 0.46],  # +0.05 on every fold: tiny but consistent
             "noisy": [0.90, 0.10, 0.80, 0.05],  # larger on average (+0.1125), all over the place
             "worse": [0.10, 0.20, 0.10, 0.20],
             "gaps": [None, 0.9, None, None]}  # one defined fold: no standard error
    differences = paired_differences(folds, "default")
    assert set(differences) == {"steady", "noisy", "worse", "gaps"} and differences["gaps"] is None
    assert differences["steady"]["mean"] == pytest.approx(0.0525) and differences["steady"]["folds"] == 4
    assert differences["noisy"]["se"] > 0.2 > differences["steady"]["se"]
    assert paired_choice(differences, "default", 2.0) == "steady"  # the margin rule (1/sqrt n) would not move
    assert paired_choice(differences, "default", 0.0) == "noisy"  # largest mean once noise is ignored
    assert paired_choice(differences, "default", 1e6) == "default"
    assert paired_choice({"worse": differences["worse"]}, "default", 0.0) == "default"  # never a loss
    # Estimates are per fold of a real cross-fitting; with the default's own folds undefined, nothing passes.
    assert paired_choice(paired_differences({"default": [None, None], "other": [0.5, 0.6]}, "default"),
                         "default", 0.0) == "default"


def test_a_run_with_the_paired_rule_records_it_and_chooses_one_of_its_options(tiny_dataset, fast):
    outcome = fit(config_for(tiny_dataset, fast, "semi.gate_paired_z=0"), progress=False).diagnostics["gate"]
    assert outcome["rule"] == "paired" and outcome["z"] == 0
    assert set(outcome["paired_differences"]) == set(outcome["options"]) - {outcome["default"]}
    assert outcome["chosen"] == paired_choice(outcome["paired_differences"], outcome["default"], 0.0)
    never = fit(config_for(tiny_dataset, fast, "semi.gate_paired_z=1e6"), progress=False).diagnostics["gate"]
    assert never["chosen"] == never["default"] and never["fold_estimates"] == outcome["fold_estimates"]


def test_on_the_fisher_scale_a_lead_between_high_correlations_counts_for_more():
    assert gate_margin(45, "spearman") == pytest.approx(1 / 45 ** 0.5)
    assert gate_margin(45, "fisher") == pytest.approx((1.06 / 42) ** 0.5)
    assert gate_margin(3, "fisher") == pytest.approx(1.06 ** 0.5)  # never a division by zero
    # The demo's test seed 0 (45 labelled dives): no graph 0.593 against the graph's 0.463.
    dives = {"graph": 0.463, "no graph": 0.593}
    assert margin_choice(on_scale(dives, "spearman"), "graph", gate_margin(45, "spearman")) == "graph"
    assert margin_choice(on_scale(dives, "fisher"), "graph", gate_margin(45, "fisher")) == "no graph"
    # The same lead between low correlations is not enough on either scale.
    low = {"graph": 0.10, "no graph": 0.23}
    for scale in ("spearman", "fisher"):
        assert margin_choice(on_scale(low, scale), "graph", gate_margin(45, scale)) == "graph"
    # atanh keeps the order, keeps undefined estimates undefined and stays finite at +-1.
    values = on_scale({"a": -1.0, "b": 0.0, "c": 0.5, "d": 1.0, "e": None}, "fisher")
    assert values["a"] < values["b"] == 0.0 < values["c"] < values["d"] < 4 and values["e"] is None
    assert on_scale({"a": 0.3}, "spearman") == {"a": 0.3}


def test_the_gate_decides_on_the_fisher_scale_by_default_and_on_either_from_the_same_folds(tiny_dataset, fast,
                                                                                          gated):
    default = gated["on"].diagnostics["gate"]
    plain = fit(config_for(tiny_dataset, fast, "semi.gate_scale=spearman"), progress=False).diagnostics["gate"]
    for outcome, scale in ((default, "fisher"), (plain, "spearman")):
        assert outcome["rule"] == "margin" and outcome["scale"] == scale
        assert outcome["margin"] == gate_margin(outcome["n_labelled"], scale)
        assert outcome["chosen"] == margin_choice(on_scale(outcome["estimates"], scale), outcome["default"],
                                                  outcome["margin"])
    assert plain["fold_estimates"] == default["fold_estimates"] and plain["estimates"] == default["estimates"]


def margin_outcome(estimates: dict, chosen: str, n: int = 45, scale: str = "fisher") -> dict:
    """An outcome as :func:`~train.methods.gate.decide` records it under the margin rule."""
    return {"n_labelled": n, "margin": gate_margin(n, scale), "default": "graph", "chosen": chosen,
            "estimates": estimates, "rule": "margin", "scale": scale}


def test_the_verdict_says_whether_the_gate_switched_kept_the_best_or_could_not_tell():
    # The demo's test seed 0 (45 labelled dives), on both scales: switched on Fisher's, undecided on Spearman's.
    dives = {"graph": 0.463, "no graph": 0.593}
    assert gate_verdict(margin_outcome(dives, "no graph")) == "switched"
    undecided = margin_outcome(dives, "graph", scale="spearman")
    assert gate_verdict(undecided) == "kept, undecided"
    assert gate_verdict(margin_outcome({"graph": 0.6, "no graph": 0.5}, "graph")) == "kept"
    assert gate_verdict(margin_outcome({"graph": 0.5, "no graph": 0.5}, "graph")) == "kept"  # a tie is no lead
    undefined = margin_outcome({"graph": None, "no graph": 0.1}, "graph", n=4)  # (the margin rule would switch)
    assert gate_verdict(undefined) == "kept, undecided"
    assert "'no graph' scored 0.100, ahead of an undefined estimate" in describe_outcome(undefined)
    assert gate_verdict(margin_outcome({"graph": 0.2, "no graph": None}, "graph")) == "kept"
    decided = {"n_labelled": 3, "default": "graph", "chosen": "graph", "estimates": {}, "reason": "fewer than 4 labelled videos"}
    assert gate_verdict(decided) == "kept, not cross-fitted"
    paired = {"n_labelled": 45, "default": "graph", "chosen": "graph", "estimates": dives, "rule": "paired", "z": 2.0,
              "paired_differences": {"no graph": {"mean": 0.13, "se": 0.07, "folds": 9}}}
    assert gate_verdict(paired) == "kept, undecided"
    paired["paired_differences"]["no graph"]["mean"] = -0.01
    assert gate_verdict(paired) == "kept"
    assert set(VERDICTS) == {"switched", "switched to the ridge teacher", "kept", "kept, undecided",
                             "kept, not cross-fitted"}


def test_the_description_names_the_choice_the_estimates_and_the_margin():
    text = describe_outcome(margin_outcome({"graph": 0.463, "no graph": 0.593}, "no graph"))
    assert text == ("gate (45 labelled videos): chose 'no graph' (out of fold 0.593) over the configured 'graph' "
                    "(0.463; margin 0.159 on Fisher's z)")
    text = describe_outcome(margin_outcome({"graph": 0.463, "no graph": 0.593}, "graph", scale="spearman"))
    assert text == ("gate (45 labelled videos): kept the configured 'graph' (0.463 out of fold); 'no graph' "
                    "scored 0.593, ahead by 0.130 (margin 0.149 on the Spearman scale): too few labelled videos "
                    "to tell them apart")
    text = describe_outcome(margin_outcome({"graph": 0.6, "no graph": None}, "graph"))
    assert text == "gate (45 labelled videos): kept the configured 'graph', the best out of fold (0.600)"
    decided = {"n_labelled": 3, "default": "graph", "chosen": "graph", "estimates": {}, "reason": "fewer than 4 labelled videos"}
    assert describe_outcome(decided) == "gate (3 labelled videos): kept the configured 'graph' (fewer than 4 labelled videos)"
    paired = {"n_labelled": 45, "default": "graph", "chosen": "graph", "estimates": {"graph": 0.4, "no graph": 0.5},
              "rule": "paired", "z": 2.0, "paired_differences": {"no graph": {"mean": 0.1, "se": 0.07, "folds": 9}}}
    assert "ahead by 0.100 (paired rule, z = 2)" in describe_outcome(paired)


def test_a_run_reports_its_gate_in_the_log_and_metrics(tiny_dataset, fast, tmp_path):
    from train.run import train_run

    messages: list[str] = []
    metrics = train_run(config_for(tiny_dataset, fast), tmp_path / "run", progress=False, log=messages.append)
    outcome = read_json(tmp_path / "run" / "diagnostics.json")["gate"]
    assert metrics["gate_choice"] == outcome["chosen"] and metrics["gate_verdict"] == gate_verdict(outcome)
    guard = outcome["graph_guard"]  # the tiny data's guard keeps the graph (signal about -0.02)
    assert metrics["gate_graph_guard"] == ("dropped the graph" if guard["drops_graph"] else "kept the graph")
    assert metrics["gate_teacher"] == outcome["teacher"] == ("ridge" if guard["drops_graph"] else "ema")
    assert messages[-1] == describe_outcome(outcome)
    messages.clear()
    off = train_run(config_for(tiny_dataset, fast, "semi.gate=false"), tmp_path / "off", progress=False,
                    log=messages.append)
    assert not {"gate_choice", "gate_verdict", "gate_graph_guard", "gate_teacher"} & set(off)
    assert not any(message.startswith("gate") for message in messages)


@pytest.mark.parametrize("value", ["kendall", "", "Fisher"])
def test_an_unknown_gate_scale_is_a_user_error(tiny_dataset, fast, value):
    with pytest.raises(UserError, match="gate_scale"):
        config_for(tiny_dataset, fast, f"semi.gate_scale={value}")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_paired_z_that_is_not_a_non_negative_number_is_a_user_error(tiny_dataset, fast, value):
    with pytest.raises(UserError, match="gate_paired_z"):
        config_for(tiny_dataset, fast, f"semi.gate_paired_z={value}")


def test_gate_folds_below_two_is_a_user_error(tiny_dataset, fast):
    with pytest.raises(UserError, match="gate_folds"):
        config_for(tiny_dataset, fast, "semi.gate_folds=1")


# ------------------------------------------------------------------ inside a run


def test_the_gate_runs_after_the_burn_in_and_records_its_decision(gated):
    method = gated["on"].method
    phases = [unit.phase for unit in method.units]
    gate_at = phases.index("gate")
    assert set(phases[:gate_at]) == {"supervised", "reference"} and set(phases[gate_at + 1:]) == {"semi"}
    outcome = gated["on"].diagnostics["gate"]
    n = len(method.labelled)
    assert outcome["n_labelled"] == n and outcome["margin"] == pytest.approx(np.sqrt(1.06 / (n - 3)))  # Fisher's z
    assert outcome["folds"] == 3 and outcome["default"] == "teacher+reference, graph 3"
    assert set(outcome["estimates"]) == set(outcome["options"]) == set(outcome["fold_estimates"])
    assert outcome["repeats"] == 3  # the default: three cross-fittings of 3 folds each
    assert all(len(per_fold) == 9 for per_fold in outcome["fold_estimates"].values())
    assert outcome["chosen"] in outcome["options"]
    assert gated["on"].diagnostics["switches"]["gate"] is True
    assert gated["off"].diagnostics["gate"] is None
    assert "gate" not in [unit.phase for unit in gated["off"].method.units]


def test_a_gate_that_keeps_the_default_leaves_the_run_exactly_as_without_it(gated):
    on, off = gated["on"], gated["off"]
    assert on.diagnostics["gate"]["chosen"] == on.diagnostics["gate"]["default"]
    assert np.array_equal(on.predictions, off.predictions)
    assert on.test == off.test
    for name, tensor in off.state["student"].items():
        assert torch.equal(on.state["student"][name], tensor)


def test_gate_off_builds_the_configured_pseudo_labelling(tiny_dataset, fast):
    config = config_for(tiny_dataset, fast, "semi.gate=false")
    method = make_method(config, prepare_data(config))
    assert [source.name for source in method.labelling.sources] == ["teacher", "reference"]
    assert [refiner.strength for refiner in method.labelling.refiners] == [3.0]


def test_the_chosen_option_configures_the_semi_supervised_phase(tiny_dataset, fast, monkeypatch):
    force_choice(monkeypatch, "teacher, graph 0")
    result = fit(config_for(tiny_dataset, fast), progress=False)
    labelling = result.method.labelling
    assert [source.name for source in labelling.sources] == ["teacher"]
    assert not any(isinstance(refiner, GraphRefiner) for refiner in labelling.refiners)
    last = result.diagnostics["last_refresh"]
    assert "reference_spearman" not in last and "refined_spearman" not in last
    assert result.diagnostics["gate"]["chosen"] == "teacher, graph 0"


def _shuffled(data, rows, seed):
    scores = data.scores.copy()
    scores[rows] = scores[np.random.default_rng(seed).permutation(rows)]
    scores[rows] += np.random.default_rng(seed + 1).normal(0, 5, len(rows))
    return dataclasses.replace(data, scores=scores)


def test_validation_and_test_labels_never_change_the_gate(tiny_dataset, fast):
    config = config_for(tiny_dataset, fast)
    data = prepare_data(config)
    assert len(data.validation) and len(data.test)
    outcomes = []
    for seed in (None, 1, 2):
        shown = data if seed is None else _shuffled(data, np.concatenate([data.validation, data.test]), seed)
        method = make_method(config, shown)
        while method.units[method.completed].phase != "gate":
            method.run_unit()
        outcomes.append(run_gate(method))
    for outcome in outcomes[1:]:
        for name in ("chosen", "estimates", "fold_estimates", "margin", "folds"):
            assert outcome[name] == outcomes[0][name], name
    # ... while the labelled videos' labels do move the fold estimates
    method = make_method(config, _shuffled(data, data.labelled, 3))
    while method.units[method.completed].phase != "gate":
        method.run_unit()
    assert run_gate(method)["estimates"] != outcomes[0]["estimates"]


def _method_at_the_gate(config):
    method = make_method(config, prepare_data(config))
    while method.units[method.completed].phase != "gate":
        method.run_unit()
    return method


@pytest.mark.skipif(not gate_module._can_fork(), reason="forked gate workers need fork")
def test_forked_gate_workers_give_the_outcome_of_the_gate_run_in_process(tiny_dataset, fast):
    """Each fold job runs on one torch thread wherever it runs: the outcome with the run's two
    threads (two forked workers) equals the in-process gate's bit for bit, and the run's RNG and
    thread count are as they were."""
    config = config_for(tiny_dataset, fast)
    outcomes, draws = [], []
    for threads in (1, 2, 3):
        method = _method_at_the_gate(config)
        torch.set_num_threads(threads)
        torch.manual_seed(11)
        outcomes.append(run_gate(method))
        draws.append(torch.rand(3))
        assert torch.get_num_threads() == threads
        torch.set_num_threads(1)
    assert outcomes[0]["folds"] * outcomes[0]["repeats"] > 3  # more jobs than workers
    # From a thread that is not the main one the gate does not fork: the jobs run in that thread.
    method = _method_at_the_gate(config)
    in_thread = {}
    worker = threading.Thread(target=lambda: in_thread.update(threads=torch.get_num_threads(), outcome=run_gate(method)))
    torch.set_num_threads(2)
    worker.start()
    worker.join()
    torch.set_num_threads(1)
    assert in_thread["threads"] == 2 and in_thread["outcome"] == outcomes[0]
    assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0]
    assert all(torch.equal(draw, draws[0]) for draw in draws)
    assert gate_module._FORKED_GATE is None  # nothing of the run kept once the workers are gone


def test_a_failing_fold_job_fails_the_gate_in_a_forked_worker_too(tiny_dataset, fast, monkeypatch):
    """An error inside a worker reaches the run (the pool does not hang or swallow it)."""
    def broken(*args, **kwargs):
        raise RuntimeError("fold job broke")

    monkeypatch.setattr(gate_module, "_label_held_out_fold", broken)
    method = _method_at_the_gate(config_for(tiny_dataset, fast))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            with pytest.raises(RuntimeError, match="fold job broke"):
                run_gate(method)
        finally:
            torch.set_num_threads(1)
    assert gate_module._FORKED_GATE is None


@pytest.mark.skipif(not gate_module._can_fork(), reason="forked gate workers need fork")
def test_a_gate_worker_that_dies_is_a_clear_error_not_a_hang(tiny_dataset, fast, monkeypatch):
    import os

    monkeypatch.setattr(gate_module, "_label_held_out_fold", lambda *args, **kwargs: os._exit(9))
    method = _method_at_the_gate(config_for(tiny_dataset, fast))
    torch.set_num_threads(2)
    try:
        with pytest.raises(UserError, match="worker process of trs's gate died"):
            run_gate(method)
    finally:
        torch.set_num_threads(1)


_SLOW_GATE = """
import json, sys, time
import torch
from train import build_config
from train.data import prepare_data
from train.methods import make_method
from train.methods import gate

fields, overrides = json.loads(sys.argv[1]), json.loads(sys.argv[2])
gate._label_held_out_fold = lambda *args, **kwargs: time.sleep(600)  # a fold job that takes its time
config = build_config(overrides=overrides, **fields)
method = make_method(config, prepare_data(config))
while method.units[method.completed].phase != "gate":
    method.run_unit()
torch.set_num_threads(2)
gate.run_gate(method)
"""


@pytest.mark.skipif(not gate_module._can_fork(), reason="forked gate workers need fork")
def test_a_killed_run_leaves_no_gate_worker_behind(tiny_dataset, fast, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "slow_gate.py"
    script.write_text(_SLOW_GATE)
    fields = dict(features=str(tiny_dataset["cache"]), manifest=str(tiny_dataset["manifest"]), method="trs",
                  ratio=0.5, seed=0, validation_fraction=0.2)
    repo_root = Path(__file__).resolve().parents[2]
    run = subprocess.Popen([sys.executable, str(script), json.dumps(fields), json.dumps(fast)], cwd=repo_root,
                           env={**os.environ, "PYTHONPATH": str(repo_root)})

    def workers() -> list[int]:
        listed = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in listed.split()]

    try:
        deadline = time.monotonic() + 120
        while len(workers()) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "the gate's workers never started"
            time.sleep(0.1)
        forked = workers()
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 10
    alive = forked
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in forked if _is_running(pid)]
    assert not alive, f"gate workers {alive} outlived their run"


@pytest.mark.skipif(not gate_module._can_fork(), reason="forked gate workers need fork")
def test_with_several_threads_the_gate_works_beside_the_burn_in_to_the_same_outcome(tiny_dataset, fast):
    """With two threads the fold jobs start in workers at the first unit, the burn-in runs on one
    thread meanwhile, and after the gate the run has its two threads and no worker: the gate's
    outcome and the burn-in equal the one-thread run's bit for bit."""
    config = config_for(tiny_dataset, fast)
    seen = []
    others = _child_processes()  # e.g. an earlier test's joblib workers

    def watch(method, record):
        seen.append((record["phase"], gate_module._FORKED_GATE is not None, torch.get_num_threads(),
                     len(_child_processes() - others)))

    torch.set_num_threads(2)
    try:
        beside = fit(config, progress=False, after_unit=watch)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    in_turn = fit(config, progress=False)
    assert beside.diagnostics["gate"] == in_turn.diagnostics["gate"]
    burn_in = [entry for entry in seen if entry[0] in ("supervised", "reference")]
    assert burn_in and all(in_flight and threads == 1 and workers == 2 for _, in_flight, threads, workers in burn_in)
    semi = [entry for entry in seen if entry[0] == "semi"]
    assert semi and all(not in_flight and threads == 2 and workers == 0 for _, in_flight, threads, workers in semi)

    def losses(result, phases=("supervised", "reference")):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in result.method.history
                if record["phase"] in phases]

    assert losses(beside) == losses(in_turn)
    assert gate_module._FORKED_GATE is None


@pytest.mark.skipif(not gate_module._can_fork(), reason="forked gate workers need fork")
@pytest.mark.parametrize("stop_in", ["supervised", "reference"])
def test_a_run_stopped_before_its_gate_ends_the_gate_workers(tiny_dataset, fast, stop_in):
    """An error (or Ctrl-C, or --stop-after-epoch) during the burn-in ends the early fold jobs'
    workers and gives the run its threads back; training on later starts them again, to the
    same outcome."""
    config = config_for(tiny_dataset, fast)
    data = prepare_data(config)
    others = _child_processes()

    def stop(method, record):
        if record["phase"] == stop_in:
            raise KeyboardInterrupt

    torch.set_num_threads(2)
    try:
        method = make_method(config, data)
        with pytest.raises(KeyboardInterrupt):
            fit(config, data, progress=False, method=method, after_unit=stop)
        assert torch.get_num_threads() == 2
        assert gate_module._FORKED_GATE is None and not _child_processes() - others
        resumed = fit(config, data, progress=False, method=method)
    finally:
        torch.set_num_threads(1)
    assert resumed.diagnostics["gate"] == fit(config, data, progress=False).diagnostics["gate"]


def _child_processes() -> set[int]:
    import multiprocessing

    return {process.pid for process in multiprocessing.active_children()}


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ state


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_after_the_gate_is_bit_identical(tiny_dataset, fast, monkeypatch):
    chosen = "teacher, graph 0"  # not the default: the resumed run must take the choice from the state
    force_choice(monkeypatch, chosen)
    config = config_for(tiny_dataset, fast)
    data = prepare_data(config)
    straight = make_method(config, data)
    while not straight.finished:
        straight.run_unit()
    for stop_after in ("gate", "semi"):
        interrupted = make_method(config, data)
        while interrupted.units[interrupted.completed - 1].phase != stop_after or interrupted.completed == 0:
            interrupted.run_unit()
        state = _roundtrip(interrupted.state())
        resumed = make_method(config, data)
        resumed.load_state(state)
        assert resumed.gate["chosen"] == chosen
        assert [s.name for s in resumed.labelling.sources] == [s.name for s in straight.labelling.sources]
        while not resumed.finished:
            resumed.run_unit()
        assert np.array_equal(resumed.predict_scores(data.test), straight.predict_scores(data.test))
        assert torch.equal(resumed.pseudo, straight.pseudo)


def test_checkpoint_validation_checks_the_gate_outcome(tiny_dataset, fast):
    config = config_for(tiny_dataset, fast)
    data = prepare_data(config)
    method = make_method(config, data)
    before = _roundtrip(method.state())
    while method.units[method.completed - 1].phase != "gate" or method.completed == 0:
        method.run_unit()
    after = _roundtrip(method.state())
    fresh = make_method(config, data)
    fresh.check_state(after)  # a genuine state passes

    def refused(state, match):
        with pytest.raises(CheckpointMismatch, match=match):
            make_method(config, data).check_state(state)

    refused({**after, "gate": None}, "gate")
    refused({**after, "gate": "teacher"}, "gate")
    refused({**after, "gate": {**after["gate"], "chosen": "everything, graph 99"}}, "gate chose")
    refused({**after, "gate": {**after["gate"], "options": {"teacher, graph 99": {}}}}, "gate options")
    refused({**before, "gate": after["gate"]}, "before the run's gate")
    # a state of a gate=false run has no gate unit: an outcome there is refused too
    off = build_config(overrides=[*fast, "semi.gate=false"], **{k: getattr(config, k) for k in
                                                                ("features", "manifest", "method", "ratio", "seed",
                                                                 "validation_fraction")})
    with pytest.raises(CheckpointMismatch):
        make_method(off, data).check_state(after)


def test_gate_option_names_round_trip():
    option = GateOption(("teacher",), 3.0)
    assert option.name == "teacher, graph 3" and option.to_state() == {"sources": ["teacher"], "graph_strength": 3.0}

"""`fit` trains in memory what `train_run` publishes: the same predictions, measures and state."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from train import build_config, fit, train_run
from train.config import TrainConfig
from train.methods import make_method
from types import SimpleNamespace

from scipy.stats import spearmanr

from train.methods.pseudo_labels import GraphRefiner, SpreadRefiner, build_pseudo_labelling
from training import one_torch_thread

@pytest.fixture(scope="module")
def fast(fast_flags) -> list[str]:
    return fast_flags[1::2]  # the assignments of the --set flags


RUN_FIELDS = {"wall_seconds", "final", "config", "keys", "feature_mean", "feature_std", "num_tokens",
              "target_mean", "target_std"}


def test_fit_in_memory_gives_what_the_run_folder_publishes(tiny_dataset, tmp_path, fast):
    options = dict(features=str(tiny_dataset["cache"]), manifest=str(tiny_dataset["manifest"]), method="trs",
                   ratio=0.5, seed=0, validation_fraction=0.2)
    with one_torch_thread():
        result = fit(build_config(overrides=fast, **options), progress=False)
        metrics = train_run(build_config(overrides=fast, **options), tmp_path / "run", progress=False)
    assert result.test == {name: metrics[name] for name in ("spearman", "rl2", "mse")}
    assert result.validation == {name: metrics[f"validation_{name}"] for name in ("spearman", "rl2", "mse")}
    assert result.unlabelled == {"spearman": metrics["unlabelled_spearman"]}
    with open(tmp_path / "run" / "predictions.csv", newline="") as handle:
        published = {row["key"]: float(row["pred"]) for row in csv.DictReader(handle)}
    assert published == dict(zip(result.data.keys, result.predictions.tolist()))
    assert result.diagnostics["last_refresh"]["epoch"] == 3
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # trs with reference.test_share > 0 (the default) adds what the reference's share needs
    assert set(checkpoint) == set(result.state) | RUN_FIELDS | set(result.method.prediction_fields())
    assert {"exemplar_tokens", "exemplar_targets"} <= set(checkpoint)
    assert all(torch.equal(checkpoint["student"][name], tensor) for name, tensor in result.state["student"].items())


def test_fit_validates_the_configuration_it_reads_data_for():
    with pytest.raises(Exception, match="no feature cache given"):
        fit(TrainConfig())


@pytest.mark.parametrize("switch, present", [("semi.use_graph=true", True), ("semi.use_graph=false", False),
                                             ("semi.graph_strength=0", False)])
def test_the_graph_switch_decides_whether_the_refiner_is_in_the_list(tiny_dataset, switch, present):
    config = build_config(overrides=[switch], features=str(tiny_dataset["cache"]),
                          manifest=str(tiny_dataset["manifest"]))
    labelling = build_pseudo_labelling(config, 10)
    assert any(isinstance(refiner, GraphRefiner) for refiner in labelling.refiners) == present
    assert [source.name for source in labelling.sources] == ["teacher", "reference"]


@pytest.mark.parametrize("mode", ["std", "quantiles"])
def test_the_spread_refiner_keeps_the_order_and_takes_the_labels_spread(tiny_dataset, mode):
    config = build_config(overrides=[f"semi.pseudo_spread={mode}"], features=str(tiny_dataset["cache"]),
                          manifest=str(tiny_dataset["manifest"]))
    refiners = build_pseudo_labelling(config, 10).refiners
    assert [type(refiner) for refiner in refiners] == [GraphRefiner, SpreadRefiner]  # after the graph
    generator = np.random.default_rng(0)
    targets = generator.normal(0.3, 1.5, size=40)
    shrunk = 0.2 * generator.normal(size=200) - 0.1  # pseudo-labels shrunk towards (and off) the mean
    context = SimpleNamespace(labelled_targets=torch.from_numpy(targets))
    stretched = refiners[-1].refine(context, shrunk, np.ones_like(shrunk))
    assert spearmanr(stretched, shrunk).statistic == pytest.approx(1.0)
    assert stretched.mean() == pytest.approx(targets.mean(), abs=0.05)
    # (quantiles: mid-ranks never reach the labelled extremes, so a little less spread)
    assert stretched.std() == pytest.approx(targets.std(), rel=0.05 if mode == "std" else 0.1)
    if mode == "quantiles":
        assert stretched.min() >= targets.min() and stretched.max() <= targets.max()
    assert refiners[-1].refine(context, np.full(5, 0.7), np.ones(5)).tolist() == pytest.approx(
        [0.7] * 5 if mode == "std" else [float(np.quantile(targets, 0.5))] * 5)


def test_pseudo_labels_keep_their_spread_by_default(tiny_dataset):
    config = build_config(features=str(tiny_dataset["cache"]), manifest=str(tiny_dataset["manifest"]))
    assert not any(isinstance(refiner, SpreadRefiner) for refiner in build_pseudo_labelling(config, 10).refiners)


def test_every_method_declares_the_same_interface(tiny_dataset, fast):
    from train.data import prepare_data

    base = build_config(overrides=fast, features=str(tiny_dataset["cache"]), manifest=str(tiny_dataset["manifest"]))
    data = prepare_data(base)
    for name in ("supervised", "mean-teacher", "pseudo-label", "trs", "ridge"):
        config = build_config(overrides=fast, method=name, features=base.features, manifest=base.manifest)
        method = make_method(config, data)
        assert method.name == name and method.completed == 0
        assert method.finished == (name == "ridge")
        method.check_state(method.state())  # a fresh state continues the very same run
        assert np.isfinite(method.predict_scores(data.test)).all()
        assert isinstance(method.model_summary(), dict) and isinstance(method.prediction_fields(), dict)
        assert (method.diagnostics() is None) == (name != "trs")


@pytest.mark.parametrize("method, section, field, today_value, older_value", [
    ("trs", "semi", "graph_test_share", 0.5, 0.0),
    ("trs", "semi", "gate_scale", "fisher", "spearman"),
    ("trs", "semi", "graph_guard", True, False),
    ("trs", "semi", "teacher", "auto", "ema"),
    ("ridge", "ridge", "segments", 3, 1),
])
def test_a_saved_configuration_from_before_a_new_default_reads_as_it_ran(tiny_dataset, method, section, field,
                                                                          today_value, older_value):
    """A config.json without a field added with a new default (semi.graph_test_share: the graph
    took no share of the prediction; semi.gate_scale: the gate's margin on the Spearman scale;
    semi.graph_guard: no guard before the gate; semi.teacher: the EMA teacher; ridge.segments: one mean over the video) reads as it ran, so it repeats as it ran and is not
    today's default."""
    from aqa.config import to_dict
    from train.config import config_from_json

    def without_field(saved: dict) -> dict:
        return {**saved, section: {name: value for name, value in saved[section].items() if name != field}}

    paths = {"features": str(tiny_dataset["cache"]), "manifest": str(tiny_dataset["manifest"])}
    today = build_config(method=method, **paths)
    saved = to_dict(today)
    assert getattr(getattr(config_from_json(saved, "config.json"), section), field) == today_value
    older = without_field(saved)
    assert getattr(getattr(config_from_json(older, "config.json"), section), field) == older_value
    assert config_from_json(older, "config.json").identity() != today.identity()
    # other methods: the field changes nothing, so their older runs stay today's
    supervised = to_dict(build_config(method="supervised", **paths))
    assert config_from_json(without_field(supervised), "config.json").identity() == \
        config_from_json(supervised, "x").identity()

"""``semi.teacher = "ridge"``: trs's teacher source is ridge regression on the labelled videos'
time-segment means (train.methods.pseudo_labels.RidgeTeacherSource): its pseudo-labels are the
``ridge`` method's predictions (in standardised units), fitted on the labelled videos it is given."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aqa.errors import UserError
from train.config import apply_overrides, preset_config
from train.data import prepare_data
from train.methods import make_method
from train.methods.gate import describe_outcome
from train.methods.pseudo_labels import (
    BlendedTeacherSource, Context, RidgeTeacherSource, TeacherSource, build_sources,
)
from training import fit_on_one_thread

pytestmark = pytest.mark.usefixtures("one_thread")


def config_of(tiny_dataset, fast_flags, *overrides, method="trs"):
    config = dataclasses.replace(preset_config("default", method), features=str(tiny_dataset["cache"]),
                                 dataset="manifest", manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    return apply_overrides(config, [*fast_flags[1::2], *overrides])


def context_of(data, labelled: np.ndarray, unlabelled: np.ndarray, targets: np.ndarray) -> Context:
    return Context(data=data, unlabelled=torch.from_numpy(unlabelled), labelled=torch.from_numpy(labelled),
                   labelled_targets=torch.from_numpy(targets).float(), views=None, generator=None, teacher=None,
                   reference=None)


def test_its_pseudo_labels_are_the_ridge_methods_predictions(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags)
    data = prepare_data(config)
    ridge = make_method(dataclasses.replace(config, method="ridge"), data)
    targets = data.training_target(data.labelled)
    standardised = (targets - targets.mean()) / targets.std()
    values, confidence = RidgeTeacherSource(config.ridge).estimate(
        context_of(data, data.labelled, data.unlabelled, standardised.astype(np.float32)))
    expected = (ridge.predict_scores(data.unlabelled) - targets.mean()) / targets.std()
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-4, atol=1e-4)  # float32 targets
    assert torch.equal(confidence, torch.ones_like(values))  # one fit: every video alike


def test_it_fits_on_the_labelled_videos_it_is_given(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags)
    data = prepare_data(config)
    source = RidgeTeacherSource(config.ridge)
    targets = np.linspace(-1, 1, len(data.labelled))
    everyone = source.estimate(context_of(data, data.labelled, data.unlabelled, targets))[0]
    fold = source.estimate(context_of(data, data.labelled[:-3], data.unlabelled, targets[:-3]))[0]
    assert not torch.allclose(everyone, fold)  # a gate fold's teacher sees only its fold
    # the other videos' labels are never read: hiding them changes nothing
    hidden = dataclasses.replace(data, scores=np.where(np.isin(np.arange(len(data.scores)), data.labelled),
                                                       data.scores, np.nan))
    assert torch.equal(RidgeTeacherSource(config.ridge).estimate(
        context_of(hidden, data.labelled, data.unlabelled, targets))[0], everyone)


def test_the_configuration_chooses_the_teacher(tiny_dataset, fast_flags):
    assert config_of(tiny_dataset, fast_flags).semi.teacher == "auto"  # the default since trs version 9
    ema = build_sources(config_of(tiny_dataset, fast_flags), ["teacher"])[0]
    assert isinstance(ema, BlendedTeacherSource) and isinstance(ema.ema, TeacherSource)  # version 12: half the ridge
    assert isinstance(build_sources(config_of(tiny_dataset, fast_flags), ["teacher"], "ridge")[0], RidgeTeacherSource)
    ridge = build_sources(config_of(tiny_dataset, fast_flags, "semi.teacher=ridge"), ["teacher"])[0]
    assert isinstance(ridge, RidgeTeacherSource) and ridge.name == "teacher"
    with pytest.raises(UserError, match="semi.teacher"):
        config_of(tiny_dataset, fast_flags, "semi.teacher=forest")


def test_a_trs_run_with_the_ridge_teacher_refreshes_with_its_values(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags, "semi.teacher=ridge")
    result = fit_on_one_thread(config)
    refresh = result.method.last_refresh
    data = result.data
    ridge = make_method(dataclasses.replace(config, method="ridge"), data)
    mean, std = result.method.target_mean, result.method.target_std
    expected = (ridge.predict_scores(refresh["rows"]) - mean) / std
    np.testing.assert_allclose(refresh["teacher_value"], expected, rtol=1e-4, atol=1e-4)
    assert result.diagnostics["gate"]["chosen"] in result.diagnostics["gate"]["options"]


@pytest.mark.parametrize("margin, teacher", [("-2", "ridge"), ("2", "ema")])
def test_auto_takes_the_ridge_teacher_where_the_guard_drops_the_graph(tiny_dataset, fast_flags, margin, teacher):
    # margin -2: the guard always drops the graph; margin 2: it never does
    auto = fit_on_one_thread(config_of(tiny_dataset, fast_flags, "semi.teacher=auto",
                                       f"semi.graph_guard_margin={margin}"))
    fixed = fit_on_one_thread(config_of(tiny_dataset, fast_flags, f"semi.teacher={teacher}",
                                        f"semi.graph_guard_margin={margin}"))
    assert auto.diagnostics["gate"]["teacher"] == fixed.diagnostics["gate"]["teacher"] == teacher
    assert auto.diagnostics["gate"]["graph_guard"]["drops_graph"] == (teacher == "ridge")
    np.testing.assert_array_equal(auto.predictions, fixed.predictions)  # the same run
    assert ("the teacher is the ridge" in describe_outcome(auto.diagnostics["gate"])) == (teacher == "ridge")


def test_without_the_gate_auto_is_the_ema_teacher(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags, "semi.teacher=auto", "semi.gate=false")
    teacher = make_method(config, prepare_data(config)).labelling.sources[0].source
    assert isinstance(teacher, BlendedTeacherSource) and isinstance(teacher.ema, TeacherSource)


def test_where_the_ridge_teaches_it_takes_its_share_of_the_test_prediction(tiny_dataset, fast_flags):
    """semi.ridge_test_share (trs version 10): (1 - share) x the rest of the prediction + share x
    the ridge the teacher fitted (the ``ridge`` method's predictions on the same labelled videos);
    it changes nothing in training, and nothing at all where the EMA teacher taught."""
    config = config_of(tiny_dataset, fast_flags, "semi.teacher=ridge")
    assert config.semi.ridge_test_share == 0.5  # the default since trs version 10
    shared = fit_on_one_thread(config)
    alone = fit_on_one_thread(apply_overrides(config, ["semi.ridge_test_share=0"]))
    ridge = make_method(dataclasses.replace(config, method="ridge"), shared.data).predict_scores(
        np.arange(len(shared.data.keys)))
    np.testing.assert_allclose(shared.predictions, 0.5 * alone.predictions + 0.5 * ridge, rtol=1e-6, atol=1e-6)
    assert not np.allclose(shared.predictions, alone.predictions)
    assert torch.equal(shared.method.pseudo, alone.method.pseudo)  # training itself is the same
    assert shared.method.model_summary()["ridge_test_share"] == 0.5
    assert alone.method.model_summary()["ridge_test_share"] == 0.0

    ema = fit_on_one_thread(config_of(tiny_dataset, fast_flags, "semi.teacher=ema"))
    ema_without = fit_on_one_thread(config_of(tiny_dataset, fast_flags, "semi.teacher=ema", "semi.ridge_test_share=0"))
    np.testing.assert_array_equal(ema.predictions, ema_without.predictions)
    assert ema.method.model_summary()["ridge_test_share"] == 0.0


def test_a_saved_configuration_from_before_version_10_repeats_without_the_ridge_share(tiny_dataset, fast_flags):
    from aqa.config import to_dict
    from train.config import config_from_json

    saved = to_dict(config_of(tiny_dataset, fast_flags))
    saved.pop("resolved", None)
    del saved["semi"]["ridge_test_share"]
    assert config_from_json(saved, "config.json").semi.ridge_test_share == 0.0
    assert preset_config("paper", "trs").semi.ridge_test_share == 0.0  # the paper's reading: the student alone


@pytest.mark.parametrize("value", ["-0.5", "1.5", "nan"])
def test_a_ridge_share_outside_0_1_is_refused(tiny_dataset, fast_flags, value):
    with pytest.raises(UserError, match="ridge_test_share"):
        config_of(tiny_dataset, fast_flags, f"semi.ridge_test_share={value}")

"""``semi.teacher_ridge_share``: where the EMA teacher teaches, its pseudo-labels are moved towards
the ridge's, ``(1 - share) * EMA + share * ridge`` per unlabelled video, with the EMA teacher's
confidences (train.methods.pseudo_labels.BlendedTeacherSource)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aqa.config import to_dict
from aqa.errors import UserError
from train.config import apply_overrides, config_from_json, preset_config
from train.data import prepare_data
from train.methods import make_method
from train.methods.pseudo_labels import (
    BlendedTeacherSource, Context, RidgeTeacherSource, TeacherSource, build_sources,
)
from training import fit_on_one_thread

pytestmark = pytest.mark.usefixtures("one_thread")

NEVER_DROPS = "semi.graph_guard_margin=2"  # the guard keeps the graph: the EMA teacher teaches
ALWAYS_DROPS = "semi.graph_guard_margin=-2"  # the guard drops the graph: the ridge teaches


def config_of(tiny_dataset, fast_flags, *overrides):
    config = dataclasses.replace(preset_config("default", "trs"), features=str(tiny_dataset["cache"]),
                                 dataset="manifest", manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    return apply_overrides(config, [*fast_flags[1::2], *overrides])


class FixedTeacher:
    """An EMA teacher stand-in with known values and confidences."""

    name = "teacher"
    needs_reference_network = False

    def __init__(self, values: torch.Tensor, confidence: torch.Tensor):
        self.values, self.confidence = values, confidence

    def estimate(self, context):
        return self.values, self.confidence


def test_its_values_are_the_share_weighted_mean_and_its_confidences_the_ema_teachers(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags)
    data = prepare_data(config)
    targets = np.linspace(-1.0, 1.0, len(data.labelled)).astype(np.float32)
    context = Context(data=data, unlabelled=torch.from_numpy(data.unlabelled), labelled=torch.from_numpy(data.labelled),
                      labelled_targets=torch.from_numpy(targets), views=None, generator=None, teacher=None,
                      reference=None)
    ema_values = torch.linspace(-2.0, 2.0, len(data.unlabelled), dtype=torch.float64)
    ema_confidence = torch.linspace(0.5, 4.0, len(data.unlabelled), dtype=torch.float64)
    ridge_values = RidgeTeacherSource(config.ridge).estimate(context)[0]
    for share in (0.25, 0.5, 1.0):
        values, confidence = BlendedTeacherSource(FixedTeacher(ema_values, ema_confidence),
                                                  RidgeTeacherSource(config.ridge), share).estimate(context)
        torch.testing.assert_close(values, (1 - share) * ema_values + share * ridge_values)
        assert torch.equal(confidence, ema_confidence)


def test_half_by_default_off_in_the_paper_preset_and_in_earlier_run_folders(tiny_dataset, fast_flags):
    assert preset_config("default", "trs").semi.teacher_ridge_share == 0.5  # trs version 12
    assert preset_config("paper", "trs").semi.teacher_ridge_share == 0.0
    saved = to_dict(config_of(tiny_dataset, fast_flags))
    saved.pop("resolved", None)
    del saved["semi"]["teacher_ridge_share"]  # a run folder of trs version 11 or earlier
    assert config_from_json(saved, "config.json").semi.teacher_ridge_share == 0.0


def test_the_configuration_builds_it_only_where_the_ema_teacher_teaches(tiny_dataset, fast_flags):
    plain = config_of(tiny_dataset, fast_flags, "semi.teacher_ridge_share=0")
    assert type(build_sources(plain, ["teacher"], "ema")[0]) is TeacherSource
    blended = config_of(tiny_dataset, fast_flags)
    source = build_sources(blended, ["teacher"], "ema")[0]
    assert isinstance(source, BlendedTeacherSource) and source.share == 0.5 and source.name == "teacher"
    assert isinstance(build_sources(blended, ["teacher"], "ridge")[0], RidgeTeacherSource)  # the ridge teaches alone


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_a_share_outside_0_1_is_refused(tiny_dataset, fast_flags, value):
    with pytest.raises(UserError, match="teacher_ridge_share"):
        config_of(tiny_dataset, fast_flags, f"semi.teacher_ridge_share={value}")


def test_a_run_where_the_ema_teacher_teaches_refreshes_with_the_blend(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags, NEVER_DROPS, "semi.teacher_ridge_share=0.5", "semi.use_memory=false")
    result = fit_on_one_thread(config)
    assert result.diagnostics["gate"]["teacher"] == "ema"
    plain = fit_on_one_thread(apply_overrides(config, ["semi.teacher_ridge_share=0"]))
    assert not np.allclose(result.predictions, plain.predictions)  # it changes the run
    # the last refresh's teacher values sit between a pure EMA teacher's and the ridge's: their mean
    refresh = result.method.last_refresh
    ridge = make_method(dataclasses.replace(config, method="ridge"), result.data)
    mean, std = result.method.target_mean, result.method.target_std
    ridge_values = (ridge.predict_scores(refresh["rows"]) - mean) / std
    ema_part = 2 * np.asarray(refresh["teacher_value"]) - ridge_values
    # what is left after removing the ridge's half is an EMA teacher's output: not the ridge's
    assert not np.allclose(ema_part, ridge_values, atol=1e-3)


def test_where_the_ridge_teaches_the_share_changes_nothing(tiny_dataset, fast_flags):
    config = config_of(tiny_dataset, fast_flags, ALWAYS_DROPS)
    plain = fit_on_one_thread(config)
    blended = fit_on_one_thread(apply_overrides(config, ["semi.teacher_ridge_share=0.5"]))
    assert plain.diagnostics["gate"]["teacher"] == blended.diagnostics["gate"]["teacher"] == "ridge"
    np.testing.assert_array_equal(plain.predictions, blended.predictions)


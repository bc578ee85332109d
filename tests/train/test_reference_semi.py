"""trs options that give the reference network a part in the semi-supervised phase:
``reference.semi_training`` (it keeps training on pseudo-labelled pairs) and
``semi.fusion = "balanced"`` (every source weighs the same on average when fused)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from aqa.errors import UserError
from train.config import apply_overrides, preset_config
from train.data import prepare_data
from train.methods import make_method
from train.methods.pseudo_labels import build_pseudo_labelling, fuse_balanced, fuse_by_confidence
from train.models import regression_loss

FAST = ["optim.epochs=8", "semi.semi_epochs=2", "reference.epochs=3", "head.dim=16", "head.token_hidden=8",
        "head.channel_hidden=16", "reference.dim=16", "reference.heads=2", "reference.exemplars=5",
        "semi.mc_samples=3", "semi.gate_epochs=3", "semi.gate_reference_epochs=3", "semi.gate_repeats=1"]


def _config(tiny_dataset, *overrides):
    config = dataclasses.replace(preset_config("default", "trs"), features=str(tiny_dataset["cache"]),
                                 dataset="manifest", manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    return apply_overrides(config, FAST + list(overrides))


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(config, data, stop_after: int | None = None):
    method = make_method(config, data)
    while not method.finished and (stop_after is None or method.completed < stop_after):
        method.run_unit()
    return method


def _reference_after_burn_in(method) -> dict:
    return {name: value.clone() for name, value in method.reference.state_dict().items()}


def test_balanced_fusion_gives_each_source_the_same_mean_weight():
    teacher = (torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64),
               torch.tensor([100.0, 100.0, 100.0, 100.0], dtype=torch.float64))
    reference = (torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64),
                 torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64))
    precision_value, _ = fuse_by_confidence([teacher, reference])
    balanced_value, balanced_confidence = fuse_balanced([teacher, reference])
    # By precision the low-variance teacher dominates everywhere ...
    assert torch.all(precision_value < 0.03)
    # ... balanced, each source has mean weight 1: the reference's relative confidences 0.5 and 1.5
    assert torch.allclose(balanced_value, torch.tensor([0.5 / 1.5, 0.5 / 1.5, 1.5 / 2.5, 1.5 / 2.5],
                                                       dtype=torch.float64))
    assert torch.allclose(balanced_confidence, torch.tensor([1.5, 1.5, 2.5, 2.5], dtype=torch.float64))
    # A single source is passed through with its confidences rescaled only.
    value, confidence = fuse_balanced([reference])
    assert torch.equal(value, reference[0]) and torch.allclose(confidence.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_weighted_regression_loss_is_a_weighted_mean():
    value, log_variance = torch.tensor([1.0, 3.0]), torch.zeros(2)
    target = torch.zeros(2)
    squared, _ = regression_loss(value, log_variance, target, torch.tensor([3.0, 1.0]))
    assert squared.item() == pytest.approx((3 * 1 + 1 * 9) / 4)
    plain, _ = regression_loss(value, log_variance, target)
    same, _ = regression_loss(value, log_variance, target, torch.ones(2))
    assert plain.item() == pytest.approx(same.item())


def test_the_reference_trains_in_the_semi_phase_only_when_asked(tiny_dataset):
    frozen_config = _config(tiny_dataset, "semi.gate=false", "reference.semi_training=false")
    training_config = _config(tiny_dataset, "semi.gate=false", "reference.semi_training=true")
    data = prepare_data(frozen_config)
    burn_in = sum(unit.phase != "semi" for unit in make_method(frozen_config, data).units)

    frozen = _run(frozen_config, data)
    training = _run(training_config, data)
    burnt_in = _run(training_config, data, stop_after=burn_in)
    # The burn-in is the same whether or not the reference trains later ...
    for name, value in _reference_after_burn_in(burnt_in).items():
        assert torch.equal(value, frozen.reference.state_dict()[name]), name
    # ... the frozen reference stays as the burn-in left it, the training one moves
    changed = [name for name, value in training.reference.state_dict().items()
               if not torch.equal(value, frozen.reference.state_dict()[name])]
    assert changed
    rows = np.arange(len(data.keys))
    assert not np.array_equal(training.predict_scores(rows), frozen.predict_scores(rows))


def test_resume_mid_semi_phase_with_a_training_reference_is_bit_identical(tiny_dataset):
    config = _config(tiny_dataset, "reference.semi_training=true", "semi.fusion=balanced", "semi.semi_epochs=3")
    data = prepare_data(config)
    straight = _run(config, data)
    semi_start = next(index for index, unit in enumerate(straight.units) if unit.phase == "semi")
    interrupted = _run(config, data, stop_after=semi_start + 2)
    buffer = io.BytesIO()
    torch.save(interrupted.state(), buffer)
    buffer.seek(0)
    resumed = make_method(config, data)
    resumed.load_state(torch.load(buffer, weights_only=True))
    while not resumed.finished:
        resumed.run_unit()
    assert np.array_equal(resumed.predict_scores(data.test), straight.predict_scores(data.test))
    for name, value in straight.reference.state_dict().items():
        assert torch.equal(resumed.reference.state_dict()[name], value), name


@pytest.mark.parametrize("value", ["mean", "PRECISION", "1"])
def test_an_unknown_fusion_is_refused(tiny_dataset, value):
    with pytest.raises(UserError, match="fusion"):
        _config(tiny_dataset, f"semi.fusion={value}")


def test_the_reference_shares_the_test_prediction_only_when_asked(tiny_dataset):
    """``reference.test_share``: 0 is the student alone (the same code path as before, bit for bit);
    otherwise (1 - share) x student + share x the reference against the labelled exemplars."""
    from train.methods.pseudo_labels import pools_for, score_against_exemplars
    from train.methods.supervised import SupervisedMethod

    config = _config(tiny_dataset, "semi.gate=false", "reference.test_share=0", "semi.graph_test_share=0")
    data = prepare_data(config)
    trained = _run(config, data)
    rows = np.concatenate([data.validation, data.test]) if len(data.validation) else np.asarray(data.test)
    student = SupervisedMethod.predict_scores(trained, rows)
    assert np.array_equal(trained.predict_scores(rows), student)

    index = torch.from_numpy(rows).long()
    by_reference, _, _ = score_against_exemplars(
        trained.reference, trained.views.canonical(index), trained.views.canonical(trained.labelled),
        trained.labelled_targets, pools_for(data, trained.labelled, index))
    reference = data.to_score(rows, by_reference.numpy() * trained.target_std + trained.target_mean)
    for share in (0.25, 1.0):
        trained.config = apply_overrides(config, [f"reference.test_share={share}"])
        mixed = trained.predict_scores(rows)
        assert np.allclose(mixed, (1 - share) * student + share * reference, rtol=1e-6, atol=1e-6)
        assert not np.allclose(mixed, student)


def test_the_graph_shares_the_test_prediction_when_the_pseudo_labels_went_through_it(tiny_dataset):
    """``semi.graph_test_share``: (1 - share) x (student and reference) + share x the mean of the
    video's ``graph_neighbours`` most similar training videos' labels and last pseudo-labels;
    nothing when the run's pseudo-labels did not go through the graph."""
    from train.methods.supervised import SupervisedMethod

    config = _config(tiny_dataset, "semi.gate=false", "reference.test_share=0", "semi.graph_test_share=0.5")
    data = prepare_data(config)
    trained = _run(config, data)
    rows = np.concatenate([data.validation, data.test]) if len(data.validation) else np.asarray(data.test)
    student = SupervisedMethod.predict_scores(trained, rows)
    # by hand: cosine similarity of time-aligned tokens, each position standardised over the nodes
    nodes = np.concatenate([trained.labelled.numpy(), trained.unlabelled.numpy()])
    values = np.concatenate([trained.labelled_targets.double().numpy(),
                             trained.pseudo[trained.unlabelled].double().numpy()])
    tokens = data.tokens[:, 0].astype(np.float64)
    similarity = np.zeros((len(rows), len(nodes)))
    for position in range(tokens.shape[1]):
        node_part = tokens[nodes, position]
        centre, spread = node_part.mean(axis=0), node_part.std(axis=0)
        spread = np.where(spread > 1e-12, spread, 1.0)

        def unit(part):
            part = (part - centre) / spread
            return part / np.linalg.norm(part, axis=1, keepdims=True)
        similarity += unit(tokens[rows, position]) @ unit(node_part).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :config.semi.graph_neighbours]
    graph = data.to_score(rows, values[nearest].mean(axis=1) * trained.target_std + trained.target_mean)
    mixed = trained.predict_scores(rows)
    assert np.allclose(mixed, 0.5 * student + 0.5 * graph, rtol=1e-5, atol=1e-5)
    assert not np.allclose(mixed, student)
    assert trained.prediction_fields()["graph_test_share"] == 0.5
    assert trained.prediction_fields()["graph_node_tokens"].shape[0] == len(nodes)

    for off in ("semi.graph_test_share=0", "semi.use_graph=false"):
        trained.config = apply_overrides(config, [off])
        trained.labelling = build_pseudo_labelling(trained.config, len(data.keys))
        assert np.array_equal(trained.predict_scores(rows), student), off
        assert trained.prediction_fields()["graph_test_share"] == 0.0
        assert "graph_node_tokens" not in trained.prediction_fields()


@pytest.mark.parametrize("share", ["0", "0.5"])
def test_test_predictions_do_not_depend_on_the_order_or_repetition_of_the_request(tiny_dataset, share):
    """At test time every labelled video of the pool is an exemplar (no random draw): predicting
    twice gives the same scores, and a reversed request (a negatively strided array) the same
    scores reversed."""
    config = _config(tiny_dataset, "semi.gate=false", f"reference.test_share={share}")
    data = prepare_data(config)
    trained = _run(config, data)
    rows = np.asarray(data.test)
    first = trained.predict_scores(rows)
    assert np.array_equal(first, trained.predict_scores(rows))
    reordered = trained.predict_scores(rows[::-1])[::-1]
    assert np.allclose(reordered, first, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_a_test_share_outside_zero_to_one_is_refused(tiny_dataset, value):
    with pytest.raises(UserError, match="test_share"):
        _config(tiny_dataset, f"reference.test_share={value}")

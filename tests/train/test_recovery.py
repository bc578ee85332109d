"""Masked-clip recovery as a second loss of the labelled-only epochs (``optim.recovery_weight``)."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest
import torch

from aqa.errors import UserError
from pipeline import main
from train.config import HeadConfig, apply_overrides, preset_config
from train.data import prepare_data
from train.methods import make_method
from train.models import MaskedRecovery, MixerHead
from cli_checks import expect_one_line_error
from training import train_to_end

FAST = ["optim.epochs=6", "head.dim=16", "head.token_hidden=8", "head.channel_hidden=16"]


def _config(tiny_dataset, *overrides, method="supervised"):
    config = preset_config("default", method)
    config = dataclasses.replace(config, features=str(tiny_dataset["cache"]), dataset="manifest",
                                 manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    return apply_overrides(config, FAST + list(overrides))


@pytest.mark.parametrize("num_tokens, share, expected", [(4, 0.5, 2), (5, 0.5, 2), (1, 0.5, 1), (10, 0.05, 1)])
def test_recovery_masks_its_share_of_each_video_and_never_trains_the_score_layer(num_tokens, share, expected):
    torch.manual_seed(0)
    head = MixerHead(num_tokens, 12, HeadConfig(dim=8, token_hidden=4, channel_hidden=8))
    recovery = MaskedRecovery(8, 12, share)
    seen = []
    token_states = head.token_states

    def recording(tokens, masked=None, mask_vector=None):
        seen.append(masked)
        return token_states(tokens, masked, mask_vector)

    head.token_states = recording
    loss = recovery.loss(head, torch.randn(6, num_tokens, 12), torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert seen[0].shape == (6, num_tokens) and seen[0].sum(dim=1).tolist() == [expected] * 6
    assert head.head.weight.grad is None, "the score layer is not part of the recovery task"
    trained = [recovery.mask_vector, recovery.decoder.weight, head.blocks[0].channel_mlp[0].weight]
    if expected < num_tokens:  # some clips stay visible: the projection learns from them
        trained.append(head.project.weight)
    for part in trained:
        assert part.grad is not None and part.grad.abs().sum() > 0


def test_the_score_path_is_the_token_states_pooled():
    torch.manual_seed(0)
    head = MixerHead(5, 12, HeadConfig(dim=8, token_hidden=4, channel_hidden=8)).eval()
    tokens = torch.randn(3, 5, 12)
    value, _ = head(tokens)
    assert torch.equal(value, head.head(head.token_states(tokens).mean(dim=1))[:, 0])


def test_off_by_default_with_no_state_entries(tiny_dataset):
    method = make_method(_config(tiny_dataset), prepare_data(_config(tiny_dataset)))
    assert method.config.optim.recovery_weight == 0 and method.recovery is None
    assert not [name for name in method.state() if name.startswith("recovery")]


@pytest.mark.parametrize("method_name", ["supervised", "trs"])
def test_recovery_changes_the_model_but_draws_nothing_from_the_runs_own_streams(tiny_dataset, method_name):
    # trs: its burn-in is the labelled-only phase; the run stops after it (the semi phase's
    # draws would differ once the students differ).
    stop = ["semi.semi_epochs=0", "semi.gate=false", "semi.use_reference=false"] if method_name == "trs" else []
    plain = train_to_end(_config(tiny_dataset, *stop, method=method_name))
    rng_after_plain = torch.get_rng_state()
    with_recovery = train_to_end(_config(tiny_dataset, *stop, "optim.recovery_weight=1", method=method_name))
    rng_after_recovery = torch.get_rng_state()
    assert torch.equal(plain.generator.get_state(), with_recovery.generator.get_state())
    assert torch.equal(rng_after_plain, rng_after_recovery), "dropout drew from the run's RNG"
    assert with_recovery.history[-1]["recovery_loss"] < with_recovery.history[0]["recovery_loss"]
    rows = torch.arange(len(plain.data.keys)).numpy()
    assert not (plain.predict_scores(rows) == with_recovery.predict_scores(rows)).all()


@pytest.mark.parametrize("override, field", [
    ("optim.recovery_weight=-1", "recovery_weight"),
    ("optim.recovery_mask_share=0", "recovery_mask_share"),
    ("optim.recovery_mask_share=1", "recovery_mask_share"),
    ("optim.recovery_batch=0", "recovery_batch"),
])
def test_bad_recovery_settings_are_one_line_user_errors(tiny_dataset, override, field):
    with pytest.raises(UserError) as caught:
        _config(tiny_dataset, override)
    assert field in str(caught.value) and "\n" not in str(caught.value)


def _train_args(tiny_dataset, fast_flags, run_dir, *extra):
    return ["train", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
            "--method", "trs", "--ratio", "0.5", "--seed", "0", "--run-dir", str(run_dir), "--threads", "1",
            "--no-progress", *fast_flags, "--set", "optim.recovery_weight=1", *extra]


def test_resume_in_the_burn_in_with_recovery_is_bit_identical_and_predict_reads_the_run(
        tiny_dataset, fast_flags, tmp_path):
    whole = tmp_path / "whole"
    assert main(_train_args(tiny_dataset, fast_flags, whole)) == 0
    resumed = tmp_path / "resumed"
    assert main(_train_args(tiny_dataset, fast_flags, resumed, "--stop-after-epoch", "5")) == 3
    assert main(_train_args(tiny_dataset, fast_flags, resumed, "--resume")) == 0
    stored = (whole / "predictions.csv").read_text()
    assert (resumed / "predictions.csv").read_text() == stored
    # The recovery's parts ride in the checkpoint but play no part in scoring.
    test_rows = {row["key"]: float(row["pred"]) for row in csv.DictReader(io.StringIO(stored)) if row["split"] == "test"}
    out = tmp_path / "scores.csv"
    assert main(["predict", "--run", str(whole), "--features", str(tiny_dataset["cache"]), "--keys",
                 ",".join(test_rows), "--out", str(out), "--threads", "1"]) == 0
    predicted = {row["key"]: float(row["pred"]) for row in csv.DictReader(out.open())}
    assert predicted.keys() == test_rows.keys()
    assert all(abs(predicted[key] - test_rows[key]) <= 1e-4 * max(1.0, abs(test_rows[key])) for key in test_rows)


@pytest.mark.parametrize("edit, fragment", [
    (lambda state: state.pop("recovery_rng"), "has no 'recovery_rng' entry"),
    (lambda state: state["recovery"].__setitem__("mask_vector", torch.zeros(3)), "recovery mask_vector"),
    (lambda state: state.__setitem__("recovery_generator", state["recovery_generator"][:10]),
     "recovery_generator is a torch.uint8 tensor of shape [10]"),
])
def test_a_checkpoint_with_a_bad_recovery_entry_is_refused(tiny_dataset, fast_flags, tmp_path, capsys, edit, fragment):
    run = tmp_path / "run"
    assert main(_train_args(tiny_dataset, fast_flags, run, "--stop-after-epoch", "3")) == 3
    checkpoint = tmp_path / ".run.partial" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    torch.save(state, checkpoint)
    line = expect_one_line_error(_train_args(tiny_dataset, fast_flags, run, "--resume"), capsys,
                                 untouched=[checkpoint], absent=[run])
    assert line.startswith(f"error: {checkpoint}: ") and fragment in line

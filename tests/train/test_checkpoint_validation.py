"""`train --resume` checks a checkpoint against the run it claims to continue before using it.

A checkpoint loads with ``weights_only=True`` whatever plain data it holds, so a tampered or
foreign one can have any structure. Each is refused with one line naming the checkpoint (exit
status 2); the interrupted run is left as it was and nothing is published as a finished run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from pipeline import main
from cli_checks import expect_one_line_error

TRS_UNITS = 12 + 4 + 1 + 3  # optim.epochs + reference.epochs + the gate + semi.semi_epochs of the FAST flags
STOPPED_AT = 18  # in the semi-supervised phase: student, teacher, reference and memories all saved


def train_args(dataset, run_dir: Path, fast_flags, *extra, method="trs") -> list[str]:
    return ["train", "--features", str(dataset["cache"]), "--manifest", str(dataset["manifest"]), "--method", method,
            "--ratio", "0.5", "--seed", "0", "--run-dir", str(run_dir), "--threads", "1", "--no-progress",
            *fast_flags, *extra]


@pytest.fixture(scope="module")
def interrupted_trs_run(tiny_dataset, fast_flags, tmp_path_factory) -> Path:
    """The work folder of a trs run stopped after epoch STOPPED_AT (copied by each test)."""
    folder = tmp_path_factory.mktemp("interrupted")
    assert main(train_args(tiny_dataset, folder / "run", fast_flags, "--stop-after-epoch", str(STOPPED_AT))) == 3
    return folder / ".run.partial"


@pytest.fixture(scope="module")
def finished_ridge_run(tiny_dataset, fast_flags, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ridge")
    assert main(train_args(tiny_dataset, folder / "run", fast_flags, method="ridge")) == 0
    return folder / "run"


def tampered(state: dict, edit: Callable[[dict], object]) -> object:
    """``edit``'s result when it returns one (a whole replacement), else the edited ``state``."""
    replaced = edit(state)
    return state if replaced is None else replaced


def first_key(mapping) -> str:
    return next(iter(mapping))


def set_entry(name: str, value):
    return lambda state: state.__setitem__(name, value)


def reshape_first_student_tensor(state):
    key = first_key(state["student"])
    state["student"][key] = torch.zeros(3, 3)


def reshape_an_adam_moment(state):
    moments = state["optimiser"]["state"]
    moments[first_key(moments)]["exp_avg"] = torch.zeros(7)


def drop_a_memory(state):
    del state["memory"]["teacher_value"]


TAMPERED = {
    "a-list-not-a-dict": (lambda state: [1, 2, 3], "not a run checkpoint (holds a list, expected a dict"),
    "a-tensor-not-a-dict": (lambda state: torch.zeros(4), "not a run checkpoint (holds a Tensor"),
    "missing-student": (lambda state: state.pop("student") and None, "cannot resume: the checkpoint has no 'student'"),
    "missing-completed": (lambda state: state.pop("completed") and None, "has no 'completed' entry"),
    "student-tensor-of-another-shape": (reshape_first_student_tensor, "student", "tensor of shape [3, 3]"),
    "student-as-a-list": (lambda state: state.__setitem__("student", list(state["student"].values())),
                          "student is a list, expected a model state dict"),
    "too-many-epochs": (set_entry("completed", 50), f"claims 50 finished epochs but the run has {TRS_UNITS}"),
    "negative-epochs": (set_entry("completed", -1), "claims -1 finished epochs; a count cannot be negative"),
    "string-epochs": (set_entry("completed", "5"), "completed is '5', expected a whole number"),
    "fractional-epochs": (set_entry("completed", 5.0), "completed is 5.0, expected a whole number"),
    "boolean-epochs": (set_entry("completed", True), "completed is True, expected a whole number"),
    "epochs-that-history-does-not-record": (set_entry("completed", 12),
                                            f"history has {STOPPED_AT} epoch records but the checkpoint claims 12"),
    "another-method": (set_entry("method", "supervised"), "was saved by a 'supervised' run, this run trains 'trs'"),
    "another-format": (set_entry("format", "1"), "has state format '1', this version reads 1"),
    "optimiser-learning-rate-changed": (lambda state: state["optimiser"]["param_groups"][0].__setitem__("lr", 0.5),
                                        "optimiser lr is 0.5, the run's is 0.003"),
    "optimiser-moment-of-another-shape": (reshape_an_adam_moment, "optimiser exp_avg of parameter"),
    "optimiser-as-a-string": (set_entry("optimiser", "adam"), "optimiser is a str, expected an optimiser state dict"),
    "no-teacher-in-the-semi-phase": (set_entry("teacher", None), f"has no teacher after {STOPPED_AT} finished epochs"),
    "no-reference-after-its-phase": (set_entry("reference", None), "has no reference network"),
    "a-memory-missing": (drop_a_memory, "memory holds"),
    "generator-state-truncated": (lambda state: state.__setitem__("generator", state["generator"][:10]),
                                  "generator is a torch.uint8 tensor of shape [10]"),
    "wall-seconds-as-text": (set_entry("wall_seconds", "abc"), "has wall_seconds 'abc', expected a number of seconds"),
    "history-as-a-dict": (set_entry("history", {}), "history is a dict, expected a list"),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_tampered_checkpoint_is_refused_on_resume_by_name_and_nothing_is_published(
        tiny_dataset, fast_flags, interrupted_trs_run, tmp_path, capsys, case):
    edit, *fragments = case
    work = tmp_path / ".run.partial"
    shutil.copytree(interrupted_trs_run, work)
    checkpoint = work / "checkpoint.pt"
    torch.save(tampered(torch.load(checkpoint, weights_only=True), edit), checkpoint)
    before = snapshot(tmp_path)

    line = expect_one_line_error(train_args(tiny_dataset, tmp_path / "run", fast_flags, "--resume"), capsys)

    assert line.startswith(f"error: {checkpoint}: ")
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "run").exists(), "a refused checkpoint must not be published as a finished run"
    assert snapshot(tmp_path) == before, "the interrupted run is left as it was"


@pytest.mark.parametrize(
    "edit, message",
    [(set_entry("completed", 4), "claims 4 finished epochs but ridge regression has none"),
     (set_entry("method", "trs"), "was saved by a 'trs' run, this run trains 'ridge'"),
     (lambda state: state.__setitem__("config", {**state["config"], "seed": 7}),
      "was saved by a run of another configuration"),
     (lambda state: state.__setitem__("keys", state["keys"][:-1]), "was saved by a run on other videos")],
    ids=["ridge-with-epochs", "another-method", "another-config", "other-videos"],
)
def test_a_final_checkpoint_left_by_a_kill_before_publishing_is_checked_too(
        tiny_dataset, fast_flags, finished_ridge_run, tmp_path, capsys, edit, message):
    # A kill between the final checkpoint and the rename leaves a complete work folder behind.
    work = tmp_path / ".run.partial"
    shutil.copytree(finished_ridge_run, work)
    checkpoint = work / "checkpoint.pt"
    torch.save(tampered(torch.load(checkpoint, weights_only=True), edit), checkpoint)
    line = expect_one_line_error(train_args(tiny_dataset, tmp_path / "run", fast_flags, "--resume", method="ridge"), capsys)
    assert line.startswith(f"error: {checkpoint}: cannot resume: the checkpoint ") and message in line
    assert not (tmp_path / "run").exists()


def test_an_untampered_final_checkpoint_is_published_on_resume(tiny_dataset, fast_flags, finished_ridge_run, tmp_path):
    shutil.copytree(finished_ridge_run, tmp_path / ".run.partial")
    assert main(train_args(tiny_dataset, tmp_path / "run", fast_flags, "--resume", method="ridge")) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize(
    "method, stop_after, extra",
    [("supervised", 5, []), ("mean-teacher", 13, []), ("pseudo-label", 14, []),
     ("trs", 14, ["--keep-epoch-predictions"])],
)
def test_genuine_checkpoints_of_every_phase_pass_the_checks(tiny_dataset, fast_flags, tmp_path, method, stop_after,
                                                            extra):
    args = train_args(tiny_dataset, tmp_path / "run", fast_flags, *extra, method=method)
    assert main([*args, "--stop-after-epoch", str(stop_after)]) == 3
    assert main([*args, "--resume"]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()

"""`pipeline.py tune` on the tiny dataset: seeded, resumable, blind to the test split, and its
outputs usable (best_config.json trains with `train --config`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

optuna = pytest.importorskip("optuna")

from pipeline import main  # noqa: E402
from train.config import SEARCH_SPACES, apply_overrides, build_config, preset_config  # noqa: E402
from train.search_spaces import Choice, assignment  # noqa: E402

# supervised over two cheap fields: real neural training whose validation ρ moves with them.
SEARCHED = ["--method", "supervised", "--params", "optim.lr,head.dropout"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def noisy_manifest(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny manifest with judging noise on every score: validation ρ is then below 1 and
    differs between settings, so equal values across studies mean something."""
    with open(tiny_dataset["manifest"], newline="") as handle:
        rows = list(csv.reader(handle))
    generator = np.random.default_rng(1)
    for row in rows[1:]:
        row[2] = f"{float(row[2]) + generator.normal() * 8:.4f}"
    path = tmp_path_factory.mktemp("noisy") / "manifest.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


FAST_FLAGS: list[str] = []  # the conftest's fast --set flags


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_flags):
    FAST_FLAGS[:] = fast_flags


def tune_args(dataset, manifest, folder: Path, *extra, trials="4", seed="0", name="study"):
    return ["tune", "--features", str(dataset["cache"]), "--manifest", str(manifest), "--ratio", "0.5",
            "--seeds", "0-1", "--trials", trials, "--seed", seed, "--study-db", str(folder / f"{name}.db"),
            "--out", str(folder / f"{name}-out"), "--threads", "1", "--no-progress", *FAST_FLAGS, *extra]


def trials_of(database: Path) -> list[tuple]:
    """(number, state, params, value, per-seed validation ρ) of every trial in the one study of ``database``."""
    storage = f"sqlite:///{database}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [(trial.number, trial.state.name, trial.params, trial.value, trial.user_attrs.get("validation_spearman"))
            for trial in study.trials]


@pytest.fixture(scope="module")
def reference_study(tiny_dataset, noisy_manifest, tmp_path_factory, _fast):
    """One fresh 4-trial study, the reference the other studies are compared with."""
    folder = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    assert main(tune_args(tiny_dataset, noisy_manifest, folder, *SEARCHED)) == 0
    torch.set_num_threads(threads)
    return {"folder": folder, "trials": trials_of(folder / "study.db"), "out": folder / "study-out"}


def test_the_same_seed_gives_the_same_trials_and_values_and_another_seed_other_trials(
        tiny_dataset, noisy_manifest, reference_study, tmp_path):
    reference = reference_study["trials"]
    assert [trial[1] for trial in reference] == ["COMPLETE"] * 4
    assert len({trial[3] for trial in reference}) > 1, "the values must differ between settings"
    assert main(tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED)) == 0
    assert trials_of(tmp_path / "study.db") == reference
    assert main(tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED, trials="2", seed="1", name="other")) == 0
    assert [trial[2] for trial in trials_of(tmp_path / "other.db")] != [trial[2] for trial in reference[:2]]


def test_a_study_resumes_with_more_trials_and_ends_as_an_uninterrupted_one(
        tiny_dataset, noisy_manifest, reference_study, tmp_path, capsys):
    assert main(tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED, trials="2")) == 0
    first = trials_of(tmp_path / "study.db")
    assert len(first) == 2
    capsys.readouterr()
    assert main(tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED)) == 0
    assert "supervised baseline" not in capsys.readouterr().err, "the baseline is kept in the study"
    resumed = trials_of(tmp_path / "study.db")
    assert len(resumed) == 4 and resumed[:2] == first
    assert resumed == reference_study["trials"]
    # The same total again: nothing to run, the report is written again.
    assert main(tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED)) == 0
    assert trials_of(tmp_path / "study.db") == resumed


def test_shuffled_test_labels_leave_every_trial_unchanged(tiny_dataset, noisy_manifest, reference_study, tmp_path):
    with open(noisy_manifest, newline="") as handle:
        rows = list(csv.reader(handle))
    test_rows = [row for row in rows[1:] if row[3] == "test"]
    scores = [row[2] for row in test_rows]
    for row, score in zip(test_rows, scores[::-1]):  # reversed: every test video gets another's score
        row[2] = score
        row[rows[0].index("execution")] = "0.0"  # and the other target column too
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert main(tune_args(tiny_dataset, shuffled, tmp_path, *SEARCHED)) == 0
    assert trials_of(tmp_path / "study.db") == reference_study["trials"]


def test_trials_train_on_the_train_split_only(tiny_dataset):
    from train.tune import ValidationRunner

    config = build_config(None, FAST_FLAGS[1::2], features=str(tiny_dataset["cache"]), manifest=str(tiny_dataset["manifest"]),
                          method="supervised", ratio=0.5, validation_fraction=0.25)
    data = ValidationRunner().data_for(config)
    train_keys = set(tiny_dataset["keys"][:-12])  # the conftest's last 12 videos are the test split
    assert set(data.keys) == train_keys
    assert len(data.test) == 0 and len(data.validation) == 7
    assert set(data.keys[index] for index in data.validation) <= train_keys


def test_outputs_and_best_config_trains_with_train_config(reference_study, tmp_path, capsys):
    out = reference_study["out"]
    for name in ("best_config.json", "top_trials.md", "top_trials.csv", "study.json", "tune_config.json"):
        assert (out / name).is_file(), name
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 1000, name
    reference = reference_study["trials"]
    best = max(reference, key=lambda trial: (trial[3], -trial[0]))
    study = json.loads((out / "study.json").read_text())
    assert study["best"]["number"] == best[0] and study["best"]["params"] == best[2]
    with open(out / "top_trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["trial"]) for row in rows] == [trial[0] for trial in
                                                   sorted(reference, key=lambda trial: (-trial[3], trial[0]))]
    assert float(rows[0]["paired_delta_mean"]) == pytest.approx(best[3])
    assert "± " in (out / "top_trials.md").read_text()

    chosen = json.loads((out / "best_config.json").read_text())
    assert chosen["method"] == "supervised" and chosen["validation_fraction"] == 0.0
    assert chosen["optim"]["lr"] == best[2]["optim.lr"] and chosen["head"]["dropout"] == best[2]["head.dropout"]
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(out / "best_config.json"), "--run-dir", str(run_dir), "--threads", "1",
                 "--no-progress"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == best[2]["optim.lr"]


def test_one_trial_writes_no_importance_plot_and_says_why(tiny_dataset, tmp_path, capsys):
    args = tune_args(tiny_dataset, tiny_dataset["manifest"], tmp_path, "--method", "ridge", trials="1")
    assert main(args) == 0
    out = tmp_path / "study-out"
    assert (out / "history.png").stat().st_size > 0 and not (out / "importance.png").exists()
    assert "no importance plot: 1 complete trial(s)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--method", "boosting"], "unknown method 'boosting'"),
    (["--trials", "0"], "--trials must be in 1.."),
    (["--validation-fraction", "0"], "validation share in (0, 1)"),
    (["--params", "optim.momentum"], "'optim.momentum' is not in the search space of trs"),
    (["--seeds", "3-1"], "runs backwards"),
    (["--keep-epoch-predictions"], "tune writes no run folders"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_dataset, tmp_path, capsys, extra, expected):
    capsys.readouterr()
    assert main(tune_args(tiny_dataset, tiny_dataset["manifest"], tmp_path) + extra) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.parametrize("where", ["study-db", "out"])
def test_a_path_under_a_file_is_refused(tiny_dataset, tmp_path, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = tune_args(tiny_dataset, tiny_dataset["manifest"], tmp_path)
    args[args.index(f"--{where}") + 1] = str(blocker / "inside" / "x")
    capsys.readouterr()
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a file, not a folder" in lines[0], lines
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_file_that_is_not_a_study_database_is_refused(tiny_dataset, tmp_path, capsys):
    database = tmp_path / "study.db"
    database.write_text("a text file, not SQLite\n" * 100)
    capsys.readouterr()
    assert main(tune_args(tiny_dataset, tiny_dataset["manifest"], tmp_path, "--method", "ridge")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not an Optuna study database" in lines[0], lines


@pytest.mark.parametrize("method", sorted(SEARCH_SPACES))
def test_every_search_space_names_real_fields_and_its_ends_are_valid_values(method):
    config = preset_config("default", method)
    for dimension in SEARCH_SPACES[method]:
        ends = dimension.choices if isinstance(dimension, Choice) else (dimension.low, dimension.high)
        for value in ends:
            apply_overrides(config, [assignment(dimension.path, value)])  # raises on a bad path or value


def test_a_tune_killed_mid_trial_resumes_with_the_trials_it_had_finished(
        tiny_dataset, noisy_manifest, reference_study, tmp_path):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    def complete(database: Path) -> int:
        if not database.exists():
            return 0
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
            try:
                return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not there yet
                return 0

    args = tune_args(tiny_dataset, noisy_manifest, tmp_path, *SEARCHED)
    database = tmp_path / "study.db"
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, str(repo / "pipeline.py"), *args], cwd=repo,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while complete(database) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the tune finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # no chance to mark its running trial
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    finished = [trial for trial in trials_of(database) if trial[1] == "COMPLETE"]
    assert 1 <= len(finished) < 4
    assert main(args) == 0
    resumed = trials_of(database)
    done = [trial for trial in resumed if trial[1] == "COMPLETE"]
    assert len(done) == 4 and done[:len(finished)] == finished
    assert finished[0] == reference_study["trials"][0]
    assert {trial[1] for trial in resumed} <= {"COMPLETE", "RUNNING", "FAIL"}

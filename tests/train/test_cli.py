"""`pipeline.py train` / `sweep` end to end on a tiny generated cache and manifest."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aqa.metrics import mse, rl2, spearman
from pipeline import main

METHODS = ["trs", "supervised", "mean-teacher", "pseudo-label", "ridge"]


FAST_FLAGS: list[str] = []


@pytest.fixture(autouse=True)
def _fast(fast_flags):
    FAST_FLAGS[:] = fast_flags


def set_flags(assignments):
    return [flag for assignment in assignments for flag in ("--set", assignment)]


def train_args(dataset, run_dir, *extra, method="trs", ratio="0.5", seed="0"):
    return ["train", "--features", str(dataset["cache"]), "--manifest", str(dataset["manifest"]), "--method", method,
            "--ratio", ratio, "--seed", seed, "--run-dir", str(run_dir), "--threads", "1", "--no-progress",
            *FAST_FLAGS, *extra]


def read_predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_a_complete_run_folder_whose_metrics_match_its_predictions(tiny_dataset, tmp_path, method):
    run_dir = tmp_path / method
    assert main(train_args(tiny_dataset, run_dir, method=method)) == 0
    names = {"config.json", "split.json", "predictions.csv", "metrics.json", "checkpoint.pt"}
    if method == "trs":
        names.add("diagnostics.json")
    assert names <= {path.name for path in run_dir.iterdir()}
    assert not list(tmp_path.glob(".*partial*")), "the temporary build folder must be gone"

    split = json.loads((run_dir / "split.json").read_text())
    assert set(split) == {"labelled", "unlabelled", "test"}
    assert len(split["labelled"]) == 14 and len(split["unlabelled"]) == 14 and len(split["test"]) == 12

    rows = read_predictions(run_dir)
    assert list(rows[0]) == ["key", "split", "true", "pred", "labelled", "group"]
    test_rows = [row for row in rows if row["split"] == "test"]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert sorted(row["key"] for row in test_rows) == sorted(split["test"])
    assert {row["key"] for row in train_rows if row["labelled"] == "1"} == set(split["labelled"])
    assert all(row["labelled"] == "0" for row in test_rows)
    truth = dict(zip(tiny_dataset["keys"], tiny_dataset["scores"]))
    assert all(abs(float(row["true"]) - truth[row["key"]]) < 1e-6 for row in rows)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    true = np.array([float(row["true"]) for row in test_rows])
    pred = np.array([float(row["pred"]) for row in test_rows])
    assert metrics["spearman"] == pytest.approx(spearman(true, pred), abs=1e-9)
    assert metrics["rl2"] == pytest.approx(rl2(true, pred), rel=1e-6)
    assert metrics["mse"] == pytest.approx(mse(true, pred), rel=1e-6)
    for name, value in {"method": method, "ratio": 0.5, "seed": 0, "target": "score", "dataset": "manifest",
                        "n_test": 12, "n_labelled": 14, "n_unlabelled": 14, "preset": "default"}.items():
        assert metrics[name] == value, name
    assert metrics["wall_seconds"] > 0

    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == method and config["ratio"] == 0.5 and config["features"] == str(tiny_dataset["cache"])
    assert config["resolved"]["target"] == "score" and config["resolved"]["n_labelled"] == 14
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["method"] == method and state["final"] is True


def test_scores_that_are_a_function_of_the_features_are_learned(tiny_dataset, tmp_path):
    """The generated score is linear in the mean feature: every method must rank the test videos well."""
    for method in ("ridge", "supervised", "trs"):
        run_dir = tmp_path / method
        assert main(train_args(tiny_dataset, run_dir, "--set", "optim.epochs=40", method=method)) == 0
        rho = json.loads((run_dir / "metrics.json").read_text())["spearman"]
        assert rho > 0.8, (method, rho)


def test_same_seed_same_result_and_other_seed_other_labelled_subset(tiny_dataset, tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for run_dir, seed in ((first, "3"), (second, "3"), (other, "4")):
        assert main(train_args(tiny_dataset, run_dir, seed=seed)) == 0

    def load(run_dir):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return {key: metrics[key] for key in ("spearman", "rl2", "mse")}, json.loads((run_dir / "split.json").read_text())

    metrics_a, split_a = load(first)
    metrics_b, split_b = load(second)
    metrics_c, split_c = load(other)
    assert metrics_a == metrics_b and split_a == split_b
    assert (first / "predictions.csv").read_text() == (second / "predictions.csv").read_text()
    assert set(split_a["labelled"]) != set(split_c["labelled"])
    assert split_a["test"] == split_c["test"]


@pytest.mark.parametrize("stop_after", [13, 18])  # in the reference phase; in the semi-supervised phase
def test_resume_after_an_interruption_reaches_the_same_final_metrics(tiny_dataset, tmp_path, stop_after):
    reference_run = tmp_path / "whole"
    assert main(train_args(tiny_dataset, reference_run)) == 0
    run_dir = tmp_path / "interrupted"
    assert main(train_args(tiny_dataset, run_dir, "--stop-after-epoch", str(stop_after))) == 3
    assert not run_dir.exists(), "an interrupted run must not look like a run folder"
    assert (tmp_path / ".interrupted.partial" / "checkpoint.pt").is_file()
    assert main(train_args(tiny_dataset, run_dir, "--resume")) == 0
    whole = json.loads((reference_run / "metrics.json").read_text())
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for key in ("spearman", "rl2", "mse"):
        assert resumed[key] == whole[key], key
    assert (run_dir / "predictions.csv").read_text() == (reference_run / "predictions.csv").read_text()
    assert json.loads((run_dir / "diagnostics.json").read_text()) == json.loads(
        (reference_run / "diagnostics.json").read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the gate's early workers are forked (Linux)")
def test_resume_with_two_threads_stopped_while_the_gate_works_beside_the_burn_in(tiny_dataset, tmp_path):
    """With two threads the gate's fold jobs run in workers during the burn-in; a run stopped there
    (workers ended) and resumed ends as the uninterrupted run does."""
    import torch

    two = ("--threads", "2")  # after train_args' --threads 1: the last one counts
    run_dir = tmp_path / "interrupted"
    threads = torch.get_num_threads()
    try:
        assert main(train_args(tiny_dataset, tmp_path / "whole", *two)) == 0
        assert main(train_args(tiny_dataset, run_dir, *two, "--stop-after-epoch", "5")) == 3
        assert main(train_args(tiny_dataset, run_dir, *two, "--resume")) == 0
    finally:
        torch.set_num_threads(threads)  # the command set this process's threads
    assert (run_dir / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text()
    assert json.loads((run_dir / "diagnostics.json").read_text()) == json.loads(
        (tmp_path / "whole" / "diagnostics.json").read_text())


def test_resume_after_sigkill_of_a_real_process(tiny_dataset, tmp_path, repo_root):
    args = train_args(tiny_dataset, tmp_path / "killed", "--checkpoint-seconds", "0", "--set", "optim.epochs=60")
    whole = tmp_path / "whole"
    assert main(train_args(tiny_dataset, whole, "--set", "optim.epochs=60")) == 0
    process = subprocess.Popen([sys.executable, str(repo_root / "pipeline.py"), *args], cwd=repo_root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".killed.partial" / "checkpoint.pt"
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed").exists()
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    expected = json.loads((whole / "metrics.json").read_text())
    assert (resumed["spearman"], resumed["rl2"]) == (expected["spearman"], expected["rl2"])


def test_config_json_repeats_a_run(tiny_dataset, tmp_path):
    first = tmp_path / "first"
    assert main(train_args(tiny_dataset, first, method="mean-teacher", seed="2")) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(again), "--threads", "1",
                 "--no-progress"]) == 0
    assert (again / "predictions.csv").read_text() == (first / "predictions.csv").read_text()


def test_existing_run_folder_is_refused_unless_overwrite_or_resume(tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(train_args(tiny_dataset, run_dir, method="ridge")) == 0
    capsys.readouterr()
    assert main(train_args(tiny_dataset, run_dir, method="ridge")) == 2
    assert "run folder exists" in capsys.readouterr().err
    assert main(train_args(tiny_dataset, run_dir, "--resume", method="ridge")) == 0  # finished: nothing to do
    assert main(train_args(tiny_dataset, run_dir, "--overwrite", method="ridge", seed="1")) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 1


def test_epoch_predictions_only_when_asked(tiny_dataset, tmp_path):
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    assert main(train_args(tiny_dataset, plain, method="supervised")) == 0
    assert main(train_args(tiny_dataset, kept, "--keep-epoch-predictions", method="supervised")) == 0
    assert not (plain / "epoch_predictions.csv").exists()
    with open(kept / "epoch_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "key", "true", "pred"]
    assert {int(row["epoch"]) for row in rows} == set(range(1, 13)) and len(rows) == 12 * 12
    last = {row["key"]: float(row["pred"]) for row in rows if row["epoch"] == "12"}
    final = {row["key"]: float(row["pred"]) for row in read_predictions(kept) if row["split"] == "test"}
    assert last == pytest.approx(final)
    # Keeping them changes nothing else.
    assert (plain / "predictions.csv").read_text() == (kept / "predictions.csv").read_text()


def test_validation_fraction_holds_out_labelled_train_videos(tiny_dataset, tmp_path):
    run_dir = tmp_path / "val"
    assert main(train_args(tiny_dataset, run_dir, "--validation-fraction", "0.25", method="ridge")) == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["validation"]) == 7
    assert not set(split["validation"]) & (set(split["labelled"]) | set(split["unlabelled"]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_validation"] == 7 and metrics["validation_spearman"] is not None


def test_difficulty_aware_target_reports_original_units(tmp_path, dataset_writer):
    cache, manifest, keys, scores = dataset_writer(tmp_path / "data", with_difficulty=True)
    run_dir = tmp_path / "run"
    assert main(["train", "--features", str(cache), "--manifest", str(manifest), "--method", "ridge", "--ratio", "0.5",
                 "--run-dir", str(run_dir), "--no-progress", "--set", "ridge.alpha=1"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["difficulty_aware"] is True
    rows = read_predictions(run_dir)
    difficulty = {key: 1.5 + index % 3 * 0.5 for index, key in enumerate(keys)}
    for row in rows:
        assert float(row["true"]) == pytest.approx(scores[keys.index(row["key"])] * difficulty[row["key"]], abs=1e-3)
    # The quality (score / difficulty) is linear in the features: predictions times difficulty track the truth.
    test = [row for row in rows if row["split"] == "test"]
    assert spearman([float(r["true"]) for r in test], [float(r["pred"]) for r in test]) > 0.9
    off = tmp_path / "off"
    assert main(["train", "--features", str(cache), "--manifest", str(manifest), "--method", "ridge", "--ratio", "0.5",
                 "--run-dir", str(off), "--difficulty-aware", "off", "--no-progress", "--set", "ridge.alpha=1"]) == 0
    assert json.loads((off / "config.json").read_text())["resolved"]["difficulty_aware"] is False
    assert (off / "predictions.csv").read_text() != (run_dir / "predictions.csv").read_text()


def test_other_target_column(tiny_dataset, tmp_path):
    run_dir = tmp_path / "exec"
    assert main(train_args(tiny_dataset, run_dir, "--target", "execution", method="ridge")) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["target"] == "execution"
    truth = dict(zip(tiny_dataset["keys"], tiny_dataset["scores"] / 2))
    assert all(abs(float(row["true"]) - truth[row["key"]]) < 1e-3 for row in read_predictions(run_dir))


def test_sweep_runs_the_grid_in_parallel_and_skips_finished_runs(tiny_dataset, tmp_path, capsys):
    args = ["sweep", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
            "--methods", "ridge,supervised", "--ratios", "0.3,0.6", "--seeds", "0-1", "--out", str(tmp_path / "runs"),
            "--jobs", "2", "--threads", "1", "--no-progress", *set_flags(["optim.epochs=3"])]
    assert main(args) == 0
    folders = sorted(path.parent for path in (tmp_path / "runs").rglob("metrics.json"))
    assert len(folders) == 8
    assert (tmp_path / "runs" / "manifest" / "score" / "supervised" / "r0.3" / "s1" / "metrics.json").is_file()
    stamps = {folder: (folder / "metrics.json").stat().st_mtime_ns for folder in folders}
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 finished (skipped), 0 to run" in out
    assert stamps == {folder: (folder / "metrics.json").stat().st_mtime_ns for folder in folders}
    # Another configuration is not "finished": the folder holds a different run, which is reported.
    changed = [*args[:-2], *set_flags(["optim.epochs=4"]), "--methods", "supervised", "--seeds", "0", "--ratios", "0.3"]
    assert main(changed) == 1
    assert "run folder exists" in capsys.readouterr().err


def test_runs_are_named_after_the_dataset_the_cache_recorded(tiny_dataset, tmp_path):
    """Synthetic dives in the MTL-AQA layout must not be reported (and plotted) as MTL-AQA."""
    from aqa.cache import VideoEntry, open_cache, write_cache

    source = open_cache(tiny_dataset["cache"])
    renamed = tmp_path / "named.h5"
    config = {**source.config, "dataset": {"name": "synth-dive", "kind": "mtl-aqa"}}
    entries = [VideoEntry(key, features) for key, features in source.load_all().items()]
    write_cache(renamed, config, {}, entries)
    run_dir = tmp_path / "run"
    assert main(train_args({**tiny_dataset, "cache": renamed}, run_dir, method="ridge")) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["dataset"] == "synth-dive"

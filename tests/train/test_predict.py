"""`pipeline.py predict`: a finished run scores cached or new videos as it scored its own.

Runs are trained on the tiny generated cache (as in test_cli.py) and, for the whole path from a
video file to a score, on a cache the real I3D extracted from the real clips at a small size.
Every refusal is one line on stderr and exit status 2.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aqa.cache import VideoEntry, open_cache, write_cache
from pipeline import main

QUICK_EXTRACTION = ["--views", "none", "--resize", "64", "--crop", "56", "--workers", "0", "--device", "cpu",
                    "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # `train --threads 1` sets the process's thread count; restore it for the modules after this one.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train(features: Path, manifest: Path, run_dir: Path, fast_flags, method: str, ratio: str = "0.5",
          extra=()) -> Path:
    assert main(["train", "--features", str(features), "--manifest", str(manifest), "--method", method,
                 "--ratio", ratio, "--seed", "0", "--run-dir", str(run_dir), "--threads", "1", "--no-progress",
                 *fast_flags, *extra]) == 0
    return run_dir


# The trs run keeps its graph (no gate: on the tiny dataset the gate may drop it), so that its
# checkpoint carries every part of the prediction: student, reference exemplars and graph nodes.
KEEP_THE_GRAPH = ("--set", "semi.gate=false")


@pytest.fixture(scope="module")
def runs(tiny_dataset, fast_flags, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("predict-runs")
    return {method: train(tiny_dataset["cache"], tiny_dataset["manifest"], folder / method, fast_flags, method,
                          extra=KEEP_THE_GRAPH if method == "trs" else ())
            for method in ("trs", "supervised", "ridge")}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def stored_predictions(run_dir: Path) -> dict[str, str]:
    return {row["key"]: row["pred"] for row in read_csv(run_dir / "predictions.csv")}


def assert_same_scores(predicted: dict[str, str], stored: dict[str, str]) -> None:
    """The same videos and, to float32 rounding, the same scores. Training scored every video in one
    batch; a subset of them is another batch shape, for which the matrix kernels may sum in another
    order (seen on an AVX-512 CPU: relative differences of 3e-8), so only the whole cache, scored in
    the training's own batches, is compared bit for bit (test below)."""
    assert list(predicted) == list(stored)
    for key, value in predicted.items():
        assert float(value) == pytest.approx(float(stored[key]), rel=1e-6, abs=1e-6), key


def one_line_error(argv: list[str], capsys) -> str:
    """The message of a refused command (after checking it is one line and exit status 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("method", ["trs", "supervised", "ridge"])
def test_predicting_the_test_videos_of_a_finished_run_reproduces_its_predictions_csv(runs, tiny_dataset, tmp_path,
                                                                                      method):
    run_dir = runs[method]
    test_keys = json.loads((run_dir / "split.json").read_text())["test"]
    out = tmp_path / "scores.csv"
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]),
                 "--keys", ",".join(test_keys), "--out", str(out), "--threads", "1"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["key", "pred", "std", "log_variance"]
    assert [row["key"] for row in rows] == test_keys
    stored = stored_predictions(run_dir)
    assert_same_scores({row["key"]: row["pred"] for row in rows}, {key: stored[key] for key in test_keys})
    if method == "trs":  # the reference's and the graph's shares are both part of these predictions
        checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert checkpoint["graph_test_share"] == 0.5 and "exemplar_tokens" in checkpoint
        assert checkpoint["ridge_test_share"] == 0.0 and "ridge_weights" not in checkpoint  # the EMA teacher taught
    if method == "ridge":
        assert all(row["std"] == "" and row["log_variance"] == "" for row in rows)
    else:
        for row in rows:
            assert float(row["std"]) == pytest.approx(
                math.exp(0.5 * float(row["log_variance"])) * _target_std(run_dir), rel=1e-9)


def test_a_trs_run_taught_by_the_ridge_predicts_with_its_share_as_it_ran(tiny_dataset, fast_flags, tmp_path, capsys):
    """semi.ridge_test_share: where the ridge was trs's teacher, the checkpoint carries its weights
    and share, and predict blends it in as the run did; a share or weights that do not fit the
    run are refused in one line."""
    run_dir = train(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "trs-ridge", fast_flags, "trs",
                    extra=(*KEEP_THE_GRAPH, "--set", "semi.teacher=ridge"))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["ridge_test_share"] == 0.5 and checkpoint["ridge_weights"].dtype == torch.float64
    assert json.loads((run_dir / "metrics.json").read_text())["ridge_test_share"] == 0.5
    out = tmp_path / "scores.csv"
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--out", str(out),
                 "--threads", "1"]) == 0
    predicted, stored = {row["key"]: row["pred"] for row in read_csv(out)}, stored_predictions(run_dir)
    assert_same_scores(predicted, {key: stored[key] for key in predicted})
    for damaged, expected in [({**checkpoint, "ridge_test_share": 0.3}, "ridge_test_share is 0.3"),
                              ({**checkpoint, "ridge_weights": checkpoint["ridge_weights"][:-1]}, "ridge_weights"),
                              ({key: value for key, value in checkpoint.items() if key != "ridge_bias"}, "ridge_bias")]:
        torch.save(damaged, run_dir / "checkpoint.pt")
        message = one_line_error(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"])], capsys)
        assert expected in message and "checkpoint.pt" in message


def test_ridge_on_time_segments_of_raw_features_predicts_as_it_ran(tiny_dataset, fast_flags, tmp_path):
    """ridge.segments: the weights cover each segment's channels, and predict pools as training did
    (here on features in their own units, so each segment's mean is de-standardised too)."""
    run_dir = train(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "ridge-3", fast_flags, "ridge",
                    extra=("--set", "ridge.segments=3", "--set", "ridge.standardise=false"))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    dim = len(checkpoint["feature_mean"])
    assert checkpoint["ridge_weights"].shape == (min(3, checkpoint["num_tokens"]) * dim,)
    out = tmp_path / "scores.csv"
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--out", str(out),
                 "--threads", "1"]) == 0
    predicted, stored = {row["key"]: row["pred"] for row in read_csv(out)}, stored_predictions(run_dir)
    assert sorted(predicted) == sorted(stored)
    assert_same_scores(predicted, {key: stored[key] for key in predicted})
    # Weights of one segment's length in a run of three are refused, naming the tensor.
    torch.save({**checkpoint, "ridge_weights": checkpoint["ridge_weights"][:dim]}, run_dir / "checkpoint.pt")
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"])]) == 2


def _target_std(run_dir: Path) -> float:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["target_std"]


def test_every_cached_video_and_a_single_one_score_as_in_the_run(runs, tiny_dataset, tmp_path, capsys):
    """Without --keys every video of the cache is scored, bit for bit as training scored them (the
    same batches); one video alone is another batch shape, so it gets the same score to float32
    rounding (on an AVX-512 EPYC a batch of two rounds the head's sums differently from the whole
    cache's batch: 1.2e-7 in the standardised value)."""
    run_dir = runs["trs"]
    out = tmp_path / "all.csv"
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--out", str(out)]) == 0
    stored = stored_predictions(run_dir)
    assert {row["key"]: row["pred"] for row in read_csv(out)} == stored
    capsys.readouterr()
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--keys", "v030"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["key", "pred", "std", "log_var"]
    shown_key, shown_score = table[1].split()[:2]
    assert shown_key == "v030" and float(shown_score) == pytest.approx(float(stored["v030"]), abs=5.1e-5)
    out_one = tmp_path / "one.csv"
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]), "--keys", "v030",
                 "--out", str(out_one)]) == 0
    assert_same_scores({row["key"]: row["pred"] for row in read_csv(out_one)}, {"v030": stored["v030"]})


@pytest.mark.parametrize("method", ["supervised", "trs"])  # trs: the reference compares within difficulty pools
def test_a_difficulty_aware_run_needs_each_videos_difficulty_and_then_reproduces_its_predictions(
        dataset_writer, fast_flags, tmp_path, capsys, method):
    cache, manifest, keys, _ = dataset_writer(tmp_path / "data", with_difficulty=True)
    run_dir = train(cache, manifest, tmp_path / "run", fast_flags, method)
    if method == "trs":
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert len(torch.unique(state["exemplar_difficulty"])) > 1  # pools of several difficulties
    test_keys = json.loads((run_dir / "split.json").read_text())["test"]
    message = one_line_error(["predict", "--run", str(run_dir), "--features", str(cache), "--keys", test_keys[0]],
                             capsys)
    assert "difficulty" in message and test_keys[0] in message
    difficulty = {row["key"]: row["difficulty"] for row in read_csv(manifest)}
    out = tmp_path / "scores.csv"
    flags = [flag for key in test_keys for flag in ("--difficulty", f"{key}={difficulty[key]}")]
    assert main(["predict", "--run", str(run_dir), "--features", str(cache), "--keys", ",".join(test_keys),
                 "--out", str(out), *flags]) == 0
    stored = stored_predictions(run_dir)
    assert_same_scores({row["key"]: row["pred"] for row in read_csv(out)}, {key: stored[key] for key in test_keys})


# --------------------------------------------------------------------------- from a real video file


@pytest.fixture(scope="module")
def real_clip_run(shared_dir, i3d_weights_path, fast_flags, tmp_path_factory) -> dict:
    """A supervised run on the three real clips, extracted by the real I3D at 64/56 pixels."""
    folder = tmp_path_factory.mktemp("real-clips")
    videos = shared_dir / "data" / "videos"
    cache = folder / "real.h5"
    assert main(["extract", "--videos-dir", str(videos), "--out", str(cache), "--weights", str(i3d_weights_path),
                 *QUICK_EXTRACTION]) == 0
    manifest = folder / "manifest.csv"
    manifest.write_text("key,path,score,split\ndive_uploaded,x,60,train\nunlv_dive_054,x,80,train\n"
                        "dive_testdive5,x,70,test\n")
    run_dir = train(cache, manifest, folder / "run", fast_flags, "supervised", ratio="1")
    return {"run": run_dir, "cache": cache, "videos": videos, "weights": i3d_weights_path}


def test_a_real_clip_gets_a_finite_score_through_extraction_with_the_runs_settings(real_clip_run, tmp_path):
    out = tmp_path / "scores.csv"
    kept = tmp_path / "kept.h5"
    assert main(["predict", "--run", str(real_clip_run["run"]), str(real_clip_run["videos"] / "dive_testdive5.mp4"),
                 "--weights", str(real_clip_run["weights"]), "--cache", str(kept), "--out", str(out),
                 "--workers", "0", "--device", "cpu", "--no-progress", "--threads", "1"]) == 0
    (row,) = read_csv(out)
    assert row["key"] == "dive_testdive5"
    assert math.isfinite(float(row["pred"])) and float(row["std"]) > 0
    # The new cache was made exactly as the run's (every setting that changes the numbers).
    made, trained_on = open_cache(kept).config, open_cache(real_clip_run["cache"]).config
    for name in ("backbone", "precision", "preprocessing", "clip_layout", "views"):
        assert made[name] == trained_on[name], name
    stored = float(stored_predictions(real_clip_run["run"])["dive_testdive5"])
    assert float(row["pred"]) == pytest.approx(stored, abs=1e-3)


def test_weights_other_than_the_runs_features_were_made_with_are_refused_before_any_extraction(
        real_clip_run, tmp_path, capsys):
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the run's weights")
    message = one_line_error(["predict", "--run", str(real_clip_run["run"]),
                              str(real_clip_run["videos"] / "dive_testdive5.mp4"), "--weights", str(other),
                              "--cache", str(tmp_path / "never.h5")], capsys)
    assert str(other) in message and str(real_clip_run["run"]) in message and "sha256" in message
    assert not (tmp_path / "never.h5").exists()


# --------------------------------------------------------------------------- refusals


def test_features_made_with_other_settings_are_refused_naming_both_files(real_clip_run, tmp_path, capsys):
    source = open_cache(real_clip_run["cache"])
    config = json.loads(json.dumps(source.config))
    config["preprocessing"]["crop"] = 48
    other = tmp_path / "other.h5"
    write_cache(other, config, {}, [VideoEntry(key, features) for key, features in source.load_all().items()])
    message = one_line_error(["predict", "--run", str(real_clip_run["run"]), "--features", str(other)], capsys)
    assert str(other) in message and str(real_clip_run["run"]) in message and "preprocessing.crop" in message


def test_a_video_file_for_a_run_on_imported_features_is_refused(runs, tmp_path, capsys):
    video = tmp_path / "dive.mp4"
    video.write_bytes(b"")
    message = one_line_error(["predict", "--run", str(runs["supervised"]), str(video)], capsys)
    assert "--features" in message


def test_a_missing_video_or_cached_key_is_one_line(runs, tiny_dataset, tmp_path, capsys):
    missing = tmp_path / "no-such-dive.mp4"
    message = one_line_error(["predict", "--run", str(runs["trs"]), str(missing)], capsys)
    assert str(missing) in message and "not found" in message
    message = one_line_error(["predict", "--run", str(runs["trs"]), "--features", str(tiny_dataset["cache"]),
                              "--keys", "v000,nope"], capsys)
    assert "'nope'" in message and str(tiny_dataset["cache"]) in message
    assert "nothing to score" in one_line_error(["predict", "--run", str(runs["trs"])], capsys)


def test_a_path_that_is_not_a_finished_run_folder_is_refused(runs, tiny_dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = str(tiny_dataset["cache"])
    for not_a_run, expected in ((tmp_path / "nowhere", "not found"), (empty, "not a run folder"),
                                (Path(cache), "not a folder")):
        message = one_line_error(["predict", "--run", str(not_a_run), "--features", cache], capsys)
        assert str(not_a_run) in message and expected in message
    unfinished = shutil.copytree(runs["trs"], tmp_path / "unfinished")
    (unfinished / "checkpoint.pt").unlink()
    assert "no checkpoint.pt" in one_line_error(["predict", "--run", str(unfinished), "--features", cache], capsys)


def test_a_run_of_another_software_version_is_refused(runs, tiny_dataset, tmp_path, capsys):
    run_dir = shutil.copytree(runs["trs"], tmp_path / "old")
    config = json.loads((run_dir / "config.json").read_text())
    config["resolved"]["software_version"] = "0.0.1"
    (run_dir / "config.json").write_text(json.dumps(config))
    message = one_line_error(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"])], capsys)
    assert "'0.0.1'" in message and "config.json" in message


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_checkpoint(edit):
    def apply(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        replaced = edit(state)
        torch.save(state if replaced is None else replaced, path)
    return apply


def _reshape_first_student_tensor(state):
    name = next(iter(state["student"]))
    state["student"][name] = torch.zeros(3, 3)


@pytest.mark.parametrize("damage, expected", [
    (_truncate, "unreadable checkpoint"),
    (_edit_checkpoint(lambda state: [1, 2, 3]), "not a run checkpoint"),
    (_edit_checkpoint(_reshape_first_student_tensor), "checkpoint student"),
    (_edit_checkpoint(lambda state: state["student"].popitem() and None), "lacks"),
    (_edit_checkpoint(lambda state: state.__setitem__("method", "ridge")), "method 'ridge'"),
    (_edit_checkpoint(lambda state: state.__setitem__("final", False)), "not the final checkpoint"),
    (_edit_checkpoint(lambda state: state.__delitem__("feature_mean")), "feature_mean"),
    (_edit_checkpoint(lambda state: state.__setitem__("feature_std", torch.zeros(16))), "feature_std"),
    (_edit_checkpoint(lambda state: state.__setitem__("num_tokens", "4")), "num_tokens"),
    (_edit_checkpoint(lambda state: state.__setitem__("target_std", float("nan"))), "target_std"),
    (_edit_checkpoint(lambda state: state["config"].__setitem__("seed", 7)), "another configuration"),
    # trs's reference network and labelled exemplars (reference.test_share, on by default)
    (_edit_checkpoint(lambda state: state.__setitem__("reference", [0])), "checkpoint has no reference"),
    (_edit_checkpoint(lambda state: state["reference"].popitem() and None), "checkpoint reference"),
    (_edit_checkpoint(lambda state: state.__delitem__("exemplar_tokens")), "exemplar_tokens"),
    (_edit_checkpoint(lambda state: state.__setitem__("exemplar_tokens", state["exemplar_tokens"][:, :2])),
     "exemplar_tokens"),
    (_edit_checkpoint(lambda state: state["exemplar_tokens"].__setitem__((0, 0, 0), float("inf"))), "exemplar_tokens"),
    (_edit_checkpoint(lambda state: state.__setitem__("exemplar_targets", state["exemplar_targets"][:-1])),
     "exemplar_targets"),
    # trs's graph nodes (semi.graph_test_share, on by default when the gate keeps the graph)
    (_edit_checkpoint(lambda state: state.__delitem__("graph_node_tokens")), "graph_node_tokens"),
    (_edit_checkpoint(lambda state: state["graph_node_tokens"].__setitem__((1, 0, 0), float("nan"))),
     "graph_node_tokens"),
    (_edit_checkpoint(lambda state: state.__setitem__("graph_node_values", state["graph_node_values"][:-1])),
     "graph_node_values"),
    (_edit_checkpoint(lambda state: state.__setitem__("graph_test_share", 0.3)), "graph_test_share is 0.3"),
    (_edit_checkpoint(lambda state: state.__setitem__("graph_test_share", "half")), "graph_test_share"),
], ids=["truncated", "a-list", "reshaped-tensor", "missing-tensor", "other-method", "not-final", "no-mean",
        "zero-std", "token-count-text", "nan-target-std", "other-config", "reference-not-a-dict",
        "reference-missing-tensor", "no-exemplar-tokens", "exemplar-tokens-too-few-tokens", "infinite-exemplar-token",
        "exemplar-targets-one-short", "no-graph-node-tokens", "nan-graph-node-token", "graph-node-values-one-short",
        "other-graph-share", "graph-share-text"])
def test_a_tampered_or_truncated_checkpoint_is_refused_in_one_line(runs, tiny_dataset, tmp_path, capsys, damage,
                                                                   expected):
    run_dir = shutil.copytree(runs["trs"], tmp_path / "run")
    damage(run_dir / "checkpoint.pt")
    message = one_line_error(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"])], capsys)
    assert expected in message and "checkpoint.pt" in message


def test_predicting_changes_nothing_in_the_run_folder(runs, tiny_dataset, tmp_path):
    run_dir = runs["supervised"]
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    assert main(["predict", "--run", str(run_dir), "--features", str(tiny_dataset["cache"]),
                 "--out", str(tmp_path / "scores.csv")]) == 0
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
    assert np.isfinite([float(row["pred"]) for row in read_csv(tmp_path / "scores.csv")]).all()

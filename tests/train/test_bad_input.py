"""Bad input to `pipeline.py train`: one line on stderr, exit status 2, and no run folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from aqa.annotations import load_mtl_aqa
from aqa.cache import VideoEntry, write_cache
from pipeline import main


def run_and_expect_error(args: list[str], run_dir: Path, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err
    assert not run_dir.exists()
    assert not list(run_dir.parent.glob(f".{run_dir.name}*")), "nothing half-written beside the run folder"
    return lines[0]


def base_args(cache, manifest, run_dir, *extra):
    return ["train", "--features", str(cache), "--manifest", str(manifest), "--method", "ridge", "--ratio", "0.5",
            "--run-dir", str(run_dir), "--no-progress", *extra]


def rewrite_manifest(source: Path, target: Path, edit) -> Path:
    with open(source, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    body = edit(header, body)
    with open(target, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *body])
    return target


def test_cache_and_annotations_that_disagree_name_the_keys_on_both_sides(tiny_dataset, tmp_path, capsys):
    def edit(header, body):
        kept = [row for row in body if row[0] not in ("v001", "v002")]
        extra = list(body[5])
        extra[0] = "not_cached"
        return kept + [extra]

    manifest = rewrite_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", edit)
    line = run_and_expect_error(base_args(tiny_dataset["cache"], manifest, tmp_path / "run"), tmp_path / "run", capsys)
    assert "disagree" in line
    assert "1 annotated video(s) missing from the cache (not_cached)" in line
    assert "2 cached video(s) not in the annotations" in line and "v001, v002" in line


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2", "nan"])
def test_ratio_outside_zero_one(tiny_dataset, tmp_path, capsys, ratio):
    args = base_args(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "run")
    args[args.index("--ratio") + 1] = ratio
    line = run_and_expect_error(args, tmp_path / "run", capsys)
    assert "--ratio must be in (0, 1]" in line


def test_labelled_subset_with_a_single_score_value(tiny_dataset, tmp_path, capsys):
    def edit(header, body):
        score = header.index("score")
        for row in body:
            if row[header.index("split")] == "train":
                row[score] = "70.0"
        return body

    manifest = rewrite_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", edit)
    line = run_and_expect_error(base_args(tiny_dataset["cache"], manifest, tmp_path / "run"), tmp_path / "run", capsys)
    assert "single score value" in line


def test_nan_or_infinite_features(tiny_dataset, tmp_path, capsys, dataset_writer):
    from aqa.cache import open_cache

    cache = open_cache(tiny_dataset["cache"])
    features = cache.load_all()
    features["v003"][0, 1, 2] = np.nan
    features["v007"][1, 0, 0] = np.inf
    broken = tmp_path / "broken.h5"
    write_cache(broken, cache.config, cache.info, [VideoEntry(key, value) for key, value in features.items()])
    line = run_and_expect_error(base_args(broken, tiny_dataset["manifest"], tmp_path / "run"), tmp_path / "run", capsys)
    assert "2 video(s) have NaN or infinite features (v003, v007)" in line


@pytest.mark.parametrize("bad", ["nan", "inf", "abc"])
def test_nan_infinite_or_non_numeric_scores(tiny_dataset, tmp_path, capsys, bad):
    def edit(header, body):
        body[3][header.index("score")] = bad
        return body

    manifest = rewrite_manifest(tiny_dataset["manifest"], tmp_path / "m.csv", edit)
    line = run_and_expect_error(base_args(tiny_dataset["cache"], manifest, tmp_path / "run"), tmp_path / "run", capsys)
    assert "line 5" in line and "score" in line


def test_unknown_target_column(tiny_dataset, tmp_path, capsys):
    args = base_args(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "run", "--target", "artistry")
    line = run_and_expect_error(args, tmp_path / "run", capsys)
    assert "unknown target column 'artistry'" in line and "score, execution" in line


@pytest.mark.parametrize("what", ["cache", "manifest"])
def test_missing_files(tiny_dataset, tmp_path, capsys, what):
    cache = tmp_path / "none.h5" if what == "cache" else tiny_dataset["cache"]
    manifest = tmp_path / "none.csv" if what == "manifest" else tiny_dataset["manifest"]
    line = run_and_expect_error(base_args(cache, manifest, tmp_path / "run"), tmp_path / "run", capsys)
    assert "not found" in line


@pytest.mark.parametrize("assignment, message", [
    ("optim.speed=3", "no field 'speed'"),
    ("optim.lr=fast", "expected a number, got 'fast'"),
    ("semi.use_graph=maybe", "expected true or false, got 'maybe'"),
    ("optim=3", "is a section"),
    ("optim.epochs=-1", "must not be negative"),
    ("reference.dim=10", "multiple of reference.heads"),
])
def test_bad_overrides(tiny_dataset, tmp_path, capsys, assignment, message):
    args = base_args(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "run", "--set", assignment)
    line = run_and_expect_error(args, tmp_path / "run", capsys)
    assert message in line


def test_difficulty_aware_on_without_difficulty(tiny_dataset, tmp_path, capsys):
    args = base_args(tiny_dataset["cache"], tiny_dataset["manifest"], tmp_path / "run", "--difficulty-aware", "on")
    line = run_and_expect_error(args, tmp_path / "run", capsys)
    assert "have no difficulty" in line


@pytest.fixture(scope="module")
def mtl_aqa_cache(shared_dir, tmp_path_factory):
    """A tiny generated cache keyed like the real MTL-AQA annotations (1412 dives)."""
    dataset = load_mtl_aqa(shared_dir / "data" / "mtl-aqa", layout="none")
    generator = np.random.default_rng(0)
    entries = []
    for record in dataset.records:
        quality = record.targets["final_score"] / record.difficulty
        features = generator.normal(size=(1, 3, 4)) * 0.3
        features[..., 0] += quality / 10
        entries.append(VideoEntry(record.key, features))
    folder = tmp_path_factory.mktemp("mtl")
    path = folder / "cache.h5"
    write_cache(path, {"backbone": "imported", "views": ["original"]}, {}, entries)
    missing = folder / "missing.h5"
    write_cache(missing, {"backbone": "imported", "views": ["original"]}, {},
                [entry for entry in entries if entry.key not in ("01_01", "02_05", "09_33")])
    return {"root": shared_dir / "data" / "mtl-aqa", "cache": path, "missing": missing}


def test_mtl_aqa_annotations_train_with_the_difficulty_aware_target(mtl_aqa_cache, tmp_path):
    import json

    run_dir = tmp_path / "run"
    assert main(["train", "--features", str(mtl_aqa_cache["cache"]), "--dataset", "mtl-aqa", "--data-root",
                 str(mtl_aqa_cache["root"]), "--method", "ridge", "--ratio", "0.1", "--run-dir", str(run_dir),
                 "--no-progress"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_test"] == 353 and metrics["n_labelled"] == 106 and metrics["n_unlabelled"] == 953
    assert metrics["difficulty_aware"] is True and metrics["target"] == "final_score"
    assert metrics["spearman"] > 0.5


def test_mtl_aqa_cache_missing_dives(mtl_aqa_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    line = run_and_expect_error(["train", "--features", str(mtl_aqa_cache["missing"]), "--dataset", "mtl-aqa",
                                 "--data-root", str(mtl_aqa_cache["root"]), "--method", "ridge", "--run-dir",
                                 str(run_dir), "--no-progress"], run_dir, capsys)
    assert "3 annotated video(s) missing from the cache (01_01, 02_05, 09_33)" in line

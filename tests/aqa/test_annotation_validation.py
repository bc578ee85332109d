"""MTL-AQA annotation and split pickles of the wrong structure are refused by name, never
converted into something else (a float or string key truncated into a copy of a real dive)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from aqa.annotations import load_mtl_aqa
from aqa.errors import UserError
from cli_checks import expect_one_line_error

ANNOTATIONS = "final_annotations_dict_with_dive_number.pkl"


def good_entry(**changes) -> dict:
    entry = {"final_score": 50.0, "difficulty": 2.0, "start_frame": 300, "end_frame": 410,
             "judge_scores": np.array([5.0, 5.5, 6.0, 5.0, 5.5, 6.0, 5.0])}
    entry.update(changes)
    return {name: value for name, value in entry.items() if value is not None}


def write_root(root: Path, table, train=None, test=None) -> Path:
    """An MTL-AQA data root with ``table`` as its annotation pickle and optional split pickles."""
    info = root / "info"
    info.mkdir(parents=True)
    (info / ANNOTATIONS).write_bytes(pickle.dumps(table))
    for split, pairs in (("train", train), ("test", test)):
        if pairs is not None:
            (info / f"{split}_split_0.pkl").write_bytes(pickle.dumps(pairs))
    return root


def refused(root: Path, **options) -> UserError:
    with pytest.raises(UserError) as raised:
        load_mtl_aqa(root, **options)
    return raised.value


def test_a_well_formed_table_with_numpy_integer_keys_reads(tmp_path):
    table = {(np.int64(1), np.int64(2)): good_entry(), (1, 3): good_entry(final_score=np.float32(60.0))}
    root = write_root(tmp_path, table, train=[(1, 2)], test=[(np.int64(1), 3)])
    dataset = load_mtl_aqa(root)
    assert dataset.keys() == ["01_02", "01_03"]
    assert [record.split for record in dataset.records] == ["train", "test"]
    assert dataset.records[0].targets == {"final_score": 50.0, "execution": 16.0}


@pytest.mark.parametrize(
    "bad_key",
    [(1.7, 2), (3.0, 2), ("01a", 2), ("01", 2), (True, 5), (3, False), (1, 2, 3), (-1, 2), "01_02", 12],
    ids=["fractional", "float", "string-with-letters", "numeric-string", "bool-video", "bool-dive", "triple",
         "negative", "string", "number"],
)
def test_an_annotation_key_that_is_not_an_integer_pair_is_refused_by_name(tmp_path, bad_key):
    # (1.7, 2) used to become dive 01_02 a second time; ("01a", 2) and bools likewise.
    root = write_root(tmp_path, {(1, 2): good_entry(), bad_key: good_entry()})
    error = refused(root)
    assert error.path == str(root / "info" / ANNOTATIONS)
    assert f"key {bad_key!r} is not a (video, dive) pair of integers" in error.problem


@pytest.mark.parametrize(
    "judge_scores",
    [[], "9.5 9.0", 9.5, [9.5, "9.0"], [9.5, None], [9.5, float("nan")], np.zeros((2, 7)), {"a": 1.0}, [True] * 7],
    ids=["empty", "string", "number", "string-inside", "none-inside", "nan-inside", "matrix", "dict", "bools"],
)
def test_judge_scores_that_are_not_a_list_of_numbers_are_refused_by_name(tmp_path, judge_scores):
    root = write_root(tmp_path, {(4, 7): good_entry(judge_scores=judge_scores)})
    error = refused(root)
    assert error.problem.startswith("dive 04_07: judge_scores must be a non-empty list of numbers")


@pytest.mark.parametrize(
    "entry, message",
    [
        ([50.0, 2.0], "dive 01_02: expected a dict of labels, got list"),
        (good_entry(final_score=None), "dive 01_02: final_score is missing"),
        (good_entry(final_score="88"), "dive 01_02: final_score is not a finite number ('88')"),
        (good_entry(difficulty=float("inf")), "dive 01_02: difficulty is not a finite number (inf)"),
        (good_entry(difficulty=True), "dive 01_02: difficulty is not a finite number (True)"),
    ],
    ids=["entry-a-list", "no-final-score", "string-final-score", "infinite-difficulty", "bool-difficulty"],
)
def test_a_dive_entry_without_numeric_labels_is_refused_by_name(tmp_path, entry, message):
    root = write_root(tmp_path, {(1, 2): entry})
    assert message in refused(root).problem


@pytest.mark.parametrize(
    "end_frame, message",
    [(None, "has no end_frame"), ("410", "has end_frame '410'"), (410.5, "has end_frame 410.5"),
     (-3, "has end_frame -3")],
    ids=["missing", "string", "fractional", "negative"],
)
def test_the_whole_video_layout_refuses_a_dive_without_an_integer_end_frame(tmp_path, end_frame, message):
    root = write_root(tmp_path, {(1, 2): good_entry(), (1, 3): good_entry(end_frame=end_frame)})
    (root / "frames" / "01").mkdir(parents=True)
    error = refused(root, layout="core")
    assert error.problem.startswith(f"dive 01_03 {message}; the whole-video (core) frame layout needs")
    # Without frames (training reads labels only) the end frame is not needed.
    assert load_mtl_aqa(root, layout="none").keys() == ["01_02", "01_03"]


@pytest.mark.parametrize(
    "train, message",
    [
        ({(1, 2): "train"}, "not an MTL-AQA split pickle (expected a list of (video, dive) pairs, got dict)"),
        ([(1, 2), (1.5, 3)], "entry 1 ((1.5, 3)) is not a (video, dive) pair of integers"),
        ([(1, 2), ("1", 3)], "entry 1 (('1', 3)) is not a (video, dive) pair of integers"),
        ([(1, 2), 7], "entry 1 (7) is not a (video, dive) pair of integers"),
        ([(1, 2), (1, 3, 4)], "entry 1 ((1, 3, 4)) is not a (video, dive) pair of integers"),
        ([(1, 2), (1, 2)], "entry 1: dive 01_02 is listed twice"),
    ],
    ids=["a-dict", "float-video", "string-video", "a-number", "triple", "repeated"],
)
def test_split_entries_that_are_not_integer_pairs_are_refused_by_name(tmp_path, train, message):
    root = write_root(tmp_path, {(1, 2): good_entry(), (1, 3): good_entry()}, train=train)
    error = refused(root)
    assert error.path == str(root / "info" / "train_split_0.pkl")
    assert message in error.problem


def test_a_dive_in_both_splits_is_refused(tmp_path):
    root = write_root(tmp_path, {(1, 2): good_entry(), (1, 3): good_entry()}, train=[(1, 2), (1, 3)], test=[(1, 3)])
    error = refused(root)
    assert error.path == str(root / "info" / "test_split_0.pkl")
    assert error.problem == "dive 01_03 is in both the train and the test split"


@pytest.mark.parametrize(
    "table",
    [{(1, 2): good_entry(), (1.7, 2): good_entry()}, {(1, 2): good_entry(judge_scores=["x"] * 7)},
     {(1, 2): "not a dict"}],
    ids=["float-key", "string-judges", "entry-not-a-dict"],
)
def test_train_on_damaged_annotations_exits_with_one_line_naming_the_pickle(tmp_path, capsys, table):
    root = write_root(tmp_path / "mtl", table)
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", "--features", str(tmp_path / "cache.h5"), "--dataset", "mtl-aqa", "--data-root",
                    str(root), "--method", "ridge", "--run-dir", str(run_dir), "--no-progress"], capsys)
    assert line.startswith(f"error: {root / 'info' / ANNOTATIONS}: ")
    assert not run_dir.exists() and not list(tmp_path.glob(".run*"))


def test_extract_in_the_whole_video_layout_without_end_frames_exits_with_one_line(tmp_path, capsys):
    root = write_root(tmp_path / "mtl", {(1, 2): good_entry(end_frame=None)})
    (root / "frames" / "01").mkdir(parents=True)
    out = tmp_path / "features.h5"
    line = expect_one_line_error(["extract", "--data-root", str(root), "--layout", "core", "--out", str(out), "--no-progress"],
                   capsys)
    assert line == (f"error: {root / 'info' / ANNOTATIONS}: dive 01_02 has no end_frame; "
                    "the whole-video (core) frame layout needs a frame number")
    assert not out.exists() and not (tmp_path / "features.h5.parts").exists()

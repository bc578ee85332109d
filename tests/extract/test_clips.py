"""Clip layout and view parsing: the MTL-AQA layout, no duplicate tail clip, shifts kept inside."""

from __future__ import annotations

import pytest

from aqa.errors import UserError
from extract.clips import DEFAULT_VIEWS, ClipLayout, ViewSpec, parse_view, parse_views, view_names


def test_mtl_aqa_dive_gives_the_fields_ten_clips():
    assert ClipLayout().starts(103) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 87]


@pytest.mark.parametrize(
    "num_frames, expected",
    [
        (16, [0]),
        (17, [0, 1]),
        (26, [0, 10]),  # the last regular clip already ends on the last frame: no duplicate
        (36, [0, 10, 20]),
        (37, [0, 10, 20, 21]),
    ],
)
def test_tail_clip_is_added_once(num_frames, expected):
    assert ClipLayout().starts(num_frames) == expected


def test_too_few_frames_says_how_many():
    with pytest.raises(UserError, match="found 15, a clip needs 16"):
        ClipLayout().starts(15, "some/video.mp4")


def test_other_clip_lengths_and_strides():
    assert ClipLayout(clip_length=8, stride=8).starts(20) == [0, 8, 12]
    with pytest.raises(UserError):
        ClipLayout(clip_length=0)


def test_default_views_are_flip_times_three_shifts_with_original_first():
    names = view_names(parse_views(None))
    assert names == ["original", "flip", "shift-3", "shift+3", "flip+shift-3", "flip+shift+3"]
    assert view_names(parse_views(DEFAULT_VIEWS)) == names


@pytest.mark.parametrize("text", ["none", "", "original", "  NONE "])
def test_none_means_the_original_view_only(text):
    assert view_names(parse_views(text)) == ["original"]


def test_view_names_are_canonical():
    assert parse_view("shift3") == ViewSpec(shift=3)
    assert parse_view("Flip+Shift-2") == ViewSpec(flip=True, shift=-2)
    assert parse_view("shift+5+flip") == ViewSpec(flip=True, shift=5)
    assert ViewSpec(flip=True, shift=-2).name == "flip+shift-2"
    assert view_names(parse_views("original,flip")) == ["original", "flip"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("flip,flip", "same view"),
        ("shift3,shift+3", "same view"),
        ("rotate", "unknown view"),
        ("flip,,shift+1", "empty view"),
        ("flip+flip", "twice"),
        ("shift+x", "unknown view"),
        ("shift+0", "original view"),
    ],
)
def test_bad_view_lists_are_refused(text, problem):
    with pytest.raises(UserError, match=problem):
        parse_views(text)


def test_shifted_starts_stay_inside_the_video():
    starts = ClipLayout().starts(103)
    assert ViewSpec(shift=3).starts(starts, 103, 16) == [3, 13, 23, 33, 43, 53, 63, 73, 83, 87]
    assert ViewSpec(shift=-3).starts(starts, 103, 16) == [0, 7, 17, 27, 37, 47, 57, 67, 77, 84]
    # A shift longer than the video clamps every clip into it.
    assert ViewSpec(shift=50).starts([0, 4], 20, 16) == [4, 4]


def test_a_config_parses_its_views_once_and_records_their_canonical_text():
    from extract.config import ExtractConfig

    default = ExtractConfig()
    assert default.views == DEFAULT_VIEWS
    assert view_names(default.view_specs) == view_names(parse_views(None))
    assert ExtractConfig(views="Flip, shift3").views == "flip,shift+3"
    assert ExtractConfig(views="original").views == "none" and view_names(ExtractConfig(views="none").view_specs) == ["original"]
    with pytest.raises(UserError, match="unknown view"):
        ExtractConfig(views="rotate")

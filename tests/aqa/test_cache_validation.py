"""A feature cache with a damaged header or schema is refused when it is opened, by name (the
file and the video), so that `inspect` and `train` end in one line instead of a traceback.

The damaged caches are built with h5py directly: the project's writer never makes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from aqa.cache import open_cache
from aqa.errors import UserError
from cli_checks import expect_one_line_error

DIM = 16


def write_raw_cache(path: Path, damage: Callable[[h5py.File], None] | None = None) -> Path:
    """A well-formed two-video cache in the project's layout, then ``damage`` applied to it."""
    with h5py.File(path, "w") as handle:
        handle.attrs["schema_version"] = 1
        handle.attrs["config"] = json.dumps({"backbone": "imported", "views": ["original", "flip"]})
        handle.attrs["info"] = json.dumps({"made_by": "tests"})
        handle.attrs["feature_dim"] = DIM
        videos = handle.create_group("videos")
        for key, clips in (("a", 3), ("b", 5)):
            dataset = videos.create_dataset(key, data=np.ones((2, clips, DIM), dtype=np.float32))
            dataset.attrs["num_frames"] = 10 * clips
            dataset.attrs["clip_starts"] = np.tile(np.arange(clips, dtype=np.int32) * 10, (2, 1))
        if damage is not None:
            damage(handle)
    return path


def set_attribute(name: str, value, where: str = "/"):
    def damage(handle):
        handle[where].attrs[name] = value
    return damage


def delete_attribute(name: str, where: str = "/"):
    def damage(handle):
        del handle[where].attrs[name]
    return damage


def replace_video(key: str, make: Callable[[h5py.Group, str], None]):
    def damage(handle):
        del handle["videos"][key]
        make(handle["videos"], key)
    return damage


def video_b_as(data) -> Callable[[h5py.File], None]:
    """Damage: video 'b' replaced by a dataset holding ``data``."""
    return replace_video("b", lambda videos, key: videos.create_dataset(key, data=data))


def video_b_linked(link) -> Callable[[h5py.File], None]:
    """Damage: video 'b' replaced by ``link`` (a soft or external link)."""
    return replace_video("b", lambda videos, key: videos.__setitem__(key, link))


def replace_videos_group(handle):
    del handle["videos"]
    handle.create_dataset("videos", data=np.zeros(3))


HEADER_DAMAGE = {
    "config-is-a-number": (set_attribute("config", 5), "cache header: config is 5, not JSON text"),
    "config-is-a-json-list": (set_attribute("config", "[1, 2]"), "cache header: config is [1, 2], not a JSON object"),
    "config-is-not-json": (set_attribute("config", "{views: 2"), "cache header: config is not valid JSON"),
    "config-missing": (delete_attribute("config"), "cache header has no config"),
    "info-is-a-json-string": (set_attribute("info", '"text"'), "cache header: info is 'text', not a JSON object"),
    "views-not-a-list": (set_attribute("config", json.dumps({"views": "original"})),
                         "cache header: config views is 'original', not a list of view names"),
    "schema-version-is-text": (set_attribute("schema_version", "one"),
                               "cache header: schema_version is 'one', not a whole number"),
    "schema-version-is-fractional": (set_attribute("schema_version", 1.5),
                                     "schema_version is 1.5, not a whole number"),
    "schema-version-is-an-array": (set_attribute("schema_version", np.array([1, 1])),
                                   "schema_version is [1, 1], not a whole number"),
    "schema-version-missing": (delete_attribute("schema_version"), "not a feature cache of this project"),
    "schema-version-unknown": (set_attribute("schema_version", 7), "cache schema version 7 is not supported"),
    "feature-dim-is-text": (set_attribute("feature_dim", "16"),
                            "cache header: feature_dim is '16', not a whole number"),
    "feature-dim-missing": (delete_attribute("feature_dim"), "cache header has no feature_dim"),
    "feature-dim-negative": (set_attribute("feature_dim", -16), "cache header: feature_dim is -16, not a size"),
    "videos-not-a-group": (replace_videos_group, "/videos is a Dataset, not a group of videos"),
}

ENTRY_DAMAGE = {
    "entry-is-a-group": (replace_video("b", lambda videos, key: videos.create_group(key)),
                         "video 'b' is a Group, not a dataset of features"),
    "entry-is-a-dangling-link": (video_b_linked(h5py.SoftLink("/x")),
                                 "video 'b' is a link, not features stored in the cache"),
    "entry-is-an-external-link": (video_b_linked(h5py.ExternalLink("other.h5", "/x")), "video 'b' is a link"),
    "integer-features": (video_b_as(np.ones((2, 5, DIM), np.int32)),
                         "video 'b' has int32 features, expected floating point"),
    "string-features": (video_b_as(np.array([b"x"])), "video 'b' has |S1 features, expected floating point"),
    "two-dimensional-features": (video_b_as(np.ones((5, DIM))),
                                 "video 'b' has features of shape (5, 16), expected [views, clips, feature_dim]"),
    "mixed-feature-sizes": (video_b_as(np.ones((2, 5, 8))),
                            "video 'b' has 8-d features but the cache header says 16-d (mixed feature sizes)"),
    "clip-starts-of-another-shape": (set_attribute("clip_starts", np.zeros((2, 4), np.int32), "videos/a"),
                                     "video 'a': clip_starts is int32 (2, 4), expected integers of its features' "
                                     "[views, clips] shape (2, 3)"),
    "clip-starts-as-floats": (set_attribute("clip_starts", np.zeros((2, 3)), "videos/a"),
                              "video 'a': clip_starts is float64"),
    "num-frames-as-text": (set_attribute("num_frames", "thirty", "videos/a"),
                           "video 'a': num_frames is 'thirty', not a whole number"),
    "key-with-control-character": (lambda handle: handle["videos"].move("a", "a\x07"), "invalid video key 'a\\x07'"),
}


def assert_refused(cache: Path, *fragments: str) -> UserError:
    with pytest.raises(UserError) as raised:
        open_cache(cache)
    assert raised.value.path == str(cache)
    for fragment in fragments:
        assert fragment in raised.value.problem
    return raised.value


def test_a_well_formed_cache_built_with_h5py_opens(tmp_path):
    cache = open_cache(write_raw_cache(tmp_path / "good.h5"))
    assert cache.keys == ["a", "b"] and cache.feature_dim == DIM and cache.clip_counts() == {"a": 3, "b": 5}
    assert cache.entry("b").clip_starts.shape == (2, 5) and cache.load_all()["a"].dtype == np.float32


@pytest.mark.parametrize("case", HEADER_DAMAGE.values(), ids=HEADER_DAMAGE.keys())
def test_a_cache_whose_header_is_damaged_is_refused_by_name(tmp_path, case):
    damage, *fragments = case
    assert_refused(write_raw_cache(tmp_path / "cache.h5", damage), *fragments)


@pytest.mark.parametrize("case", ENTRY_DAMAGE.values(), ids=ENTRY_DAMAGE.keys())
def test_a_cache_entry_of_the_wrong_schema_is_refused_naming_the_video(tmp_path, case):
    damage, *fragments = case
    assert_refused(write_raw_cache(tmp_path / "cache.h5", damage), *fragments)


def test_a_float64_entry_is_accepted_and_read_as_float32(tmp_path):
    cache = write_raw_cache(tmp_path / "cache.h5", video_b_as(np.ones((2, 5, DIM), np.float64)))
    assert open_cache(cache).load_all(["b"])["b"].dtype == np.float32


def corrupt_compressed_entry(path: Path) -> Path:
    """A cache whose video 'b' is stored compressed, with its compressed bytes overwritten."""
    def damage(handle):
        del handle["videos"]["b"]
        features = np.random.default_rng(0).normal(size=(2, 5, DIM)).astype(np.float32)
        handle["videos"].create_dataset("b", data=features, compression="gzip", chunks=(2, 5, DIM))
    write_raw_cache(path, damage)
    with h5py.File(path, "r") as handle:
        chunk = handle["videos"]["b"].id.get_chunk_info(0)
    with open(path, "r+b") as raw:
        raw.seek(chunk.byte_offset)
        raw.write(b"\xff" * chunk.size)
    return path


def test_features_that_cannot_be_decompressed_name_the_video_when_read(tmp_path):
    cache = open_cache(corrupt_compressed_entry(tmp_path / "cache.h5"))  # metadata is intact
    for read in (lambda: cache.load_all(), lambda: cache.entry("b")):
        with pytest.raises(UserError, match="video 'b': its features cannot be read") as raised:
            read()
        assert raised.value.path == str(tmp_path / "cache.h5")


CLI_DAMAGE = ["config-is-a-json-list", "schema-version-is-text", "feature-dim-missing", "videos-not-a-group"]
CLI_ENTRY_DAMAGE = ["entry-is-a-group", "integer-features", "mixed-feature-sizes", "clip-starts-of-another-shape"]


@pytest.mark.parametrize("name", CLI_DAMAGE + CLI_ENTRY_DAMAGE)
@pytest.mark.parametrize("extra", [[], ["--json"], ["--key", "a"]], ids=["summary", "json", "one-key"])
def test_inspect_of_a_damaged_cache_prints_one_line_naming_the_file(tmp_path, capsys, name, extra):
    damage = {**HEADER_DAMAGE, **ENTRY_DAMAGE}[name][0]
    cache = write_raw_cache(tmp_path / "cache.h5", damage)
    before = cache.read_bytes()
    line = expect_one_line_error(["inspect", str(cache), *extra], capsys)
    assert line.startswith(f"error: {cache}: ")
    if name in CLI_ENTRY_DAMAGE:
        assert "video 'a'" in line or "video 'b'" in line
    assert cache.read_bytes() == before and sorted(tmp_path.iterdir()) == [cache]


def test_inspect_export_of_unreadable_features_prints_one_line_and_writes_nothing(tmp_path, capsys):
    cache = corrupt_compressed_entry(tmp_path / "cache.h5")
    out = tmp_path / "b.npy"
    line = expect_one_line_error(["inspect", str(cache), "--key", "b", "--export", str(out)], capsys)
    assert line.startswith(f"error: {cache}: video 'b': its features cannot be read")
    assert sorted(tmp_path.iterdir()) == [cache]


@pytest.mark.parametrize("name", CLI_DAMAGE + CLI_ENTRY_DAMAGE)
def test_train_on_a_damaged_cache_prints_one_line_and_writes_no_run(tmp_path, capsys, name):
    cache = write_raw_cache(tmp_path / "cache.h5", {**HEADER_DAMAGE, **ENTRY_DAMAGE}[name][0])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("key,path,score,split\na,a.mp4,1.0,train\nb,b.mp4,2.0,test\n")
    run_dir = tmp_path / "run"
    line = expect_one_line_error(["train", "--features", str(cache), "--manifest", str(manifest), "--method", "ridge",
                    "--run-dir", str(run_dir), "--no-progress"], capsys)
    assert line.startswith(f"error: {cache}: ")
    assert sorted(tmp_path.iterdir()) == [cache, manifest]

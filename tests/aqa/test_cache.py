"""The HDF5 cache contract: round trip, refusal on mismatch, crash-safe journal, key checks."""

from __future__ import annotations

import numpy as np
import pytest

from aqa.cache import CacheWriter, VideoEntry, journal_dir, open_cache, write_cache
from aqa.errors import UserError

CONFIG = {"backbone": "test", "views": ["original", "flip"], "clip_layout": {"length": 16, "stride": 10}}


def entry(key: str, clips: int, seed: int) -> VideoEntry:
    features = np.random.default_rng(seed).standard_normal((2, clips, 8)).astype(np.float32)
    return VideoEntry(key=key, features=features, num_frames=10 * clips + 6)


def test_round_trip_keeps_variable_clip_counts_and_config(tmp_path):
    path = write_cache(tmp_path / "c.h5", CONFIG, {"note": "x"}, [entry("a", 3, 0), entry("b", 7, 1)])
    cache = open_cache(path, expect={"views": ["original", "flip"]})
    assert cache.keys == ["a", "b"]
    assert cache.view_names == ["original", "flip"]
    assert cache.feature_dim == 8
    assert cache.clip_counts() == {"a": 3, "b": 7}
    loaded = cache.load_all()
    np.testing.assert_array_equal(loaded["b"], entry("b", 7, 1).features)
    assert cache.entry("a").num_frames == 36


def test_reader_refuses_other_configuration(tmp_path):
    path = write_cache(tmp_path / "c.h5", CONFIG, {}, [entry("a", 2, 0)])
    with pytest.raises(UserError, match="views: cache has"):
        open_cache(path, expect={"views": ["original"]})
    with pytest.raises(UserError, match="clip_layout.stride"):
        open_cache(path, expect={"clip_layout": {"length": 16, "stride": 8}})


def test_writer_refuses_existing_cache_with_other_settings_and_keeps_it(tmp_path):
    path = write_cache(tmp_path / "c.h5", CONFIG, {}, [entry("a", 2, 0)])
    before = path.read_bytes()
    with pytest.raises(UserError, match="other settings"):
        CacheWriter(path, {**CONFIG, "backbone": "other"})
    assert path.read_bytes() == before


def test_journal_survives_until_commit_and_resume_skips_done(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("a", 2, 0))
    assert not path.exists() and journal_dir(path).is_dir()
    # A new writer (the rerun after a crash) sees the journalled video as done.
    rerun = CacheWriter(path, CONFIG)
    assert rerun.done_keys() == {"a"}
    rerun.add(entry("b", 3, 1))
    rerun.commit()
    assert not journal_dir(path).exists()
    assert open_cache(path).keys == ["a", "b"]
    # Adding to an existing cache keeps its videos.
    more = CacheWriter(path, CONFIG)
    assert more.done_keys() == {"a", "b"}
    more.add(entry("c", 1, 2))
    more.commit()
    cache = open_cache(path)
    assert cache.keys == ["a", "b", "c"]
    np.testing.assert_array_equal(cache.load_all(["a"])["a"], entry("a", 2, 0).features)


def test_stale_temporary_journal_file_is_not_a_finished_video(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("a", 2, 0))
    # What a kill -9 in the middle of add() leaves: a hidden temporary file.
    (journal_dir(path) / ".b.npz.123.tmp").write_bytes(b"half")
    assert CacheWriter(path, CONFIG).done_keys() == {"a"}


def test_journal_from_other_settings_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    CacheWriter(path, CONFIG).add(entry("a", 2, 0))
    with pytest.raises(UserError, match="interrupted extraction with other settings"):
        CacheWriter(path, {**CONFIG, "views": ["original"]})


@pytest.mark.parametrize("bad_key", ["", "a/b", " a", ".."])
def test_invalid_keys_are_refused(bad_key):
    with pytest.raises((UserError, ValueError)):
        VideoEntry(key=bad_key, features=np.zeros((1, 1, 2)))


def test_not_a_cache_gives_one_line_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(UserError) as raised:
        open_cache(junk)
    assert str(junk) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UserError, match="not found"):
        open_cache(tmp_path / "missing.h5")

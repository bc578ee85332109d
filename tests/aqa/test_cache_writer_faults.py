"""Faults around the cache writer: failed commits keep the old cache, planted links and foreign
journal files are never followed or deleted, any valid key journals, and a second process writing
the same cache is refused naming the holder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aqa import cache as cache_module
from aqa import files
from aqa.cache import CacheWriter, VideoEntry, journal_dir, journal_entries, journal_entry_name, open_cache, write_cache
from aqa.errors import UserError
from aqa.files import lock_path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"backbone": "test", "views": ["original"]}

ODD_KEYS = [".hidden", "..dots", "k" * 300, "é" * 200, "a b", "50%", "%2Ehidden", "a~0123456789abcdef", "-x"]


def entry(key: str, seed: int = 0, clips: int = 2) -> VideoEntry:
    features = np.random.default_rng(seed).standard_normal((1, clips, 4)).astype(np.float32)
    return VideoEntry(key=key, features=features, num_frames=10 * clips + 6)


def committed_cache(path: Path, keys=("a", "b")) -> Path:
    with CacheWriter(path, CONFIG) as writer:
        for seed, key in enumerate(keys):
            writer.add(entry(key, seed))
        writer.commit()
    return path


def temporaries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


# ----------------------------------------------------------------------------- keys as file names


def test_journal_names_of_odd_keys_are_distinct_visible_and_short():
    names = [journal_entry_name(key) for key in ODD_KEYS]
    assert len(set(names)) == len(names)
    assert not any(name.startswith(".") for name in names)
    assert all(len(name.encode()) <= 200 and "/" not in name for name in names)


def test_keys_with_leading_dots_or_300_characters_journal_list_back_and_commit(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG)
    for seed, key in enumerate(ODD_KEYS):
        writer.add(entry(key, seed))
    # A rerun (after a crash) lists every journalled key back, the cut long names included.
    assert CacheWriter(path, CONFIG).done_keys() == set(ODD_KEYS)
    writer.commit()
    cache = open_cache(path)
    assert cache.keys == sorted(ODD_KEYS)
    np.testing.assert_array_equal(cache.load_all([".hidden"])[".hidden"], entry(".hidden", 0).features)
    np.testing.assert_array_equal(cache.load_all(["k" * 300])["k" * 300], entry("k" * 300, 2).features)
    assert not journal_dir(path).exists()


# ----------------------------------------------------------------------------- failed commits


def test_too_little_free_space_for_the_commit_keeps_the_old_cache_and_the_journal(tmp_path, monkeypatch):
    path = committed_cache(tmp_path / "c.h5")
    before = path.read_bytes()
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("c", 3))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=100, total=1000, used=900))
    with pytest.raises(UserError) as raised:
        writer.commit()
    message = str(raised.value)
    assert message.startswith(f"{path}: not enough free space to write the cache") and "c.h5.parts" in message
    assert path.read_bytes() == before and open_cache(path).keys == ["a", "b"]
    assert CacheWriter(path, CONFIG).journal_keys() == {"c"}
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EIO, "input/output"),
                                          (errno.EROFS, "read-only")])
def test_a_commit_that_fails_half_way_keeps_the_old_cache_and_leaves_no_temporary(tmp_path, monkeypatch, code,
                                                                                  reason):
    path = committed_cache(tmp_path / "c.h5")
    before = path.read_bytes()
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("c", 3))
    writer.add(entry("d", 4))
    real_write_file = cache_module._write_file

    def fails_after_one_entry(temporary, destination, config, info, entries, copy_from):
        def some_then_failure():
            iterator = iter(entries)
            yield next(iterator)
            raise OSError(code, os.strerror(code))

        real_write_file(temporary, destination, config, info, some_then_failure(), copy_from)

    monkeypatch.setattr(cache_module, "_write_file", fails_after_one_entry)
    with pytest.raises(UserError) as raised:
        writer.commit()
    assert str(raised.value).startswith(f"{path}: cannot write: ") and reason in str(raised.value)
    assert path.read_bytes() == before and open_cache(path).keys == ["a", "b"]
    assert CacheWriter(path, CONFIG).journal_keys() == {"c", "d"}
    assert temporaries(tmp_path) == []


def test_write_cache_into_a_path_whose_parent_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "features"
    blocker.write_text("a file")
    with pytest.raises(UserError, match="is a file, not a folder"):
        write_cache(blocker / "c.h5", CONFIG, {}, [entry("a")])
    assert blocker.read_text() == "a file"


def test_a_journal_write_that_fails_names_the_cache_journal_and_keeps_earlier_entries(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("a"))
    monkeypatch.setattr(os, "fsync", lambda _: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(UserError, match=r"c\.h5\.parts/.*: cannot write: no space left"):
        writer.add(entry("b"))
    monkeypatch.undo()
    assert writer.journal_keys() == {"a"} and temporaries(journal_dir(path)) == []


# ----------------------------------------------------------------------------- planted links, foreign files


def test_symlinks_planted_at_temporary_names_leave_their_targets_unchanged(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    path = committed_cache(out / "c.h5")
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("c"))
    pid = os.getpid()
    for planted in [out / f".c.h5.{pid}.tmp", journal_dir(path) / f".{journal_entry_name('d')}.{pid}.tmp"]:
        planted.symlink_to(victim)
    writer.add(entry("d"))
    writer.commit()
    assert victim.read_text() == "precious"
    assert open_cache(path).keys == ["a", "b", "c", "d"]


@pytest.mark.parametrize("target_kind", ["folder with files", "dangling"])
def test_a_journal_folder_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, target_kind):
    elsewhere = tmp_path / "elsewhere"
    if target_kind == "folder with files":
        elsewhere.mkdir()
        (elsewhere / "thesis.tex").write_text("years of work")
        (elsewhere / "x~0123456789abcdef.npz").write_bytes(b"not ours")
    path = tmp_path / "c.h5"
    journal_dir(path).symlink_to(elsewhere)
    with pytest.raises(UserError, match="journal folder is a symbolic link") as raised:
        CacheWriter(path, CONFIG)
    assert str(raised.value).startswith(str(journal_dir(path)))
    if target_kind == "folder with files":
        assert sorted(os.listdir(elsewhere)) == ["thesis.tex", "x~0123456789abcdef.npz"]
    assert not lock_path(path).exists()  # the refused writer released its lock


def test_a_journal_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    journal_dir(path).write_text("mine")
    with pytest.raises(UserError, match="not a folder"):
        CacheWriter(path, CONFIG)
    assert journal_dir(path).read_text() == "mine"


@pytest.mark.parametrize("foreign", ["notes.txt", "a.npz", ".hidden", "x~0123456789abcdef.npz"])
def test_a_journal_folder_of_foreign_files_without_our_config_is_refused_and_kept(tmp_path, foreign):
    path = tmp_path / "c.h5"
    journal_dir(path).mkdir()
    (journal_dir(path) / foreign).write_bytes(b"someone else's")
    with pytest.raises(UserError, match="files this pipeline did not write"):
        CacheWriter(path, CONFIG)
    assert (journal_dir(path) / foreign).read_bytes() == b"someone else's"


def test_foreign_files_in_our_journal_survive_the_commit(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("a"))
    foreign = {"notes.txt": b"keep me", "b~0123456789abcdef.npz": b"not an entry", "old.npz": b"mine too"}
    for name, data in foreign.items():
        (journal_dir(path) / name).write_bytes(data)
    # A file named like an entry but holding another key is not an entry either.
    np.savez(journal_dir(path) / journal_entry_name("k" * 300).replace("k~", "q~"), key=np.array("other"))
    assert writer.journal_keys() == {"a"}
    writer.commit()
    assert open_cache(path).keys == ["a"]
    left = set(os.listdir(journal_dir(path)))
    assert set(foreign) <= left and "config.json" not in left and journal_entry_name("a") not in left


def test_stale_temporaries_of_a_killed_commit_are_removed_by_the_next_writer(tmp_path):
    path = committed_cache(tmp_path / "c.h5")
    stale = [tmp_path / ".c.h5.abcdefgh.tmp", tmp_path / ".c.h5.31337.tmp"]
    other_cache_temporary = tmp_path / ".c.h5.x.abcdefgh.tmp"
    for file in stale + [other_cache_temporary]:
        file.write_bytes(b"half an HDF5 file")
    writer = CacheWriter(path, CONFIG)
    writer.add(entry("c"))
    journal_stale = journal_dir(path) / f".{journal_entry_name('d')}.abcdefgh.tmp"
    journal_stale.write_bytes(b"half")
    CacheWriter(path, CONFIG)  # the rerun
    assert not any(file.exists() for file in stale) and not journal_stale.exists()
    assert other_cache_temporary.exists()
    assert open_cache(path).keys == ["a", "b"]


# ----------------------------------------------------------------------------- two writers


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from aqa.cache import CacheWriter, VideoEntry
    writer = CacheWriter(sys.argv[2], {"backbone": "test", "views": ["original"]})
    writer.add(VideoEntry("first", np.zeros((1, 2, 4), np.float32)))
    print("journalled", flush=True)
    sys.stdin.readline()
    writer.commit()
    """
)


def test_a_second_writer_of_the_same_cache_is_refused_naming_the_holder_and_deletes_nothing(tmp_path):
    path = committed_cache(tmp_path / "c.h5")
    holder = subprocess.Popen([sys.executable, "-c", WRITER, str(REPO_ROOT), str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "journalled"
        for attempt in (lambda: CacheWriter(path, CONFIG), lambda: write_cache(path, CONFIG, {}, [entry("z")])):
            with pytest.raises(UserError) as raised:
                attempt()
            assert str(raised.value).startswith(
                f"{path}: the feature cache is being written by process {holder.pid} on ")
        assert set(journal_entries(path)) == {"first"}
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert open_cache(path).keys == ["a", "b", "first"]

"""The one write path (aqa.files): failed writes keep the old file, remove their temporary and
name the file in one line; temporaries are created exclusively; the lock names its holder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from aqa import files
from aqa.errors import UserError
from aqa.files import (
    FileLock,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    check_free_space,
    is_temporary_of,
    lock_path,
    remove_stale_temporaries,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def failing_write(code: int):
    def write(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return write


# ----------------------------------------------------------------------------- failed writes


@pytest.mark.parametrize(
    "code, reason",
    [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
     (errno.EDQUOT, "quota"), (errno.EIO, "input/output")],
)
def test_a_write_that_fails_keeps_the_old_file_removes_its_temporary_and_names_the_file(tmp_path, monkeypatch,
                                                                                        code, reason):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", failing_write(code))
    with pytest.raises(UserError) as raised:
        atomic_write_text(target, "new")
    message = str(raised.value)
    assert message.startswith(f"{target}: cannot write: ") and reason in message and "\n" not in message
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["handle", "path"])
def test_a_failure_half_way_through_the_data_keeps_the_old_file(tmp_path, writer):
    target = tmp_path / "features.npy"
    target.write_bytes(b"old")
    with pytest.raises(UserError, match="no space left"):
        if writer == "handle":
            with atomic_writer(target) as handle:
                handle.write(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
        else:
            with atomic_path(target) as temporary:
                temporary.write_bytes(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_an_error_of_the_caller_inside_the_block_keeps_the_old_file_and_is_not_rewritten(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(UserError, match="bad row"):
        with atomic_writer(target, "w") as handle:
            handle.write("new")
            raise UserError("bad row")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("depth", ["parent", "grandparent"])
def test_an_output_whose_parent_is_a_file_is_refused_naming_both(tmp_path, depth):
    blocker = tmp_path / "runs"
    blocker.write_text("I am a file")
    target = blocker / "x.json" if depth == "parent" else blocker / "sub" / "x.json"
    with pytest.raises(UserError) as raised:
        atomic_write_bytes(target, b"{}")
    message = str(raised.value)
    assert message.startswith(f"{target}: cannot write") and str(blocker) in message
    assert blocker.read_text() == "I am a file"


def test_a_read_only_folder_is_refused_even_for_root(tmp_path, monkeypatch):
    # Root ignores permission bits, so the read-only file system is what the OS reports instead.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=r"out\.json: cannot write: the file system is read-only"):
        atomic_write_text(tmp_path / "out.json", "{}")


def test_an_h5py_error_text_is_cut_to_its_reason():
    error = OSError("Can't synchronously write data (file write failed: time = Tue\n, errno = 28, error message = x)")
    assert files.describe_os_error(error) == "no space left on the device"


# ----------------------------------------------------------------------------- temporaries


def test_a_symlink_planted_at_the_old_temporary_name_is_never_followed(tmp_path):
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "metrics.json"
    # Every name an earlier version would have used, and a few random-looking ones.
    for name in [f".{target.name}.{os.getpid()}.tmp", f".{target.name}.{os.getpid() + 1}.tmp"]:
        (out / name).symlink_to(victim)
    atomic_write_text(target, "{}")
    with atomic_path(out / "cache.h5") as temporary:
        assert not temporary.is_symlink() and temporary.stat().st_size == 0
        temporary.write_bytes(b"data")
    assert victim.read_text() == "precious"
    assert target.read_text() == "{}" and (out / "cache.h5").read_bytes() == b"data"


def test_temporaries_are_recognised_and_only_those_of_their_file(tmp_path):
    target = tmp_path / "c.h5"
    with atomic_writer(target) as handle:
        handle.write(b"x")
        own = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(own) == 1 and is_temporary_of(own[0], target)
    assert is_temporary_of(".c.h5.12345.tmp", target)  # an earlier version's name
    for other in [".c.h5.x.abcdefgh.tmp", ".c.h5x.abcdefgh.tmp", "c.h5.abcdefgh.tmp", ".c.h5.abcdefgh.tmp.png"]:
        assert not is_temporary_of(other, target), other


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "c.h5"
    stale = [tmp_path / ".c.h5.abcd_123.tmp", tmp_path / ".c.h5.4242.tmp"]
    kept = [tmp_path / "c.h5", tmp_path / ".c.h5.x.abcdefgh.tmp", tmp_path / "notes.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(target)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)


def test_a_name_near_the_file_system_limit_still_gets_a_temporary_and_a_lock(tmp_path):
    target = tmp_path / ("k" * 250)
    atomic_write_bytes(target, b"x")
    with FileLock(target, "the file"):
        assert len(lock_path(target).name) < 255
    assert target.read_bytes() == b"x" and leftovers(tmp_path) == []


def test_the_written_file_gets_the_usual_permissions_not_the_private_temporary_ones(tmp_path):
    fresh = atomic_write_bytes(tmp_path / "fresh", b"x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~files._umask()
    kept = tmp_path / "kept"
    kept.write_bytes(b"x")
    kept.chmod(0o640)
    atomic_write_bytes(kept, b"y")
    assert kept.stat().st_mode & 0o777 == 0o640


def test_not_enough_free_space_is_refused_before_writing(tmp_path):
    with pytest.raises(UserError, match=r"c\.h5: not enough free space to write the cache: needs about"):
        check_free_space(tmp_path, 2**62, tmp_path / "c.h5", "the cache")
    check_free_space(tmp_path, 1, tmp_path / "c.h5", "the cache")


# ----------------------------------------------------------------------------- locks


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from aqa.files import FileLock
    with FileLock(sys.argv[2], "the thing"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def hold_lock_in_another_process(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO_ROOT), str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_is_refused_naming_the_holder_and_the_lock_is_free_after(tmp_path):
    target = tmp_path / "c.h5"
    holder = hold_lock_in_another_process(target)
    try:
        with pytest.raises(UserError) as raised:
            FileLock(target, "the feature cache").acquire()
        message = str(raised.value)
        assert message.startswith(f"{target}: the feature cache is being written by process {holder.pid} on ")
        assert "\n" not in message
    finally:
        holder.communicate("\n", timeout=30)
    assert not lock_path(target).exists()  # removed by its holder
    with FileLock(target, "the feature cache"):
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    target = tmp_path / "run"
    holder = hold_lock_in_another_process(target)
    holder.kill()
    holder.wait(timeout=30)
    assert lock_path(target).exists()
    with FileLock(target, "the run folder"):
        pass
    assert not lock_path(target).exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    target = tmp_path / "c.h5"
    first, second = FileLock(target, "x"), FileLock(target, "x")
    first.acquire()
    second.acquire()
    first.release()
    assert lock_path(target).exists()  # still held by the second
    second.release()
    assert not lock_path(target).exists()


def test_a_release_run_by_the_garbage_collector_during_an_acquire_does_not_hang(tmp_path, monkeypatch):
    # What hung a test run: a CacheWriter's __del__ (releasing its lock) ran, through the garbage
    # collector, inside another lock's acquire on the same thread. Simulated deterministically.
    collected = FileLock(tmp_path / "old.h5", "x").acquire()
    taking = FileLock(tmp_path / "new.h5", "x")
    original = FileLock._lock_file_descriptor

    def finaliser_runs_midway(self):
        collected.release()
        return original(self)

    monkeypatch.setattr(FileLock, "_lock_file_descriptor", finaliser_runs_midway)
    worker = threading.Thread(target=taking.acquire, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "acquire hung on the release inside it"
    assert taking.holding and not collected.holding
    assert lock_path(tmp_path / "new.h5").exists() and not lock_path(tmp_path / "old.h5").exists()
    taking.release()


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    target = tmp_path / "c.h5"
    lock_path(target).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        FileLock(target, "the feature cache").acquire()
    assert victim.read_text() == "precious"

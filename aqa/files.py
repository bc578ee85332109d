"""The one way this project writes a file, and the lock that keeps two writers apart.

Writing. :func:`atomic_writer` (a file handle) and :func:`atomic_path` (a path, for libraries
such as h5py that open files by name) write to a temporary file created *exclusively* in the
destination's own folder (``tempfile.mkstemp``: a random name opened with ``O_CREAT | O_EXCL``,
so a symbolic link planted in a shared folder is never followed), flush it to disk and rename it
over the destination. The rename is atomic on POSIX file systems: the destination holds either
its old content or the new one, never half of it. Whatever goes wrong (no space left, a read-only
folder, a parent that is a file), the temporary is removed, the old file is kept and the
``OSError`` becomes one :class:`~aqa.errors.UserError` line naming the destination.

Temporaries are named ``.<name>.<8 random characters>.tmp`` so that a later run holding the
destination's lock can recognise and remove those a ``kill -9`` left behind
(:func:`remove_stale_temporaries`).

Locking. :class:`FileLock` takes an exclusive, non-blocking ``flock`` on a hidden sibling file
``.<name>.lock`` that records who holds it; a second process is refused with one line naming the
holder's process id and host. The kernel drops the lock when its holder dies, so a ``kill -9``
never leaves a cache or a run folder locked. Inside one process the lock is re-entrant (counted),
so a process may open several writers on the same destination one after another.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

from aqa.errors import UserError

# The longest part of a destination's name kept in its temporary's or lock file's name: with the
# prefix dot, the random part and the suffix the whole name stays well under the 255 bytes most
# file systems allow, whatever the destination is called.
_NAME_PART_LIMIT = 200

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent of this path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the file name is too long for the file system",
    errno.ELOOP: "a symbolic link is in the way",
    errno.EIO: "input/output error on the device",
}


# --------------------------------------------------------------------------- errors


def describe_os_error(error: OSError) -> str:
    """A short, one-line reason for ``error`` (libraries such as h5py put pages into the text)."""
    code = error.errno
    if code is None:
        # h5py reports the system error inside its own text: "..., errno = 28, ...".
        match = re.search(r"errno = (\d+)", str(error))
        code = int(match.group(1)) if match else None
    if code in _REASONS:
        return _REASONS[code]
    if code is not None:
        return os.strerror(code)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def write_failure(error: OSError, path: str | os.PathLike) -> UserError:
    """The one-line refusal for a write of ``path`` that failed with ``error``."""
    return UserError(f"cannot write: {describe_os_error(error)}", path)


def ensure_folder(folder: str | os.PathLike, for_path: str | os.PathLike | None = None) -> Path:
    """Create ``folder`` (and its parents) if needed; a failure names ``for_path`` (default: the folder).

    A path component that exists but is a file is named in the message, since "file exists"
    from ``mkdir`` would not tell the user which one.
    """
    folder = Path(folder)
    named = folder if for_path is None else Path(for_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((parent for parent in (folder, *folder.parents) if parent.exists() and not parent.is_dir()), None)
        if blocker is not None:
            raise UserError(f"cannot write: {blocker} is a file, not a folder", named) from None
        raise write_failure(error, named) from None
    return folder


def check_free_space(folder: str | os.PathLike, needed_bytes: int, path: str | os.PathLike, what: str,
                     advice: str = "") -> None:
    """Refuse to start a write of about ``needed_bytes`` into ``folder`` that cannot fit.

    Used where the writing library cannot fail cleanly when space runs out half-way (HDF5):
    checking first keeps the old file and the process intact.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # nothing to measure with; the write itself still fails cleanly or not at all
    if free < needed_bytes:
        raise UserError(
            f"not enough free space to write {what}: needs about {_megabytes(needed_bytes)}, "
            f"{_megabytes(free)} free on the device" + (f"; {advice}" if advice else ""),
            path,
        )


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- temporaries


def _name_part(name: str) -> str:
    """``name`` cut to a length that leaves room for a prefix and suffix in one file name."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= _NAME_PART_LIMIT:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    return encoded[: _NAME_PART_LIMIT - 13].decode("utf-8", "ignore") + "-" + digest


def temporary_prefix(path: str | os.PathLike) -> str:
    """The start of every temporary's name for ``path``: ``.<name>.``."""
    return f".{_name_part(Path(path).name)}."


def is_temporary_of(name: str, path: str | os.PathLike) -> bool:
    """Whether ``name`` (a file in ``path``'s folder) is a temporary written for ``path``.

    Matches this module's ``.<name>.<8 random characters>.tmp`` and the ``.<name>.<pid>.tmp`` of
    earlier versions, and nothing else: the temporaries of ``<name>.x`` do not match.
    """
    prefix = temporary_prefix(path)
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return False
    middle = name[len(prefix) : -len(".tmp")]
    return re.fullmatch(r"[a-z0-9_]{8}|\d+", middle) is not None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries for ``path`` that an interrupted write left in its folder.

    Only safe while holding ``path``'s :class:`FileLock`: otherwise another live writer's
    temporary could be among them. Returns what was removed.
    """
    path = Path(path)
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if is_temporary_of(name, path):
            with contextlib.suppress(FileNotFoundError):
                (path.parent / name).unlink()  # unlink never follows a symbolic link
                removed.append(path.parent / name)
    return removed


def _new_file_mode(path: Path) -> int:
    """The permissions the written file gets: the old file's, else what ``open`` would give."""
    try:
        existing = os.stat(path)
        if not os.path.isdir(path):
            return existing.st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports the umask without changing it; os.umask() must set one to read it, which is
    # racy with other threads creating files, so it is only the fallback.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _create_temporary(path: Path) -> tuple[int, Path]:
    ensure_folder(path.parent, path)
    try:
        descriptor, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise write_failure(error, path) from None
    temporary = Path(name)
    try:
        os.fchmod(descriptor, _new_file_mode(path))
    except OSError:
        pass  # mkstemp's private 0600 is a safe default
    return descriptor, temporary


def create_temporary_folder(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new, empty folder beside ``path`` (``.<name>.<random><suffix>``), created exclusively,
    with the permissions a plain ``mkdir`` would give; for work renamed into place as a whole."""
    path = Path(path)
    ensure_folder(path.parent, path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=suffix, dir=path.parent))
    except OSError as error:
        raise write_failure(error, path) from None
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the result from others
    return folder


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every file system allows opening a folder.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, Path]]:
    """The part every atomic write shares: a temporary created exclusively beside ``path``
    (``(descriptor, temporary)``, the descriptor open for the caller to use or close); when the
    block ends it is renamed over ``path`` and the rename made durable. When the block raises,
    ``path`` is left as it was and the temporary is removed; an ``OSError`` becomes a
    :class:`UserError` naming ``path``."""
    descriptor, temporary = _create_temporary(path)
    try:
        yield descriptor, temporary
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as error:
        raise write_failure(error, path) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                  newline: str | None = None) -> Iterator[IO]:
    """``with atomic_writer(path) as handle:`` write ``path`` all at once or not at all.

    ``mode`` is ``"wb"`` or ``"w"`` (text, with ``encoding``/``newline`` as for :func:`open`).
    When the block raises, ``path`` is left as it was and the temporary is removed; an
    ``OSError`` becomes a :class:`UserError` naming ``path``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer writes whole files ('wb' or 'w'), not mode {mode!r}")
    with _replacing(Path(path)) as (descriptor, _):
        try:
            handle = os.fdopen(descriptor, mode, encoding=encoding if mode == "w" else None,
                               newline=newline if mode == "w" else None)
        except BaseException:
            os.close(descriptor)
            raise
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(path) as temporary:`` for writers that open a file by name.

    ``temporary`` is an empty file created exclusively beside ``path``; the block writes it
    (truncating it is fine), and it is synced and renamed over ``path`` when the block ends.
    Failures behave as in :func:`atomic_writer`.
    """
    with _replacing(Path(path)) as (descriptor, temporary):
        os.close(descriptor)
        yield temporary
        # Reopened without following links: the synced file must be the one renamed.
        synced = os.open(temporary, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(synced)
        finally:
            os.close(synced)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer`)."""
    path = Path(path)
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically (see :func:`atomic_writer`)."""
    return atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------- locks


def lock_path(path: str | os.PathLike) -> Path:
    """The hidden sibling file whose ``flock`` guards ``path``: ``.<name>.lock``."""
    path = Path(path)
    return path.parent / f".{_name_part(path.name)}.lock"


class FileLock:
    """An exclusive lock on ``path`` between processes (``with FileLock(cache, "the cache"):``).

    ``acquire`` never waits: if another process holds the lock it raises a :class:`UserError`
    naming ``path`` and the holder. The lock file is removed on release (its holder record would
    be stale); a lock file left by a killed process is simply taken over.
    """

    # Locks this process holds: {lock file: [descriptor, count]}. flock conflicts between two
    # descriptors of one process, so the lock is counted here instead of taken twice.
    _held: dict[str, list[int]] = {}
    # Re-entrant: the garbage collector may run a finaliser that releases another lock (a
    # CacheWriter's __del__) in the middle of acquire(), on the same thread; a plain Lock hung there.
    _held_guard = threading.RLock()

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what  # how the refusal calls the thing: "the feature cache", "the run folder"
        self.lock_file = lock_path(self.path)
        self._key = os.path.abspath(self.lock_file)
        self._holding = False

    @property
    def holding(self) -> bool:
        return self._holding

    def acquire(self) -> "FileLock":
        if self._holding:
            return self
        with FileLock._held_guard:
            held = FileLock._held.get(self._key)
            if held is not None:
                held[1] += 1
            else:
                FileLock._held[self._key] = [self._lock_file_descriptor(), 1]
        self._holding = True
        return self

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        with FileLock._held_guard:
            held = FileLock._held.get(self._key)
            if held is None:  # inherited across a fork: the parent holds it
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del FileLock._held[self._key]
            descriptor = held[0]
            # Removed while still locked, so a process that opened the old file finds on locking
            # it that it is no longer the lock file, and tries again (see _lock_file_descriptor).
            with contextlib.suppress(OSError):
                if _same_file(descriptor, self.lock_file):
                    self.lock_file.unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _lock_file_descriptor(self) -> int:
        ensure_folder(self.lock_file.parent, self.path)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(20):
            try:
                descriptor = os.open(self.lock_file, flags, 0o644)
            except OSError as error:
                # A planted link is named itself; any other failure (read-only, full) names the target.
                raise write_failure(error, self.lock_file if error.errno == errno.ELOOP else self.path) from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(
                        f"{self.what} is being written by {holder}; wait for it to finish or stop it", self.path
                    ) from None
                raise write_failure(error, self.lock_file) from None
            if _same_file(descriptor, self.lock_file):
                _write_holder(descriptor)
                return descriptor
            os.close(descriptor)  # the previous holder removed this file as we opened it
        raise UserError(f"could not take the lock {self.lock_file.name}: it keeps changing", self.path)


def _forget_locks_in_child() -> None:
    # A forked child (a DataLoader worker) inherits the descriptors but does not hold the locks:
    # it must never release (and remove) its parent's lock files.
    FileLock._held = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _write_holder(descriptor: int) -> None:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
    # Only informs the refusal another process shows; a full disk must not stop the lock.
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record + b"\n", 0)


def _read_holder(descriptor: int) -> str:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0).decode("utf-8", "replace"))
        return f"process {int(record['pid'])} on {record['host']} (since {record['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"

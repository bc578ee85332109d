"""The HDF5 feature cache: the one contract between stage 1 (writes) and stage 2 (reads).

File layout (schema version 1)::

    /                      attrs: schema_version, config (JSON), info (JSON), feature_dim
    /videos/<key>          float32 [views, clips, feature_dim]
                           attrs: num_frames (int), clip_starts (int32 [views, clips]; -1 unknown)

``config`` is what makes two caches comparable: backbone, weights sha256, preprocessing, clip
layout, views, dataset. A reader that asks for a configuration gets a refusal, never a silent
mix, when the file was built with another one. ``info`` is provenance that does not affect the
numbers (software version, creation time, source paths) and is never compared.

The cache holds no labels: scores, difficulty and splits come from the annotations at training
time, so relabelling or resplitting never needs re-extraction. Clip counts may differ by video.

Crash safety. The HDF5 file is only ever replaced whole (written beside it, flushed, renamed), so
it is always either the old or the new complete file. Work in progress lives in a journal
directory ``<cache>.parts/``: one ``.npz`` per finished video, each written to a temporary name
and renamed, so an entry either exists complete or not at all. An interrupted extraction leaves
the journal behind; the next run skips every video in the cache or the journal and
:meth:`CacheWriter.commit` folds the journal into the file. Under ``torchrun`` every rank writes
its own videos' journal entries (its shard) and rank 0 commits them all into the one cache.

Safety in shared folders. Every file is written through :mod:`aqa.files` (exclusively created
temporaries, never following a planted link; a failed write keeps the old file and names it). A
writer locks the cache (``.<cache>.lock``; a second process is told who holds it) and, holding
it, removes the temporaries a killed run left. The journal is the pipeline's own: a journal path
that is a symbolic link, or a folder of other files without the journal's ``config.json``, is
refused, and a commit deletes only the entries, configuration and temporaries it wrote. Entry
names are derived from the key (escaped, length-bounded, with a hash; see
:func:`journal_entry_name`), so any valid key, a leading dot or 300 characters long, journals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from aqa.errors import UserError
from aqa.files import (
    FileLock,
    atomic_path,
    atomic_write_bytes,
    atomic_writer,
    check_free_space,
    ensure_folder,
    remove_stale_temporaries,
)

SCHEMA_VERSION = 1
# The name of view 0 of every cache: the unaugmented clips (the other views are named by stage 1).
ORIGINAL_VIEW = "original"
_VIDEOS = "videos"
_JOURNAL_SUFFIX = ".parts"
_JOURNAL_CONFIG = "config.json"
_KEY_PATTERN = re.compile(r"^[^/\x00-\x1f]+$")


def _h5py():
    # h5py is imported lazily so that modules importing this one stay quick to load.
    import h5py

    return h5py


def check_key(key: str, source: str | os.PathLike | None = None) -> str:
    """Return ``key`` if it can name a video in the cache; else a :class:`UserError`."""
    if not isinstance(key, str) or not key or key in (".", "..") or key != key.strip():
        raise UserError(f"invalid video key {key!r}: must be non-empty without surrounding spaces", source)
    if not _KEY_PATTERN.match(key):
        raise UserError(f"invalid video key {key!r}: must not contain '/' or control characters", source)
    return key


def journal_dir(cache_path: str | os.PathLike) -> Path:
    """Where an extraction into ``cache_path`` keeps its finished-but-uncommitted videos."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + _JOURNAL_SUFFIX)


def config_differences(recorded: Mapping, expected: Mapping, prefix: str = "") -> list[str]:
    """Human-readable differences between two configuration dicts (nested dicts compared deeply)."""
    differences = []
    for name in sorted(set(recorded) | set(expected)):
        label = f"{prefix}{name}"
        if name not in expected:
            continue  # the caller did not ask about this field
        if name not in recorded:
            differences.append(f"{label}: not recorded, asked for {expected[name]!r}")
            continue
        have, want = recorded[name], expected[name]
        if isinstance(have, Mapping) and isinstance(want, Mapping):
            differences.extend(config_differences(have, want, prefix=f"{label}."))
        elif _normalise(have) != _normalise(want):
            differences.append(f"{label}: cache has {have!r}, asked for {want!r}")
    return differences


def _normalise(value):
    # JSON round trips turn tuples into lists; compare what would be stored.
    return json.loads(json.dumps(value, sort_keys=True))


@dataclass
class VideoEntry:
    """The cached features of one video."""

    key: str
    features: np.ndarray  # float32 [views, clips, feature_dim]
    num_frames: int = -1
    clip_starts: np.ndarray | None = None  # int32 [views, clips], -1 where unknown

    def __post_init__(self):
        check_key(self.key)
        features = np.asarray(self.features)
        if features.ndim != 3:
            raise ValueError(f"video {self.key}: features must be [views, clips, dim], got {features.shape}")
        self.features = features.astype(np.float32, copy=False)
        if self.clip_starts is None:
            self.clip_starts = np.full(features.shape[:2], -1, dtype=np.int32)
        self.clip_starts = np.asarray(self.clip_starts, dtype=np.int32)
        if self.clip_starts.shape != features.shape[:2]:
            raise ValueError(
                f"video {self.key}: clip_starts {self.clip_starts.shape} does not match features {features.shape[:2]}"
            )


@dataclass
class FeatureCache:
    """A cache opened for reading. Features are read on demand or all at once."""

    path: Path
    config: dict
    info: dict
    feature_dim: int
    keys: list[str] = field(repr=False)
    # Clip count per key, as read from the entries' shapes when the file was opened and checked.
    clips_by_key: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def view_names(self) -> list[str]:
        return list(self.config.get("views", [ORIGINAL_VIEW]))

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def __len__(self) -> int:
        return len(self.keys)

    def __post_init__(self):
        self._key_set = set(self.keys)

    def entry(self, key: str) -> VideoEntry:
        """One video's features and clip layout."""
        if key not in self._key_set:
            raise UserError(f"no video {key!r} in the cache", self.path)
        with _open_h5(self.path) as handle:
            return _read_entry(handle[_VIDEOS], key, self.path)

    def load_all(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{key: float32 [views, clips, dim]}`` for ``keys`` (default: all), in one file open."""
        wanted = self.keys if keys is None else list(keys)
        missing = [key for key in wanted if key not in self._key_set]
        if missing:
            raise UserError(f"{len(missing)} videos not in the cache (first: {missing[:5]})", self.path)
        with _open_h5(self.path) as handle:
            videos = handle[_VIDEOS]
            return {key: _read_features(videos, key, self.path) for key in wanted}

    def clip_counts(self) -> dict[str, int]:
        """``{key: number of clips}``, from the shapes :func:`open_cache` checked (no data is read)."""
        return {key: self.clips_by_key[key] for key in self.keys}


def _open_h5(path: Path, mode: str = "r"):
    h5py = _h5py()
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise UserError("feature cache not found", path) from None
    except OSError as error:
        raise UserError(f"not a readable HDF5 feature cache ({error})", path) from None


def _read_features(videos, key: str, path: Path) -> np.ndarray:
    """One entry's ``float32 [views, clips, dim]`` array; a read failure (damaged data) names the video."""
    try:
        return np.asarray(videos[key][()], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise UserError(f"video {key!r}: its features cannot be read ({error})", path) from None


def _read_entry(videos, key: str, path: Path) -> VideoEntry:
    dataset = videos[key]
    num_frames = _attribute(dataset.attrs, "num_frames", path, f"video {key!r}: ")
    return VideoEntry(
        key=key,
        features=_read_features(videos, key, path),
        num_frames=-1 if num_frames is None else int(num_frames),
        clip_starts=_attribute(dataset.attrs, "clip_starts", path, f"video {key!r}: "),
    )


def _shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about what a damaged file holds."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()  # 5, not np.int64(5)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attribute(attrs, name: str, path: Path, where: str = ""):
    """An HDF5 attribute, or None when absent; one the library cannot decode is a damaged file."""
    try:
        return attrs.get(name)
    except (OSError, TypeError, ValueError, KeyError) as error:
        raise UserError(f"{where}attribute {name} cannot be read ({error})", path) from None


def _as_count(value) -> int | None:
    """``value`` as an ``int`` when it is one whole number (an HDF5 integer or integral float), else None."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if not np.isfinite(value) or float(value) != int(value):
        return None
    return int(value)


def _header_count(handle, name: str, path: Path) -> int:
    value = _attribute(handle.attrs, name, path, "cache header: ")
    if value is None:
        raise UserError(f"cache header has no {name}; not a complete feature cache of this project", path)
    count = _as_count(value)
    if count is None:
        raise UserError(f"cache header: {name} is {_shown(value)}, not a whole number", path)
    return count


def _header_object(handle, name: str, path: Path, default: str | None = None) -> dict:
    """A header attribute holding a JSON object (``config``, ``info``), decoded."""
    text = _attribute(handle.attrs, name, path, "cache header: ")
    if text is None and default is not None:
        text = default
    if text is None:
        raise UserError(f"cache header has no {name}; not a complete feature cache of this project", path)
    if isinstance(text, np.ndarray) and text.shape == ():
        text = text[()]
    if not isinstance(text, (str, bytes)):
        raise UserError(f"cache header: {name} is {_shown(text)}, not JSON text", path)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cache header: {name} is not valid JSON ({error})", path) from None
    if not isinstance(value, dict):
        raise UserError(f"cache header: {name} is {_shown(value)}, not a JSON object", path)
    return value


def _read_header(handle, path: Path) -> tuple[dict, dict, int]:
    """``(config, info, feature_dim)`` of an open cache; anything damaged is named."""
    if _attribute(handle.attrs, "schema_version", path, "cache header: ") is None or _VIDEOS not in handle:
        raise UserError("not a feature cache of this project (no schema_version or videos group)", path)
    version = _header_count(handle, "schema_version", path)
    if version != SCHEMA_VERSION:
        raise UserError(f"cache schema version {version} is not supported (this version reads {SCHEMA_VERSION})", path)
    config = _header_object(handle, "config", path)
    info = _header_object(handle, "info", path, default="{}")
    views = config.get("views")
    if views is not None and not (
        isinstance(views, list) and views and all(isinstance(name, str) and name for name in views)
    ):
        raise UserError(f"cache header: config views is {_shown(views)}, not a list of view names", path)
    feature_dim = _header_count(handle, "feature_dim", path)
    if feature_dim < 0:
        raise UserError(f"cache header: feature_dim is {feature_dim}, not a size", path)
    return config, info, feature_dim


def _check_entries(handle, feature_dim: int, path: Path) -> dict[str, int]:
    """``{key: clip count}`` after checking every entry's metadata (type, dtype, shape, attributes).

    Only metadata is read, so opening stays cheap however large the cache; what is checked here
    is what every reader relies on, so a damaged file fails at open with the video named rather
    than with a traceback somewhere in ``inspect`` or ``train``.
    """
    h5py = _h5py()
    videos = handle.get(_VIDEOS)
    if not isinstance(videos, h5py.Group):
        raise UserError(f"/{_VIDEOS} is a {type(videos).__name__}, not a group of videos", path)
    clip_counts: dict[str, int] = {}
    for key in videos:
        check_key(key, path)
        where = f"video {key!r}"
        # Only entries stored in this file: a soft or external link may point nowhere or elsewhere.
        if not isinstance(videos.get(key, getlink=True), h5py.HardLink):
            raise UserError(f"{where} is a link, not features stored in the cache", path)
        dataset = videos.get(key)
        if not isinstance(dataset, h5py.Dataset):
            raise UserError(f"{where} is a {type(dataset).__name__}, not a dataset of features", path)
        if dataset.dtype.kind != "f":
            raise UserError(f"{where} has {dataset.dtype} features, expected floating point", path)
        shape = dataset.shape
        if len(shape) != 3 or shape[0] < 1:
            raise UserError(f"{where} has features of shape {shape}, expected [views, clips, feature_dim]", path)
        if shape[2] != feature_dim:
            raise UserError(f"{where} has {shape[2]}-d features but the cache header says {feature_dim}-d "
                            "(mixed feature sizes)", path)
        num_frames = _attribute(dataset.attrs, "num_frames", path, f"{where}: ")
        if num_frames is not None and _as_count(num_frames) is None:
            raise UserError(f"{where}: num_frames is {_shown(num_frames)}, not a whole number", path)
        clip_starts = _attribute(dataset.attrs, "clip_starts", path, f"{where}: ")
        if clip_starts is not None:
            clip_starts = np.asarray(clip_starts)
            if clip_starts.dtype.kind not in "iu" or clip_starts.shape != shape[:2]:
                raise UserError(f"{where}: clip_starts is {clip_starts.dtype} {clip_starts.shape}, expected "
                                f"integers of its features' [views, clips] shape {shape[:2]}", path)
        clip_counts[key] = int(shape[1])
    return clip_counts


def open_cache(path: str | os.PathLike, expect: Mapping | None = None) -> FeatureCache:
    """Open a cache for reading; with ``expect``, refuse one built with another configuration."""
    path = Path(path)
    if path.is_dir():
        raise UserError("is a directory, expected an HDF5 feature cache file", path)
    with _open_h5(path) as handle:
        try:
            config, info, feature_dim = _read_header(handle, path)
            clip_counts = _check_entries(handle, feature_dim, path)
        except (OSError, RuntimeError) as error:
            # The library's own error on structure it cannot walk (a damaged group or heap).
            raise UserError(f"damaged feature cache ({error})", path) from None
    if expect is not None:
        differences = config_differences(config, expect)
        if differences:
            raise UserError(
                "cache was built with other settings (" + "; ".join(differences) + "); "
                "use another --out or delete the file",
                path,
            )
    return FeatureCache(path=path, config=config, info=info, feature_dim=feature_dim, keys=sorted(clip_counts),
                        clips_by_key=clip_counts)


def _write_file(temporary: Path, destination: Path, config: Mapping, info: Mapping, entries: Iterable[VideoEntry],
                copy_from: Path | None) -> None:
    """Write a complete cache to ``temporary``; messages name ``destination``, which the caller
    replaces with it (:func:`aqa.files.atomic_path` syncs, renames and cleans up)."""
    h5py = _h5py()
    feature_dim = None
    with h5py.File(temporary, "w") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION
        handle.attrs["config"] = json.dumps(config, sort_keys=True)
        handle.attrs["info"] = json.dumps(info, sort_keys=True)
        videos = handle.create_group(_VIDEOS)
        written = set()
        for entry in entries:
            if feature_dim is None:
                feature_dim = entry.features.shape[2]
            elif entry.features.shape[2] != feature_dim:
                raise UserError(
                    f"video {entry.key} has feature dimension {entry.features.shape[2]}, others {feature_dim}",
                    destination,
                )
            dataset = videos.create_dataset(entry.key, data=entry.features)
            dataset.attrs["num_frames"] = entry.num_frames
            dataset.attrs["clip_starts"] = entry.clip_starts
            written.add(entry.key)
        if copy_from is not None:
            with _open_h5(copy_from) as old:
                for key in old[_VIDEOS]:
                    if key in written:
                        continue
                    old.copy(old[_VIDEOS][key], videos, name=key)
                    if feature_dim is None:
                        feature_dim = old[_VIDEOS][key].shape[2]
        handle.attrs["feature_dim"] = feature_dim or 0
        handle.flush()


def write_cache(path: str | os.PathLike, config: Mapping, info: Mapping, entries: Iterable[VideoEntry]) -> Path:
    """Write a whole cache at once (used by imports and merges), atomically, holding its lock."""
    path = Path(path)
    with FileLock(path, _CACHE_LOCK_NAME):
        remove_stale_temporaries(path)
        with atomic_path(path) as temporary:
            _write_file(temporary, path, config, info, entries, copy_from=None)
    return path


# --------------------------------------------------------------------------- the journal

# A journal entry's name: the key percent-escaped (a leading dot too, so no entry is hidden), cut
# to a length every file system accepts, then "~" and the first 16 hex digits of the key's
# SHA-256. The name alone gives the key back when it was not cut; every entry also stores its
# key, which is read when it was.
_ENTRY_NAME = re.compile(r"^(?P<readable>[^.].*)~(?P<digest>[0-9a-f]{16})\.npz$")
_READABLE_LIMIT = 160
# A temporary this module's writers leave in the journal when killed: ".<target>.<random|pid>.tmp".
_JOURNAL_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?:[a-z0-9_]{8}|\d+)\.tmp$")
_CACHE_LOCK_NAME = "the feature cache"


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def journal_entry_name(key: str) -> str:
    """The journal file name of video ``key``: safe for any valid key (leading dots, any length)."""
    readable = urllib.parse.quote(key, safe="", errors="surrogatepass")
    if readable.startswith("."):
        readable = "%2E" + readable[1:]
    return f"{readable[:_READABLE_LIMIT]}~{_key_digest(key)}.npz"


def _stored_key(path: Path) -> str | None:
    """The key an entry file records, or None when it records none (not an entry of this format)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "key" not in stored.files:
                return None
            return str(stored["key"][()])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"damaged journal entry ({error}); delete it to re-extract that video", path) from None


def journal_entries(cache_path: str | os.PathLike) -> dict[str, Path]:
    """``{key: entry file}`` of the finished, not yet committed videos in ``cache_path``'s journal.

    Files whose names this module does not give, or whose recorded key does not match their
    name, are not entries (and are never deleted).
    """
    journal = journal_dir(cache_path)
    if journal.is_symlink() or not journal.is_dir():
        return {}
    try:
        names = os.listdir(journal)
    except OSError as error:
        raise UserError(f"cannot read the journal folder ({error.strerror or error})", journal) from None
    entries = {}
    for name in names:
        match = _ENTRY_NAME.match(name)
        if match is None:
            continue
        digest = match.group("digest")
        # A cut name may end inside an escaped character: decode leniently, the digest decides.
        key = urllib.parse.unquote(match.group("readable"), errors="replace")
        if _key_digest(key) != digest:
            if len(match.group("readable")) != _READABLE_LIMIT:
                continue  # not a name this module gives: someone else's file
            key = _stored_key(journal / name)  # the name was cut: the entry says which video it is
            if key is None or _key_digest(key) != digest:
                continue
        entries[key] = journal / name
    return entries


def _is_journal_temporary(name: str) -> bool:
    match = _JOURNAL_TEMPORARY.match(name)
    return match is not None and (match.group("target") == _JOURNAL_CONFIG or match.group("target").endswith(".npz"))


class CacheWriter:
    """Adds videos to a cache crash-safely; see the module docstring for the protocol.

    Opening a writer on an existing cache or journal refuses one made with another ``config``.
    With ``lock`` (the default) the writer holds the cache's :class:`aqa.files.FileLock` from
    opening until :meth:`commit` or :meth:`close`, so a second process writing the same cache is
    refused with the holder named. Under ``torchrun`` only rank 0 locks (``lock=False`` on the
    others): it holds the lock before the work is dealt out and until it has committed, so the
    other ranks' journal writes happen inside its lock, and only it commits.
    """

    def __init__(self, path: str | os.PathLike, config: Mapping, info: Mapping | None = None, *, lock: bool = True):
        self.path = Path(path)
        self.config = _normalise(dict(config))
        self.info = dict(info or {})
        self.journal = journal_dir(self.path)
        self._cached_keys: set[str] = set()
        self._lock = FileLock(self.path, _CACHE_LOCK_NAME) if lock else None
        self._hold_lock()
        try:
            if self.path.exists():
                existing = open_cache(self.path)
                differences = config_differences(existing.config, self.config) + config_differences(
                    self.config, existing.config
                )
                if differences:
                    raise UserError(
                        "an existing cache was built with other settings ("
                        + "; ".join(sorted(set(differences)))
                        + "); use another --out or delete the file",
                        self.path,
                    )
                self._cached_keys = set(existing.keys)
            self._check_journal()
            if self._lock is not None:
                self._remove_stale_temporaries()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- lock

    def _hold_lock(self) -> None:
        if self._lock is not None:
            self._lock.acquire()

    def close(self) -> None:
        """Release the cache's lock (the journal stays; a later writer resumes it)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _remove_stale_temporaries(self) -> None:
        """What a kill -9 during a write left: the cache's temporary and the journal's (lock held)."""
        remove_stale_temporaries(self.path)
        if self.journal.is_dir() and not self.journal.is_symlink():
            for name in os.listdir(self.journal):
                if _is_journal_temporary(name):
                    with contextlib.suppress(FileNotFoundError):
                        (self.journal / name).unlink()

    # ----------------------------------------------------------------- journal

    def _check_journal(self) -> None:
        """Refuse a journal folder that is not safely ours; refuse one of other settings."""
        journal = self.journal
        if journal.is_symlink():
            raise UserError("the journal folder is a symbolic link; refusing to write through it (remove the link)",
                            journal)
        if not journal.exists():
            return
        if not journal.is_dir():
            raise UserError("is where the extraction keeps its journal, but is not a folder; move it away", journal)
        config_file = journal / _JOURNAL_CONFIG
        if config_file.is_symlink() or (config_file.exists() and not config_file.is_file()):
            raise UserError("journal configuration is not a plain file; delete the .parts folder", config_file)
        if not config_file.exists():
            try:
                foreign = sorted(name for name in os.listdir(journal) if not _is_journal_temporary(name))
            except OSError as error:
                raise UserError(f"cannot read the journal folder ({error.strerror or error})", journal) from None
            if foreign:
                raise UserError(
                    f"holds {len(foreign)} files this pipeline did not write (first: {foreign[0]!r}) and no "
                    f"{_JOURNAL_CONFIG}; move them away or use another --out",
                    journal,
                )
            return
        try:
            recorded = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError("unreadable journal configuration; delete the .parts folder", config_file) from None
        if recorded != self.config:
            raise UserError(
                "an interrupted extraction with other settings left this journal; delete it or use another --out",
                self.journal,
            )

    def _ensure_journal(self):
        if self.journal.is_symlink():
            raise UserError("the journal folder is a symbolic link; refusing to write through it (remove the link)",
                            self.journal)
        ensure_folder(self.journal)
        config_file = self.journal / _JOURNAL_CONFIG
        if not config_file.exists():
            atomic_write_bytes(config_file, json.dumps(self.config, sort_keys=True).encode())

    def _entry_path(self, key: str) -> Path:
        return self.journal / journal_entry_name(key)

    def journal_keys(self) -> set[str]:
        return set(journal_entries(self.path))

    def done_keys(self) -> set[str]:
        """Videos already in the cache or in the journal: an extraction skips these."""
        return self._cached_keys | self.journal_keys()

    def add(self, entry: VideoEntry) -> None:
        """Journal one finished video; it is durable once this returns."""
        self._hold_lock()
        self._ensure_journal()
        with atomic_writer(self._entry_path(entry.key)) as handle:
            np.savez(
                handle,
                key=np.array(entry.key),
                features=entry.features,
                clip_starts=entry.clip_starts,
                num_frames=np.int64(entry.num_frames),
            )

    def _journal_entries(self, entries: Mapping[str, Path]) -> Iterable[VideoEntry]:
        for key in sorted(entries):
            entry_path = entries[key]
            try:
                with np.load(entry_path, allow_pickle=False) as stored:
                    yield VideoEntry(
                        key=key,
                        features=stored["features"],
                        clip_starts=stored["clip_starts"],
                        num_frames=int(stored["num_frames"]),
                    )
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                raise UserError(f"damaged journal entry ({error}); delete it to re-extract that video", entry_path) from None

    def _check_space(self, entries: Mapping[str, Path], copy_from: Path | None) -> None:
        # HDF5 cannot fail cleanly when the disk fills up half-way through a file, so the commit
        # only starts when the new file fits: the journalled data, the videos copied from the old
        # cache, and a margin for HDF5's own structures.
        needed = 2**20 + 8192 * len(entries)
        for path in [*entries.values(), *([copy_from] if copy_from is not None else [])]:
            with contextlib.suppress(OSError):
                needed += path.stat().st_size
        check_free_space(self.path.parent, needed, self.path, "the cache",
                         advice=f"the finished videos stay in {self.journal.name}; free some space and rerun")

    def commit(self) -> Path:
        """Fold the journal into the cache file (atomically), remove what it wrote of the journal
        and release the lock."""
        self._hold_lock()
        entries = journal_entries(self.path)
        if not entries and self.path.exists():
            self._remove_journal(entries)
            self.close()
            return self.path
        copy_from = self.path if self.path.exists() else None
        self._check_space(entries, copy_from)
        info = dict(self.info)
        info.setdefault("committed_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        with atomic_path(self.path) as temporary:
            _write_file(temporary, self.path, self.config, info, self._journal_entries(entries), copy_from)
        self._cached_keys = set(open_cache(self.path).keys)
        self._remove_journal(entries)
        self.close()
        return self.path

    def _remove_journal(self, committed: Mapping[str, Path]) -> None:
        """Delete what this pipeline wrote into the journal: the committed entries, its
        configuration, its temporaries. Anything else stays, and with it the folder."""
        if self.journal.is_symlink() or not self.journal.is_dir():
            return
        for path in committed.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.journal / _JOURNAL_CONFIG).unlink()
        for name in os.listdir(self.journal):
            if _is_journal_temporary(name):
                with contextlib.suppress(FileNotFoundError):
                    (self.journal / name).unlink()
        with contextlib.suppress(OSError):
            self.journal.rmdir()  # fails when files the pipeline did not write are in it: they are kept

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
"""

from __future__ import annotations

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
from aqa.files import atomic_write_bytes

SCHEMA_VERSION = 1
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

    @property
    def view_names(self) -> list[str]:
        return list(self.config.get("views", ["original"]))

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
            return _read_entry(handle[_VIDEOS], key)

    def load_all(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{key: float32 [views, clips, dim]}`` for ``keys`` (default: all), in one file open."""
        wanted = self.keys if keys is None else list(keys)
        missing = [key for key in wanted if key not in self._key_set]
        if missing:
            raise UserError(f"{len(missing)} videos not in the cache (first: {missing[:5]})", self.path)
        with _open_h5(self.path) as handle:
            videos = handle[_VIDEOS]
            return {key: videos[key][()] for key in wanted}

    def clip_counts(self) -> dict[str, int]:
        with _open_h5(self.path) as handle:
            videos = handle[_VIDEOS]
            return {key: int(videos[key].shape[1]) for key in self.keys}


def _open_h5(path: Path, mode: str = "r"):
    h5py = _h5py()
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise UserError("feature cache not found", path) from None
    except OSError as error:
        raise UserError(f"not a readable HDF5 feature cache ({error})", path) from None


def _read_entry(videos, key: str) -> VideoEntry:
    dataset = videos[key]
    return VideoEntry(
        key=key,
        features=dataset[()],
        num_frames=int(dataset.attrs.get("num_frames", -1)),
        clip_starts=dataset.attrs.get("clip_starts"),
    )


def _read_header(handle, path: Path) -> tuple[dict, dict, int]:
    version = handle.attrs.get("schema_version")
    if version is None or _VIDEOS not in handle:
        raise UserError("not a feature cache of this project (no schema_version or videos group)", path)
    if int(version) != SCHEMA_VERSION:
        raise UserError(f"cache schema version {int(version)} is not supported (this version reads {SCHEMA_VERSION})", path)
    try:
        config = json.loads(handle.attrs["config"])
        info = json.loads(handle.attrs.get("info", "{}"))
    except (KeyError, json.JSONDecodeError) as error:
        raise UserError(f"cache header is damaged ({error})", path) from None
    return config, info, int(handle.attrs.get("feature_dim", 0))


def open_cache(path: str | os.PathLike, expect: Mapping | None = None) -> FeatureCache:
    """Open a cache for reading; with ``expect``, refuse one built with another configuration."""
    path = Path(path)
    if path.is_dir():
        raise UserError("is a directory, expected an HDF5 feature cache file", path)
    with _open_h5(path) as handle:
        config, info, feature_dim = _read_header(handle, path)
        keys = sorted(handle[_VIDEOS].keys())
    if expect is not None:
        differences = config_differences(config, expect)
        if differences:
            raise UserError(
                "cache was built with other settings (" + "; ".join(differences) + "); "
                "use another --out or delete the file",
                path,
            )
    return FeatureCache(path=path, config=config, info=info, feature_dim=feature_dim, keys=keys)


def _write_file(path: Path, config: Mapping, info: Mapping, entries: Iterable[VideoEntry], copy_from: Path | None):
    """Write a complete cache to ``path`` (a temporary name; the caller renames it)."""
    h5py = _h5py()
    feature_dim = None
    with h5py.File(path, "w") as handle:
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
                    path,
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
    with open(path, "rb+") as raw:
        os.fsync(raw.fileno())


def write_cache(path: str | os.PathLike, config: Mapping, info: Mapping, entries: Iterable[VideoEntry]) -> Path:
    """Write a whole cache at once (used by imports and merges), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_file(temporary, config, info, entries, copy_from=None)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


class CacheWriter:
    """Adds videos to a cache crash-safely; see the module docstring for the protocol.

    Opening a writer on an existing cache or journal refuses one made with another ``config``.
    Several writers (one per rank) may share a journal; only one should :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike, config: Mapping, info: Mapping | None = None):
        self.path = Path(path)
        self.config = _normalise(dict(config))
        self.info = dict(info or {})
        self.journal = journal_dir(self.path)
        self._cached_keys: set[str] = set()
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
        self._check_journal_config()

    def _check_journal_config(self):
        config_file = self.journal / _JOURNAL_CONFIG
        if not config_file.exists():
            return
        try:
            recorded = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError("unreadable journal configuration; delete the .parts folder", config_file) from None
        if recorded != self.config:
            raise UserError(
                "an interrupted extraction with other settings left this journal; delete it or use another --out",
                self.journal,
            )

    def _ensure_journal(self):
        self.journal.mkdir(parents=True, exist_ok=True)
        config_file = self.journal / _JOURNAL_CONFIG
        if not config_file.exists():
            atomic_write_bytes(config_file, json.dumps(self.config, sort_keys=True).encode())

    def _entry_path(self, key: str) -> Path:
        return self.journal / (urllib.parse.quote(key, safe="") + ".npz")

    def journal_keys(self) -> set[str]:
        if not self.journal.is_dir():
            return set()
        return {
            urllib.parse.unquote(name[: -len(".npz")])
            for name in os.listdir(self.journal)
            if name.endswith(".npz") and not name.startswith(".")
        }

    def done_keys(self) -> set[str]:
        """Videos already in the cache or in the journal: an extraction skips these."""
        return self._cached_keys | self.journal_keys()

    def add(self, entry: VideoEntry) -> None:
        """Journal one finished video; it is durable once this returns."""
        self._ensure_journal()
        target = self._entry_path(entry.key)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                features=entry.features,
                clip_starts=entry.clip_starts,
                num_frames=np.int64(entry.num_frames),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def _journal_entries(self) -> Iterable[VideoEntry]:
        for key in sorted(self.journal_keys()):
            entry_path = self._entry_path(key)
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

    def commit(self) -> Path:
        """Fold the journal into the cache file (atomically) and remove the journal."""
        if not self.journal_keys() and self.path.exists():
            self._remove_journal()
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        info = dict(self.info)
        info.setdefault("committed_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            _write_file(
                temporary,
                self.config,
                info,
                self._journal_entries(),
                copy_from=self.path if self.path.exists() else None,
            )
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        self._cached_keys = set(open_cache(self.path).keys)
        self._remove_journal()
        return self.path

    def _remove_journal(self):
        if not self.journal.is_dir():
            return
        for name in os.listdir(self.journal):
            (self.journal / name).unlink(missing_ok=True)
        self.journal.rmdir()


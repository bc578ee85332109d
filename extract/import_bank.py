"""Importing a bank of pre-extracted features (one ``<key>.npy`` per video) as a feature cache.

AQA papers often publish features instead of videos (Fis-V's Video-Swin features from GDLT, for
example). Each file holds one video's clip features, ``[clips, D]`` (float16, float32 or float64;
clip counts may differ, ``D`` may not). The import turns the bank into a cache with the same
schema as stage 1's, so stage 2 trains on it unchanged:

* keys are the file stems (checked with :func:`aqa.cache.check_key`);
* features are stored as float32 ``[1, clips, D]`` (one view, ``"original"``);
* a rank-3 file is read as ``[views, clips, D]`` when ``view_names`` names its views (the first
  must be ``"original"``, the unaugmented one), so a bank with augmented views imports too;
* the recorded configuration says the features are imported and identifies the bank by a
  sha256 over its file names and sizes; ``info`` records where it was read from. Importing a
  different bank into an existing cache is refused; importing the same bank again is a no-op.

Every file is checked before anything is written: unreadable or non-``.npy`` files, pickled
object arrays, non-float data, the wrong rank, a different ``D``, no clips, NaN or infinity. All
problems are reported together, each with its file name. The cache file is written atomically.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from aqa import __version__
from aqa.cache import ORIGINAL_VIEW, VideoEntry, check_key, config_differences, open_cache, write_cache
from aqa.errors import UserError
from aqa.progress import progress_bar

_FLOAT_KINDS = ("float16", "float32", "float64")
_MAX_LISTED_PROBLEMS = 5
_GENERIC_FOLDER_NAMES = ("features", "feats", "feature", "npy")


@dataclass
class ImportConfig:
    """What to import and how (saved in the cache's ``info`` with the source folder)."""

    features_dir: str
    out: str
    pattern: str = "*.npy"  # glob under features_dir; "**/*.npy" searches sub-folders
    name: str | None = None  # dataset name recorded in the cache; default: the folder's name
    view_names: tuple[str, ...] | None = None  # for rank-3 [views, clips, D] banks
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    @property
    def dataset_name(self) -> str:
        return self.name or default_dataset_name(self.features_dir)


def default_dataset_name(features_dir: str | os.PathLike) -> str:
    """The folder's name, or its parent's when the folder has a generic name (``fisv-swin/features``)."""
    folder = Path(features_dir).resolve()
    if folder.name.lower() in _GENERIC_FOLDER_NAMES and folder.parent.name:
        return folder.parent.name
    return folder.name


@dataclass
class BankSummary:
    """What the validation pass found (the import writes only when ``problems`` is empty)."""

    files: list[Path] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    feature_dim: int | None = None
    num_views: int | None = None
    clip_counts: list[int] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    total_bytes: int = 0
    manifest_sha256: str = ""
    problems: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class ImportResult:
    cache_path: Path
    num_videos: int
    feature_dim: int
    min_clips: int
    max_clips: int
    up_to_date: bool  # the cache already held exactly this bank; nothing was written


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a relative glob that stays inside the bank folder, else a
    :class:`UserError`: an empty pattern matches nothing useful, and an absolute one or one
    with a ``..`` part would import files from outside ``--features-dir``."""
    if not pattern.strip():
        raise UserError("--glob is empty; give a pattern like '*.npy' or '**/*.npy'")
    if os.path.isabs(pattern) or pattern.startswith(("/", "\\")):
        raise UserError(f"--glob {pattern!r} is absolute; it must be relative to --features-dir (e.g. '*.npy')")
    if ".." in pattern.replace("\\", "/").split("/"):
        raise UserError(f"--glob {pattern!r} has a '..' part, which would leave --features-dir")
    return pattern


def list_bank_files(features_dir: Path, pattern: str) -> list[Path]:
    check_pattern(pattern)
    if not features_dir.exists():
        raise UserError("feature bank folder not found", features_dir)
    if not features_dir.is_dir():
        raise UserError("not a folder (expected a folder of <key>.npy files)", features_dir)
    files = sorted(path for path in features_dir.glob(pattern) if path.is_file())
    if not files:
        raise UserError(f"no files match {pattern!r}; expected one <key>.npy per video", features_dir)
    return files


def manifest_sha256(files: list[Path], root: Path) -> str:
    """Identifies a bank by its file names (relative to ``root``) and sizes, without reading data."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def read_bank_file(path: Path, view_names: tuple[str, ...] | None = None) -> np.ndarray:
    """One file as float32 ``[views, clips, D]``; any problem is a :class:`UserError` naming it."""
    return _read_bank_file(path, view_names)[0]


def check_npy_header(path: Path) -> None:
    """Refuse a ``.npy`` file whose header claims more data than the file holds, before any
    array is allocated (a damaged or hostile header may claim terabytes). Files that are not
    ``.npy`` at all, and object arrays (pickled, refused later), are left to ``np.load``."""
    try:
        with open(path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
            except ValueError:
                return  # no .npy magic: np.load says what it is
            try:
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    return  # 3.0 (utf-8 field names) and unknown versions: np.load decides
            except ValueError as error:
                raise UserError(f"corrupt or not a .npy array (bad header: {error})", path) from None
            data_bytes = os.fstat(handle.fileno()).st_size - handle.tell()
    except OSError as error:
        raise UserError(f"corrupt or not a .npy array ({error})", path) from None
    if dtype.hasobject:
        return
    claimed = math.prod(int(size) for size in shape) * dtype.itemsize  # Python ints: no overflow
    if claimed > data_bytes:
        raise UserError(f"corrupt .npy file: its header claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes), "
                        f"but the file holds {data_bytes:,} bytes of data", path)


def _read_bank_file(path: Path, view_names: tuple[str, ...] | None) -> tuple[np.ndarray, str]:
    if path.suffix.lower() != ".npy":
        raise UserError("not a .npy file (the bank must hold one <key>.npy array per video)", path)
    check_npy_header(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UserError("holds a pickled object array, which is refused; save plain float arrays", path) from None
        raise UserError(f"corrupt or not a .npy array ({error})", path) from None
    except (OSError, EOFError) as error:
        raise UserError(f"corrupt or not a .npy array ({error})", path) from None
    if not isinstance(array, np.ndarray):
        array.close()  # an .npz archive opened lazily
        raise UserError("holds an .npz archive, not one .npy array", path)
    if array.dtype.name not in _FLOAT_KINDS:
        raise UserError(f"has dtype {array.dtype}, expected float16, float32 or float64 features", path)
    if array.ndim == 2:
        if view_names and len(view_names) > 1:
            raise UserError(f"has shape {array.shape} ([clips, D]) but {len(view_names)} views were named", path)
        array = array[None]
    elif array.ndim == 3:
        if not view_names:
            raise UserError(
                f"has shape {array.shape}: a rank-3 array is read as [views, clips, D] only when the views "
                "are named (--views original,NAME,...)", path)
        if array.shape[0] != len(view_names):
            raise UserError(f"has {array.shape[0]} views, but {len(view_names)} were named", path)
    else:
        raise UserError(f"has shape {array.shape}: expected [clips, D] (rank 2), got rank {array.ndim}", path)
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise UserError(f"has shape {array.shape}: no clips or no feature channels", path)
    features = array.astype(np.float32)
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).sum())
        what = "NaN" if np.isnan(array).any() else "infinite values"
        hint = " (values beyond float32's range)" if np.isfinite(array).all() else ""
        raise UserError(f"contains {what}: {bad} of {features.size} values are not finite{hint}", path)
    return features, array.dtype.name


def scan_bank(config: ImportConfig, progress: Callable[[Iterator], Iterator] | None = None) -> BankSummary:
    """Read and check every file of the bank; collect every problem instead of stopping."""
    root = Path(config.features_dir)
    files = list_bank_files(root, config.pattern)
    summary = BankSummary(files=files)
    summary.manifest_sha256 = manifest_sha256(files, root)
    first_dim_file: Path | None = None
    seen: dict[str, Path] = {}
    iterator = progress(files) if progress else files
    for path in iterator:
        try:
            key = check_key(path.stem, path)
            if key in seen:
                raise UserError(f"key {key!r} also comes from {seen[key]}", path)
            features, source_dtype = _read_bank_file(path, config.view_names)
        except UserError as error:
            summary.problems.append((path, error.problem))
            continue
        seen[key] = path
        views, clips, dim = features.shape
        if summary.feature_dim is None:
            summary.feature_dim, summary.num_views, first_dim_file = dim, views, path
        elif dim != summary.feature_dim:
            summary.problems.append(
                (path, f"has feature dimension {dim}, but {first_dim_file.name} has {summary.feature_dim}"))
            continue
        summary.keys.append(key)
        summary.clip_counts.append(clips)
        summary.dtypes.add(source_dtype)
        summary.total_bytes += path.stat().st_size
    return summary


def _raise_problems(summary: BankSummary, root: Path) -> None:
    problems = summary.problems
    if not problems:
        return
    if len(problems) == 1:
        path, problem = problems[0]
        raise UserError(problem, path)
    listed = "; ".join(f"{path.relative_to(root).as_posix()}: {problem}" for path, problem in problems[:_MAX_LISTED_PROBLEMS])
    more = f"; and {len(problems) - _MAX_LISTED_PROBLEMS} more" if len(problems) > _MAX_LISTED_PROBLEMS else ""
    raise UserError(f"{len(problems)} of {len(summary.files)} feature files are unusable: {listed}{more}", root)


def import_cache_config(config: ImportConfig, summary: BankSummary) -> dict:
    """The recorded configuration: what changes the numbers (the bank's identity), not where it was."""
    view_names = list(config.view_names) if config.view_names else [ORIGINAL_VIEW]
    return {
        "backbone": {
            "name": "imported",
            "feature": "pre-extracted features, stored as given (converted to float32)",
            "feature_dim": int(summary.feature_dim),
        },
        "source": {
            "format": "npy [views, clips, D]" if config.view_names else "npy [clips, D]",
            "files": len(summary.keys),
            "manifest_sha256": summary.manifest_sha256,
            "dtypes": sorted(summary.dtypes),
        },
        "feature_dim": int(summary.feature_dim),
        "views": view_names,
        "dataset": {"name": config.dataset_name, "kind": "imported"},
    }


def _check_views(view_names: tuple[str, ...] | None) -> None:
    if view_names is None:
        return
    if not view_names or view_names[0] != ORIGINAL_VIEW:
        raise UserError(f"the first view must be {ORIGINAL_VIEW!r} (the unaugmented clips); got {list(view_names)}")
    if len(set(view_names)) != len(view_names):
        raise UserError(f"view names repeat: {list(view_names)}")


def import_feature_bank(config: ImportConfig, log: Callable[[str], None] | None = None) -> ImportResult:
    """Validate the whole bank, then write it as one cache file (atomically)."""
    _check_views(config.view_names)
    root = Path(config.features_dir)
    out = Path(config.out)
    if out.is_dir():
        raise UserError("is a folder; --out must name the cache file to write (e.g. features/fisv.h5)", out)

    def bar(items, desc):
        return progress_bar(items=items, enabled=config.progress, desc=desc, unit="file")

    summary = scan_bank(config, progress=lambda files: bar(files, "checking features"))
    _raise_problems(summary, root)
    cache_config = import_cache_config(config, summary)
    result = ImportResult(out, len(summary.keys), int(summary.feature_dim), min(summary.clip_counts),
                          max(summary.clip_counts), up_to_date=False)
    if out.exists():
        existing = open_cache(out)
        differences = config_differences(existing.config, cache_config) + [
            f"{name}: cache has {existing.config[name]!r}, an import has none"
            for name in sorted(set(existing.config) - set(cache_config))
        ]
        if differences:
            raise UserError(
                "an existing cache was built with other settings (" + "; ".join(differences)
                + "); use another --out or delete the file", out)
        if sorted(existing.keys) == sorted(summary.keys):
            result.up_to_date = True
            if log:
                log(f"{out} already holds this bank ({len(summary.keys)} videos); nothing to do")
            return result

    info = {
        "source": {
            "dir": str(root.resolve()),
            "pattern": config.pattern,
            "total_bytes": summary.total_bytes,
        },
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": f"trs-aqa {__version__}",
    }

    def entries() -> Iterator[VideoEntry]:
        for key, path in bar(list(zip(summary.keys, _files_by_key(summary))), "writing cache"):
            features = read_bank_file(path, config.view_names)  # re-checked: the bank may have changed
            if features.shape[2] != summary.feature_dim:
                raise UserError(f"changed during the import (feature dimension now {features.shape[2]})", path)
            yield VideoEntry(key=key, features=features)

    write_cache(out, cache_config, info, entries())
    return result


def _files_by_key(summary: BankSummary) -> list[Path]:
    by_stem = {path.stem: path for path in summary.files}
    return [by_stem[key] for key in summary.keys]



"""Dataset annotations: which videos exist, where their frames are, and their labels.

Both stages read datasets through this module. Stage 1 needs each video's key and frame source;
stage 2 needs each video's targets, difficulty, split and group. Three sources are understood:

* **MTL-AQA** (``load_mtl_aqa``): any of the three community annotation pickles (the release's,
  MUSDL's with judge scores, CoRe's with dive numbers) plus the standard split pickles, and frames
  in either community layout:

  - MUSDL layout: ``frames/{video:02d}_{dive:02d}/*.jpg``, one folder per dive (103 frames);
  - CoRe layout: ``frames/{video:02d}/*.jpg``, the whole broadcast video as ffmpeg numbered it;
    a dive is the 103 frames that end at its ``end_frame`` (CoRe's own cut).

* **Fis-V** (``load_fisv``): ``train.txt`` / ``test.txt`` with ``id TES PCS deductions`` rows.

* **A CSV manifest** (``load_manifest``) for any other dataset:
  ``key,path,score[,difficulty][,split][,group]`` plus any extra numeric columns, which become
  further targets. ``path`` is a video file or a frames folder, relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aqa.cache import check_key
from aqa.errors import UserError
from aqa.safe_pickle import load_restricted

MTL_AQA_FRAMES_PER_DIVE = 103
# The MTL-AQA on-disk layout, read here and written by synth/: DATA_ROOT/info/ holds the
# annotation and split pickles, DATA_ROOT/frames/ the frame folders (named by mtl_aqa_key in
# MUSDL's layout).
MTL_AQA_INFO_DIR = "info"
MTL_AQA_FRAMES_DIR = "frames"
MUSDL_ANNOTATION_FILE = "augmented_final_annotations_dict.pkl"  # MUSDL's, with judge scores
# Preferred first: CoRe's pickle has the judge typo fixed and dive numbers; MUSDL's has judges.
MTL_AQA_ANNOTATION_FILES = (
    "final_annotations_dict_with_dive_number.pkl",
    MUSDL_ANNOTATION_FILE,
    "final_annotations_dict.pkl",
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class FrameSource:
    """Where one video's frames are.

    ``kind`` is ``"frames"`` (a folder of images, sorted by name) or ``"video"`` (a file PyAV
    decodes). ``first_frame`` / ``num_frames`` select a window of the sorted frames (CoRe's
    whole-video folders); ``num_frames=None`` means all of them.
    """

    path: str
    kind: str
    first_frame: int = 0
    num_frames: int | None = None


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset: its key, where its frames are, and what is known about it."""

    key: str
    source: FrameSource | None = None
    targets: dict[str, float] = field(default_factory=dict)
    difficulty: float | None = None
    split: str | None = None  # "train", "test", or None when the dataset has no split
    group: str | None = None  # action class (AQA-7 style) or dive number


@dataclass
class Dataset:
    """A named list of videos with a default target column."""

    name: str
    records: list[VideoRecord]
    default_target: str
    origin: str = ""  # the file or folder the annotations came from, for messages

    def by_key(self) -> dict[str, VideoRecord]:
        return {record.key: record for record in self.records}

    def target_names(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            names.update(dict.fromkeys(record.targets))
        return list(names)

    def keys(self) -> list[str]:
        return [record.key for record in self.records]


# --------------------------------------------------------------------------- MTL-AQA


def mtl_aqa_key(video: int, dive: int) -> str:
    return f"{int(video):02d}_{int(dive):02d}"


def mtl_aqa_split_file(split: str) -> str:
    """The file name of the standard split's pickle of ``split`` (``train`` or ``test``)."""
    return f"{split}_split_0.pkl"


def _find_annotation_file(info_dir: Path) -> Path:
    for name in MTL_AQA_ANNOTATION_FILES:
        if (info_dir / name).is_file():
            return info_dir / name
    raise UserError(
        "no MTL-AQA annotation pickle found (expected one of " + ", ".join(MTL_AQA_ANNOTATION_FILES) + ")",
        info_dir,
    )


def _shown(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about what a pickle holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_integer(value) -> int | None:
    """``value`` as an ``int`` when it is an integer (Python's or numpy's, not a bool), else None.

    Floats and strings are refused rather than converted: ``int(1.7)`` and ``int("01")`` would
    turn a damaged key into a duplicate of a real one.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def _as_number(value) -> float | None:
    """``value`` as a finite ``float`` when it is a real number (not a bool or a string), else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _dive_pair(item) -> tuple[int, int] | None:
    """A ``(video, dive)`` pair of non-negative integers from a pickle's key or split entry, else None."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return None
    video, dive = _as_integer(item[0]), _as_integer(item[1])
    if video is None or dive is None or video < 0 or dive < 0:
        return None
    return video, dive


def _judge_scores(key: str, judge_scores, path: Path) -> list[float]:
    """The judges' scores of dive ``key`` as floats; anything but a non-empty list of numbers is refused.

    Judges score 0 to 10 in half points; MUSDL's pickle has 45.0 for 4.5 at dive 04_49, repaired here.
    """
    # A 1-d array, list or tuple; a string or a dict would iterate into characters or keys.
    shape = getattr(judge_scores, "shape", None)
    sequence = isinstance(judge_scores, (list, tuple)) or (shape is not None and len(shape) == 1)
    scores = [_as_number(score) for score in judge_scores] if sequence else []
    if not scores or any(score is None for score in scores):
        raise UserError(f"dive {key}: judge_scores must be a non-empty list of numbers, got {_shown(judge_scores)}",
                        path)
    return [4.5 if key == "04_49" and score == 45.0 else score for score in scores]


def _split_keys(path: Path) -> list[tuple[int, int]]:
    """The ``(video, dive)`` pairs a split pickle lists; a malformed or repeated entry is refused by name."""
    items = load_restricted(path)
    if not isinstance(items, (list, tuple)):
        raise UserError(
            f"not an MTL-AQA split pickle (expected a list of (video, dive) pairs, got {type(items).__name__})", path
        )
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for position, item in enumerate(items):
        pair = _dive_pair(item)
        if pair is None:
            raise UserError(f"entry {position} ({_shown(item)}) is not a (video, dive) pair of integers", path)
        if pair in seen:
            raise UserError(f"entry {position}: dive {mtl_aqa_key(*pair)} is listed twice", path)
        seen.add(pair)
        pairs.append(pair)
    return pairs


def _annotation_entries(table: dict, path: Path) -> list[tuple[tuple[int, int], str, Mapping]]:
    """``[((video, dive), key, entry)]`` in dive order, every key checked to be an integer pair.

    A key such as ``(1.7, 2)``, ``("01a", 2)`` or ``(True, 2)`` is refused: converting it would
    make it a second copy of a real dive, which would then be trained or tested twice. Distinct
    integer pairs give distinct keys (``mtl_aqa_key`` is one-to-one on them), so what is left
    cannot collide.
    """
    entries = []
    for raw_key, entry in table.items():
        pair = _dive_pair(raw_key)
        if pair is None:
            raise UserError(f"key {_shown(raw_key)} is not a (video, dive) pair of integers", path)
        key = mtl_aqa_key(*pair)
        if not isinstance(entry, Mapping):
            raise UserError(f"dive {key}: expected a dict of labels, got {type(entry).__name__}", path)
        entries.append((pair, key, entry))
    return sorted(entries, key=lambda item: item[0])


def _entry_number(key: str, entry: Mapping, name: str, path: Path) -> float:
    value = _as_number(entry.get(name))
    if value is None:
        what = "is missing" if name not in entry else f"is not a finite number ({_shown(entry[name])})"
        raise UserError(f"dive {key}: {name} {what}", path)
    return value


def _detect_layout(frames_dir: Path) -> str:
    if not frames_dir.is_dir():
        return "none"
    names = os.listdir(frames_dir)
    if any(re.fullmatch(r"\d+_\d+", name) for name in names):
        return "musdl"
    if any(re.fullmatch(r"\d+", name) for name in names):
        return "core"
    return "none"


def load_mtl_aqa(
    data_root: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    frames_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    name: str = "mtl-aqa",
) -> Dataset:
    """Read MTL-AQA (or anything in its on-disk layout) under ``data_root``.

    ``data_root`` holds ``info/`` (annotation and split pickles) and ``frames/``. ``layout`` is
    ``musdl``, ``core``, ``none`` (labels only, no frames: enough for training) or ``auto``.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError("MTL-AQA data root not found", data_root)
    info_dir = data_root / MTL_AQA_INFO_DIR
    annotation_path = Path(annotations) if annotations else _find_annotation_file(info_dir)
    table = load_restricted(annotation_path)
    if not isinstance(table, dict) or not table:
        raise UserError("not an MTL-AQA annotation pickle (expected a dict keyed by (video, dive))", annotation_path)

    entries = _annotation_entries(table, annotation_path)

    splits: dict[tuple[int, int], str] = {}
    for split in ("train", "test"):
        split_path = info_dir / mtl_aqa_split_file(split)
        if split_path.is_file():
            for pair in _split_keys(split_path):
                if pair in splits:
                    # A dive in both splits would be trained on and tested on.
                    raise UserError(f"dive {mtl_aqa_key(*pair)} is in both the {splits[pair]} and the {split} split",
                                    split_path)
                splits[pair] = split

    frames_dir = Path(frames_dir) if frames_dir else data_root / MTL_AQA_FRAMES_DIR
    if layout == "auto":
        layout = _detect_layout(frames_dir)
    if layout not in ("musdl", "core", "none"):
        raise UserError(f"unknown MTL-AQA frame layout {layout!r} (musdl, core, none or auto)")

    records = []
    for (video, dive), key, entry in entries:
        final_score = _entry_number(key, entry, "final_score", annotation_path)
        difficulty = _entry_number(key, entry, "difficulty", annotation_path)
        targets = {"final_score": final_score}
        if "judge_scores" in entry:
            judges = _judge_scores(key, entry["judge_scores"], annotation_path)
            # The execution score: sum of the middle three of seven judges (final / difficulty).
            middle = sorted(judges)[2:5] if len(judges) == 7 else judges
            targets["execution"] = float(sum(middle))
        source = None
        if layout == "musdl":
            source = FrameSource(str(frames_dir / key), "frames", 0, MTL_AQA_FRAMES_PER_DIVE)
        elif layout == "core":
            # The whole-video layout cuts each dive out by its end frame: without it there is no clip.
            end_frame = _as_integer(entry.get("end_frame"))
            if end_frame is None or end_frame < 0:
                what = "has no end_frame" if "end_frame" not in entry else f"has end_frame {_shown(entry['end_frame'])}"
                raise UserError(f"dive {key} {what}; the whole-video (core) frame layout needs a frame number",
                                annotation_path)
            first = max(0, end_frame - MTL_AQA_FRAMES_PER_DIVE)
            source = FrameSource(str(frames_dir / f"{video:02d}"), "frames", first, MTL_AQA_FRAMES_PER_DIVE)
        records.append(
            VideoRecord(
                key=key,
                source=source,
                targets=targets,
                difficulty=difficulty,
                split=splits.get((video, dive)),
                # MTL-AQA is one action class (diving): no group. Dive numbers (CoRe's pickle)
                # would make per-class measures meaningless two-sample classes.
                group=None,
            )
        )
    return Dataset(name=name, records=records, default_target="final_score", origin=str(annotation_path))


# --------------------------------------------------------------------------- Fis-V


def load_fisv(data_root: str | os.PathLike, name: str = "fis-v") -> Dataset:
    """Fis-V labels: ``train.txt`` / ``test.txt`` with ``id TES PCS deductions`` per line."""
    data_root = Path(data_root)
    records = []
    seen: dict[str, str] = {}
    for split in ("train", "test"):
        path = data_root / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"Fis-V label file {split}.txt not found", data_root)
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) < 3:
                raise UserError(f"line {line_number}: expected 'id TES PCS [deductions]'", path)
            key = check_key(fields[0], path)
            if key in seen:
                raise UserError(f"line {line_number}: video {key} is listed twice (also in {seen[key]})", path)
            seen[key] = f"{split}.txt"
            names = ("TES", "PCS", "deductions")
            try:
                targets = {names[i]: _finite(fields[i + 1]) for i in range(min(3, len(fields) - 1))}
            except ValueError as error:
                raise UserError(f"line {line_number}: {error}", path) from None
            records.append(VideoRecord(key=key, targets=targets, split=split))
    return Dataset(name=name, records=records, default_target="TES", origin=str(data_root))


# --------------------------------------------------------------------------- CSV manifest

MANIFEST_REQUIRED = ("key", "path", "score")
_MANIFEST_KNOWN = ("key", "path", "score", "difficulty", "split", "group")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _source_for(path_text: str, base: Path) -> FrameSource:
    path = Path(path_text)
    if not path.is_absolute():
        path = base / path
    kind = "frames" if path.is_dir() or path.suffix == "" else "video"
    return FrameSource(str(path), kind)


def load_manifest(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a CSV manifest; every problem names the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError("manifest not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read manifest ({error})", path) from None
    reader = csv.DictReader(text.splitlines())
    columns = [column.strip() for column in (reader.fieldnames or [])]
    missing = [column for column in MANIFEST_REQUIRED if column not in columns]
    if missing:
        raise UserError(f"manifest lacks column(s) {', '.join(missing)} (header must include key,path,score)", path)
    reader.fieldnames = columns
    extra_targets = [column for column in columns if column not in _MANIFEST_KNOWN]
    records, seen = [], {}
    for row in reader:
        line_number = reader.line_num  # the file's line (blank lines and quoted newlines counted)
        where = f"line {line_number}"
        # Fields beyond the header land under the key None, as a list: empty ones (trailing
        # commas, a row of only commas) are harmless; a value there belongs to no column.
        overflow = [value for value in row.pop(None, None) or [] if value.strip()]
        if overflow:
            raise UserError(f"{where}: more fields than the header's {len(columns)} columns "
                            f"(extra value {overflow[0].strip()!r})", path)
        if not any((value or "").strip() for value in row.values()):
            continue
        key = (row.get("key") or "").strip()
        check_key(key, f"{path}, {where}")
        if key in seen:
            raise UserError(f"{where}: duplicate key {key!r} (first on line {seen[key]})", path)
        seen[key] = line_number
        targets = {}
        for column in ["score", *extra_targets]:
            value = (row.get(column) or "").strip()
            if value == "":
                continue  # unlabelled for this column
            try:
                targets[column] = _finite(value)
            except ValueError as error:
                raise UserError(f"{where}: column {column}: {error}", path) from None
        difficulty_text = (row.get("difficulty") or "").strip()
        try:
            difficulty = _finite(difficulty_text) if difficulty_text else None
        except ValueError as error:
            raise UserError(f"{where}: column difficulty: {error}", path) from None
        split = (row.get("split") or "").strip().lower() or None
        if split not in (None, "train", "test"):
            raise UserError(f"{where}: split must be 'train' or 'test', got {split!r}", path)
        path_text = (row.get("path") or "").strip()
        if not path_text:
            raise UserError(f"{where}: empty path for {key!r}", path)
        records.append(
            VideoRecord(
                key=key,
                source=_source_for(path_text, path.parent),
                targets=targets,
                difficulty=difficulty,
                split=split,
                group=(row.get("group") or "").strip() or None,
            )
        )
    if not records:
        raise UserError("manifest has no rows", path)
    return Dataset(name=name or path.stem, records=records, default_target="score", origin=str(path))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frames folder in frame order (names sorted as ffmpeg numbers them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("frames folder not found", folder)
    return sorted(
        (folder / name for name in os.listdir(folder) if name.lower().endswith(_IMAGE_SUFFIXES)),
        key=lambda item: item.name,
    )


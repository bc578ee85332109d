"""What to extract: dataset selection, input checks, and the entry point of stage 1.

Nothing here imports torch, so the command line reports a bad dataset, a missing folder or a
wrong flag at once; :func:`extract_dataset` checks the inputs and then hands the work to
:mod:`extract.runner` as one :class:`~extract.config.ExtractionJob`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aqa.annotations import MTL_AQA_FRAMES_DIR, Dataset, FrameSource, VideoRecord, list_frame_files
from aqa.errors import UserError
from extract.config import ExtractConfig, ExtractionJob, ExtractResult, dataset_config

if TYPE_CHECKING:
    from extract.backbone import Backbone

# --------------------------------------------------------------------------- checks before work


def check_sources(records: list[VideoRecord], min_frames: int) -> dict[str, UserError]:
    """Cheap checks before any decoding: the folder or file exists and folders hold enough
    frames. Returns ``{key: error}`` for the videos that fail."""
    problems: dict[str, UserError] = {}
    listings: dict[str, int] = {}  # CoRe layout: many dives share one whole-video folder
    for record in records:
        source = record.source
        if source is None:
            problems[record.key] = UserError(f"video {record.key} has no frames (no frames folder or video path)")
            continue
        path = Path(source.path)
        if source.kind == "video":
            if not path.is_file():
                problems[record.key] = UserError("video file not found" if not path.exists() else "not a video file", path)
            continue
        try:
            if source.path not in listings:
                listings[source.path] = len(list_frame_files(path))
        except UserError as error:
            problems[record.key] = error
            continue
        available = max(0, listings[source.path] - source.first_frame)
        needed = source.num_frames if source.num_frames is not None else min_frames
        if available < needed:
            where = f" from frame {source.first_frame}" if source.first_frame else ""
            problems[record.key] = UserError(f"too few frames: found {available}{where}, needs {needed}", path)
    return problems


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def load_video_folder(folder: str | os.PathLike, name: str | None = None) -> Dataset:
    """Every video file in ``folder`` as an unlabelled dataset keyed by file name (without the
    suffix). The cache holds no labels, so this is all extraction needs."""
    from aqa.cache import check_key

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("videos folder not found", folder)
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())
    if not files:
        raise UserError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in the folder", folder)
    records, seen = [], {}
    for path in files:
        key = check_key(path.stem, path)
        if key in seen:
            raise UserError(f"{path.name} and {seen[key]} would both be video {key!r}; rename one", folder)
        seen[key] = path.name
        records.append(VideoRecord(key=key, source=FrameSource(str(path), "video")))
    return Dataset(name or folder.resolve().name, records, "score", origin=str(folder))


def load_extract_dataset(
    dataset: str = "mtl-aqa",
    data_root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    frames_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    name: str | None = None,
    videos_dir: str | os.PathLike | None = None,
) -> tuple[Dataset, dict]:
    """The dataset to extract and its description for the cache configuration.

    Exactly one of ``data_root`` (MTL-AQA layout, frames in the MUSDL or CoRe layout), a CSV
    ``manifest`` or a ``videos_dir`` of video files; the dataset's name defaults to the data
    root's or the videos folder's name, or the CSV's stem.
    """
    from aqa.annotations import load_manifest, load_mtl_aqa

    given = [option for option in (data_root, manifest, videos_dir) if option is not None]
    if len(given) != 1:
        raise UserError("give one of --data-root DIR (MTL-AQA layout), --manifest CSV or --videos-dir DIR")
    if manifest is not None:
        loaded = load_manifest(manifest, name=name)
        return loaded, dataset_config(loaded, "manifest")
    if videos_dir is not None:
        loaded = load_video_folder(videos_dir, name=name)
        return loaded, dataset_config(loaded, "video-folder")
    if dataset != "mtl-aqa":
        raise UserError(f"unknown dataset kind {dataset!r} (mtl-aqa, or use --manifest)")
    root = Path(data_root)
    loaded = load_mtl_aqa(root, annotations, frames_dir, layout, name=name or root.resolve().name)
    sources = [record.source for record in loaded.records if record.source is not None]
    if not sources:
        where = Path(frames_dir) if frames_dir else root / MTL_AQA_FRAMES_DIR
        raise UserError("no frames to extract: expected per-dive folders NN_MM/ (MUSDL) or per-video folders NN/ (CoRe)", where)
    if layout == "auto":
        # MUSDL's folders are named by the dive's key; CoRe's by the video number.
        first = next(record for record in loaded.records if record.source is not None)
        layout = "musdl" if Path(first.source.path).name == first.key else "core"
    return loaded, dataset_config(loaded, "mtl-aqa", layout)


# --------------------------------------------------------------------------- the entry point


def _log_to_stdout(message: str):
    print(message, flush=True)


def extract_dataset(
    dataset: Dataset,
    config: ExtractConfig,
    dataset_description: dict | None = None,
    *,
    backbone: Backbone | None = None,
    info: dict | None = None,
    log: Callable[[str], None] = _log_to_stdout,
) -> ExtractResult:
    """Extract every video of ``dataset`` into ``config.out``; resumes what a previous run left.

    ``backbone`` replaces the Kinetics I3D loaded from ``config.weights`` (any
    :class:`~extract.backbone.Backbone`: a stand-in in tests, an already loaded I3D, another
    network). Under ``torchrun`` every rank calls this with the same arguments.
    """
    started = time.perf_counter()
    records = sorted(dataset.records, key=lambda record: record.key)
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise UserError("the dataset has no videos to extract", dataset.origin or None)
    # Cheap input checks first (identically on every rank): a missing folder stops the run
    # before the model is loaded, and with --skip-bad every rank agrees on what is skipped.
    problems = check_sources(records, config.clip_length)
    skipped: dict[str, str] = {}
    if problems:
        if not config.skip_bad:
            first_key = sorted(problems)[0]
            error = problems[first_key]
            more = f" (and {len(problems) - 1} more bad videos)" if len(problems) > 1 else ""
            raise UserError(f"video {first_key}: {error.problem}{more}", error.path)
        skipped = {key: str(error) for key, error in problems.items()}
        records = [record for record in records if record.key not in problems]

    job = ExtractionJob(
        records=records,
        config=config,
        dataset=dataset_description or dataset_config(dataset, "custom"),
        log=log,
        origin=dataset.origin,
        skipped=skipped,
        backbone=backbone,
        info=dict(info or {}),
        started=started,
    )
    from extract.runner import run_extraction  # torch is imported only from here on

    return run_extraction(job)

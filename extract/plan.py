"""What to extract and with which settings: configuration, dataset selection, input checks.

Nothing here imports torch, so the command line reports a bad dataset, a missing folder or a
wrong flag at once; :func:`extract_dataset` validates the inputs and then hands the work to
:mod:`extract.runner`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aqa.annotations import Dataset, FrameSource, VideoRecord, list_frame_files
from aqa.errors import UserError
from extract.clips import DEFAULT_VIEWS, ClipLayout, ViewSpec, parse_views, view_names
from extract.video_io import Preprocessing

PRECISIONS = ("fp32", "bf16", "fp16")


def check_device_name(name: str) -> str:
    """``name`` if it is auto, cpu, cuda or cuda:N; else a one-line :class:`UserError`.

    Checked as text, before torch parses it: torch accepts (and fails later on) many spellings.
    """
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N (N a GPU number)")
    return name


@dataclass
class ExtractConfig:
    """Settings of one extraction. The fields that change the numbers go into the cache's
    recorded configuration (:func:`cache_config`); the rest only change how fast it runs."""

    out: str = "features/features.h5"
    weights: str | None = None  # None: the default converted Kinetics-400 weights
    views: str = DEFAULT_VIEWS  # "none": the original view only
    resize: int = 256
    crop: int = 224
    clip_length: int = 16
    clip_stride: int = 10
    precision: str = "fp32"
    batch_clips: int = 32
    workers: int = 2
    device: str = "auto"
    limit: int | None = None  # only the first N videos (by key): quick tries
    skip_bad: bool = False
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r} (one of {', '.join(PRECISIONS)})")
        check_device_name(self.device)
        if self.batch_clips < 1:
            raise UserError(f"--batch-clips must be at least 1 (got {self.batch_clips})")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more (got {self.workers})")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1 (got {self.limit})")
        # Bad sizes, clip layouts or view names fail here, before any work.
        self.preprocessing, self.layout, self.view_specs

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(resize=self.resize, crop=self.crop)

    @property
    def layout(self) -> ClipLayout:
        return ClipLayout(clip_length=self.clip_length, stride=self.clip_stride)

    @property
    def view_specs(self) -> list[ViewSpec]:
        return parse_views(self.views)


@dataclass
class ExtractResult:
    """What one extraction did on this rank (``skipped`` lists the bad videos of all ranks)."""

    cache_path: Path
    extracted: list[str] = field(default_factory=list)  # keys extracted by this run (this rank)
    already_done: int = 0  # videos skipped because the cache or journal had them
    skipped: dict[str, str] = field(default_factory=dict)  # bad videos left out (skip_bad)
    clips: int = 0  # clip forwards by this rank (all views)
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- recorded configuration


def backbone_config(weights_info) -> dict:
    """The recorded identity of the backbone: which network and exactly which weights."""
    return {
        "name": "i3d-inception-v1-rgb",
        "weights_sha256": weights_info.sha256,
        "weights_layout": weights_info.layout,
        "num_classes": int(weights_info.num_classes),
        "bn_eps": float(weights_info.bn_eps),
        "feature": "Mixed_5c averaged over time, height and width",
        "feature_dim": 1024,
    }


def cache_config(config: ExtractConfig, backbone: dict, dataset: dict) -> dict:
    """Everything that changes the cached numbers: a resume or a reader compares all of it."""
    return {
        "backbone": dict(backbone),
        "precision": config.precision,
        "preprocessing": config.preprocessing.to_config(),
        "clip_layout": config.layout.to_config(),
        "views": view_names(config.view_specs),
        "dataset": dict(dataset),
    }


def dataset_config(dataset: Dataset, kind: str, layout: str | None = None) -> dict:
    """The dataset part of the cache configuration (paths go into ``info``: data may move)."""
    described = {"name": dataset.name, "kind": kind}
    if layout is not None:
        described["layout"] = layout
    return described


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
        where = Path(frames_dir) if frames_dir else root / "frames"
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
    model=None,
    backbone: dict | None = None,
    info: dict | None = None,
    log: Callable[[str], None] = _log_to_stdout,
) -> ExtractResult:
    """Extract every video of ``dataset`` into ``config.out``; resumes what a previous run left.

    ``model`` / ``backbone`` replace the Kinetics I3D (any module with ``.features(clips)`` and a
    dict describing it), for tests and other backbones; by default the weights are loaded from
    ``config.weights``. Under ``torchrun`` every rank calls this with the same arguments.
    """
    started = time.perf_counter()
    if model is not None and backbone is None:
        raise ValueError("a custom model needs its backbone description")
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

    from extract.runner import run_extraction  # torch is imported only from here on

    return run_extraction(
        dataset,
        records,
        config,
        dataset_description or dataset_config(dataset, "custom"),
        skipped=skipped,
        model=model,
        backbone=backbone,
        info=info or {},
        log=log,
        started=started,
    )

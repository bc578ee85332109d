"""Stage 1 driver: every clip of every view of every video through the backbone, into the cache.

How the work flows (and why):

* DataLoader workers decode and preprocess one whole video each (``uint8`` frames), so every
  video is decoded exactly once and decoding overlaps with inference in the main process.
* The main process cuts the clips of all views out of the decoded frames on the device (a flip is
  an index flip, a temporal shift another start), and packs clips of *several* videos into each
  forward pass of ``batch_clips`` clips. Inference mode; on CUDA optional bf16/fp16 autocast,
  ``channels_last_3d``, pinned memory and asynchronous copies, and the results of one batch are
  fetched only after the next batch is queued, so the GPU never waits for the host.
* A video is journalled (:class:`aqa.cache.CacheWriter`) as soon as its last clip is done: a
  crash or ``kill -9`` loses at most the videos in flight, and a rerun skips everything journalled.
* Under ``torchrun`` the videos still to do are dealt out round-robin by rank (no padding, no
  duplicates); every rank journals its own; after a barrier rank 0 commits the journal into the
  one cache file.

Bad input: problems found before any work (a missing folder, too few frames) stop the run before
the model is loaded. A video that fails to decode mid-run stops the run after the videos already
decoded are finished and journalled, with one error naming the file; fix it and rerun to resume.
With ``skip_bad`` such videos are skipped instead and listed in the cache's ``info["skipped"]``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aqa.annotations import Dataset, FrameSource, VideoRecord, list_frame_files
from aqa.cache import CacheWriter, VideoEntry, journal_dir
from aqa.errors import UserError
from extract.clips import DEFAULT_VIEWS, ClipLayout, ViewSpec, parse_views, view_names
from extract.video_io import Preprocessing, read_frames, to_model_input

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


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
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r} (auto, cpu, cuda or cuda:N)")
        if self.batch_clips < 1:
            raise UserError(f"--batch-clips must be at least 1 (got {self.batch_clips})")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more (got {self.workers})")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1 (got {self.limit})")

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
    """What one extraction did (on this rank; the counts of the whole run on rank 0)."""

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


# --------------------------------------------------------------------------- configuration


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    return device


def autocast_context(device: torch.device, precision: str):
    """Mixed precision for the forward pass; fp32 means true fp32 (TF32 switched off)."""
    if precision == "fp32":
        if device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        return torch.autocast(device_type=device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (bf16 works on CPU too)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- decoding in workers


@dataclass
class DecodedVideo:
    """One video's preprocessed frames (or why they could not be read), from a loader worker."""

    index: int
    key: str
    frames: torch.Tensor | None  # uint8 [frames, crop, crop, 3]
    error: str | None = None
    error_path: str | None = None

    def pin_memory(self, device=None):  # called by the DataLoader's pinning thread
        if self.frames is not None:
            self.frames = self.frames.pin_memory()
        return self


class VideoFramesDataset(torch.utils.data.Dataset):
    """Decodes whole videos; a bad video becomes a :class:`DecodedVideo` carrying its error, so
    the main process decides (stop or skip) and the message stays one clean line."""

    def __init__(self, records: list[VideoRecord], preprocessing: Preprocessing, min_frames: int):
        self.records = records
        self.preprocessing = preprocessing
        self.min_frames = min_frames

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DecodedVideo:
        record = self.records[index]
        try:
            frames = read_frames(record.source, self.preprocessing, min_frames=self.min_frames)
        except UserError as error:
            return DecodedVideo(index, record.key, None, error.problem, error.path)
        return DecodedVideo(index, record.key, torch.from_numpy(frames))


def _identity(item):
    return item


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


# --------------------------------------------------------------------------- distributed


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, value):
        if not self.active:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value) -> list:
        if not self.active:
            return [value]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def close(self):
        if self.started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _init_distributed() -> _Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.distributed.is_initialized():
        return _Distributed(rank, world_size, local_rank, started_here=False)
    # Ranks exchange only small Python objects (the work list, skipped videos) and barriers, so
    # gloo serves CPU and GPU runs alike. The long timeout lets rank 0 wait at the final barrier
    # for the slowest shard.
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    return _Distributed(rank, world_size, local_rank, started_here=True)


# --------------------------------------------------------------------------- the run


@dataclass
class _VideoInProgress:
    key: str
    frames: torch.Tensor  # uint8 [frames, crop, crop, 3] on the device
    clip_starts: np.ndarray  # int32 [views, clips]
    features: np.ndarray | None = None  # float32 [views, clips, dim], allocated on first result
    remaining: int = 0


class _ClipBatcher:
    """Packs clips of several videos into batches and journals each video when it completes."""

    def __init__(self, model, device, precision, batch_clips, clip_length, finish: Callable):
        self.model = model
        self.device = device
        self.precision = precision
        self.batch_clips = batch_clips
        self.clip_length = clip_length
        self.finish = finish  # called with a finished _VideoInProgress
        self.queue: list[tuple[_VideoInProgress, int, int, int, bool]] = []
        self.in_flight = None  # (features on device, the clips they belong to)
        self.clips_done = 0
        self.channels_last = device.type == "cuda"

    def add_video(self, video: _VideoInProgress, views: list[ViewSpec]):
        for view_index, view in enumerate(views):
            for clip_index, start in enumerate(video.clip_starts[view_index]):
                self.queue.append((video, view_index, clip_index, int(start), view.flip))
        video.remaining = len(views) * video.clip_starts.shape[1]
        while len(self.queue) >= self.batch_clips:
            self._launch(self.queue[: self.batch_clips])
            del self.queue[: self.batch_clips]

    def flush(self):
        while self.queue:
            self._launch(self.queue[: self.batch_clips])
            del self.queue[: self.batch_clips]
        self._collect()

    def _launch(self, clips):
        length = self.clip_length
        pieces = []
        for video, _, _, start, flip in clips:
            piece = video.frames[start : start + length]
            pieces.append(piece.flip(-2) if flip else piece)  # [T, H, W, C]: W is dim -2
        batch = to_model_input(torch.stack(pieces))
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            features = self.model.features(batch)
        # Fetch the previous batch only now: its copy overlaps with this batch's compute.
        self._collect()
        self.in_flight = (features, clips)

    def _collect(self):
        if self.in_flight is None:
            return
        features, clips = self.in_flight
        self.in_flight = None
        values = features.float().cpu().numpy()
        self.clips_done += len(clips)
        for row, (video, view_index, clip_index, _, _) in zip(values, clips):
            if video.features is None:
                video.features = np.empty((*video.clip_starts.shape, row.shape[0]), dtype=np.float32)
            video.features[view_index, clip_index] = row
            video.remaining -= 1
            if video.remaining == 0:
                self.finish(video)


def _load_backbone(config: ExtractConfig):
    from extract.weights import load_i3d

    model, weights_info = load_i3d(config.weights)
    return model, backbone_config(weights_info), weights_info


def _log_to_stdout(message: str):
    print(message, flush=True)


def extract_dataset(
    dataset: Dataset,
    config: ExtractConfig,
    dataset_description: dict | None = None,
    *,
    model: torch.nn.Module | None = None,
    backbone: dict | None = None,
    info: dict | None = None,
    log: Callable[[str], None] = _log_to_stdout,
) -> ExtractResult:
    """Extract every video of ``dataset`` into ``config.out``; resumes what a previous run left.

    ``model`` / ``backbone`` replace the Kinetics I3D (anything with ``.features(clips)``), for
    tests and other backbones; by default the weights are loaded from ``config.weights``.
    """
    started = time.perf_counter()
    cache_path = Path(config.out)
    views = config.view_specs
    layout = config.layout
    preprocessing = config.preprocessing
    dataset_description = dataset_description or dataset_config(dataset, "custom")
    records = sorted(dataset.records, key=lambda record: record.key)
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise UserError("the dataset has no videos to extract", dataset.origin or None)

    dist = _init_distributed()
    try:
        if dist.rank != 0:
            log = _quiet
        # Cheap input checks first, identically on every rank: a missing folder stops the run
        # before the model is loaded, and every rank agrees on what is skipped.
        problems = check_sources(records, layout.clip_length)
        skipped: dict[str, str] = {}
        if problems:
            if not config.skip_bad:
                first_key = sorted(problems)[0]
                error = problems[first_key]
                more = f" (and {len(problems) - 1} more videos)" if len(problems) > 1 else ""
                raise UserError(f"video {first_key}: {error.problem}{more}", error.path)
            skipped = {key: str(error) for key, error in problems.items()}
            records = [record for record in records if record.key not in problems]

        if model is None:
            model, backbone, weights_info = _load_backbone(config)
            weights_path = weights_info.path if hasattr(weights_info, "path") else config.weights
        else:
            if backbone is None:
                raise ValueError("a custom model needs its backbone description")
            weights_path = config.weights
        device = resolve_device(config.device)
        if device.type == "cuda" and dist.active:
            device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        autocast_context(device, config.precision)  # validates precision against the device early

        recorded = cache_config(config, backbone, dataset_description)
        run_info = {
            "software": {"trs_aqa": _version(), "torch": torch.__version__, "python": platform.python_version()},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(device) if not dist.active else f"{device.type} x {dist.world_size} ranks",
            "weights_path": None if weights_path is None else os.fspath(weights_path),
            "dataset_origin": dataset.origin,
            "command": " ".join(sys.argv),
            **(info or {}),
        }
        writer = CacheWriter(cache_path, recorded, run_info)

        # Rank 0 decides what is left to do and deals it out: every rank gets the same list even
        # if another rank has already started journalling.
        done = writer.done_keys()
        todo = dist.broadcast([record.key for record in records if record.key not in done])
        already_done = len(records) - len(todo)
        by_key = {record.key: record for record in records}
        mine = [by_key[key] for key in todo[dist.rank :: dist.world_size]]
        if already_done:
            log(f"resuming: {already_done} of {len(records)} videos already extracted; {len(todo)} to do")
        log(
            f"extracting {len(todo)} video(s) x {len(views)} view(s) into {cache_path}"
            + (f" on {dist.world_size} ranks" if dist.active else "")
            + f" ({device}, {config.precision})"
        )

        result = ExtractResult(cache_path, already_done=already_done, rank=dist.rank, world_size=dist.world_size)
        if mine:
            model = model.to(device).eval()
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last_3d)
            shard_started = time.perf_counter()
            _run_shard(mine, model, device, config, views, layout, preprocessing, writer, result, skipped, log)
            result.seconds = time.perf_counter() - shard_started

        # Everyone's journal entries are in place after the barrier; rank 0 commits them all.
        all_skipped: dict[str, str] = {}
        per_rank = dist.gather((skipped, len(result.extracted), result.clips, result.seconds))
        for part_skipped, _, _, _ in per_rank:
            all_skipped.update(part_skipped)
        videos_done = sum(part[1] for part in per_rank)
        clips_done = sum(part[2] for part in per_rank)
        busiest = max(part[3] for part in per_rank)
        result.skipped = all_skipped
        dist.barrier()
        if dist.rank == 0:
            if all_skipped:
                writer.info["skipped"] = dict(sorted(all_skipped.items()))
                for key, problem in sorted(all_skipped.items()):
                    log(f"warning: skipped {problem}")
            writer.commit()
            seconds = time.perf_counter() - started
            # The rate counts the decoding and inference time, not start-up (model loading).
            rate = f", {clips_done / busiest:.1f} clips/s" if clips_done and busiest > 0 else ""
            shares = " + ".join(str(part[1]) for part in per_rank)
            log(
                f"extracted {videos_done} new videos ({clips_done} clips) in {seconds:.1f} s{rate}"
                + (f" (per rank: {shares})" if dist.active else "")
                + f"; {cache_path} holds {len(writer.done_keys())} videos"
                + (f", {len(all_skipped)} skipped" if all_skipped else "")
            )
        dist.barrier()
        return result
    finally:
        dist.close()


def _quiet(message: str):
    pass


def _version() -> str:
    try:
        from aqa import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def _progress_bar(total: int, config: ExtractConfig, enabled: bool):
    from tqdm import tqdm

    show = enabled and (config.progress if config.progress is not None else sys.stderr.isatty())
    return tqdm(total=total, unit="clip", disable=not show, dynamic_ncols=True, smoothing=0.1, desc="extract")


def _run_shard(records, model, device, config, views, layout, preprocessing, writer, result, skipped, log):
    """Extract this rank's videos; journal each as it completes."""
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        VideoFramesDataset(records, preprocessing, layout.clip_length),
        batch_size=None,  # one video per item, no collation
        shuffle=False,
        num_workers=config.workers,
        pin_memory=pin,
        collate_fn=_identity,
        prefetch_factor=2 if config.workers > 0 else None,
        persistent_workers=False,
    )
    # The total is exact where the frame count is known (MTL-AQA: 103) and a guess elsewhere,
    # corrected as each video is decoded.
    guess_per_video = len(views) * len(layout.starts(max(layout.clip_length, 103)))
    expected = {}
    for record in records:
        count = record.source.num_frames if record.source is not None else None
        expected[record.key] = (
            len(views) * len(layout.starts(max(count, layout.clip_length))) if count else guess_per_video
        )
    bar = _progress_bar(sum(expected.values()), config, enabled=result.rank == 0)

    def finish(video: _VideoInProgress):
        writer.add(
            VideoEntry(video.key, video.features, num_frames=int(video.frames.shape[0]), clip_starts=video.clip_starts)
        )
        result.extracted.append(video.key)
        video.frames = None  # release the decoded frames now

    batcher = _ClipBatcher(model, device, config.precision, config.batch_clips, layout.clip_length, finish)
    pending_error: UserError | None = None
    clips_reported = 0
    try:
        for decoded in loader:
            if decoded.error is not None:
                error = UserError(f"video {decoded.key}: {decoded.error}", decoded.error_path)
                if not config.skip_bad:
                    pending_error = error
                    break
                skipped[decoded.key] = str(error)
                bar.total -= expected[decoded.key]
                bar.refresh()
                continue
            frames = decoded.frames.to(device, non_blocking=pin)
            num_frames = int(frames.shape[0])
            base_starts = layout.starts(num_frames, records[decoded.index].source.path)
            clip_starts = np.array(
                [view.starts(base_starts, num_frames, layout.clip_length) for view in views], dtype=np.int32
            )
            if clip_starts.size != expected[decoded.key]:
                bar.total += clip_starts.size - expected[decoded.key]
                bar.refresh()
            batcher.add_video(_VideoInProgress(decoded.key, frames, clip_starts), views)
            bar.update(batcher.clips_done - clips_reported)
            clips_reported = batcher.clips_done
        # Finish (and journal) every video already decoded, also when a bad one stopped the run.
        batcher.flush()
        bar.update(batcher.clips_done - clips_reported)
    finally:
        bar.close()
    result.clips = batcher.clips_done
    if pending_error is not None:
        done_note = f"; {len(result.extracted)} finished videos are kept in {journal_dir(writer.path).name}" if result.extracted else ""
        raise UserError(
            f"{pending_error.problem}{done_note}; fix or remove it (or use --skip-bad), then rerun to resume",
            pending_error.path,
        )


def config_from_cli(**options) -> ExtractConfig:
    """An :class:`ExtractConfig` from CLI options (unknown keys are a programming error)."""
    names = {item.name for item in dataclasses.fields(ExtractConfig)}
    return ExtractConfig(**{key: value for key, value in options.items() if key in names})


def load_extract_dataset(
    dataset: str = "mtl-aqa",
    data_root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    frames_dir: str | os.PathLike | None = None,
    layout: str = "auto",
    name: str | None = None,
) -> tuple[Dataset, dict]:
    """The dataset to extract and its description for the cache configuration.

    Either ``data_root`` (MTL-AQA layout, frames in the MUSDL or CoRe layout) or a CSV
    ``manifest``; the dataset's name defaults to the data root's folder name or the CSV's stem.
    """
    from aqa.annotations import load_manifest, load_mtl_aqa

    if (data_root is None) == (manifest is None):
        raise UserError("give either --data-root DIR (MTL-AQA layout) or --manifest CSV")
    if manifest is not None:
        loaded = load_manifest(manifest, name=name)
        return loaded, dataset_config(loaded, "manifest")
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

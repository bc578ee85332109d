"""Stage 1 driver: every clip of every view of every video through the backbone, into the cache.

How the work flows (and why):

* DataLoader workers decode and preprocess one whole video each (``uint8`` frames), so every
  video is decoded exactly once and decoding overlaps with inference in the main process.
* The main process cuts the clips of all views out of the decoded frames on the device (a flip is
  an index flip, a temporal shift another start), and packs clips of *several* videos into each
  forward pass of ``batch_clips`` clips. Inference mode and ``channels_last_3d`` (the faster
  layout on CPU and GPU); optional bf16 autocast (fp16 on CUDA only); on CUDA pinned memory and
  asynchronous copies, and the results of one batch are fetched only after the next batch is
  queued, so the GPU never waits for the host.
* A video is journalled (:class:`aqa.cache.CacheWriter`) as soon as its last clip is done: a
  crash or ``kill -9`` loses at most the videos in flight, and a rerun skips everything journalled.
* Under ``torchrun`` the videos still to do are dealt out round-robin by rank (no padding, no
  duplicates); every rank journals its own; after a barrier rank 0 commits the journal into the
  one cache file.

Bad input: problems found before any work (a missing folder, too few frames) stop the run in
:func:`extract.plan.extract_dataset`, before the model is loaded. A video that fails to decode
mid-run stops the run after the videos already decoded are finished and journalled, with one
error naming the file; fix it and rerun to resume. With ``skip_bad`` such videos are skipped
instead and listed in the cache's ``info["skipped"]``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aqa import __version__
from aqa.annotations import VideoRecord
from aqa.cache import CacheWriter, VideoEntry, journal_dir
from aqa.config import to_dict
from aqa.errors import UserError
from aqa.progress import progress_bar
from extract.backbone import Backbone, I3DBackbone
from extract.clips import ViewSpec
from extract.config import ExtractConfig, ExtractionJob, ExtractResult, cache_config
from extract.device import autocast_context, check_precision, precision_warning, resolve_device
from extract.video_io import Preprocessing, read_frames, to_model_input

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


# --------------------------------------------------------------------------- batching clips


@dataclass
class _VideoInProgress:
    key: str
    frames: torch.Tensor  # uint8 [frames, crop, crop, 3] on the device
    clip_starts: np.ndarray  # int32 [views, clips]
    features: np.ndarray | None = None  # float32 [views, clips, dim], allocated on first result
    remaining: int = 0


class _ClipBatcher:
    """Packs clips of several videos into batches and journals each video when it completes."""

    def __init__(self, backbone: Backbone, device: torch.device, config: ExtractConfig, finish: Callable):
        self.backbone = backbone
        self.device = device
        self.precision = config.precision
        self.batch_clips = config.batch_clips
        self.clip_length = config.clip_length
        self.finish = finish  # called with a finished _VideoInProgress
        self.queue: list[tuple[_VideoInProgress, int, int, int, bool]] = []
        self.in_flight = None  # (features on device, the clips they belong to)
        self.clips_done = 0

    def add_video(self, video: _VideoInProgress, views: tuple[ViewSpec, ...]):
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
        # channels_last_3d is the faster layout for the I3D's convolutions on CPU (oneDNN) and GPU.
        batch = to_model_input(torch.stack(pieces)).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            features = self.backbone.features(batch)
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


# --------------------------------------------------------------------------- the run


def _load_backbone(config: ExtractConfig) -> Backbone:
    return I3DBackbone.load(config.weights)


def _place_device(name: str, dist: _Distributed) -> torch.device:
    """The device this rank computes on: one GPU per local rank under torchrun."""
    device = resolve_device(name)
    if device.type == "cuda":
        if dist.active:
            device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _run_info(job: ExtractionJob, backbone: Backbone, device: torch.device, dist: _Distributed) -> dict:
    """The cache's provenance: never compared, only shown (``inspect``)."""
    return {
        "software": {"trs_aqa": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device) if not dist.active else f"{device.type} x {dist.world_size} ranks",
        "weights_path": backbone.weights_path,
        "dataset_origin": job.origin,
        "command": " ".join(sys.argv),
        "extract_config": to_dict(job.config),  # the run's settings, speed-only ones included
        **job.info,
    }


def run_extraction(job: ExtractionJob) -> ExtractResult:
    """Run a checked extraction (from :func:`extract.plan.extract_dataset`) on this rank."""
    config = job.config
    cache_path = Path(config.out)
    records = job.records
    dist = _init_distributed()
    writer: CacheWriter | None = None
    try:
        log = job.log if dist.rank == 0 else _quiet
        backbone = job.backbone if job.backbone is not None else _load_backbone(config)
        device = _place_device(config.device, dist)
        check_precision(device, config.precision)  # fp16 on a CPU fails before the cache is touched
        slow_precision = precision_warning(device, config.precision)
        if slow_precision:
            log(f"warning: {slow_precision}")
        recorded = cache_config(config, backbone.describe(), job.dataset)
        # Rank 0 locks the cache for the whole run, before the work is dealt out: the other ranks'
        # journal writes happen inside its lock (see CacheWriter).
        writer = CacheWriter(cache_path, recorded, _run_info(job, backbone, device, dist), lock=dist.rank == 0)

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
            f"extracting {len(todo)} video(s) x {len(config.view_specs)} view(s) into {cache_path}"
            + (f" on {dist.world_size} ranks" if dist.active else "")
            + f" ({device}, {config.precision})"
        )

        result = ExtractResult(cache_path, already_done=already_done, rank=dist.rank, world_size=dist.world_size)
        run = _RankRun(config, backbone, device, writer, result, dict(job.skipped), log)
        if mine:
            shard_started = time.perf_counter()
            run.extract(mine)
            result.seconds = time.perf_counter() - shard_started
        run.commit(dist, todo, job.started)
        return result
    finally:
        if writer is not None:
            writer.close()
        dist.close()


def _quiet(message: str):
    pass


@dataclass
class _RankRun:
    """One rank's share of a job: its backbone on its device, the open cache writer, what it did."""

    config: ExtractConfig
    backbone: Backbone
    device: torch.device
    writer: CacheWriter
    result: ExtractResult
    skipped: dict[str, str]  # {key: problem}: found before the run, and videos that failed to decode
    log: Callable[[str], None]

    def extract(self, records: list[VideoRecord]):
        """Extract this rank's videos; journal each as it completes."""
        config, layout, views = self.config, self.config.layout, self.config.view_specs
        self.backbone = self.backbone.to(self.device, config.precision)
        pin = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            VideoFramesDataset(records, config.preprocessing, layout.clip_length),
            batch_size=None,  # one video per item, no collation
            shuffle=False,
            num_workers=config.workers,
            pin_memory=pin,
            collate_fn=_identity,
            prefetch_factor=2 if config.workers > 0 else None,
            persistent_workers=False,
        )
        expected = _expected_clips(records, config)
        bar = progress_bar(sum(expected.values()), enabled=config.progress if self.result.rank == 0 else False,
                           desc="extract", unit="clip", dynamic_ncols=True, smoothing=0.1)
        batcher = _ClipBatcher(self.backbone, self.device, config, self._finish)
        pending_error: UserError | None = None
        clips_reported = 0
        try:
            for decoded in loader:
                if decoded.error is not None:
                    error = UserError(f"video {decoded.key}: {decoded.error}", decoded.error_path)
                    if not config.skip_bad:
                        pending_error = error
                        break
                    self.skipped[decoded.key] = str(error)
                    bar.total -= expected[decoded.key]
                    bar.refresh()
                    continue
                frames = decoded.frames.to(self.device, non_blocking=pin)
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
        self.result.clips = batcher.clips_done
        if pending_error is not None:
            extracted = self.result.extracted
            done_note = (f"; {len(extracted)} finished videos are kept in {journal_dir(self.writer.path).name}"
                         if extracted else "")
            raise UserError(
                f"{pending_error.problem}{done_note}; fix or remove it (or use --skip-bad), then rerun to resume",
                pending_error.path,
            )

    def _finish(self, video: _VideoInProgress):
        self.writer.add(
            VideoEntry(video.key, video.features, num_frames=int(video.frames.shape[0]), clip_starts=video.clip_starts)
        )
        self.result.extracted.append(video.key)
        video.frames = None  # release the decoded frames now

    def commit(self, dist: _Distributed, todo: list[str], started: float):
        """Gather what every rank did; rank 0 commits everyone's journal entries into the cache."""
        result, writer, log = self.result, self.writer, self.log
        all_skipped: dict[str, str] = {}
        per_rank = dist.gather((self.skipped, len(result.extracted), result.clips, result.seconds))
        for part_skipped, _, _, _ in per_rank:
            all_skipped.update(part_skipped)
        videos_done = sum(part[1] for part in per_rank)
        clips_done = sum(part[2] for part in per_rank)
        busiest = max(part[3] for part in per_rank)
        result.skipped = all_skipped
        # Everyone's journal entries are in place after the barrier.
        dist.barrier()
        if dist.rank == 0:
            # Every rank's videos must be in the journal rank 0 sees; on several machines that
            # needs the cache folder on a shared filesystem. Never commit a silently partial cache.
            missing = sorted(set(todo) - set(all_skipped) - writer.done_keys())
            if missing and dist.active:
                raise UserError(
                    f"{len(missing)} videos extracted by other ranks are not in {journal_dir(writer.path)} "
                    f"(first: {missing[0]!r}); with several machines, --out must be on a shared filesystem",
                    writer.path,
                )
            if missing:  # one process: its own journal entries vanished, so something else removed them
                raise UserError(
                    f"{len(missing)} videos this run journalled are no longer in {journal_dir(writer.path)} "
                    f"(first: {missing[0]!r}); was it changed while the extraction ran? rerun to extract them again",
                    writer.path,
                )
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
                + f"; {writer.path} holds {len(writer.done_keys())} videos"
                + (f", {len(all_skipped)} skipped" if all_skipped else "")
            )
        dist.barrier()


def _expected_clips(records: list[VideoRecord], config: ExtractConfig) -> dict[str, int]:
    """Clips per video for the progress bar: exact where the frame count is known (MTL-AQA: 103),
    a guess elsewhere, corrected as each video is decoded."""
    layout, views = config.layout, len(config.view_specs)
    guess_per_video = views * len(layout.starts(max(layout.clip_length, 103)))
    expected = {}
    for record in records:
        count = record.source.num_frames if record.source is not None else None
        expected[record.key] = views * len(layout.starts(max(count, layout.clip_length))) if count else guess_per_video
    return expected

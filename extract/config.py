"""Stage 1's typed settings and results, and the recorded configuration a cache is compared by.

Nothing here imports torch: the command line builds and checks an :class:`ExtractConfig` (a bad
size, view list, precision or device name fails at once), and :mod:`extract.plan` hands the
checked work to :mod:`extract.runner` as one :class:`ExtractionJob`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aqa.annotations import Dataset, VideoRecord
from aqa.errors import UserError
from extract.clips import ClipLayout, ViewSpec, format_views, parse_views, view_names
from extract.device import check_device_name, check_precision_name
from extract.video_io import Preprocessing

if TYPE_CHECKING:
    from extract.backbone import Backbone


@dataclass
class ExtractConfig:
    """Settings of one extraction. The fields that change the numbers go into the cache's
    recorded configuration (:func:`cache_config`); the rest only change how fast it runs.

    Checked when built; ``views`` is parsed once into :attr:`view_specs` and kept as its
    canonical text (``None``, the default, becomes the six default views), so the settings
    saved beside the cache name exactly the views extracted.
    """

    out: str = "features/features.h5"
    weights: str | None = None  # None: the default converted Kinetics-400 weights
    views: str | None = None  # None: extract.clips.DEFAULT_VIEWS; "none": the original view only
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
        check_precision_name(self.precision)
        check_device_name(self.device)
        if self.batch_clips < 1:
            raise UserError(f"--batch-clips must be at least 1 (got {self.batch_clips})")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more (got {self.workers})")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1 (got {self.limit})")
        # Bad sizes, clip layouts or view names fail here, before any work.
        self.preprocessing, self.layout
        self.view_specs: tuple[ViewSpec, ...] = tuple(parse_views(self.views))
        self.views = format_views(self.view_specs)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(resize=self.resize, crop=self.crop)

    @property
    def layout(self) -> ClipLayout:
        return ClipLayout(clip_length=self.clip_length, stride=self.clip_stride)


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


@dataclass
class ExtractionJob:
    """A checked extraction, as :func:`extract.plan.extract_dataset` hands it to the runner:
    which videos, with which settings and backbone, described how in the cache, reported where."""

    records: list[VideoRecord]  # sorted by key, limited, bad ones already removed (skip_bad)
    config: ExtractConfig
    dataset: dict  # the dataset part of the recorded configuration (dataset_config)
    log: Callable[[str], None]
    origin: str | None = None  # where the dataset was read from (provenance only)
    skipped: dict[str, str] = field(default_factory=dict)  # {key: problem} found before any work
    backbone: Backbone | None = None  # None: the Kinetics I3D from config.weights
    info: dict = field(default_factory=dict)  # extra provenance for the cache's info
    started: float = field(default_factory=time.perf_counter)


# --------------------------------------------------------------------------- recorded configuration


def cache_config(config: ExtractConfig, backbone: dict, dataset: dict) -> dict:
    """Everything that changes the cached numbers: a resume or a reader compares all of it.
    ``backbone`` is :meth:`extract.backbone.Backbone.describe`'s; ``dataset`` :func:`dataset_config`'s."""
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

"""Stage 1: run the Kinetics-400 I3D over every clip once and cache clip features in HDF5.

Public surface:

* :func:`extract_dataset` / :class:`ExtractConfig` / :func:`load_extract_dataset`: the extraction
  (``python pipeline.py extract``), resumable, batched across videos, ``torchrun``-aware.
* :class:`ClipLayout`, :func:`parse_views`, :data:`DEFAULT_VIEWS`: which clips and views.
* :func:`read_frames`, :class:`Preprocessing`, :func:`to_model_input`: decoding and preprocessing.
* :func:`class_probabilities`, :func:`top_classes`: Kinetics-400 classification (``classify``).
* :func:`cache_summary`, :func:`export_features`: looking into a cache (``inspect``).
* The I3D itself: :mod:`extract.i3d` (:class:`InceptionI3d`) and :mod:`extract.weights`
  (:func:`load_i3d`, ``make weights``).
"""

from extract.classify import (
    ClassScore,
    class_probabilities,
    format_top_classes,
    frame_source_for,
    load_labels,
    top_classes,
)
from extract.clips import DEFAULT_VIEWS, ORIGINAL_VIEW, ClipLayout, ViewSpec, parse_view, parse_views, view_names
from extract.inspect_cache import cache_summary, clip_count_table, export_features, format_summary, resolve_view
from extract.runner import (
    ExtractConfig,
    ExtractResult,
    backbone_config,
    cache_config,
    check_sources,
    dataset_config,
    extract_dataset,
    load_extract_dataset,
)
from extract.video_io import Preprocessing, read_frames, to_model_input

__all__ = [
    "ClassScore",
    "ClipLayout",
    "DEFAULT_VIEWS",
    "ExtractConfig",
    "ExtractResult",
    "ORIGINAL_VIEW",
    "Preprocessing",
    "ViewSpec",
    "backbone_config",
    "cache_config",
    "cache_summary",
    "check_sources",
    "class_probabilities",
    "clip_count_table",
    "dataset_config",
    "export_features",
    "extract_dataset",
    "format_summary",
    "format_top_classes",
    "frame_source_for",
    "load_extract_dataset",
    "load_labels",
    "parse_view",
    "parse_views",
    "read_frames",
    "resolve_view",
    "to_model_input",
    "top_classes",
    "view_names",
]

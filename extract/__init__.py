"""Stage 1: run the Kinetics-400 I3D over every clip once and cache clip features in HDF5.

Public surface (imported on first use, so that ``import extract`` and the command line's
input checks do not pay for importing torch):

* :func:`extract_dataset` / :class:`ExtractConfig` / :func:`load_extract_dataset`: the extraction
  (``python pipeline.py extract``), resumable, batched across videos, ``torchrun``-aware;
  :func:`cache_config` / :func:`dataset_config`: the configuration a cache records.
* :class:`Backbone` (the seam for feature networks), :class:`I3DBackbone` (the Kinetics I3D),
  :class:`ModuleBackbone` (any module with ``features(clips)``).
* :func:`resolve_device`, :func:`autocast_context`: which device and which arithmetic.
* :class:`ClipLayout`, :func:`parse_views`, :data:`DEFAULT_VIEWS`: which clips and views.
* :func:`read_frames`, :class:`Preprocessing`, :func:`to_model_input`: decoding and preprocessing.
* :func:`class_probabilities`, :func:`top_classes`: Kinetics-400 classification (``classify``).
* :func:`cache_summary`, :func:`export_features`: looking into a cache (``inspect``).
* The I3D itself: :mod:`extract.i3d` (``InceptionI3d``) and :mod:`extract.weights`
  (``load_i3d``, ``make weights``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "extract.config": ("ExtractConfig", "ExtractResult", "cache_config", "dataset_config"),
    "extract.plan": ("check_sources", "extract_dataset", "load_extract_dataset"),
    "extract.backbone": ("Backbone", "I3DBackbone", "ModuleBackbone"),
    "extract.device": ("autocast_context", "resolve_device"),
    "extract.clips": (
        "DEFAULT_VIEWS", "ORIGINAL_VIEW", "ClipLayout", "ViewSpec", "format_views", "parse_view", "parse_views",
        "view_names",
    ),
    "extract.video_io": ("Preprocessing", "read_frames", "to_model_input"),
    "extract.classify": (
        "ClassScore", "class_probabilities", "format_top_classes", "frame_source_for", "load_labels", "top_classes",
    ),
    "extract.inspect_cache": ("cache_summary", "clip_count_table", "export_features", "format_summary", "resolve_view"),
    "extract.import_bank": ("ImportConfig", "ImportResult", "import_feature_bank"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

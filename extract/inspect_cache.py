"""Looking into a feature cache: provenance, views, clip counts, and one video's features as .npy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aqa.cache import FeatureCache, journal_entries, open_cache
from aqa.errors import UserError
from aqa.files import atomic_writer


def cache_summary(cache: FeatureCache) -> dict:
    """A JSON-ready description of a cache (what ``inspect`` prints)."""
    counts = cache.clip_counts()
    values = np.array(list(counts.values()), dtype=np.int64)
    uncommitted = len(journal_entries(cache.path))
    summary = {
        "path": str(cache.path),
        "videos": len(cache),
        "views": cache.view_names,
        "feature_dim": cache.feature_dim,
        "clips_per_video": (
            {
                "min": int(values.min()),
                "median": float(np.median(values)),
                "max": int(values.max()),
                "total": int(values.sum()),
            }
            if len(values)
            else None
        ),
        "uncommitted_journal_entries": uncommitted,
        "config": cache.config,
        "info": cache.info,
    }
    return summary


def format_summary(summary: dict, max_keys: int = 10) -> str:
    lines = [f"cache      {summary['path']}"]
    lines.append(f"videos     {summary['videos']}")
    lines.append(f"views      {len(summary['views'])}: {', '.join(summary['views'])}")
    lines.append(f"feature    {summary['feature_dim']}-d per clip")
    clips = summary["clips_per_video"]
    if clips:
        lines.append(
            f"clips      per video min {clips['min']}, median {clips['median']:g}, max {clips['max']}; "
            f"{clips['total']} in all (x {len(summary['views'])} views)"
        )
    if summary["uncommitted_journal_entries"]:
        lines.append(
            f"journal    {summary['uncommitted_journal_entries']} finished videos not yet committed "
            "(an interrupted extraction; rerun it to resume and commit)"
        )
    skipped = summary["info"].get("skipped") or {}
    if skipped:
        lines.append(f"skipped    {len(skipped)} bad videos: " + "; ".join(list(skipped.values())[:3]))
    lines.append("config (compared on resume and by readers):")
    lines.extend("  " + line for line in json.dumps(summary["config"], indent=2, sort_keys=True).splitlines())
    lines.append("info (provenance, never compared):")
    lines.extend("  " + line for line in json.dumps(summary["info"], indent=2, sort_keys=True).splitlines())
    return "\n".join(lines)


def clip_count_table(cache: FeatureCache, max_rows: int = 20) -> str:
    counts = cache.clip_counts()
    keys = list(counts)
    shown = keys if len(keys) <= max_rows else keys[: max_rows // 2] + keys[-max_rows // 2 :]
    lines = [f"{'video':<24} clips"]
    for index, key in enumerate(shown):
        if len(keys) > max_rows and index == max_rows // 2:
            lines.append(f"{'...':<24} ({len(keys) - max_rows} more)")
        lines.append(f"{key:<24} {counts[key]}")
    return "\n".join(lines)


def resolve_view(cache: FeatureCache, view: str | int) -> int:
    """A view index from a name (``flip``) or a number (``1``)."""
    names = cache.view_names
    text = str(view).strip()
    if text.isdigit():
        index = int(text)
        if index >= len(names):
            raise UserError(f"view {index} does not exist (the cache has {len(names)} views: {', '.join(names)})", cache.path)
        return index
    if text not in names:
        raise UserError(f"no view named {text!r} (views: {', '.join(names)})", cache.path)
    return names.index(text)


def export_features(cache_path: str | os.PathLike, key: str, out: str | os.PathLike, view: str | int = 0) -> Path:
    """Write one video's ``float32 [clips, dim]`` features of one view to ``out`` (.npy), atomically."""
    cache = open_cache(cache_path)
    index = resolve_view(cache, view)
    features = cache.entry(key).features
    if index >= features.shape[0]:
        raise UserError(f"video {key} has {features.shape[0]} views, asked for view {index}", cache.path)
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError("the export file must end in .npy", out)
    with atomic_writer(out) as handle:
        np.save(handle, np.ascontiguousarray(features[index], dtype=np.float32))
    return out

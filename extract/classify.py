"""Kinetics-400 classification of one video: the quickest check that weights and preprocessing fit.

A diving clip should come out as "springboard diving" (class 329). The first ``frames`` frames are
classified as one clip, the way DeepMind's I3D evaluates (logits averaged over time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aqa.annotations import FrameSource
from aqa.errors import UserError
from extract.video_io import Preprocessing, read_frames, to_model_input

MIN_CLASSIFY_FRAMES = 8  # I3D's temporal stride: fewer frames leave nothing to average over


@dataclass(frozen=True)
class ClassScore:
    rank: int
    index: int
    probability: float
    label: str | None


def frame_source_for(path: str | os.PathLike) -> FrameSource:
    """A video file or a folder of frames, as given on the command line."""
    path = Path(path)
    if path.is_dir():
        return FrameSource(str(path), "frames")
    if not path.exists():
        raise UserError("video not found", path)
    return FrameSource(str(path), "video")


def load_labels(path: str | os.PathLike, num_classes: int | None = None) -> list[str]:
    """Class names, one per line, in the model's output order."""
    path = Path(path)
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError("labels file not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read labels ({error})", path) from None
    if num_classes is not None and len(labels) != num_classes:
        raise UserError(f"has {len(labels)} labels but the model has {num_classes} classes", path)
    return labels


def class_probabilities(
    model,
    source: FrameSource,
    frames: int = 64,
    preprocessing: Preprocessing | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, int]:
    """Softmax over the model's classes for the first ``frames`` frames of ``source`` (all of them
    when the video is shorter), and how many frames that was."""
    if frames < MIN_CLASSIFY_FRAMES:
        raise UserError(f"--frames must be at least {MIN_CLASSIFY_FRAMES} (got {frames})")
    preprocessing = preprocessing or Preprocessing()
    pixels = read_frames(source, preprocessing, min_frames=MIN_CLASSIFY_FRAMES, max_frames=frames)
    clip = to_model_input(torch.from_numpy(pixels).to(device))[None]
    with torch.inference_mode():
        logits = model(clip)
    return torch.softmax(logits.float(), dim=-1)[0].cpu().numpy(), int(pixels.shape[0])


def top_classes(probabilities: np.ndarray, labels: list[str] | None = None, k: int = 5) -> list[ClassScore]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        ClassScore(rank, int(index), float(probabilities[index]), None if labels is None else labels[index])
        for rank, index in enumerate(order, start=1)
    ]


def format_top_classes(scores: list[ClassScore]) -> str:
    lines = [f"{'rank':>4}  {'prob':>6}  {'class':>5}  label"]
    for score in scores:
        label = score.label if score.label is not None else "(pass --labels for names)"
        lines.append(f"{score.rank:>4}  {score.probability:6.3f}  {score.index:>5}  {label}")
    return "\n".join(lines)

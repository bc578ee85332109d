"""Decoding a video's frames and preparing them for the I3D: RGB, short side resized, centre crop.

Frames come from a folder of images (PIL; sorted by name, as ffmpeg numbers them) or a video file
(PyAV). Each frame is resized right after it is decoded, so a long video never holds its frames at
full resolution. The result stays ``uint8`` (``[frames, crop, crop, 3]``): it is four times smaller
than floats to pass between processes and to copy to a GPU, where :func:`to_model_input` scales it
to the ``[-1, 1]`` range the Kinetics I3D was trained with.

Every problem with an input (missing folder, too few frames, a corrupt image or video) is a
:class:`~aqa.errors.UserError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aqa.annotations import FrameSource, list_frame_files
from aqa.errors import UserError

if TYPE_CHECKING:  # torch is imported by the callers that need it, not for decoding
    import torch


@dataclass(frozen=True)
class Preprocessing:
    """How frames become model input; recorded in the cache so caches never mix conventions.

    The defaults are the Kinetics I3D convention (DESIGN.md): RGB, short side 256 with bilinear
    interpolation keeping the aspect ratio, centre crop 224, pixels in [-1, 1]. A smaller
    ``resize``/``crop`` (e.g. 128/112) makes quick demos and tests.
    """

    resize: int = 256
    crop: int = 224

    def __post_init__(self):
        if self.crop < 1 or self.resize < 1:
            raise UserError(f"--resize and --crop must be positive (got {self.resize}, {self.crop})")
        if self.crop > self.resize:
            raise UserError(f"--crop {self.crop} is larger than --resize {self.resize} (the short side)")

    def to_config(self) -> dict:
        return {
            "color": "RGB",
            "resize_short_side": self.resize,
            "interpolation": "bilinear (PIL, antialiased), aspect kept",
            "crop": self.crop,
            "crop_position": "centre",
            "value_range": [-1.0, 1.0],
        }

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after scaling the short side to ``resize``."""
        if width <= height:
            return self.resize, max(self.resize, round(height * self.resize / width))
        return max(self.resize, round(width * self.resize / height)), self.resize

    def apply(self, image) -> np.ndarray:
        """A PIL image -> ``uint8 [crop, crop, 3]`` RGB."""
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), Image.BILINEAR)
        left = (width - self.crop) // 2
        top = (height - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(image, dtype=np.uint8)


def to_model_input(frames: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., T, H, W, 3]`` -> float ``[..., 3, T, H, W]`` in [-1, 1] (on the frames' device)."""
    moved = frames.movedim(-1, -4)  # channels in front of time
    return moved.float().div_(127.5).sub_(1.0)


def _window(source: FrameSource, available: int | None, min_frames: int) -> tuple[int, int | None]:
    """First frame and how many frames to read; checks there are enough."""
    first = max(0, int(source.first_frame))
    wanted = source.num_frames
    if available is not None:
        usable = max(0, available - first)
        needed = wanted if wanted is not None else min_frames
        if usable < needed:
            where = f" from frame {first}" if first else ""
            raise UserError(f"too few frames: found {usable}{where}, needs {needed}", source.path)
        count = wanted if wanted is not None else usable
        return first, count
    return first, wanted


def read_frames(
    source: FrameSource,
    preprocessing: Preprocessing,
    min_frames: int = 1,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode and preprocess a video's frames: ``uint8 [frames, crop, crop, 3]``.

    ``source.first_frame``/``num_frames`` select the window (CoRe's cut of a whole-video folder);
    ``num_frames=None`` takes every frame. Fewer than ``min_frames`` (or than ``num_frames``) is an
    error that says how many were found. ``max_frames`` reads only the start of the window.
    """
    if source.kind == "frames":
        return _read_frame_folder(source, preprocessing, min_frames, max_frames)
    if source.kind == "video":
        return _read_video_file(source, preprocessing, min_frames, max_frames)
    raise UserError(f"unknown frame source kind {source.kind!r}", source.path)


def _read_frame_folder(source, preprocessing, min_frames, max_frames) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = list_frame_files(source.path)
    first, count = _window(source, len(files), min_frames)
    if max_frames is not None:
        count = min(count, max_frames)
    frames = np.empty((count, preprocessing.crop, preprocessing.crop, 3), dtype=np.uint8)
    size = None
    for index, path in enumerate(files[first : first + count]):
        try:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, not later
                if size is None:
                    size = image.size
                elif image.size != size:
                    raise UserError(f"frame size {image.size} differs from the first frame's {size}", path)
                frames[index] = preprocessing.apply(image)
        except UserError:
            raise
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise UserError(f"corrupt or unreadable image ({_brief(error)})", path) from None
    return frames


def frame_to_image(frame):
    """A decoded PyAV frame as an RGB PIL image, converted on one thread.

    With swscale's default (one slice thread per core) the frame's converter keeps its threads
    as long as the frame lives; a process forked meanwhile (the DataLoader's workers) that frees
    an inherited converter waits for those threads, which it does not have, forever."""
    return frame.to_image(threads=1)


def _read_video_file(source, preprocessing, min_frames, max_frames) -> np.ndarray:
    import av

    path = Path(source.path)
    if not path.is_file():
        raise UserError("video file not found" if not path.exists() else "not a video file", path)
    first = max(0, int(source.first_frame))
    wanted = source.num_frames
    limit = wanted
    if max_frames is not None:
        limit = max_frames if limit is None else min(limit, max_frames)
    frames: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise UserError("no video stream", path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding inside the codec
            for frame in container.decode(stream):
                decoded += 1
                if decoded <= first:
                    continue
                frames.append(preprocessing.apply(frame_to_image(frame)))
                if limit is not None and len(frames) >= limit:
                    break
    except UserError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise UserError(f"corrupt or unreadable video ({_brief(error)})", path) from None
    needed = wanted if wanted is not None else min_frames
    if max_frames is not None:
        needed = min(needed, max_frames)
    if len(frames) < needed:
        where = f" from frame {first}" if first else ""
        if decoded == 0:
            raise UserError("corrupt or unreadable video (no frame could be decoded)", path)
        raise UserError(f"too few frames: found {len(frames)}{where}, needs {needed}", path)
    return np.stack(frames)


def _brief(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__

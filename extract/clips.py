"""Where the clips of a video start, and the views (augmentations) extracted per video.

Clip layout: clips of ``clip_length`` frames every ``stride`` frames, plus one clip that ends on
the last frame, so the tail of the action is always covered. For MTL-AQA's 103-frame dives that
is the field's layout: starts 0, 10, ..., 80 and 87 (ten clips). When the last regular clip
already ends on the last frame, no duplicate is added.

Views: view 0 is always ``"original"``, the canonical unaugmented clips. Others combine a
horizontal flip with a temporal shift of every clip start by ``k`` frames (clamped so each clip
stays inside the video), named ``flip``, ``shift-3``, ``shift+3``, ``flip+shift-3``... Every view
of a video has the same number of clips, so a video's features are one ``[views, clips, dim]``
array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aqa.cache import ORIGINAL_VIEW
from aqa.errors import UserError

# Flip crossed with shifts of +-3 frames: six views, enough for stage 2 to draw a weak view
# (original / flip) and a different strong view (shifted, flipped+shifted) of every video.
DEFAULT_VIEWS = "flip,shift-3,shift+3,flip+shift-3,flip+shift+3"

_SHIFT_PATTERN = re.compile(r"^shift([+-]?)(\d+)$")


@dataclass(frozen=True)
class ClipLayout:
    """Clips of ``clip_length`` frames every ``stride`` frames, plus the final ``clip_length``."""

    clip_length: int = 16
    stride: int = 10

    def __post_init__(self):
        if self.clip_length < 1 or self.stride < 1:
            raise UserError(f"clip length and stride must be positive (got {self.clip_length}, {self.stride})")

    def starts(self, num_frames: int, source=None) -> list[int]:
        """Clip start frames for a video of ``num_frames`` frames."""
        if num_frames < self.clip_length:
            raise UserError(
                f"too few frames: found {num_frames}, a clip needs {self.clip_length}", source
            )
        starts = list(range(0, num_frames - self.clip_length + 1, self.stride))
        tail = num_frames - self.clip_length
        if starts[-1] != tail:
            starts.append(tail)
        return starts

    def to_config(self) -> dict:
        return {"clip_length": self.clip_length, "stride": self.stride, "tail_clip": True}


@dataclass(frozen=True)
class ViewSpec:
    """One view: an optional horizontal flip and a temporal shift of the clip starts."""

    flip: bool = False
    shift: int = 0

    @property
    def name(self) -> str:
        parts = []
        if self.flip:
            parts.append("flip")
        if self.shift:
            parts.append(f"shift{self.shift:+d}")
        return "+".join(parts) or ORIGINAL_VIEW

    def starts(self, base_starts: list[int], num_frames: int, clip_length: int) -> list[int]:
        """The view's clip starts: the base starts moved by ``shift``, kept inside the video."""
        last = num_frames - clip_length
        return [min(max(start + self.shift, 0), last) for start in base_starts]


def parse_view(name: str) -> ViewSpec:
    """``"flip+shift-3"`` -> ``ViewSpec(flip=True, shift=-3)``; a UserError for anything else."""
    text = name.strip().lower()
    if text == ORIGINAL_VIEW:
        return ViewSpec()
    flip, shift, seen = False, 0, set()
    tokens = _tokens(text)
    if not tokens:
        raise UserError(f"empty view name in {name!r}")
    for token in tokens:
        kind = "flip" if token == "flip" else "shift" if token.startswith("shift") else None
        if kind is None:
            raise UserError(f"unknown view {name!r}: use flip, shift+K, shift-K or combinations like flip+shift-3")
        if kind in seen:
            raise UserError(f"view {name!r} names {kind} twice")
        seen.add(kind)
        if kind == "flip":
            flip = True
        else:
            match = _SHIFT_PATTERN.match(token)
            if not match:
                raise UserError(f"unknown view {name!r}: a shift is written shift+K or shift-K (K frames)")
            shift = int(match.group(2)) * (-1 if match.group(1) == "-" else 1)
    return ViewSpec(flip=flip, shift=shift)


def _tokens(text: str) -> list[str]:
    # "flip+shift+3" must split into "flip" and "shift+3": a "+" only separates parts when it is
    # not the sign of a shift.
    return [token for token in re.split(r"\+(?=flip|shift)", text) if token]


def parse_views(text: str | None) -> list[ViewSpec]:
    """The views to extract, ``original`` first; ``None`` means :data:`DEFAULT_VIEWS`, ``"none"``
    or ``""`` only ``original``.

    Accepts a comma-separated list (``"flip,shift-3,shift+3"``); ``original`` may be listed or
    not, it is always view 0. Two names for the same view are an error.
    """
    views = [ViewSpec()]
    if text is None:  # the one place the default views are applied
        text = DEFAULT_VIEWS
    text = text.strip()
    if text.lower() in ("", "none", ORIGINAL_VIEW):
        return views
    seen = {ORIGINAL_VIEW: ORIGINAL_VIEW}
    for name in text.split(","):
        if not name.strip():
            raise UserError(f"empty view name in --views {text!r}")
        view = parse_view(name)
        if view.name == ORIGINAL_VIEW:
            if name.strip().lower() != ORIGINAL_VIEW:
                raise UserError(f"view {name.strip()!r} is the original view; list it as 'original' or leave it out")
            continue
        if view.name in seen:
            raise UserError(f"views {seen[view.name]!r} and {name.strip()!r} are the same view")
        seen[view.name] = name.strip()
        views.append(view)
    return views


def view_names(views) -> list[str]:
    return [view.name for view in views]


def format_views(views) -> str:
    """The canonical ``--views`` text of parsed views (``parse_views`` of it gives them back):
    the names after ``original``, comma-separated, or ``"none"``."""
    return ",".join(view_names(views[1:])) or "none"

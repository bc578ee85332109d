"""The backbone seam: what the runner needs from a feature network, and the I3D that fills it.

In the spirit of v-iashin/video_features' base extractor, a backbone says what it is and computes
features; the runner does everything else (decoding, views, batching, the cache). It describes
itself for the cache's recorded configuration (:meth:`Backbone.describe`: name, feature size,
exactly which weights and which feature), so a cache made with another network or other weights
is refused rather than mixed, and a reader can check a cache against the backbone it would use.

Adding a network: subclass :class:`Backbone` (or wrap a module that has ``features(clips)`` in
:class:`ModuleBackbone`) and pass it to :func:`extract.plan.extract_dataset` as ``backbone``.
torch is imported only where a backbone is built, moved or loaded, not by importing this module.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from extract.weights import WeightsInfo

I3D_NAME = "i3d-inception-v1-rgb"


class Backbone(ABC):
    """A feature network: clips in, one feature vector per clip out.

    ``features`` takes float clips ``[clips, 3, frames, height, width]`` with pixels in [-1, 1]
    (:func:`extract.video_io.to_model_input`) and returns ``[clips, feature_dim]``.
    """

    name: str
    feature_dim: int
    weights_path: str | None = None  # provenance in the cache's info; never compared

    @abstractmethod
    def describe(self) -> dict:
        """The backbone part of the cache's recorded configuration (compared on every resume
        and by readers): at least ``name`` and ``feature_dim``, plus whatever changes the
        numbers (weights sha256, layout, which activation)."""

    def to(self, device: torch.device, precision: str = "fp32") -> Backbone:
        """Ready for inference on ``device`` in ``precision`` (called once per run, before the
        first batch; the forward pass still runs inside the precision's autocast context)."""
        return self

    @abstractmethod
    def features(self, clips: torch.Tensor) -> torch.Tensor:
        ...


class ModuleBackbone(Backbone):
    """A torch module with a ``features(clips)`` method, described by ``description``: the I3D
    below, a stand-in in tests, or another network before it gets a class of its own."""

    def __init__(self, module, description: dict, weights_path: str | os.PathLike | None = None):
        if "name" not in description or "feature_dim" not in description:
            raise ValueError(f"a backbone description needs a name and a feature_dim (got {sorted(description)})")
        self.module = module
        self.description = dict(description)
        self.name = str(description["name"])
        self.feature_dim = int(description["feature_dim"])
        self.weights_path = None if weights_path is None else os.fspath(weights_path)

    def describe(self) -> dict:
        return dict(self.description)

    def to(self, device: torch.device, precision: str = "fp32") -> ModuleBackbone:
        import torch

        # channels_last_3d is the faster layout for 3D convolutions on CPU (oneDNN) and GPU.
        self.module = self.module.to(device, memory_format=torch.channels_last_3d).eval()
        return self

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        return self.module.features(clips)


class I3DBackbone(ModuleBackbone):
    """The Kinetics-400 Inception-v1 I3D (RGB): Mixed_5c averaged over time and space, 1024-d."""

    def __init__(self, model, weights: WeightsInfo):
        super().__init__(model, i3d_description(weights), weights.path)
        self.weights = weights
        self.model = model  # as loaded; self.module becomes its prepared copy

    def to(self, device: torch.device, precision: str = "fp32") -> I3DBackbone:
        """BatchNorm folded into the convolutions and the weights stored in ``precision``
        (:func:`extract.inference.prepare_for_inference`), prepared anew from the loaded model."""
        from extract.inference import prepare_for_inference

        self.module = prepare_for_inference(self.model, precision, device)
        return self

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> I3DBackbone:
        """The I3D with the weights at ``path`` (default: the converted Kinetics-400 weights)."""
        from extract.weights import load_i3d

        return cls(*load_i3d(path))


def i3d_description(weights: WeightsInfo) -> dict:
    """The recorded identity of the I3D: which network and exactly which weights."""
    from extract.i3d import FEATURE_DIM

    return {
        "name": I3D_NAME,
        "weights_sha256": weights.sha256,
        "weights_layout": weights.layout,
        "num_classes": int(weights.num_classes),
        "bn_eps": float(weights.bn_eps),
        "feature": "Mixed_5c averaged over time, height and width",
        "feature_dim": FEATURE_DIM,
    }

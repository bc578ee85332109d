"""Inception-v1 I3D (RGB stream), laid out like the widely used PyTorch port of DeepMind's model.

The module tree reproduces that port's ``state_dict`` exactly (344 keys, 12,697,264 parameters with a
400-class classifier), so its checkpoints, the CoRe-style ones (after renaming, see
:mod:`extract.weights`) and DeepMind's converted Kinetics-400 checkpoint all load into it.

Behaviour follows DeepMind's TensorFlow model rather than the port where the two differ:

* "SAME" padding is computed from the actual input size on every call, so any clip length and
  crop size work (16x224x224 for extraction, 16x112x112 for quick tests). Symmetric padding is left
  to the convolution / pooling kernel itself (no extra copy); TF's asymmetric case (one more pixel
  at the end) is an explicit pad for the first convolution and ``ceil_mode`` for the pools.
* Max pools always follow a ReLU, so where a pool does pad with zeros, that gives the same result
  as TF's -inf padding.
* BatchNorm eps defaults to 1e-3 (DeepMind, the port); CoRe's layout was trained with 1e-5.
* The classifier averages logits over time steps after a 2x7x7 stride-1 average pool, as DeepMind
  does; the window shrinks to the feature map when the input is smaller than 16x224x224.

Nothing in the forward pass depends on a fixed input size, and it uses only ops that work under
``torch.inference_mode()``, ``channels_last_3d`` and bf16/fp16 autocast. On CPU,
``model.to(memory_format=torch.channels_last_3d)`` with channels-last clips is 1.3-1.5x faster
than the default layout and gives the same features (``bench/bench_i3d.py`` measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Output channels of each Inception module's branches, in DeepMind's order:
# (branch 0 1x1, branch 1 1x1 -> 3x3, branch 2 1x1 -> 3x3, branch 3 pool -> 1x1).
_MIXED_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

FEATURE_DIM = 1024  # channels of Mixed_5c


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value, value, value) if isinstance(value, int) else tuple(value)


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]):
    """TF "SAME" padding per dimension as ``(before, after)`` pairs: the output has
    ``ceil(size / stride)`` positions and the extra pixel, if the total is odd, goes at the end."""
    pads = []
    for length, k, s in zip(size, kernel, stride):
        out = -(-length // s)
        total = max((out - 1) * s + k - length, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _split_padding(pads):
    """Symmetric part (for the kernel's own ``padding`` argument) and the leftover for F.pad."""
    symmetric = tuple(before for before, _ in pads)
    extra = [after - before for before, after in pads]
    if not any(extra):
        return symmetric, None
    # F.pad takes the last dimension first: (W_before, W_after, H_before, H_after, T_before, T_after).
    leftover = []
    for more in reversed(extra):
        leftover += [0, more]
    return symmetric, leftover


def check_feature_request(clips: Tensor, end_point: str, stages) -> None:
    """``ValueError`` unless ``end_point`` is one of ``stages`` and ``clips`` is ``[B, 3, T, H, W]``
    (shared by the plain network and its inference-time preparation)."""
    if end_point not in stages:
        raise ValueError(f"unknown end point {end_point!r}; one of {', '.join(stages)}")
    if clips.dim() != 5 or clips.shape[1] != 3:
        raise ValueError(f"expected clips [B, 3, T, H, W], got shape {tuple(clips.shape)}")


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding (same result as TF's -inf padding)."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        # TF's extra pixel at the end is then done by ceil_mode (windows may run past the end and
        # ignore what is outside) instead of a padded copy. That equals TF's padding when the
        # kernel is at least the stride and the stride is > 1 wherever padding is asymmetric,
        # true of every I3D pool; other shapes pad explicitly.
        self._ceil_mode_ok = all(k >= s for k, s in zip(self.kernel_size, self.stride))

    def forward(self, x: Tensor) -> Tensor:
        pads = same_padding(x.shape[2:], self.kernel_size, self.stride)
        symmetric, leftover = _split_padding(pads)
        if leftover is None:
            return F.max_pool3d(x, self.kernel_size, self.stride, padding=symmetric)
        if self._ceil_mode_ok and all(s > 1 for (b, a), s in zip(pads, self.stride) if a != b):
            return F.max_pool3d(x, self.kernel_size, self.stride, padding=symmetric, ceil_mode=True)
        # Zero is the smallest value after a ReLU, so it never wins a max: same result as -inf.
        return F.max_pool3d(F.pad(x, leftover), self.kernel_size, self.stride, padding=symmetric)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


class Unit3D(nn.Module):
    """Conv3d (TF "SAME" padding) -> BatchNorm -> ReLU; the classifier unit has a bias and neither."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=1,
        stride=1,
        *,
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-3,
    ):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel_size, stride=self.stride, padding=0, bias=bias
        )
        # momentum 0.01 is Sonnet's decay 0.99 in PyTorch's convention (only matters when fine-tuning).
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        symmetric, leftover = _split_padding(same_padding(x.shape[2:], self.kernel_size, self.stride))
        if leftover is not None:
            x = F.pad(x, leftover)
        x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, symmetric)
        if self.bn is not None:
            x = self.bn(x)
        if self.activation:
            # In place: neither the convolution's nor BatchNorm's backward needs its output.
            x = F.relu(x, inplace=True)
        return x


class InceptionModule(nn.Module):
    """Four parallel branches concatenated along channels (names as in the PyTorch port)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int], bn_eps: float):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0, 1, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, c1a, 1, bn_eps=bn_eps)
        self.b1b = Unit3D(c1a, c1b, 3, bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, c2a, 1, bn_eps=bn_eps)
        self.b2b = Unit3D(c2a, c2b, 3, bn_eps=bn_eps)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, c3b, 1, bn_eps=bn_eps)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """Kinetics I3D, RGB stream.

    ``clips`` are float tensors ``[B, 3, T, H, W]`` of RGB pixels scaled to [-1, 1].
    :meth:`features` gives the 1024-d clip feature (Mixed_5c averaged over time and space),
    :meth:`forward` the ``[B, num_classes]`` logits.
    """

    def __init__(self, num_classes: int = 400, bn_eps: float = 1e-3, *, dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.bn_eps = bn_eps
        # Registered first so the state_dict lists it first, exactly like the PyTorch port's.
        self.logits = Unit3D(
            FEATURE_DIM, num_classes, 1, batch_norm=False, activation=False, bias=True, bn_eps=bn_eps
        )
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2, bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3, bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        # Pools that halve the resolution sit before Mixed_4b (3x3x3) and Mixed_5b (2x2x2).
        pools_before = {"Mixed_4b": ("MaxPool3d_4a_3x3", 3), "Mixed_5b": ("MaxPool3d_5a_2x2", 2)}
        self._stages: list[str] = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1",
                                   "Conv3d_2c_3x3", "MaxPool3d_3a_3x3"]
        for name, branch_channels in _MIXED_CHANNELS.items():
            if name in pools_before:
                pool_name, size = pools_before[name]
                setattr(self, pool_name, MaxPool3dSame(size, 2))
                self._stages.append(pool_name)
            module = InceptionModule(channels, branch_channels, bn_eps)
            setattr(self, name, module)
            self._stages.append(name)
            channels = module.out_channels
        assert channels == FEATURE_DIM
        self.dropout = nn.Dropout(dropout)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """DeepMind's end-point names, input to Mixed_5c, in order."""
        return tuple(self._stages)

    def feature_map(self, clips: Tensor, end_point: str = "Mixed_5c") -> Tensor:
        """The activations after ``end_point`` (default Mixed_5c: ``[B, 1024, T/8, H/32, W/32]``)."""
        check_feature_request(clips, end_point, self._stages)
        x = clips
        for name in self._stages:
            x = getattr(self, name)(x)
            if name == end_point:
                break
        return x

    def features(self, clips: Tensor) -> Tensor:
        """``[B, 1024]`` clip features: Mixed_5c averaged over time, height and width."""
        return self.feature_map(clips).mean(dim=(2, 3, 4))

    def logits_from_feature_map(self, feature_map: Tensor) -> Tensor:
        """DeepMind's head: 2x7x7 average pool (stride 1, VALID; window clipped to the map),
        dropout, 1x1x1 conv with bias, then the logits averaged over all positions."""
        window = tuple(min(limit, size) for limit, size in zip((2, 7, 7), feature_map.shape[2:]))
        pooled = F.avg_pool3d(feature_map, window, stride=1)
        return self.logits(self.dropout(pooled)).mean(dim=(2, 3, 4))

    def forward(self, clips: Tensor) -> Tensor:
        """``[B, num_classes]`` logits, averaged over time steps as DeepMind's model does."""
        return self.logits_from_feature_map(self.feature_map(clips))

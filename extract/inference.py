"""Inference-time preparation of the I3D, done once when the extractor is built.

:func:`prepare_for_inference` turns a loaded :class:`~extract.i3d.InceptionI3d` into a
:class:`PreparedI3D` that computes the same features with less work per forward pass:

* BatchNorm is folded into the convolution before it (``w * gamma / sqrt(var + eps)`` and a bias),
  so no batch-norm pass runs; on CPU the ReLU is fused into oneDNN's convolution (the op inductor
  uses), elsewhere it runs in place.
* Weights are stored once in the compute precision (bf16 / fp16 / fp32), so no per-forward weight
  casts run, as they do under autocast (the profile's ``copy_``, 10-14 % of a bf16 forward). The
  clip is cast and padded for the first convolution in one copy. Activations stay in the compute
  precision; the feature average is accumulated and returned in fp32.
* The Inception modules' 3x3x3 stride-1 max pools are computed as separable shifted maxima
  (3 passes of 2 elementwise maxima): PyTorch's CPU ``max_pool3d`` always runs the
  ``max_pool3d_with_indices`` kernel and is 3x slower at these shapes in channels_last_3d. The
  strided pools keep ``F.max_pool3d`` (just as fast there).
* Everything lives in channels_last_3d, the faster layout for oneDNN and cuDNN.

The original model is not modified (its ``state_dict`` still loads checkpoints); the prepared one
is for inference only (no gradients, no dropout, no training-mode BatchNorm).

``bench/bench_limits.py`` measures it against the autocast path and against the compute limit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extract.i3d import (
    InceptionI3d, InceptionModule, MaxPool3dSame, Unit3D, _split_padding, check_feature_request, same_padding,
)

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fold_batch_norm(unit: Unit3D) -> tuple[Tensor, Tensor | None]:
    """The convolution weight and bias of ``unit`` with its (eval-mode) BatchNorm folded in, in fp32.

    BatchNorm computes ``(y - mean) / sqrt(var + eps) * gamma + beta`` per output channel of the
    convolution ``y``; that is the convolution with each output filter scaled by
    ``gamma / sqrt(var + eps)`` plus the bias ``beta - mean * scale``. The arithmetic is done in
    float64 so that folding adds no error beyond the final rounding to fp32.
    """
    weight = unit.conv3d.weight.detach().double()
    bias = unit.conv3d.bias.detach().double() if unit.conv3d.bias is not None else None
    bn = unit.bn
    if bn is None:
        return weight.float(), None if bias is None else bias.float()
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:  # DeepMind's BatchNorm has no scale (it is 1 in converted weights)
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return (weight * scale.view(-1, 1, 1, 1, 1)).float(), shift.float()


class FoldedUnit(nn.Module):
    """Conv3d with BatchNorm folded in (TF "SAME" padding), then ReLU (fused into oneDNN's
    convolution on CPU where that op exists, else in place)."""

    def __init__(self, unit: Unit3D, dtype: torch.dtype, device: torch.device):
        super().__init__()
        weight, bias = fold_batch_norm(unit)
        self.kernel_size = unit.kernel_size
        self.stride = unit.stride
        self.activation = unit.activation
        self.register_buffer("weight", _to_compute(weight, dtype, device))
        self.register_buffer("bias", None if bias is None else bias.to(device, dtype))
        self.fused_relu = self.activation and _fused_relu_works(device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        symmetric, leftover = _split_padding(same_padding(x.shape[2:], self.kernel_size, self.stride))
        if leftover is not None:
            x = F.pad(x, leftover)
        return self._conv(x, symmetric)

    def _conv(self, x: Tensor, padding, stride=None) -> Tensor:
        stride = self.stride if stride is None else stride
        if self.fused_relu:
            # oneDNN applies the ReLU as the convolution writes its output: no extra pass.
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, list(padding), list(stride), [1, 1, 1], 1, "relu", [], "")
        x = F.conv3d(x, self.weight, self.bias, stride, padding)
        return F.relu(x, inplace=True) if self.activation else x


class FirstUnit(FoldedUnit):
    """The 7x7x7 stride-2 convolution over RGB: the clip is cast to the compute precision and
    padded (TF "SAME", zeros) in a single copy, then convolved without further padding.

    With ``space_to_depth`` the same convolution runs as a stride-1 4x4x4 convolution over 24
    channels: each 2x2x2 block of the padded clip becomes 8 channels per colour, and the kernel,
    padded to 8x8x8 with zeros, is split the same way. The sums are the same products (plus exact
    zeros) in another order; the wide input suits oneDNN's kernels far better than 3 channels do::

        clip [B,3,T,H,W] --pad (SAME, then to even)--> [B,3,2t,2h,2w]
            --2x2x2 blocks to channels--> [B,24,t,h,w] --conv 4x4x4, stride 1--> [B,64,T/2,H/2,W/2]
    """

    def __init__(self, unit: Unit3D, dtype: torch.dtype, device: torch.device, space_to_depth: bool = False):
        super().__init__(unit, dtype, device)
        self.space_to_depth = space_to_depth
        if space_to_depth:
            out_channels, in_channels = self.weight.shape[:2]
            kernel = F.pad(self.weight.float(), (0, 1, 0, 1, 0, 1))  # 8x8x8, the last taps zero
            kernel = kernel.view(out_channels, in_channels, 4, 2, 4, 2, 4, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
            self.weight = _to_compute(kernel.reshape(out_channels, in_channels * 8, 4, 4, 4), dtype, device)

    def forward(self, clips: Tensor) -> Tensor:
        pads = same_padding(clips.shape[2:], self.kernel_size, self.stride)
        batch, channels, *size = clips.shape
        padded_size = [n + b + a for n, (b, a) in zip(size, pads)]
        if self.space_to_depth:
            # Output n needs 2 (n + 3) padded frames/pixels for the 4-tap blocks (zeros at the end).
            padded_size = [2 * ((n - 7) // 2 + 1 + 3) for n in padded_size]
        padded = torch.zeros((batch, channels, *padded_size), dtype=self.weight.dtype, device=clips.device)
        if not self.space_to_depth:
            padded = padded.contiguous(memory_format=torch.channels_last_3d)
        (t0, _), (h0, _), (w0, _) = pads
        padded[:, :, t0 : t0 + size[0], h0 : h0 + size[1], w0 : w0 + size[2]] = clips
        if not self.space_to_depth:
            return self._conv(padded, (0, 0, 0))
        t, h, w = (n // 2 for n in padded_size)
        blocks = padded.view(batch, channels, t, 2, h, 2, w, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
        blocks = blocks.reshape(batch, channels * 8, t, h, w).contiguous(memory_format=torch.channels_last_3d)
        return self._conv(blocks, (0, 0, 0), (1, 1, 1))


def shifted_max_pool3d(x: Tensor, kernel_size, stride, *, in_place: bool = True) -> Tensor:
    """Max pool with TF "SAME" geometry as separable maxima of shifted views, one axis at a time.

    The max over a box is the max over its rows of the max over its columns, so a 3x3x3 window
    costs 2 elementwise maxima per axis (6 in all) instead of 27 comparisons, and no indices are
    made. Padding is with zeros, which equals TF's -inf padding because every I3D pool follows a
    ReLU (inputs >= 0). ``in_place=False`` makes only new tensors (what ``torch.compile`` can
    trace and fuse into one loop); eager, writing into views saves the padded copies.
    """
    out = x
    for dim, k, s in zip((2, 3, 4), kernel_size, stride):
        if k == 1 and s == 1:
            continue
        if in_place and k == 3 and s == 1 and out.shape[dim] > 1:
            out = _max3_stride1(out, dim)
            continue
        length = out.shape[dim]
        positions = -(-length // s)
        (before, after), = same_padding((length,), (k,), (s,))
        if before or after:
            pad = [0, 0] * (4 - dim) + [before, after]
            out = F.pad(out, pad)
        span = (positions - 1) * s + 1
        result = None
        for offset in range(k):
            view = out.narrow(dim, offset, span)
            if s > 1:
                view = view[(slice(None),) * dim + (slice(None, None, s),)]
            if result is None:
                result = view.clone(memory_format=torch.channels_last_3d) if in_place else view
            else:
                result = torch.maximum(result, view, out=result) if in_place else torch.maximum(result, view)
        out = result
    return out


def _max3_stride1(x: Tensor, dim: int) -> Tensor:
    """``out[i] = max(x[i-1], x[i], x[i+1])`` along ``dim``, the ends ignoring what is outside,
    written in place into one new tensor (no padded copy): 2 maxima and one slice copy."""
    length = x.shape[dim]
    out = torch.empty_like(x)
    torch.maximum(x.narrow(dim, 1, length - 1), x.narrow(dim, 0, length - 1), out=out.narrow(dim, 1, length - 1))
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    head = out.narrow(dim, 0, length - 1)
    torch.maximum(head, x.narrow(dim, 1, length - 1), out=head)
    return out


class PreparedPool(nn.Module):
    """The I3D's max pools: shifted maxima for stride 1 (see :func:`shifted_max_pool3d`), the
    original :class:`~extract.i3d.MaxPool3dSame` for the strided ones."""

    def __init__(self, pool: MaxPool3dSame):
        super().__init__()
        self.kernel_size, self.stride = pool.kernel_size, pool.stride
        self.shifted = all(s == 1 for s in self.stride)
        self.in_place = True
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        if self.shifted:
            return shifted_max_pool3d(x, self.kernel_size, self.stride, in_place=self.in_place)
        return self.pool(x)


class PreparedInception(nn.Module):
    def __init__(self, module: InceptionModule, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.b0, self.b1a, self.b1b, self.b2a, self.b2b, self.b3b = (
            FoldedUnit(getattr(module, name), dtype, device) for name in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b"))
        self.b3a = PreparedPool(module.b3a)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class PreparedI3D(nn.Module):
    """The I3D prepared for inference in one precision on one device (see the module docstring).

    :meth:`features` takes the same ``[B, 3, T, H, W]`` clips in [-1, 1] as
    :meth:`InceptionI3d.features` (any float dtype and layout; autocast is not needed and is
    switched off inside) and returns fp32 ``[B, 1024]`` features.
    """

    def __init__(self, model: InceptionI3d, precision: str, device: torch.device, space_to_depth: bool = False):
        super().__init__()
        self.precision = precision
        self.dtype = COMPUTE_DTYPES[precision]
        self._stages = list(model.stage_names)
        for name in self._stages:
            source = getattr(model, name)
            if name == "Conv3d_1a_7x7":
                stage = FirstUnit(source, self.dtype, device, space_to_depth)
            elif isinstance(source, Unit3D):
                stage = FoldedUnit(source, self.dtype, device)
            elif isinstance(source, MaxPool3dSame):
                stage = PreparedPool(source)
            else:
                stage = PreparedInception(source, self.dtype, device)
            self.add_module(name, stage)
        # The head is tiny and runs in fp32 (CPU avg_pool3d has no bf16 kernel).
        self.logits = FoldedUnit(model.logits, torch.float32, device)
        self.eval()

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def make_traceable(self) -> PreparedI3D:
        """Plain ops only, for ``torch.compile`` or CUDA graphs without graph breaks: convolution
        then ReLU and functional pools (dynamo refuses the eager pools' ``out=`` views)."""
        for module in self.modules():
            if isinstance(module, FoldedUnit):
                module.fused_relu = False
            elif isinstance(module, PreparedPool):
                module.in_place = False
        return self

    def feature_map(self, clips: Tensor, end_point: str = "Mixed_5c") -> Tensor:
        """Activations after ``end_point``, in the compute precision and channels_last_3d."""
        check_feature_request(clips, end_point, self._stages)
        x = clips
        # The weights fix the precision; a caller's autocast would only cast them back and forth
        # (and oneDNN's fused op refuses mixed dtypes), so it is switched off in here.
        with torch.autocast(device_type=clips.device.type, enabled=False):
            for name in self._stages:
                x = getattr(self, name)(x)
                if name == end_point:
                    break
        return x

    def features(self, clips: Tensor) -> Tensor:
        """fp32 ``[B, 1024]``: Mixed_5c averaged over time and space, accumulated in fp32."""
        return self.feature_map(clips).mean(dim=(2, 3, 4), dtype=torch.float32)

    def forward(self, clips: Tensor) -> Tensor:
        """fp32 ``[B, num_classes]`` logits (DeepMind's head, as :meth:`InceptionI3d.forward`)."""
        feature_map = self.feature_map(clips)
        window = tuple(min(limit, size) for limit, size in zip((2, 7, 7), feature_map.shape[2:]))
        with torch.autocast(device_type=clips.device.type, enabled=False):
            pooled = F.avg_pool3d(feature_map.float(), window, stride=1)
            return self.logits(pooled).mean(dim=(2, 3, 4))


_FUSED_RELU_WORKS: dict[tuple[str, torch.dtype], bool] = {}


def _fused_relu_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolution + ReLU (the op torch.compile uses on CPU) exists here and
    agrees with F.conv3d + ReLU on a tiny case; anything else uses the unfused pair."""
    key = (device.type, dtype)
    if key not in _FUSED_RELU_WORKS:
        works = False
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                x = torch.randn(1, 4, 3, 5, 5).to(dtype).contiguous(memory_format=torch.channels_last_3d)
                weight = torch.randn(8, 4, 3, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last_3d)
                bias = torch.randn(8).to(dtype)
                with torch.no_grad():
                    fused = torch.ops.mkldnn._convolution_pointwise(
                        x, weight, bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, "relu", [], "")
                    plain = F.relu(F.conv3d(x, weight, bias, 1, 1))
                works = fused.shape == plain.shape and torch.allclose(fused.float(), plain.float(), atol=0.05)
            except (AttributeError, RuntimeError):
                works = False
        _FUSED_RELU_WORKS[key] = works
    return _FUSED_RELU_WORKS[key]


def _to_compute(weight: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    return weight.to(device, dtype).contiguous(memory_format=torch.channels_last_3d)


def prepare_for_inference(model: InceptionI3d, precision: str, device: torch.device | str = "cpu",
                          space_to_depth: bool = False) -> PreparedI3D:
    """A :class:`PreparedI3D` of ``model`` (left unchanged) for ``precision`` on ``device``.

    No ``torch.compile`` here: on the 2-core CPU it made the prepared model at most 2 % faster
    (within the noise) after 100-115 s of compiling, and with ``freezing`` 2.5-3x slower
    (``bench/bench_limits.py --compile`` measures it again; see BENCHMARKS.md).
    """
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(COMPUTE_DTYPES)}, not {precision!r}")
    with torch.no_grad():
        return PreparedI3D(model, precision, torch.device(device), space_to_depth)

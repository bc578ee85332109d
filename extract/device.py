"""Which device and which arithmetic stage 1 runs in: shared by ``extract``, ``classify`` and the
benchmarks.

The checks on the text of ``--device`` and ``--precision`` need no torch, so a wrong flag is
reported before torch is imported; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import re

from aqa.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def check_device_name(name: str) -> str:
    """``name`` if it is auto, cpu, cuda or cuda:N; else a one-line :class:`UserError`.

    Checked as text, before torch parses it: torch accepts (and fails later on) many spellings.
    """
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N (N a GPU number)")
    return name


def check_precision_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    return precision


def resolve_device(name: str):
    """The ``torch.device`` for ``--device``: ``auto`` is CUDA when there is one; a CUDA device
    this machine lacks is a one-line error, not a crash in the first forward."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(check_device_name(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"numbered from 0")
    return device


def check_precision(device, precision: str) -> None:
    """A :class:`UserError` when ``precision`` cannot run on ``device`` (fp16 autocast is CUDA-only)."""
    check_precision_name(precision)
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (bf16 works on CPU too)")


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 convolution kernels for this CPU (torch's own check)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_warning(device, precision: str) -> str | None:
    """A one-line warning when ``precision`` runs but is far slower than fp32 on ``device``, else None.

    bf16 on a CPU without oneDNN's bf16 kernels (they need AVX-512 BF16 or AMX): torch falls back
    to its reference convolution, measured about 500x slower than fp32 for a mid-network I3D
    convolution on an AVX2 CPU (BENCHMARKS.md). Not an error: the features are right, and a bf16
    cache can only be extended in bf16."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16_kernels():
        return ("--precision bf16: this CPU has no bf16 convolution kernels (oneDNN needs AVX-512 BF16 or AMX); "
                "convolutions fall back to a reference path hundreds of times slower than fp32. "
                "Use --precision fp32 unless the cache is already bf16")
    return None


def autocast_context(device, precision: str):
    """A context for the forward pass in ``precision``: bf16/fp16 autocast, or true fp32.

    True fp32 on CUDA means TF32 off for the convolutions and matrix products inside the context;
    the caller's TF32 settings are restored when it exits, so building or entering this context
    never changes what code outside it computes. Checks the precision against the device at once
    (not on entering), so a caller can validate early.
    """
    check_precision(device, precision)
    return _precision_scope(device, precision)


@contextlib.contextmanager
def _precision_scope(device, precision: str):
    import torch

    if precision == "fp32":
        with torch.autocast(device_type=device.type, enabled=False), _tf32_disabled(device):
            yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def _tf32_disabled(device):
    """TF32 off on CUDA inside, the previous flags restored after (they are process-global)."""
    if device.type != "cuda":
        yield
        return
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

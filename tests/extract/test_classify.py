"""The real Kinetics-400 I3D on the three real diving clips: "springboard diving" (class 329) over
their first 64 frames, through the API (one shared model) and the command line; and bf16 autocast
features that agree with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqa.annotations import load_manifest
from aqa.cache import open_cache
from extract import (
    ExtractConfig,
    I3DBackbone,
    class_probabilities,
    extract_dataset,
    frame_source_for,
    load_labels,
    top_classes,
)

pytestmark = pytest.mark.slow

SPRINGBOARD_DIVING = 329
CLIPS = ["dive_testdive5.mp4", "dive_uploaded.mp4", "unlv_dive_054.avi"]


@pytest.fixture(scope="module")
def labels(shared_dir):
    return load_labels(shared_dir / "reference" / "kinetics400_labels.txt", 400)


@pytest.mark.parametrize("clip", ["dive_testdive5.mp4", "dive_uploaded.mp4"])
def test_real_clips_are_springboard_diving(clip, shared_dir, i3d_model, labels):
    model, _ = i3d_model
    probabilities, used = class_probabilities(model, frame_source_for(shared_dir / "data" / "videos" / clip), frames=64)
    assert probabilities.shape == (400,) and used == 64
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    best = top_classes(probabilities, labels, k=5)
    assert best[0].index == SPRINGBOARD_DIVING and best[0].label == "springboard diving"
    assert [score.rank for score in best] == [1, 2, 3, 4, 5]
    assert all(a.probability >= b.probability for a, b in zip(best, best[1:]))


def test_classify_command_prints_the_top_five(shared_dir, i3d_weights_path, cli):
    video = shared_dir / "data" / "videos" / "unlv_dive_054.avi"
    result = cli("classify", video, "--labels", shared_dir / "reference" / "kinetics400_labels.txt",
                 "--frames", "64", "--weights", i3d_weights_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{video}: first 64 frames")
    rows = [line.split() for line in result.stdout.strip().splitlines()[2:]]
    assert len(rows) == 5
    assert rows[0][0] == "1" and rows[0][2] == str(SPRINGBOARD_DIVING) and " ".join(rows[0][3:]) == "springboard diving"


def test_classify_errors_are_one_line(tmp_path, shared_dir, i3d_weights_path, cli):
    video = shared_dir / "data" / "videos" / "unlv_dive_054.avi"
    short_labels = tmp_path / "labels.txt"
    short_labels.write_text("a\nb\n")
    for args, fragment in [
        ((video, "--labels", short_labels), "has 2 labels but the model has 400 classes"),
        ((tmp_path / "missing.mp4",), "video not found"),
    ]:
        result = cli("classify", *args, "--weights", i3d_weights_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr


def test_bf16_autocast_features_agree_with_fp32(tmp_path, tiny_dataset, i3d_model, bf16_kernels):
    if not bf16_kernels:
        pytest.skip("no oneDNN bf16 kernels on this CPU: a bf16 I3D forward would take minutes")
    model, info = i3d_model
    dataset = load_manifest(tiny_dataset)
    caches = {}
    for precision in ("fp32", "bf16"):
        config = ExtractConfig(out=str(tmp_path / f"{precision}.h5"), views="none", resize=64, crop=56,
                               precision=precision, batch_clips=8, workers=0, device="cpu", limit=2, progress=False)
        extract_dataset(dataset, config, backbone=I3DBackbone(model, info), log=lambda _: None)
        caches[precision] = open_cache(config.out)
    assert caches["bf16"].config["precision"] == "bf16"
    full, half = caches["fp32"].load_all(), caches["bf16"].load_all()
    for key in full:
        a, b = torch.from_numpy(full[key][0]), torch.from_numpy(half[key][0])
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
        assert cosine.min().item() > 0.995, cosine
        assert not np.array_equal(full[key], half[key])  # bf16 really ran

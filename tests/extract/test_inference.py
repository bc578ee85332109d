"""The I3D prepared for inference: BatchNorm folding, shifted-maxima pools and weights stored in
the compute precision give the features of today's fp32 path (model.eval(), channels_last_3d)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extract.i3d import InceptionI3d, MaxPool3dSame, Unit3D
from extract.inference import FoldedUnit, PreparedI3D, fold_batch_norm, prepare_for_inference, shifted_max_pool3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUT = torch.channels_last_3d


def random_statistics(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics (and scales) so that folding has something to fold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm3d):
                count = bn.num_features
                bn.running_mean.copy_(torch.rand(count, generator=generator) * 0.2 - 0.1)
                bn.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
                bn.bias.copy_(torch.rand(count, generator=generator) * 0.2 - 0.1)
                bn.weight.copy_(torch.rand(count, generator=generator) + 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def model() -> InceptionI3d:
    torch.manual_seed(0)
    return random_statistics(InceptionI3d())


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    torch.manual_seed(1)
    coarse = torch.rand(2, 3, 4, 8, 8)
    smooth = F.interpolate(coarse, size=(16, 64, 64), mode="trilinear")
    return ((smooth * 0.8 + torch.rand(2, 3, 16, 64, 64) * 0.2) * 2 - 1).contiguous(memory_format=LAYOUT)


@pytest.fixture(scope="module")
def today_fp32(model, clips) -> torch.Tensor:
    with torch.inference_mode():
        return model.to(memory_format=LAYOUT).features(clips)


@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (3, 2), (7, 2), ((1, 3, 3), (1, 2, 2))])
def test_folding_batch_norm_into_a_unit_gives_the_same_output(kernel, stride):
    torch.manual_seed(2)
    unit = random_statistics(Unit3D(5, 7, kernel, stride), seed=3)
    x = torch.randn(2, 5, 6, 11, 12).contiguous(memory_format=LAYOUT)
    with torch.no_grad():
        folded = FoldedUnit(unit, torch.float32, torch.device("cpu"))(x)
        assert torch.allclose(folded, unit(x), atol=1e-5, rtol=1e-4)


def test_folding_matches_batch_norm_formula_per_channel():
    unit = random_statistics(Unit3D(3, 4, 1), seed=4)
    weight, bias = fold_batch_norm(unit)
    bn = unit.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(weight, unit.conv3d.weight * scale.view(-1, 1, 1, 1, 1))
    assert torch.allclose(bias, bn.bias - bn.running_mean * scale)


def test_a_unit_without_batch_norm_keeps_its_own_bias():
    unit = Unit3D(6, 5, 1, batch_norm=False, activation=False, bias=True)
    weight, bias = fold_batch_norm(unit)
    assert torch.equal(weight, unit.conv3d.weight) and torch.equal(bias, unit.conv3d.bias)


@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 8, 5, 13, 14), 3, 1), ((2, 8, 1, 1, 3), 3, 1), ((2, 8, 5, 13, 14), (1, 3, 3), (1, 2, 2)),
    ((2, 8, 5, 13, 14), 3, 2), ((2, 8, 4, 7, 7), 2, 2),
])
def test_shifted_maxima_pool_equals_max_pool_after_relu(shape, kernel, stride):
    x = torch.randn(*shape).relu().contiguous(memory_format=LAYOUT)
    pool = MaxPool3dSame(kernel, stride)
    assert torch.equal(shifted_max_pool3d(x, pool.kernel_size, pool.stride), pool(x))


def test_prepared_fp32_features_agree_with_todays_fp32_path(model, clips, today_fp32):
    prepared = prepare_for_inference(model, "fp32")
    with torch.inference_mode():
        features = prepared.features(clips)
    assert features.dtype == torch.float32 and features.shape == (2, 1024)
    assert F.cosine_similarity(features, today_fp32, dim=1).min() >= 0.99999


@pytest.mark.parametrize("precision, cosine", [("fp32", 0.99999), ("bf16", 0.999)])
def test_the_space_to_depth_first_convolution_gives_the_same_features(model, clips, today_fp32, precision, cosine,
                                                                        bf16_kernels):
    if precision == "bf16" and not bf16_kernels:
        pytest.skip("no oneDNN bf16 kernels on this CPU: a bf16 I3D forward would take minutes")
    prepared = prepare_for_inference(model, precision, space_to_depth=True)
    assert prepared.Conv3d_1a_7x7.weight.shape == (64, 24, 4, 4, 4)
    with torch.inference_mode():
        first = prepared.feature_map(clips, "Conv3d_1a_7x7")
        direct = prepare_for_inference(model, precision).feature_map(clips, "Conv3d_1a_7x7")
        features = prepared.features(clips)
    assert first.shape == direct.shape
    assert F.cosine_similarity(features, today_fp32, dim=1).min() >= cosine


def test_prepared_bf16_features_agree_with_todays_fp32_path_and_come_back_in_fp32(model, clips, today_fp32,
                                                                                  bf16_kernels):
    if not bf16_kernels:
        pytest.skip("no oneDNN bf16 kernels on this CPU: a bf16 I3D forward would take minutes")
    prepared = prepare_for_inference(model, "bf16")
    assert all(buffer.dtype == torch.bfloat16 for name, buffer in prepared.named_buffers()
               if not name.startswith("logits."))
    with torch.inference_mode():
        features = prepared.features(clips)  # fp32 clips in, no autocast
    assert features.dtype == torch.float32
    assert F.cosine_similarity(features, today_fp32, dim=1).min() >= 0.999


def test_prepared_logits_and_intermediate_end_points_agree(model, clips):
    prepared = prepare_for_inference(model, "fp32")
    with torch.inference_mode():
        assert F.cosine_similarity(prepared(clips), model(clips), dim=1).min() >= 0.99999
        mine = prepared.feature_map(clips, "Mixed_4b")
        theirs = model.feature_map(clips, "Mixed_4b")
    assert mine.shape == theirs.shape
    assert F.cosine_similarity(mine.flatten(1), theirs.flatten(1), dim=1).min() >= 0.99999
    with pytest.raises(ValueError, match="unknown end point"):
        prepared.feature_map(clips, "Mixed_9z")


def test_preparing_leaves_the_model_and_its_state_dict_unchanged(model):
    before = {key: value.clone() for key, value in model.state_dict().items()}
    prepared = prepare_for_inference(model, "bf16")
    assert isinstance(prepared, PreparedI3D) and prepared.stage_names == model.stage_names
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[key], after[key]) for key in before)
    assert not any(isinstance(module, torch.nn.BatchNorm3d) for module in prepared.modules())


def test_an_unknown_precision_is_refused(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        prepare_for_inference(model, "int8")


def test_a_prepared_model_gives_the_same_features_under_the_runners_autocast(model, clips, bf16_kernels):
    """The runner may keep its bf16 autocast context: the weights are bf16 already, so nothing
    is cast and the numbers are the same."""
    if not bf16_kernels:
        pytest.skip("no oneDNN bf16 kernels on this CPU: a bf16 I3D forward would take minutes")
    prepared = prepare_for_inference(model, "bf16")
    with torch.inference_mode():
        plain = prepared.features(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = prepared.features(clips)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(plain, under_autocast)


def test_the_traceable_variant_for_torch_compile_gives_the_same_features(model, clips):
    """make_traceable (plain conv + ReLU, functional pools) is what torch.compile traces; run
    eagerly it must compute what the default prepared model computes."""
    with torch.inference_mode():
        default = prepare_for_inference(model, "fp32").features(clips)
        traceable = prepare_for_inference(model, "fp32").make_traceable().features(clips)
    assert torch.allclose(traceable, default, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape, kernel, stride", [((2, 8, 5, 13, 14), 3, 1), ((2, 8, 5, 13, 14), 3, 2)])
def test_functional_shifted_maxima_pool_equals_the_in_place_one(shape, kernel, stride):
    x = torch.randn(*shape).relu().contiguous(memory_format=LAYOUT)
    pool = MaxPool3dSame(kernel, stride)
    assert torch.equal(shifted_max_pool3d(x, pool.kernel_size, pool.stride, in_place=False), pool(x))


def test_the_i3d_backbone_runs_the_prepared_model_in_the_runs_precision(model, clips, today_fp32, bf16_kernels):
    from types import SimpleNamespace

    from extract.backbone import I3DBackbone

    weights = SimpleNamespace(sha256="0" * 64, layout="test", num_classes=400, bn_eps=1e-3, path=None)
    backbone = I3DBackbone(model, weights)
    precisions = (("bf16", 0.999),) if bf16_kernels else ()  # bf16 needs its kernels (conftest)
    for precision, agreement in (*precisions, ("fp32", 0.99999)):  # prepared anew each time
        backbone.to(torch.device("cpu"), precision)
        assert isinstance(backbone.module, PreparedI3D) and backbone.module.precision == precision
        with torch.inference_mode():
            features = backbone.features(clips)
        assert F.cosine_similarity(features, today_fp32, dim=1).min() >= agreement

"""The I3D module: the PyTorch port's exact state_dict layout, TF "SAME" geometry at any input size,
and a forward pass that survives channels_last_3d, inference mode and bf16 autocast."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from extract.i3d import InceptionI3d, MaxPool3dSame, Unit3D, same_padding

NUM_PARAMS = 12_697_264


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> InceptionI3d:
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    # Non-trivial BatchNorm statistics so that every layer matters in the comparisons below.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return net


def test_state_dict_has_the_reference_keys_order_and_shapes(shared_dir, model):
    reference = json.loads((shared_dir / "reference" / "i3d_piergiaj_state_dict_shapes.json").read_text())
    state = model.state_dict()
    assert list(state) == list(reference["state_dict"])
    assert {key: list(value.shape) for key, value in state.items()} == reference["state_dict"]
    assert len(state) == reference["num_keys"] == 344
    assert sum(parameter.numel() for parameter in model.parameters()) == reference["num_params_total"] == NUM_PARAMS
    assert sum(1 for key, _ in model.named_buffers()) == reference["num_buffers_keys"]
    assert model.logits.conv3d.weight.numel() + model.logits.conv3d.bias.numel() == reference["num_params_logits"]


def test_classifier_size_and_bn_eps_follow_the_arguments():
    net = InceptionI3d(num_classes=101, bn_eps=1e-5)
    assert net.logits.conv3d.weight.shape == (101, 1024, 1, 1, 1)
    eps = {module.eps for module in net.modules() if isinstance(module, torch.nn.BatchNorm3d)}
    assert eps == {1e-5}
    assert {module.eps for module in InceptionI3d().modules() if isinstance(module, torch.nn.BatchNorm3d)} == {1e-3}


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 7, 2, (2, 3)),  # out 112: total 5, the odd pixel at the end (TF)
        (16, 7, 2, (2, 3)),
        (15, 7, 2, (3, 3)),  # out 8: total 6
        (112, 3, 2, (0, 1)),
        (56, 3, 1, (1, 1)),
        (8, 2, 2, (0, 0)),
        (7, 2, 2, (0, 1)),
        (1, 3, 2, (1, 1)),
    ],
)
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    assert same_padding((size,), (kernel,), (stride,)) == [expected]
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


@pytest.mark.parametrize("shape", [(2, 3, 9, 13, 10), (1, 3, 16, 32, 48), (1, 3, 7, 11, 12)])
def test_conv_and_pool_equal_explicit_tf_padding(shape):
    """The fast path (kernel's own symmetric padding + one extra pixel) equals padding first."""
    torch.manual_seed(1)
    inputs = torch.randn(*shape)
    unit = Unit3D(3, 5, 7, 2, batch_norm=False, activation=False, bias=True)
    pads = same_padding(inputs.shape[2:], (7, 7, 7), (2, 2, 2))
    explicit = F.pad(inputs, [p for pair in reversed(pads) for p in pair])
    expected = F.conv3d(explicit, unit.conv3d.weight, unit.conv3d.bias, stride=2)
    torch.testing.assert_close(unit(inputs), expected)

    positive = inputs.relu()
    # The I3D's pools (ceil_mode path), then shapes that need the explicit-padding fallback.
    for kernel, stride in (((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1)),
                           ((2, 2, 2), (3, 3, 3)), ((2, 2, 2), (1, 1, 1))):
        pads = same_padding(positive.shape[2:], kernel, stride)
        padded = F.pad(positive, [p for pair in reversed(pads) for p in pair], value=-math.inf)
        expected = F.max_pool3d(padded, kernel, stride)
        torch.testing.assert_close(MaxPool3dSame(kernel, stride)(positive), expected)


def _expected_map_size(t, h, w):
    """Mixed_5c size: stride 2 conv, then pools of stride (1,2,2), (1,2,2), 2, 2, all ceil."""
    for stride in ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)):
        t, h, w = (math.ceil(n / s) for n, s in zip((t, h, w), stride))
    return t, h, w


def test_at_16x224_every_end_point_has_the_ports_shape_and_logits_classify_mixed_5c(shared_dir, model):
    """One 16x224x224 pass: each end point's shape equals the reference port's, and since Mixed_5c
    is 2x7x7 there, DeepMind's 2x7x7 pool covers all of it, so logits = W mean(Mixed_5c) + b."""
    reference = json.loads((shared_dir / "reference" / "i3d_piergiaj_state_dict_shapes.json").read_text())
    expected_shapes = reference["output_shapes"]["endpoint_shapes_16x224x224"]
    assert list(model.stage_names) == list(expected_shapes)
    outputs = {}
    hooks = [getattr(model, name).register_forward_hook(lambda module, args, out, name=name: outputs.__setitem__(name, out))
             for name in model.stage_names]
    torch.manual_seed(3)
    clips = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    try:
        with torch.inference_mode():
            model.logits.conv3d.bias.uniform_(-1, 1)
            logits = model(clips)
            mixed_5c = outputs["Mixed_5c"]
            expected_logits = mixed_5c.mean(dim=(2, 3, 4)) @ model.logits.conv3d.weight.flatten(1).T
            expected_logits += model.logits.conv3d.bias
    finally:
        for hook in hooks:
            hook.remove()
    assert {name: list(out.shape) for name, out in outputs.items()} == expected_shapes
    assert logits.shape == (1, 400)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(2, 16, 112, 112), (1, 9, 100, 130)])
def test_features_are_the_mean_of_mixed_5c_at_small_sizes(model, size):
    batch, frames, height, width = size
    torch.manual_seed(2)
    clips = torch.rand(batch, 3, frames, height, width) * 2 - 1
    with torch.inference_mode():
        feature_map = model.feature_map(clips)
        features = model.features(clips)
        logits = model.logits_from_feature_map(feature_map)
    assert feature_map.shape == (batch, 1024, *_expected_map_size(frames, height, width))
    assert features.shape == (batch, 1024)
    torch.testing.assert_close(features, feature_map.mean(dim=(2, 3, 4)))
    assert logits.shape == (batch, 400)
    assert torch.isfinite(logits).all() and features.abs().sum() > 0


def test_forward_works_at_a_small_size(model):
    clips = torch.rand(2, 3, 8, 64, 64) * 2 - 1
    with torch.inference_mode():
        logits = model(clips)
        expected = model.logits_from_feature_map(model.feature_map(clips))
    assert logits.shape == (2, 400)
    torch.testing.assert_close(logits, expected)


def test_logits_average_time_steps_like_deepmind(model):
    """At 32 frames Mixed_5c has 4 time steps; the 2x7x7 stride-1 pool gives 3 windows whose logits
    are averaged: the middle steps count twice, the edges once."""
    torch.manual_seed(4)
    feature_map = torch.randn(1, 1024, 4, 7, 7)
    with torch.inference_mode():
        logits = model.logits_from_feature_map(feature_map)
        step = feature_map.mean(dim=(3, 4))[0]  # [1024, 4]
        pooled = step @ (torch.tensor([1.0, 2.0, 2.0, 1.0]) / 6)
        expected = model.logits.conv3d.weight.flatten(1) @ pooled + model.logits.conv3d.bias
    torch.testing.assert_close(logits[0], expected, rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic_and_train_mode_uses_dropout(model):
    clips = torch.rand(2, 3, 8, 64, 64) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(model(clips), model(clips))
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5


def test_channels_last_3d_inference_mode_and_bf16_autocast(model, bf16_kernels):
    torch.manual_seed(5)
    clips = torch.rand(2, 3, 8, 64, 64) * 2 - 1
    with torch.inference_mode():
        reference = model.features(clips)
    channels_last = InceptionI3d().eval()
    channels_last.load_state_dict(model.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        features = channels_last.features(clips.contiguous(memory_format=torch.channels_last_3d))
        logits = channels_last(clips.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)
    assert logits.shape == (2, 400)
    if not bf16_kernels:  # the bf16 part needs oneDNN's bf16 kernels (conftest)
        return
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = model.features(clips)
    assert low_precision.dtype == torch.bfloat16
    cosine = F.cosine_similarity(low_precision.float(), reference, dim=1)
    assert (cosine > 0.99).all()


def test_rejects_clips_that_are_not_b3thw(model):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model.features(torch.zeros(1, 16, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown end point"):
        model.feature_map(torch.zeros(1, 3, 8, 64, 64), end_point="Mixed_9z")


def test_gradients_flow_for_fine_tuning():
    """The in-place ReLU and padding keep autograd intact, with BatchNorm frozen (eval) or training."""
    torch.manual_seed(6)
    net = InceptionI3d(num_classes=3)
    clips = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    for train in (False, True):
        net.zero_grad()
        net.train(train)
        net(clips).pow(2).sum().backward()
        assert net.Conv3d_1a_7x7.conv3d.weight.grad.abs().sum() > 0
        assert net.Mixed_5c.b3b.bn.bias.grad.abs().sum() > 0
        assert net.logits.conv3d.bias.grad.abs().sum() > 0
        # Batch statistics update only in train mode.
        assert (net.Conv3d_1a_7x7.bn.running_mean.abs().sum() > 0) == train

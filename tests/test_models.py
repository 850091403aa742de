"""Tests for ddbench.models: registry, shapes, embed/classifier consistency, vmap training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ddbench.errors import DDBenchError
from ddbench.models import MODELS, create_model, model_names, register_model

NUM_CLASSES = 10
SMALL_SHAPES = [(1, 28, 28), (3, 32, 32)]
LARGE_ONLY = {"resnet18_tv", "convnet_d4"}


def _cases() -> list[tuple[str, tuple[int, int, int]]]:
    cases = [(name, shape) for name in model_names() for shape in SMALL_SHAPES]
    cases += [(name, (3, 64, 64)) for name in sorted(LARGE_ONLY)]
    return cases


@pytest.mark.parametrize(
    ("name", "shape"), _cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_forward_and_embed_shapes(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    c, h, w = shape
    model = create_model(name, c, NUM_CLASSES, (h, w)).eval()
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        logits = model(x)
        feats = model.embed(x)
        assert logits.shape == (2, NUM_CLASSES)
        assert feats.ndim == 2 and feats.shape[0] == 2
        assert isinstance(model.classifier, nn.Linear)
        assert feats.shape[1] == model.classifier.in_features
        torch.testing.assert_close(model.classifier(feats), logits, atol=1e-5, rtol=1e-5)


def test_registry_contents() -> None:
    expected = {
        "convnet",
        "convnet_d1",
        "convnet_d2",
        "convnet_d4",
        "convnet_bn",
        "mlp",
        "lenet",
        "alexnet",
        "vgg11",
        "vgg11_bn",
        "resnet18",
        "resnet18_bn",
        "resnet18_tv",
    }
    assert expected <= set(MODELS)
    assert model_names() == sorted(MODELS)


def test_convnet3_parameter_count_and_embed_dim() -> None:
    width, classes = 128, NUM_CLASSES
    conv1 = 1 * width * 3 * 3 + width  # 1 input channel, 3x3 kernel, bias
    conv_k = width * width * 3 * 3 + width  # conv 2 and 3
    norm = 2 * width  # GroupNorm(width, width) affine weight + bias, per layer
    # 28x28 -> conv (padding 3) 32x32 -> pools 16, 8, 4: 128 * 4 * 4 features
    feat = width * 4 * 4
    linear = feat * classes + classes
    expected = conv1 + 2 * conv_k + 3 * norm + linear

    model = create_model("convnet", 1, classes, (28, 28))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert not list(model.buffers())  # instance norm: no running stats
    assert model.features[0].padding == (3, 3)
    assert isinstance(model.features[1], nn.GroupNorm)
    assert model.features[1].num_groups == width

    for c, size in [(1, 28), (3, 32)]:
        m = create_model("convnet", c, classes, (size, size))
        assert m.embed(torch.zeros(1, c, size, size)).shape == (1, 2048)
        assert m.classifier.in_features == 2048


def test_convnet_options() -> None:
    x = torch.randn(2, 3, 32, 32)
    for norm in ["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"]:
        for act in ["relu", "sigmoid", "leakyrelu", "gelu"]:
            m = create_model("convnet", 3, 5, (32, 32), net_norm=norm, net_act=act, net_width=16)
            assert m(x).shape == (2, 5)
    for pooling, feat in [
        ("avgpooling", 16 * 4 * 4),
        ("maxpooling", 16 * 4 * 4),
        ("none", 16 * 32 * 32),
    ]:
        m = create_model("convnet", 3, 5, (32, 32), net_pooling=pooling, net_width=16)
        assert m.embed(x).shape == (2, feat)
    assert isinstance(create_model("convnet_bn", 3, 5, (32, 32)).features[1], nn.BatchNorm2d)
    assert create_model("convnet_d4", 3, 5, (64, 64)).embed(torch.zeros(1, 3, 64, 64)).shape == (
        1,
        2048,
    )
    ln = create_model("convnet", 1, 5, (28, 28), net_norm="layernorm").features[1]
    assert isinstance(ln, nn.LayerNorm) and tuple(ln.normalized_shape) == (128, 32, 32)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DDBenchError) as info:
        create_model("convnet9000", 3, 10, (32, 32))
    msg = str(info.value)
    assert "convnet9000" in msg
    assert "convnet" in msg and "resnet18" in msg and "alexnet" in msg


def test_bad_options_and_sizes_raise() -> None:
    with pytest.raises(DDBenchError, match="net_norm"):
        create_model("convnet", 3, 10, (32, 32), net_norm="weirdnorm")
    with pytest.raises(DDBenchError, match="unknown option"):
        create_model("mlp", 3, 10, (32, 32), net_width=64)
    with pytest.raises(DDBenchError, match="unknown option"):
        create_model("convnet_d4", 3, 10, (64, 64), net_depth=3)
    with pytest.raises(DDBenchError, match="does not support input size"):
        create_model("vgg11", 3, 10, (16, 16))
    with pytest.raises(DDBenchError, match="does not support input size"):
        create_model("lenet", 3, 10, (8, 8))
    with pytest.raises(DDBenchError, match="does not support input size"):
        create_model("convnet", 3, 10, (4, 4), net_depth=3)
    with pytest.raises(DDBenchError, match="im_size"):
        create_model("convnet", 3, 10, (32,))


def test_deterministic_given_seed() -> None:
    torch.manual_seed(123)
    a = create_model("convnet", 3, 10, (32, 32))
    torch.manual_seed(123)
    b = create_model("convnet", 3, 10, (32, 32))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_register_model_decorator() -> None:
    @register_model("_test_tiny")
    def tiny(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs) -> nn.Module:
        return nn.Linear(channels * im_size[0] * im_size[1], num_classes)

    try:
        assert "_test_tiny" in model_names()
        assert isinstance(create_model("_test_tiny", 1, 2, (3, 3)), nn.Linear)
        with pytest.raises(ValueError):
            register_model("_test_tiny")(tiny)
    finally:
        del MODELS["_test_tiny"]


def test_vmap_over_stacked_convnets_matches_loop() -> None:
    torch.manual_seed(0)
    models = [create_model("convnet", 3, 10, (32, 32), net_width=32) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(base, (p, b), (x,))

    x = torch.randn(4, 3, 32, 32)
    batched = torch.func.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    assert batched.shape == (3, 4, 10)
    for i, m in enumerate(models):
        torch.testing.assert_close(batched[i], m(x), atol=1e-4, rtol=1e-4)

    # gradients flow through the batched call (training several models at once)
    loss = batched.square().mean()
    (grad,) = torch.autograd.grad(loss, [params["classifier.weight"]])
    assert grad.shape == params["classifier.weight"].shape

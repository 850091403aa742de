"""Tests for ddbench.models: registry, shapes, embed/classifier consistency, vmap training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddbench import models
from ddbench.engine import _compiler_available
from ddbench.errors import DDBenchError
from ddbench.models import (
    MODELS,
    AvgPool2x2,
    GrayConv2d,
    _pool_kernels,
    _PoolOrUpsample,
    create_model,
    model_names,
    register_model,
)

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


def test_bf16_cpu_pooling_fast_path_matches_stock_pooling_to_the_double_backward(
    digits_train, monkeypatch
) -> None:
    """AvgPool2x2's compiled bf16 path gives DC's whole gradient-matching chain (loss, weight
    gradients with their graph, then the gradient of their norm w.r.t. the images) bit for bit
    as nn.AvgPool2d, on real digits, and is actually taken for the large activations; its
    kernels can be built inside a checkpointed forward (MTT's ``checkpoint_unroll``)."""
    if not _compiler_available():
        pytest.skip("torch.compile needs a C compiler; the stock pooling is used")
    assert _pool_kernels() is not None, "the compiled pooling kernels failed their check"

    torch.manual_seed(0)
    fast = create_model("convnet", 1, NUM_CLASSES, (8, 8))  # 12x12 -> 6x6 -> 3x3 (odd: stock)
    stock = copy.deepcopy(fast)
    pools = [m for m in fast.features if isinstance(m, AvgPool2x2)]
    assert len(pools) == 3
    for i, m in enumerate(stock.features):
        if isinstance(m, AvgPool2x2):
            stock.features[i] = nn.AvgPool2d(2, 2)
    took_fast = []
    for m in pools:
        m.register_forward_hook(
            lambda mod, inp, out: took_fast.append(
                type(out.grad_fn).__name__.startswith(_PoolOrUpsample.__name__)
            )
        )

    images, labels = digits_train.images[:64].float() / 255, digits_train.labels[:64]

    def dc_chain(model: nn.Module) -> tuple[torch.Tensor, ...]:
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        norm = sum(g.float().pow(2).sum() for g in grads)
        (image_grad,) = torch.autograd.grad(norm, x)
        return (loss.detach(), *(g.detach() for g in grads), image_grad)

    ours, theirs = dc_chain(fast), dc_chain(stock)
    assert took_fast == [True, True, False]  # the two large, even maps; not the 3x3 one
    assert ours[-1].abs().sum() > 0
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)

    def checkpointed_image_grad(model: nn.Module) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = checkpoint(model, x, use_reentrant=False)
        return torch.autograd.grad(F.cross_entropy(logits, labels), x)[0]

    monkeypatch.setattr(models, "_POOL_KERNELS", [])  # built anew, inside the checkpoint
    took_fast.clear()
    assert torch.equal(checkpointed_image_grad(fast), checkpointed_image_grad(stock))
    assert took_fast[:2] == [True, True]


def test_bf16_cpu_gray_conv_gives_the_stock_gradients_to_the_double_backward(digits_train) -> None:
    """GrayConv2d (ConvNet's 1-channel stem) under bf16 autocast on CPU: same logits as
    nn.Conv2d, its weight gradient (one im2col GEMM) as close to the fp32 gradient as oneDNN's,
    and DC's double backward (gradient of the weight-gradient norm w.r.t. the images) through it
    agrees with the stock path; fp32, and images with 3 channels, take the stock path."""
    torch.manual_seed(0)
    fast = create_model("convnet", 1, NUM_CLASSES, (8, 8))
    stock = copy.deepcopy(fast)
    assert type(fast.features[0]) is GrayConv2d
    old = stock.features[0]
    stock.features[0] = nn.Conv2d(1, old.out_channels, 3, padding=old.padding)
    stock.features[0].load_state_dict(old.state_dict())
    images, labels = digits_train.images[:64].float() / 255, digits_train.labels[:64]

    def dc_chain(model: nn.Module, bf16: bool) -> tuple[torch.Tensor, ...]:
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            first = model.features[0](x)
            loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        norm = sum(g.float().pow(2).sum() for g in grads)
        stem_norm = grads[0].float().pow(2).sum()  # reaches x through the stem's own GEMM too
        image_grad, stem_image_grad = (
            torch.autograd.grad(n, x, retain_graph=True)[0] for n in (norm, stem_norm)
        )
        return (
            first.grad_fn,
            loss.detach(),
            grads[0].detach(),
            grads[1].detach(),
            image_grad,
            stem_image_grad,
        )

    fn_fast, *ours = dc_chain(fast, True)
    fn_stock, *theirs = dc_chain(stock, True)
    _, *exact = dc_chain(stock, False)
    assert "GrayConv" in type(fn_fast).__name__ and "GrayConv" not in type(fn_stock).__name__
    assert torch.equal(ours[0], theirs[0])  # same forward kernel: same loss

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    for i in (1, 2):  # stem weight and bias gradients: bf16-close to fp32, as the stock ones
        assert rel(ours[i], exact[i]) <= 1.5 * rel(theirs[i], exact[i]) + 1e-3

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    for i in (3, 4):  # the images' double-backward gradients: of all layers', of the stem's
        assert rel(ours[i], theirs[i]) < 1e-2
        assert cosine(ours[i], exact[i]) >= cosine(theirs[i], exact[i]) - 1e-3

    fn_fp32, *_ = dc_chain(fast, False)
    assert "GrayConv" not in type(fn_fp32).__name__
    rgb = GrayConv2d(3, 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rgb(torch.rand(2, 3, 8, 8))
    assert "GrayConv" not in type(out.grad_fn).__name__


def test_compiled_bf16_training_step_gives_the_eager_gradients(digits_train) -> None:
    """The engine compiles long runs: under ``torch.compile`` (Inductor keeps the activations
    channels-last, and GrayConv2d's weight gradient takes its [N*L, O] GEMM) a bf16 step of
    ConvNet on real digits gives every parameter's gradient as eager bf16 does, to bf16
    rounding, and no further from the fp32 gradient than eager bf16 is."""
    if not _compiler_available():
        pytest.skip("torch.compile needs a C compiler")
    torch.manual_seed(0)
    model = create_model("convnet", 1, NUM_CLASSES, (8, 8))
    assert type(model.features[0]) is GrayConv2d
    images, labels = digits_train.images[:48].float() / 255, digits_train.labels[:48]

    def gradients(forward, bf16: bool = True) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(images).float(), labels)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = gradients(model)
    compiled = gradients(torch.compile(model, dynamic=False))
    exact = gradients(model, bf16=False)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    scale = max(float(x.norm()) for x in exact)
    for (name, _), c, e, x in zip(model.named_parameters(), compiled, eager, exact):
        assert c.shape == e.shape, name
        if float(x.norm()) < 1e-4 * scale:  # a conv bias before instance norm: exactly 0 in
            assert float(c.norm()) < 1e-3 * scale, name  # exact arithmetic, rounding noise here
            continue
        assert rel(c, e) < 0.1, name  # (eager bf16 is itself 1-9 % from fp32 here)
        assert rel(c, x) <= 1.5 * rel(e, x) + 1e-3, name

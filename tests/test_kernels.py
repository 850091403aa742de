"""ddbench.kernels: the one entry point (``apply``, the modes, state_dict keys, the stock
numbers), and each kernel against the stock ops on the real digits: the bf16 pooling, the
grayscale stem, and instance norm + ReLU with a hand-written double backward (with MTT's unroll
through it)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddbench import kernels
from ddbench.engine import _compiler_available
from ddbench.errors import DDBenchError
from ddbench.experts import FlatModel
from ddbench.kernels import norm_relu, pool
from ddbench.kernels.gray_conv import GrayConv2d
from ddbench.kernels.norm_relu import InstanceNormReLU, NormReLU
from ddbench.kernels.pool import AvgPool2x2, _PoolOrUpsample
from ddbench.methods.mtt import MTT
from ddbench.models import create_model, model_names

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 10
KERNEL_MODULES = (AvgPool2x2, GrayConv2d, InstanceNormReLU)


def _digits28(digits_train, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real digits, normalised and upsampled to 28x28 (every 1-channel model takes it)."""
    x = digits_train.normalize(digits_train.images[:n])
    return F.interpolate(x, size=(28, 28), mode="bilinear"), digits_train.labels[:n]


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), [x, *model.parameters()])
    return [logits.detach(), *grads]


@pytest.mark.parametrize(
    "name", [n for n in model_names() if n not in ("resnet18_tv", "convnet_d4")]
)
def test_auto_keeps_the_parameters_and_the_fp32_numbers_and_off_the_stock_modules(
    name: str, digits_train
) -> None:
    """kernels=off builds only stock modules; kernels=auto the same parameters in the same order
    under the same state_dict keys (each loads the other's), and in fp32, on real digits, the
    same logits and the same input and parameter gradients, bit for bit."""
    torch.manual_seed(0)
    off = create_model(name, 1, NUM_CLASSES, (28, 28), kernels="off")
    torch.manual_seed(0)
    auto = create_model(name, 1, NUM_CLASSES, (28, 28), kernels="auto")
    assert not any(type(m).__module__.startswith("ddbench.kernels") for m in off.modules())
    swapped = [type(m) for m in auto.modules() if isinstance(m, KERNEL_MODULES)]
    if name.startswith("convnet") and name != "convnet_bn":
        assert set(swapped) == set(KERNEL_MODULES), swapped
    if name != "mlp":
        assert GrayConv2d in swapped  # every grayscale stem
    assert list(auto.state_dict()) == list(off.state_dict())
    assert [n for n, _ in auto.named_parameters()] == [n for n, _ in off.named_parameters()]
    auto.load_state_dict(off.state_dict(), strict=True)
    off.load_state_dict(auto.state_dict(), strict=True)
    x, y = _digits28(digits_train)
    for a, b in zip(_outputs_and_grads(auto, x, y), _outputs_and_grads(off, x, y), strict=True):
        assert torch.equal(a, b)


def test_apply_is_idempotent_and_the_mode_is_one_process_setting() -> None:
    """apply twice swaps nothing more; create_model follows set_mode unless told a mode; an
    unknown mode is refused with a one-line error."""
    model = create_model("convnet", 1, NUM_CLASSES, (8, 8), net_width=8)
    before = [type(m) for m in model.modules()]
    assert kernels.apply(model) is model
    assert [type(m) for m in model.modules()] == before
    old = kernels.set_mode("off")
    try:
        assert kernels.get_mode() == "off"
        stock = create_model("convnet", 1, NUM_CLASSES, (8, 8), net_width=8)
        assert not any(isinstance(m, KERNEL_MODULES) for m in stock.modules())
        forced = create_model("convnet", 1, NUM_CLASSES, (8, 8), net_width=8, kernels="auto")
        assert any(isinstance(m, InstanceNormReLU) for m in forced.modules())
    finally:
        kernels.set_mode(old)
    assert kernels.get_mode() == "auto"
    with pytest.raises(DDBenchError, match="kernels must be one of auto, off"):
        kernels.set_mode("fast")
    with pytest.raises(DDBenchError, match="kernels must be one of"):
        create_model("convnet", 1, NUM_CLASSES, (8, 8), kernels="on")


def test_the_cli_sets_the_mode_of_each_job_from_the_config(monkeypatch) -> None:
    """The top-level key ``kernels`` (default auto, in every Hydra command's config) is the
    mode of the job's models, and part of the set's config key when it is not the default.
    (The job's settings checks and run-directory lock, which need a whole Hydra job, are
    tests/test_guards.py's.)"""
    import contextlib
    import importlib.resources

    from omegaconf import OmegaConf

    from ddbench import cli

    common = OmegaConf.load(importlib.resources.files("ddbench.conf") / "_common.yaml")
    assert common.kernels == "auto"
    base = {"dataset": {"name": "digits"}, "method": {"name": "mtt"}, "ipc": 1, "seed": 0}
    keys = {mode: cli.config_key(OmegaConf.create({**base, "kernels": mode}), cli._DISTILL_KEYS)
            for mode in kernels.MODES}  # fmt: skip
    assert keys["auto"] == cli.config_key(OmegaConf.create(base), cli._DISTILL_KEYS)
    assert keys["off"] != keys["auto"]  # a set made with kernels=off is never reused for auto
    monkeypatch.setattr(cli, "_check_settings", lambda cfg: None)
    monkeypatch.setattr(cli, "_run_dir_lock", contextlib.nullcontext)
    job = cli._job(lambda cfg: kernels.get_mode())
    try:
        assert job(OmegaConf.create({"kernels": "off"})) == "off"
        assert job(OmegaConf.create({"kernels": "auto"})) == "auto"
    finally:
        kernels.set_mode("auto")


def test_the_fused_block_runs_for_functional_students_only(digits_train, monkeypatch) -> None:
    """InstanceNormReLU takes the fused kernels when its parameters come in as plain tensors with
    gradients on (a functional student, as trajectory matching unrolls it), and the stock ops
    for a network's own nn.Parameters (the protocol, experts, teachers) or without gradients."""
    if not _compiler_available() or norm_relu.kernels() is None:
        pytest.skip("the fused kernels need torch.compile (a C compiler)")
    calls = []
    apply = NormReLU.apply
    monkeypatch.setattr(NormReLU, "apply", staticmethod(lambda *a: calls.append(1) or apply(*a)))
    torch.manual_seed(0)
    net = create_model("convnet", 1, NUM_CLASSES, (8, 8))  # block 1: 20 x 128 x 12 x 12
    x, y = digits_train.normalize(digits_train.images[:20]), digits_train.labels[:20]
    F.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        net(x)
    student = FlatModel(net)
    w = student.flatten(dict(net.named_parameters())).requires_grad_(True)
    with torch.no_grad():
        student(w, x)
    assert not calls
    loss = F.cross_entropy(student(w, x), y)
    assert len(calls) == 1  # the first block (the others are below MIN_NUMEL)
    (g,) = torch.autograd.grad(loss, w)
    stock = create_model("convnet", 1, NUM_CLASSES, (8, 8), kernels="off")
    (want,) = torch.autograd.grad(F.cross_entropy(FlatModel(stock)(w, x), y), w)
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def _activations(digits_train, n: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A conv layer's output on ``n`` real digits: [n, width, 12, 12]."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, width, 3, padding=3)
    with torch.no_grad():
        return conv(digits_train.normalize(digits_train.images[:n])).to(dtype)


def _affine(width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    gamma = torch.rand(width, generator=g, dtype=dtype) + 0.5
    beta = torch.randn(width, generator=g, dtype=dtype) * 0.5  # some units dead, some alive
    return gamma, beta


def _stock(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return F.relu(F.group_norm(h, h.shape[1], gamma, beta, 1e-5))


def test_the_hand_written_double_backward_is_autograds(digits_train) -> None:
    """fp64, eagerly: the block's forward, backward and double backward (written out by hand)
    equal autograd's through F.group_norm + F.relu, for every input and cotangent."""
    h = _activations(digits_train, 6, 8, torch.float64).requires_grad_(True)
    gamma, beta = (t.requires_grad_(True) for t in _affine(8, torch.float64))
    out = _stock(h, gamma, beta)
    dead = float((out == 0).double().mean())
    assert 0.1 < dead < 0.9  # the ReLU's mask matters
    torch.testing.assert_close(norm_relu._forward(h, gamma, beta, 1e-5), out)

    g = torch.Generator().manual_seed(2)
    g_r = torch.randn(h.shape, generator=g, dtype=h.dtype).requires_grad_(True)
    first = torch.autograd.grad(out, (h, gamma, beta), g_r, create_graph=True)
    ours = norm_relu._backward(g_r, h, gamma, beta, 1e-5)
    for want, got in zip(first, ours):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

    a = torch.randn(h.shape, generator=g, dtype=h.dtype)
    b, c = torch.randn(8, generator=g, dtype=h.dtype), torch.randn(8, generator=g, dtype=h.dtype)
    total = (first[0] * a).sum() + (first[1] * b).sum() + (first[2] * c).sum()
    d_gr, d_h, d_gamma, d_beta = torch.autograd.grad(total, (g_r, h, gamma, beta))
    got = norm_relu._double_backward(g_r, h, gamma, beta, a, b, c, 1e-5)
    for want, mine in zip((d_gr, d_h, d_gamma), got):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(mine, want, rtol=1e-9, atol=1e-12)
    assert float(d_beta.abs().max()) == 0  # beta only moves the mask


def _dc_chain(fn, h0, gamma0, beta0, labels, head) -> list[torch.Tensor]:
    """Loss, the gradients with their graph, and the gradient of their norm (DC / MTT's second
    order) w.r.t. the input and gamma, through ``fn(h, gamma, beta)``."""
    h = h0.clone().requires_grad_(True)
    gamma, beta = gamma0.clone().requires_grad_(True), beta0.clone().requires_grad_(True)
    loss = F.cross_entropy(head(fn(h, gamma, beta).float().flatten(1)), labels)
    grads = torch.autograd.grad(loss, (h, gamma, beta), create_graph=True)
    norm = sum(g.float().pow(2).sum() for g in grads)
    second = torch.autograd.grad(norm, (h, gamma))
    return [loss.detach(), *(g.detach() for g in grads), *second]


def test_norm_relu_matches_the_stock_modules_to_the_double_backward(digits_train) -> None:
    """The compiled kernels through NormReLU.apply: a second-order chain gives the stock
    modules' loss and gradients to fp32 rounding; on bf16 activations it is no further from
    the fp32 result than the stock modules in bf16."""
    if not _compiler_available():
        pytest.skip("torch.compile needs a C compiler")
    assert norm_relu.kernels() is not None, "the fused kernels failed their check"
    labels = digits_train.labels[:32]
    torch.manual_seed(3)
    head = nn.Linear(16 * 12 * 12, 10)
    gamma, beta = _affine(16, torch.float32)

    def fused(h, gm, bt):
        return NormReLU.apply(h, gm, bt, 1e-5)

    h32 = _activations(digits_train, 32, 16, torch.float32)
    exact = _dc_chain(_stock, h32, gamma, beta, labels, head)
    ours = _dc_chain(fused, h32, gamma, beta, labels, head)
    for want, got in zip(exact, ours):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    h16 = h32.bfloat16()
    stock16 = _dc_chain(_stock, h16, gamma, beta, labels, head)
    ours16 = _dc_chain(fused, h16, gamma, beta, labels, head)
    assert ours16[1].dtype == torch.bfloat16  # the input's gradient keeps the input's dtype

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

    for want, theirs, mine in zip(exact[1:], stock16[1:], ours16[1:]):
        assert cosine(mine, want) >= cosine(theirs, want) - 1e-3


def _student_unroll(digits_train, *, kernels: str, checkpoint: bool = False, precision="fp32"):
    """One MTT matching loss of a width-128 ConvNet student on 20 real digits (its first
    block's activations take the fused path), with its image and lr gradients and the bytes
    the unroll's graph keeps."""
    from conftest import make_task

    m = MTT(syn_steps=3, expert_epochs=1, max_start_epoch=1, num_experts=1,
            experts={"epochs": 2}, checkpoint_unroll=checkpoint)  # fmt: skip
    task = make_task(digits_train, 2)
    task.precision = precision
    torch.manual_seed(0)
    net = create_model("convnet", 1, 10, (8, 8), kernels=kernels)
    m.student = m.make_student(net)
    start = FlatModel(net).flatten(dict(net.named_parameters()))
    m.trajectories = [torch.stack([start, start + 0.01 * torch.randn(start.shape)])]
    m.syn_lr = torch.tensor(0.01).requires_grad_(True)
    images, labels = m.init_images(task)
    images.requires_grad_(True)
    kept: dict[int, int] = {}
    held = []  # every saved tensor stays alive to the end, so no storage address is reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        held.append(t)
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    task.generator.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with task.autocast():  # the task's precision, as the image loop applies it
            loss = m.matching_loss(task, images, labels, 0, 0)
    g_img, g_lr = torch.autograd.grad(loss, [images, m.syn_lr])
    return loss.detach(), g_img, g_lr, sum(kept.values())


def test_an_mtt_unroll_through_fused_blocks_gives_the_same_gradients_and_keeps_less(
    digits_train, monkeypatch
) -> None:
    """kernels=auto (the fused block) against kernels=off: in fp32 the stock modules' matching
    loss, image and lr gradients (also with checkpoint_unroll), through the fused path (taken);
    under bf16 no further from the fp32 gradients than the stock norm and ReLU in bf16 (the
    other kernels as they are), with less kept for the backward (the stock instance norm keeps
    fp32 copies under autocast)."""
    if not _compiler_available() or norm_relu.kernels() is None:
        pytest.skip("the fused kernels need torch.compile (a C compiler)")
    calls = []
    apply = NormReLU.apply
    monkeypatch.setattr(NormReLU, "apply", staticmethod(lambda *a: calls.append(1) or apply(*a)))
    l0, i0, r0, _ = _student_unroll(digits_train, kernels="off")
    assert not calls
    l1, i1, r1, _ = _student_unroll(digits_train, kernels="auto")
    assert len(calls) == 3  # the first block of each of the 3 student steps (the others: small)
    assert float(i0.abs().max()) > 0 and float(r0.abs()) > 0
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=0)
    torch.testing.assert_close(i1, i0, rtol=1e-4, atol=1e-4 * float(i0.abs().max()))
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=0)
    l2, i2, r2, _ = _student_unroll(digits_train, kernels="auto", checkpoint=True)
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(i2, i1, rtol=1e-5, atol=1e-6 * float(i1.abs().max()))
    torch.testing.assert_close(r2, r1)

    monkeypatch.setattr(norm_relu, "MIN_NUMEL", 0)  # all three blocks, as at 28x28 x 100
    with monkeypatch.context() as stock_norm:  # the other kernels as they are, the norm stock
        stock_norm.setattr(norm_relu, "usable", lambda x: False)
        ls, is_, rs, kept_stock = _student_unroll(digits_train, kernels="auto", precision="bf16")
    before = len(calls)
    lf, if_, rf, kept_fused = _student_unroll(digits_train, kernels="auto", precision="bf16")
    assert len(calls) - before == 9, len(calls) - before
    assert kept_fused < 0.9 * kept_stock, (kept_fused, kept_stock)  # 0.88 (20 images, 3 steps)

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

    assert cosine(if_, i0) >= cosine(is_, i0) - 1e-3 and cosine(if_, i0) > 0.99
    assert abs(float(lf - l0)) <= abs(float(ls - l0)) + 1e-3 * float(l0)
    assert abs(float(rf - r0)) <= abs(float(rs - r0)) + 1e-2 * abs(float(r0))


def test_bf16_cpu_pooling_fast_path_matches_stock_pooling_to_the_double_backward(
    digits_train, monkeypatch
) -> None:
    """AvgPool2x2's compiled bf16 path gives DC's whole gradient-matching chain (loss, weight
    gradients with their graph, then the gradient of their norm w.r.t. the images) bit for bit
    as nn.AvgPool2d, on real digits, and is actually taken for the large activations; its
    kernels can be built inside a checkpointed forward (MTT's ``checkpoint_unroll``)."""
    if not _compiler_available():
        pytest.skip("torch.compile needs a C compiler; the stock pooling is used")
    assert pool.kernels() is not None, "the compiled pooling kernels failed their check"

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
            logits = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)
        return torch.autograd.grad(F.cross_entropy(logits, labels), x)[0]

    monkeypatch.setattr(pool, "_KERNELS", [])  # built anew, inside the checkpoint
    took_fast.clear()
    assert torch.equal(checkpointed_image_grad(fast), checkpointed_image_grad(stock))
    assert took_fast[:2] == [True, True]


def test_bf16_cpu_gray_conv_gives_the_stock_gradients_to_the_double_backward(digits_train) -> None:
    """GrayConv2d (ConvNet's 1-channel stem, swapped in by kernels=auto) under bf16 autocast on CPU: same logits as
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

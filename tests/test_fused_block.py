"""ddbench.fused_block (ConvNet's instance norm + ReLU with a hand-written double backward), and
MTT's unroll through it, on activations of the real digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddbench import fused_block
from ddbench.engine import _compiler_available
from ddbench.experts import FlatModel
from ddbench.methods.mtt import MTT
from ddbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


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
    torch.testing.assert_close(fused_block._forward(h, gamma, beta, 1e-5), out)

    g = torch.Generator().manual_seed(2)
    g_r = torch.randn(h.shape, generator=g, dtype=h.dtype).requires_grad_(True)
    first = torch.autograd.grad(out, (h, gamma, beta), g_r, create_graph=True)
    ours = fused_block._backward(g_r, h, gamma, beta, 1e-5)
    for want, got in zip(first, ours):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

    a = torch.randn(h.shape, generator=g, dtype=h.dtype)
    b, c = torch.randn(8, generator=g, dtype=h.dtype), torch.randn(8, generator=g, dtype=h.dtype)
    total = (first[0] * a).sum() + (first[1] * b).sum() + (first[2] * c).sum()
    d_gr, d_h, d_gamma, d_beta = torch.autograd.grad(total, (g_r, h, gamma, beta))
    got = fused_block._double_backward(g_r, h, gamma, beta, a, b, c, 1e-5)
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
    assert fused_block.kernels() is not None, "the fused kernels failed their check"
    labels = digits_train.labels[:32]
    torch.manual_seed(3)
    head = nn.Linear(16 * 12 * 12, 10)
    gamma, beta = _affine(16, torch.float32)

    def fused(h, gm, bt):
        return fused_block.NormReLU.apply(h, gm, bt, 1e-5)

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


def _student_unroll(digits_train, *, fused: bool, checkpoint: bool = False, precision="fp32"):
    """One MTT matching loss of a width-128 ConvNet student on 20 real digits (its first
    block's activations take the fused path), with its image and lr gradients and the bytes
    the unroll's graph keeps."""
    from conftest import make_task

    m = MTT(syn_steps=3, expert_epochs=1, max_start_epoch=1, num_experts=1,
            experts={"epochs": 2}, fused_norm_relu=fused, checkpoint_unroll=checkpoint)  # fmt: skip
    task = make_task(digits_train, 2)
    task.precision = precision
    torch.manual_seed(0)
    net = create_model("convnet", 1, 10, (8, 8))
    m.student = m.make_student(net)
    start = FlatModel(net).flatten(dict(net.named_parameters()))
    m.experts = [torch.stack([start, start + 0.01 * torch.randn(start.shape)])]
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
    """MTT's default fused_norm_relu: in fp32 the stock modules' matching loss, image and lr
    gradients (also with checkpoint_unroll), through the fused path (taken); under bf16 no
    further from the fp32 gradients than the stock modules in bf16, with less kept for the
    backward (the stock instance norm keeps fp32 copies under autocast)."""
    if not _compiler_available() or fused_block.kernels() is None:
        pytest.skip("the fused kernels need torch.compile (a C compiler)")
    calls = []
    apply = fused_block.NormReLU.apply
    monkeypatch.setattr(
        fused_block.NormReLU, "apply", staticmethod(lambda *a: calls.append(1) or apply(*a))
    )
    l0, i0, r0, _ = _student_unroll(digits_train, fused=False)
    assert not calls
    l1, i1, r1, _ = _student_unroll(digits_train, fused=True)
    assert len(calls) == 3  # the first block of each of the 3 student steps (the others: small)
    assert float(i0.abs().max()) > 0 and float(r0.abs()) > 0
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=0)
    torch.testing.assert_close(i1, i0, rtol=1e-4, atol=1e-4 * float(i0.abs().max()))
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=0)
    l2, i2, r2, _ = _student_unroll(digits_train, fused=True, checkpoint=True)
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(i2, i1, rtol=1e-5, atol=1e-6 * float(i1.abs().max()))
    torch.testing.assert_close(r2, r1)

    monkeypatch.setattr(fused_block, "MIN_NUMEL", 0)  # all three blocks, as at 28x28 x 100
    ls, is_, rs, kept_stock = _student_unroll(digits_train, fused=False, precision="bf16")
    before = len(calls)
    lf, if_, rf, kept_fused = _student_unroll(digits_train, fused=True, precision="bf16")
    assert len(calls) - before == 9, len(calls) - before
    assert kept_fused < 0.9 * kept_stock, (kept_fused, kept_stock)  # 0.88 (20 images, 3 steps)

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

    assert cosine(if_, i0) >= cosine(is_, i0) - 1e-3 and cosine(if_, i0) > 0.99
    assert abs(float(lf - l0)) <= abs(float(ls - l0)) + 1e-3 * float(l0)
    assert abs(float(rf - r0)) <= abs(float(rs - r0)) + 1e-2 * abs(float(r0))

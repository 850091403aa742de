"""Instance norm + ReLU as one twice-differentiable function on CPU (:class:`InstanceNormReLU`).

Trajectory matching backpropagates through ``syn_steps`` student updates, so it needs the
gradient of the student's gradient. Composed from stock ops, that double backward keeps the
norm's input, its normalised output, the ReLU's output and more activation-sized temporaries
per layer and step, and spends much of its time in mixed bf16/fp32 elementwise ops. Here the
pair is one ``autograd.Function`` (:class:`NormReLU`) whose backward is another one, and each
of the three passes (forward, backward, double backward) is a single Inductor-compiled kernel
that recomputes the normalisation from the norm's input. Per layer and step the graph keeps
that input and the incoming gradient of the ReLU's output; the double backward is written out
by hand (:func:`_double_backward`, checked against autograd in the tests).

Arithmetic is fp32 inside the kernels (bf16 inputs are widened), and outputs are rounded once
to their dtype, so the results are close to, not bit for bit, the stock modules' (which, under
bf16 autocast, round after each op). Only the second derivative is provided: a third backward
through it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["InstanceNormReLU", "NormReLU", "eligible_pair", "kernels", "usable"]

Kernels = tuple[Callable, Callable, Callable]


def _acc(t: torch.Tensor) -> torch.dtype:
    """The accumulation dtype: fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 (tests)."""
    return torch.promote_types(t.dtype, torch.float32)


_SPATIAL = (2, 3)


def _mean(z: torch.Tensor) -> torch.Tensor:
    return z.mean(_SPATIAL, keepdim=True)


def _channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(1, -1, 1, 1)


def _normalise(h: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xhat, rstd)`` of instance norm: per (sample, channel) over the spatial dims."""
    hf = h.to(_acc(h))
    centred = hf - _mean(hf)
    rstd = torch.rsqrt(_mean(centred.square()) + eps)
    return centred * rstd, rstd


def _forward(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    xhat, _ = _normalise(h, eps)
    return torch.relu(xhat * _channel(gamma, xhat) + _channel(beta, xhat)).to(h.dtype)


def _pre(
    g_r: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> tuple[torch.Tensor, ...]:
    """What both backward passes recompute: xhat, rstd, gamma [1,C,1,1], the ReLU's mask
    and the gradient at the norm's output."""
    xhat, rstd = _normalise(h, eps)
    g = _channel(gamma, xhat)
    alive = (xhat * g + _channel(beta, xhat) > 0).to(xhat.dtype)  # 1.0 / 0.0 (not a bool mask:
    g_y = g_r.to(xhat.dtype) * alive  # Inductor's bool-mask blends are slow here)
    return xhat, rstd, g, alive, g_y


def _backward(
    g_r: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (input, gamma, beta) from the gradient ``g_r`` of the output."""
    xhat, rstd, g, _, g_y = _pre(g_r, h, gamma, beta, eps)
    u = g_y * g
    g_h = rstd * (u - _mean(u) - xhat * _mean(u * xhat))
    g_gamma = (g_y * xhat).sum((0, *_SPATIAL))
    g_beta = g_y.sum((0, *_SPATIAL))
    return g_h.to(h.dtype), g_gamma.to(gamma.dtype), g_beta.to(beta.dtype)


def _double_backward(
    g_r: torch.Tensor,
    h: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The vector-Jacobian product of :func:`_backward` with cotangents ``(a, b, c)`` of its
    outputs ``(g_h, g_gamma, g_beta)``: gradients w.r.t. ``(g_r, h, gamma)`` (``beta`` only
    moves the ReLU's mask, whose derivative is zero almost everywhere).

    Per (sample, channel) with M spatial elements, s = rstd, g_y = g_r where the ReLU is
    active, u = gamma * g_y and the projection P(z) = z - mean(z) - xhat * mean(z * xhat)
    (symmetric), the backward is g_h = s P(u), g_gamma = sum(g_y xhat), g_beta = sum(g_y);
    with d xhat_j / d h_i = s P_ij and d s / d h_i = -s^2 xhat_i / M this gives
    d/dh = s^2 [xhat (mean(u xhat) mean(a xhat) - mean(a u) + mean(a) mean(u))
                - mean(a xhat) P(u) - mean(u xhat) P(a)] + b s P(g_y),
    d/dg_y = gamma s P(a) + b xhat + c, and d/dgamma = sum over samples of
    s M (mean(a g_y) - mean(a) mean(g_y) - mean(a xhat) mean(g_y xhat)).
    """
    xhat, s, g, alive, g_y = _pre(g_r, h, gamma, beta, eps)
    af = a.to(xhat.dtype)
    bc, cc = _channel(b, xhat), _channel(c, xhat)
    gy_m, gy_x = _mean(g_y), _mean(g_y * xhat)
    a_m, a_x, a_gy = _mean(af), _mean(af * xhat), _mean(af * g_y)
    u_m, u_x = g * gy_m, g * gy_x  # mean(u), mean(u xhat)
    p_a = af - a_m - xhat * a_x
    p_u = g * g_y - u_m - xhat * u_x
    p_gy = g_y - gy_m - xhat * gy_x
    d_h = s * s * (xhat * (u_x * a_x - g * a_gy + a_m * u_m) - a_x * p_u - u_x * p_a)
    d_h = d_h + bc * s * p_gy
    d_gr = (g * s * p_a + bc * xhat + cc) * alive
    m = h.shape[2] * h.shape[3]
    d_gamma = (s * m * (a_gy - a_m * gy_m - a_x * gy_x)).sum((0, *_SPATIAL))
    return d_gr.to(g_r.dtype), d_h.to(h.dtype), d_gamma.to(gamma.dtype)


_KERNELS: list[Kernels | None] = []  # [] until first use
MIN_NUMEL = 1 << 18  # smaller activations take the stock modules (tiny models, tests)


def kernels() -> Kernels | None:
    """Inductor-compiled (forward, backward, double backward), built once per process and
    checked against the same functions run eagerly; ``None`` where they cannot be built. Each
    compiles again per activation shape and dtype (a few seconds each, once per process)."""
    if not _KERNELS:
        built: Kernels | None = None
        try:
            fns = (_forward, _backward, _double_backward)
            compiled = tuple(torch.compile(f, dynamic=False) for f in fns)
            with torch.no_grad():  # no graph: this may run inside a checkpointed region
                g = torch.Generator().manual_seed(0)
                h = torch.randn(2, 3, 4, 6, generator=g) * 3 + 1
                gamma, beta = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
                g_r, a = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 3, 4, 6, generator=g)
                b, c = torch.randn(3, generator=g), torch.randn(3, generator=g)
                args = ((h, gamma, beta), (g_r, h, gamma, beta), (g_r, h, gamma, beta, a, b, c))
                ok = True
                for f, cf, x in zip(fns, compiled, args):
                    want, got = f(*x, 1e-5), cf(*x, 1e-5)
                    want = (want,) if torch.is_tensor(want) else want
                    got = (got,) if torch.is_tensor(got) else got
                    ok &= all(torch.allclose(u, v, rtol=1e-4, atol=1e-5) for u, v in zip(got, want))
            built = compiled if ok else None
        except Exception:  # no C++ compiler, or an unsupported build: the stock modules
            built = None
        _KERNELS.append(built)
    return _KERNELS[0]


def usable(x: torch.Tensor) -> bool:
    """Whether :class:`NormReLU` takes ``x``: a large contiguous bf16/fp32 CPU activation
    [N, C, H, W], outside ``torch.compile`` and ``torch.func`` transforms, with the kernels
    built."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.bfloat16, torch.float32)
        and x.numel() >= MIN_NUMEL
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
        and kernels() is not None
    )


class NormReLU(torch.autograd.Function):
    """``apply(h, gamma, beta, eps)`` = ``relu(group_norm(h, C, gamma, beta, eps))`` (instance
    norm with affine parameters) for ``h`` [N, C, H, W]; differentiable twice."""

    @staticmethod
    def forward(
        h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
    ) -> torch.Tensor:
        return _KERNELS[0][0](h, gamma, beta, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        h, gamma, beta, eps = inputs
        ctx.save_for_backward(h, gamma, beta)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, g_r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, gamma, beta = ctx.saved_tensors
        g_h, g_gamma, g_beta = _NormReLUBackward.apply(g_r.contiguous(), h, gamma, beta, ctx.eps)
        return g_h, g_gamma, g_beta, None


class _NormReLUBackward(torch.autograd.Function):
    """The block's backward as a function of (g_r, h, gamma, beta); its own backward is the
    hand-written double backward."""

    @staticmethod
    def forward(
        g_r: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _KERNELS[0][1](g_r, h, gamma, beta, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        g_r, h, gamma, beta, eps = inputs
        ctx.save_for_backward(g_r, h, gamma, beta)
        ctx.eps = eps

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, a: torch.Tensor | None, b: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        g_r, h, gamma, beta = ctx.saved_tensors
        a = torch.zeros_like(h) if a is None else a.contiguous()
        b = torch.zeros_like(gamma) if b is None else b
        c = torch.zeros_like(beta) if c is None else c
        d_gr, d_h, d_gamma = _KERNELS[0][2](g_r, h, gamma, beta, a, b, c, ctx.eps)
        return d_gr, d_h, d_gamma, None, None


def eligible_pair(norm: nn.Module, act: nn.Module) -> bool:
    """Whether ``norm`` then ``act`` is instance norm with affine parameters
    (``nn.GroupNorm(C, C)``, the networks' ``instancenorm``) followed by ``nn.ReLU``."""
    return (
        type(norm) is nn.GroupNorm
        and norm.num_groups == norm.num_channels
        and norm.affine
        and type(act) is nn.ReLU
    )


class InstanceNormReLU(nn.GroupNorm):
    """``nn.GroupNorm(C, C)`` followed by ReLU, as one module: :func:`ddbench.kernels.apply`
    makes the norm of an eligible pair this module and its ReLU an ``nn.Identity``, so the
    parameters and state_dict keys stay the norm's.

    The fused kernels (:class:`NormReLU`) run where the unrolls of trajectory matching need
    them: the module's parameters passed in as plain tensors (``torch.func.functional_call``, as
    a functional student is called), gradients enabled, and :func:`usable` for the input. A
    network trained on its own parameters (``nn.Parameter``: the evaluation protocol, experts,
    teachers, DC's and DM's networks), or called without gradients, takes the stock ops, so its
    results are the stock modules' bit for bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not isinstance(self.weight, nn.Parameter) and usable(x):
            return NormReLU.apply(x, self.weight, self.bias, self.eps)
        return torch.relu(super().forward(x))

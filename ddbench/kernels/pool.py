"""2x2 average pooling with a faster bf16 path on CPU (:class:`AvgPool2x2`).

PyTorch's NCHW bf16 CPU kernels for this pooling are slow, many times a copy of the tensor
(``bench/pool_kernels.py`` times them). For a large contiguous bf16 CPU tensor with even height and width,
the forward and the backward here run Inductor-compiled kernels that read and write the bf16
bits as int32 words (two horizontal neighbours per word; :func:`_pool_bits`,
:func:`_upsample_bits`), bit for bit the stock results. Each is the other's adjoint, so the path
stays differentiable to any order (DC's double backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AvgPool2x2", "eligible_module", "kernels"]

Kernels = tuple[Callable, Callable]

_KERNELS: list[Kernels | None] = []  # [] until first use
MIN_NUMEL = 1 << 18  # smaller tensors: the stock kernel is fast enough


def eligible_module(module: nn.Module) -> bool:
    """Whether ``module`` is exactly ``nn.AvgPool2d(2, 2)`` (what :class:`AvgPool2x2` computes)."""
    return (
        type(module) is nn.AvgPool2d
        and module.kernel_size in (2, (2, 2))
        and module.stride in (2, (2, 2))
        and module.padding in (0, (0, 0))
        and not module.ceil_mode
        and module.count_include_pad
        and module.divisor_override is None
    )


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (same module, same results) with a faster bf16 path on CPU.

    The compiled path takes a bf16 CPU tensor of >= ``MIN_NUMEL`` elements, contiguous, with
    even height and width, outside ``torch.compile`` and ``torch.func`` transforms, once the
    kernels passed their check (:func:`kernels`); anything else takes ``nn.AvgPool2d``'s path.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.numel() >= MIN_NUMEL
            and x.shape[-1] % 2 == 0
            and x.shape[-2] % 2 == 0
            and x.is_contiguous()
            and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(x)
            and kernels() is not None
        ):
            return _PoolOrUpsample.apply(x, False)
        return super().forward(x)


def _bf16_pair_halves(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bf16 values packed in each int32 word, as exact fp32: (first, second) in memory
    order (little-endian: the low half first). bf16 -> fp32 is a 16-bit shift of the bits."""
    return (words << 16).view(torch.float32), (words & -65536).view(torch.float32)


def _pool_bits(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of a contiguous NCHW bf16 tensor (even H, W), summed in fp32 in the
    stock kernel's order ``((x00 + x01) + x10) + x11``, then ``/ 4`` and rounded to bf16: the
    stock result bit for bit. Reading each row as int32 words (a horizontal pair per word)
    gives Inductor contiguous, vectorisable loads."""
    n, c, h, w = x.shape
    rows = x.view(torch.int32).view(n, c, h // 2, 2, w // 2)
    x00, x01 = _bf16_pair_halves(rows[:, :, :, 0])
    x10, x11 = _bf16_pair_halves(rows[:, :, :, 1])
    return ((((x00 + x01) + x10) + x11) * 0.25).to(torch.bfloat16)


def _upsample_bits(grad: torch.Tensor) -> torch.Tensor:
    """``grad / 4`` repeated over each 2x2 window (the adjoint of 2x2 average pooling) for a
    contiguous NCHW bf16 tensor: each quarter's 16 bits doubled into one int32 word (its
    horizontal pair), then each row of words written twice."""
    n, c, h, w = grad.shape
    bits = grad.mul(0.25).view(torch.int16).to(torch.int32) & 0xFFFF
    pairs = (bits | (bits << 16)).view(torch.bfloat16)  # [n, c, h, 2w]
    return pairs[:, :, :, None, :].expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)


def kernels() -> Kernels | None:
    """Inductor-compiled (pool, upsample) kernels, built and checked against ``F.avg_pool2d``
    once per process (on first use); ``None`` where ``torch.compile`` cannot build them here."""
    if not _KERNELS:
        built: Kernels | None = None
        try:
            pool = torch.compile(_pool_bits, dynamic=True)
            upsample = torch.compile(_upsample_bits, dynamic=True)
            with torch.no_grad():  # no autograd graph: this may run inside a checkpointed region
                # magnitudes from bf16's subnormals to near its overflow, so that a summation
                # order other than the stock one would show; a private generator leaves the
                # global random stream alone
                g = torch.Generator().manual_seed(0)
                scale = 10.0 ** torch.randint(-40, 38, (3, 2, 6, 4), generator=g).double()
                probe = (torch.randn(3, 2, 6, 4, generator=g).double() * scale).to(torch.bfloat16)
                out = F.avg_pool2d(probe, 2)
                grad = torch.randn(out.shape, generator=g).to(torch.bfloat16)
                stock_grad = torch.ops.aten.avg_pool2d_backward(
                    grad, probe, [2, 2], [2, 2], [0, 0], False, True, None
                )
                if torch.equal(pool(probe), out) and torch.equal(upsample(grad), stock_grad):
                    built = (pool, upsample)
        except Exception:  # no C++ compiler, or an unsupported build: keep the stock kernels
            built = None
        _KERNELS.append(built)
    return _KERNELS[0]


class _PoolOrUpsample(torch.autograd.Function):
    """``apply(x, False)``: the compiled 2x2 average pooling; ``apply(g, True)``: its adjoint,
    the compiled upsample of ``g / 4``. The backward of each is the other, to any order."""

    @staticmethod
    def forward(x: torch.Tensor, upsample: bool) -> torch.Tensor:
        return _KERNELS[0][int(upsample)](x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.upsample = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _PoolOrUpsample.apply(grad.contiguous(), not ctx.upsample), None

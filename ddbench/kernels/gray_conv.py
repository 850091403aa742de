"""A 1-channel (grayscale) stem convolution with a faster bf16 weight gradient on CPU
(:class:`GrayConv2d`).

oneDNN's bf16 weight-gradient kernel for a single input channel is slower than the same product
written as one GEMM (``bench/eval_speed.py`` measures the effect), ``grad[O, N*L] @ im2col(x)[N*L, k*k]``, which is what the backward computes
here (same bf16 inputs, fp32 accumulation; as close to the fp32 gradient as oneDNN's). The
forward and the input gradient are the stock kernels. The backward is built from
differentiable ops, so DC's double backward and MTT's unroll go through it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GrayConv2d", "eligible_module"]


def eligible_module(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Conv2d`` on one input channel (a grayscale stem)."""
    return type(module) is nn.Conv2d and module.in_channels == 1


class GrayConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same module, same forward bit for bit, gradients to bf16 rounding) with a
    faster weight gradient for ONE input channel under bf16 autocast on CPU.

    The fast path takes one input channel, no groups or dilation, zero padding given as numbers,
    and a CPU input under bf16 autocast, outside ``torch.func`` transforms; it also runs under
    ``torch.compile``, where Inductor keeps the activations channels-last and the weight
    gradient multiplies them without a transposed copy. Anything else (more channels, fp32, a
    GPU) takes ``nn.Conv2d``'s path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.in_channels == 1
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and (
                torch.compiler.is_compiling()  # (dynamo cannot trace the functorch check)
                or not torch._C._functorch.is_functorch_wrapped_tensor(x)
            )
        ):
            return _GrayConvBF16.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


class _GrayConvBF16(torch.autograd.Function):
    """bf16 convolution of a 1-channel input; weight gradient as one im2col GEMM."""

    @staticmethod
    def forward(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        bf16 = torch.bfloat16
        b = None if bias is None else bias.to(bf16)
        return F.conv2d(x.to(bf16), weight.to(bf16), b, stride, padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)  # inputs, not their casts: double backward reaches them
        ctx.geometry = (stride, padding)
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bf16 = torch.bfloat16
        grad = grad.to(bf16)
        grad_x = grad_w = grad_b = None
        if need_x:
            wb = weight.to(bf16)
            grad_x = torch.nn.grad.conv2d_input(x.shape, wb, grad, stride, padding).to(x.dtype)
        if need_w:
            out_ch, _, kh, kw = weight.shape
            cols = F.unfold(x.to(bf16), (kh, kw), padding=padding, stride=stride)  # [N, kh*kw, L]
            cols_rows = cols.transpose(0, 1).reshape(kh * kw, -1)  # [kh*kw, N*L]
            if torch.compiler.is_compiling():
                # Inductor keeps conv activations channels-last: [N*L, O] is then a view, and
                # the product with few rows first is the faster GEMM
                grad_cols = grad.permute(0, 2, 3, 1).reshape(-1, out_ch)  # [N*L, O]
                grad_w = torch.mm(cols_rows, grad_cols).t().reshape(weight.shape)
            else:  # NCHW: [O, N*L] is one block copy
                grad_rows = grad.flatten(2).transpose(0, 1).reshape(out_ch, -1)  # [O, N*L]
                grad_w = torch.mm(grad_rows, cols_rows.t()).view(weight.shape)
            grad_w = grad_w.to(weight.dtype)
        if need_b and ctx.bias_dtype is not None:
            grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None

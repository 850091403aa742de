"""ConvNet's bf16 2x2 average pooling on CPU, forward and backward: PyTorch's kernels against
``ddbench.kernels.pool.AvgPool2x2``'s compiled ones, with a plain copy of the tensor for scale.

    python bench/pool_kernels.py --threads 2 [--n 256] [--reps 20]

Forward: the stock ``F.avg_pool2d``, a compiled ``F.avg_pool2d`` (dynamic shapes), and
``ddbench.kernels.pool.kernels()``'s pool (the int32-word formulation). Backward: the stock
``avg_pool2d_backward``, a compiled expand-reshape upsample of ``grad / 4``, and
``kernels()``'s upsample. Each result is checked bit for bit against the stock one. Median of
``--reps``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddbench.kernels import pool as pool_kernels


def _median_ms(fn: Callable[[], torch.Tensor], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _expand_upsample(grad: torch.Tensor) -> torch.Tensor:
    n, c, h, w = grad.shape
    quarter = grad.mul(0.25)[:, :, :, None, :, None]
    return quarter.expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=256, help="images in the batch (x 128 x 32 x 32)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = pool_kernels.kernels()
    if kernels is None:
        raise SystemExit("the compiled pooling kernels are not available here (no C compiler?)")
    pool, upsample = kernels
    x = torch.randn(args.n, 128, 32, 32).to(torch.bfloat16)
    g = torch.randn(args.n, 128, 16, 16).to(torch.bfloat16)
    stock_out = F.avg_pool2d(x, 2)
    stock_grad = torch.ops.aten.avg_pool2d_backward(g, x, [2, 2], [2, 2], [0, 0], False, True, None)
    old_pool = torch.compile(lambda t: F.avg_pool2d(t, 2), dynamic=True)
    old_upsample = torch.compile(_expand_upsample, dynamic=True)
    rows = [
        ("copy of the input", lambda: x.clone(), None),
        ("forward, stock", lambda: F.avg_pool2d(x, 2), stock_out),
        ("forward, compiled F.avg_pool2d", lambda: old_pool(x), stock_out),
        ("forward, AvgPool2x2 (int32 words)", lambda: pool(x), stock_out),
        (
            "backward, stock",
            lambda: torch.ops.aten.avg_pool2d_backward(
                g, x, [2, 2], [2, 2], [0, 0], False, True, None
            ),
            stock_grad,
        ),
        ("backward, compiled expand-reshape", lambda: old_upsample(g), stock_grad),
        ("backward, AvgPool2x2 (int32 words)", lambda: upsample(g), stock_grad),
    ]
    print(f"torch {torch.__version__}, {args.threads} thread(s), bf16 [{args.n}, 128, 32, 32]")
    for name, fn, ref in rows:
        exact = "" if ref is None else f"  bit-exact {torch.equal(fn(), ref)}"
        print(f"  {name:36s} {_median_ms(fn, args.reps):7.2f} ms{exact}")


if __name__ == "__main__":
    main()

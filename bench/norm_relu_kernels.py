"""ConvNet's instance norm + ReLU on CPU, forward, backward and double backward: autograd through
the stock ``F.group_norm`` + ``F.relu`` against ``ddbench.kernels.norm_relu``'s compiled kernels.

    python bench/norm_relu_kernels.py --threads 2 [--n 100] [--hw 32] [--reps 10]

One block of MTT's student at ``bench/mtt_memory.py``'s settings (``--n`` images x 128 channels x ``--hw`` x
``--hw``; layer 1 of ConvNet-3 on 28x28 input is 32x32), in fp32 and under bf16 autocast as the
unroll runs it. The three passes are timed separately (median of ``--reps``): stock forward,
the stock first-order backward with ``create_graph=True`` (what the unroll builds), the stock
double backward through it; and the fused kernels' three calls. Each pass is also compared with
the same pass in fp64 (relative L2 error; the cotangent of the input's gradient carries a large
constant part per sample and channel, as a conv's cotangent on positive inputs does).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from pool_kernels import _median_ms  # bench/ is on the path when run as a script

from ddbench.kernels import norm_relu


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want).norm() / want.norm())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = norm_relu.kernels()
    if kernels is None:
        raise SystemExit("the fused kernels are not available here (no C compiler?)")
    fwd, bwd, dbl = kernels
    g = torch.Generator().manual_seed(0)
    shape = (args.n, 128, args.hw, args.hw)
    h64 = torch.randn(shape, generator=g, dtype=torch.float64) * 0.4 + 0.3
    gamma64 = torch.rand(128, generator=g, dtype=torch.float64) + 0.5
    beta64 = torch.randn(128, generator=g, dtype=torch.float64) * 0.3
    g_r64 = torch.randn(shape, generator=g, dtype=torch.float64) * 1e-3
    a64 = torch.randn(shape, generator=g, dtype=torch.float64) * 1e-3
    a64 = a64 + torch.randn(args.n, 128, 1, 1, generator=g, dtype=torch.float64) * 1e-1
    b64 = torch.randn(128, generator=g, dtype=torch.float64)
    c64 = torch.randn(128, generator=g, dtype=torch.float64)

    def stock_passes(dtype: torch.dtype, autocast: bool):
        """Callables for the three stock passes and their results."""
        h = h64.to(dtype).requires_grad_(True)
        gamma, beta = (t.float().requires_grad_(True) for t in (gamma64, beta64))
        g_r = g_r64.to(dtype).requires_grad_(True)  # its cotangent is needed in an unroll
        state: dict[str, object] = {}

        def forward():
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                state["out"] = F.relu(F.group_norm(h, 128, gamma, beta, 1e-5)).to(dtype)
            return state["out"]

        def backward():
            state["first"] = torch.autograd.grad(
                state["out"], (h, gamma, beta), g_r, create_graph=True, retain_graph=True
            )
            return state["first"]

        def double():
            first = state["first"]
            total = (first[0].double() * a64).sum() + (first[1].double() * b64).sum()
            total = total + (first[2].double() * c64).sum()
            return torch.autograd.grad(total, (g_r, h, gamma), retain_graph=True)

        return forward, backward, double

    want_fwd = norm_relu._forward(h64, gamma64, beta64, 1e-5)  # the fp64 references
    want_bwd = norm_relu._backward(g_r64, h64, gamma64, beta64, 1e-5)
    want_dbl = norm_relu._double_backward(g_r64, h64, gamma64, beta64, a64, b64, c64, 1e-5)
    rows = []
    for label, dtype, autocast in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, True)):
        forward, backward, double = stock_passes(dtype, autocast)
        t_sf = _median_ms(forward, args.reps)
        out = forward()
        t_sb = _median_ms(backward, args.reps)
        first = backward()
        t_sd = _median_ms(double, args.reps)
        second = double()
        h, g_r, a = (t.to(dtype) for t in (h64, g_r64, a64))
        gamma, beta, b, c = (t.float() for t in (gamma64, beta64, b64, c64))
        t_ff = _median_ms(partial(fwd, h, gamma, beta, 1e-5), args.reps)
        t_fb = _median_ms(partial(bwd, g_r, h, gamma, beta, 1e-5), args.reps)
        t_fd = _median_ms(partial(dbl, g_r, h, gamma, beta, a, b, c, 1e-5), args.reps)
        f_out = fwd(h, gamma, beta, 1e-5)
        f_first = bwd(g_r, h, gamma, beta, 1e-5)
        f_dbl = dbl(g_r, h, gamma, beta, a, b, c, 1e-5)
        rows.append(
            (
                label,
                (t_sf, t_sb, t_sd),
                (t_ff, t_fb, t_fd),
                (_rel(out, want_fwd), _rel(first[0], want_bwd[0]), _rel(second[1], want_dbl[1])),
                (_rel(f_out, want_fwd), _rel(f_first[0], want_bwd[0]), _rel(f_dbl[1], want_dbl[1])),
            )
        )
    print(f"shape {list(shape)}, {args.threads} threads, median of {args.reps} (ms)")
    print("| precision | pass | stock ms | fused ms | speedup | stock err vs fp64 | fused err |")
    print("|---|---|---|---|---|---|---|")
    for label, ts, tf, es, ef in rows:
        for i, name in enumerate(("forward", "backward (create_graph)", "double backward")):
            print(
                f"| {label} | {name} | {ts[i]:.1f} | {tf[i]:.1f} | {ts[i] / tf[i]:.1f}x "
                f"| {es[i]:.1e} | {ef[i]:.1e} |"
            )


if __name__ == "__main__":
    main()

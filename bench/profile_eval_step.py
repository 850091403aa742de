"""Where does one evaluation step of the ``standard`` recipe spend its time on this CPU?

Trains ConvNet-3 with ddbench's engine on a random Fashion-MNIST subset (``--ipc`` images per
class) for ``--epochs`` epochs under the torch profiler and prints the operators by self CPU time,
grouped into convolution / pooling / normalisation / activation / other. Shares are what matter
(absolute times move with the load)::

    python bench/profile_eval_step.py --ipc 1 --epochs 60 --threads 1 [--compile] [--precision bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_speed  # noqa: E402  (the speed bench's recipe and subset helpers)

from ddbench import data as ddata  # noqa: E402
from ddbench.engine import train  # noqa: E402
from ddbench.models import create_model  # noqa: E402

GROUPS = {
    "convolution": ("convolution", "conv2d"),
    "pooling": ("pool",),
    "normalisation": ("group_norm", "batch_norm", "instance_norm"),
    "activation": ("threshold", "clamp_min", "relu"),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest operators")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = ddata.get_spec("fashion_mnist")
    _, recipe = eval_speed.load_standard_recipe(None, args.epochs)
    recipe = dataclasses.replace(recipe, augment=spec.dsa_strategy, precision=args.precision)
    x, y = eval_speed.random_subset(ddata.load_split("fashion_mnist", "train"), args.ipc, 0)

    def build() -> torch.nn.Module:
        return create_model("convnet", spec.channels, spec.num_classes, spec.im_size)

    def run(epochs: int) -> None:
        r = dataclasses.replace(recipe, epochs=epochs)
        train(build, [0], x, y, r, compile=args.compile)  # DSA from the recipe's strategy

    run(3)  # warm-up (and compilation)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(args.epochs)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    for e in events:
        group = next((g for g, keys in GROUPS.items() if any(k in e.key for k in keys)), "other")
        shares[group] += e.self_cpu_time_total
    shares["other"] += total - sum(shares.values())
    ms_per_step = total / 1e3 / args.epochs
    print(
        f"IPC {args.ipc}, {args.epochs} epochs, {args.threads} thread(s), "
        f"compile={args.compile}, precision={args.precision}"
    )
    print(f"self CPU time {total / 1e6:.2f} s, {ms_per_step:.1f} ms per epoch")
    for g, t in shares.items():
        print(f"  {g:14s} {100 * t / total:5.1f} %")
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
    for e in top:
        print(f"  {e.self_cpu_time_total / 1e3 / args.epochs:7.2f} ms/epoch  {e.key}")


if __name__ == "__main__":
    main()

"""Train the protocol's models together or one after another: which is faster on this device?

``ddbench.engine.train(parallel=...)`` can train the K models of a protocol (``standard``: 5
seeds) as one stacked model (``parallel=True``: each layer runs the K models' batches in one
call) or one at a time (``False``). ``parallel="auto"`` stacks on CUDA only. This script times
both on the same seeded random real subset of Fashion-MNIST under the ``standard`` recipe
(shortened with ``--epochs``) and scores the final models on the test split, so the two modes
can be checked to train the same models (same seeds, batch orders and DSA draws; only the float
summation order differs).

The issue's GPU goal is the 5 models of ``standard`` together at least 3x faster than one after
another::

    python bench/stacked_training.py --device cuda --ipc 1 10 --epochs 100 \\
        --out bench/results/stacked_training_cuda.json
    # CPU (2 cores here), bf16 autocast as in the eval-speed figures
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/stacked_training.py \\
        --device cpu --ipc 1 --epochs 60 --precision bf16 --out bench/results/stacked_training_cpu.json

Per mode it reports the wall time of the whole ``train`` call, the steady time per model and
epoch (median over the epochs after the first few, so compilation is out of it), and the mean
test accuracy of the K models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from eval_speed import load_standard_recipe, random_subset

from ddbench import data as ddata
from ddbench.augment import DSA
from ddbench.engine import accuracy, pick_device, train
from ddbench.models import create_model

WARM_EPOCHS = 5  # epochs left out of the steady time (compilation, first touches)


def time_mode(build, seeds, x, y, recipe, strategy, device, parallel, compile_arg):
    """Train ``seeds`` stacked or one by one; return the result and per-epoch timestamps."""
    stamps: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = train(
        build,
        seeds,
        x,
        y,
        recipe,
        device=device,
        augment=DSA(strategy),
        parallel=parallel,
        compile=compile_arg,
        on_epoch=lambda ep, loss: stamps.append(time.perf_counter()),
    )
    return res, time.perf_counter() - t0, stamps


def steady_per_model_epoch(stamps, epochs, k, parallel):
    """Median seconds per model and epoch, skipping the first epochs of each trained group."""
    durs = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    if parallel:  # one group of k models: each epoch trains all k
        return statistics.median(durs[WARM_EPOCHS:]) / k
    # k groups of one model, `epochs` stamps each; the gap between groups is not an epoch
    per = [durs[g * epochs + WARM_EPOCHS : (g + 1) * epochs - 1] for g in range(k)]
    return statistics.median([d for p in per for d in p])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="on")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.epochs <= WARM_EPOCHS + 1:
        ap.error(f"--epochs must be > {WARM_EPOCHS + 1} (the first {WARM_EPOCHS} are not timed)")
    device = pick_device(args.device)
    compile_arg = {"on": True, "off": False}.get(args.compile, "auto")
    spec = ddata.get_spec(args.dataset)
    _, recipe = load_standard_recipe(None, args.epochs)
    recipe = dataclasses.replace(recipe, augment=spec.dsa_strategy, precision=args.precision)
    train_split = ddata.load_split(args.dataset, "train")
    test = ddata.load_split(args.dataset, "test")

    def build():
        return create_model("convnet", spec.channels, spec.num_classes, spec.im_size)

    k = len(args.seeds)
    rows = []
    for ipc in args.ipc:
        x, y = random_subset(train_split, ipc, args.seeds[0])
        for parallel in (False, True):
            res, wall, stamps = time_mode(
                build, args.seeds, x, y, recipe, spec.dsa_strategy, device, parallel, compile_arg
            )
            accs = accuracy(res.models, test.images, test.labels, transform=train_split.normalize)
            row = {
                "ipc": ipc,
                "parallel": parallel,
                "models": k,
                "epochs": args.epochs,
                "wall_seconds": wall,
                "steady_s_per_model_epoch": steady_per_model_epoch(
                    stamps, args.epochs, k, parallel
                ),
                "accuracy_mean": float(torch.tensor(accs).mean()),
                "accuracy_per_seed": [float(a) for a in accs],
            }
            rows.append(row)
            print(
                f"ipc {ipc:3d} {'together' if parallel else 'one by one':10s} "
                f"{row['steady_s_per_model_epoch'] * 1e3:8.2f} ms/model-epoch (steady), "
                f"{wall:7.1f} s wall, accuracy {row['accuracy_mean']:.2f}",
                flush=True,
            )
        one, together = rows[-2], rows[-1]
        print(
            f"ipc {ipc:3d} together / one by one: "
            f"{one['steady_s_per_model_epoch'] / together['steady_s_per_model_epoch']:.2f}x "
            f"steady speed-up, accuracy difference "
            f"{together['accuracy_mean'] - one['accuracy_mean']:+.2f}"
        )
    if args.out:
        env = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "precision": args.precision,
            "compile": args.compile,
        }
        if device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(device)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"env": env, "runs": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

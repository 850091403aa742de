"""Train the protocol's models together or one after another: which is faster on this device?

``ddbench.engine.train(parallel=...)`` can train the K models of a protocol (``standard``: 5
seeds) as one stacked model (``parallel=True``: each layer runs the K models' batches in one
call) or one at a time (``False``). ``parallel="auto"`` stacks on CUDA only. This script times
both on the same seeded random real subset of Fashion-MNIST under the ``standard`` recipe
(shortened with ``--epochs``) and scores the final models on the test split, so the two modes
can be checked to train the same models (same seeds, batch orders and DSA draws; only the float
summation order differs).

On a GPU, and on a CPU::

    python bench/stacked_training.py --device cuda --ipc 1 10 --epochs 100 \\
        --out bench/results/stacked_training/ipc1_ipc10_cuda.json
    # a 2-core CPU, bf16 autocast as in the eval-speed figures
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/stacked_training.py \\
        --device cpu --ipc 1 --epochs 60 --precision bf16 \\
        --out bench/results/stacked_training/ipc1_amd_epyc.json

Per mode it reports the wall time of the training loop, the steady time per model and epoch
(median over the epochs after the first, so compilation is out of it), and the mean test
accuracy of the K models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from eval_speed import epoch_timing, load_standard_recipe, random_subset, train_ddbench

from ddbench import data as ddata
from ddbench.engine import accuracy, pick_device
from ddbench.models import create_model


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
            res, stamps, _ = train_ddbench(
                build, args.seeds, x, y, recipe, spec.dsa_strategy, device, compile_arg, parallel
            )
            # median epoch after the first (compilation); one by one, the few gaps between
            # two models' runs fall outside the median
            steady = epoch_timing(stamps, args.epochs)["steady_s_per_epoch_median"]
            accs = accuracy(res.models, test.images, test.labels, transform=train_split.normalize)
            row = {
                "ipc": ipc,
                "parallel": parallel,
                "models": k,
                "epochs": args.epochs,
                "wall_seconds": res.seconds,
                "steady_s_per_model_epoch": steady / k if parallel else steady,
                "accuracy_mean": float(torch.tensor(accs).mean()),
                "accuracy_per_seed": [float(a) for a in accs],
            }
            rows.append(row)
            print(
                f"ipc {ipc:3d} {'together' if parallel else 'one by one':10s} "
                f"{row['steady_s_per_model_epoch'] * 1e3:8.2f} ms/model-epoch (steady), "
                f"{res.seconds:7.1f} s wall, accuracy {row['accuracy_mean']:.2f}",
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

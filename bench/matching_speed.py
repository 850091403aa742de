"""Seconds per outer iteration of DM and DC: ddbench against the ORIGINAL DatasetCondensation
code's per-iteration work, re-implemented below, on the same machine, data and allocator.

Cases (Fashion-MNIST, ConvNet-3, batch_real 256, the official defaults):

* ``dm10``: DM at IPC 10 (``main_DM.py``): a fresh frozen ConvNet per iteration; per class, 256
  real and 10 synthetic images under one siamese DSA draw, squared distance of mean embeddings.
* ``dc1`` / ``dc10``: DC at IPC 1 / 10 (``main.py``, method DC, no DSA): a fresh ConvNet per
  outer iteration; ``outer_loop`` times (1 / 10): per class, the layer-wise gradient distance
  ("ours") between the real batch's and the synthetic batch's weight gradients, one image step;
  between them ``inner_loop`` (1 / 50) epochs of SGD on the synthetic set through a
  ``DataLoader`` (batch 256).

The original side mirrors the official code's structure: a Python loop over classes,
``get_images`` by random indices into the normalised train tensor, ``torch.autograd.grad`` for
both gradients, DC's ``match_loss``/``distance_wb``, and DC's ``utils.epoch`` for the inner
training (shared with ``bench/eval_speed.py``). Its DSA seeds come from a counter, not the clock.
The ddbench side is the product: the method built from ``conf/method/<dm|dc>.yaml`` exactly as
the CLI builds it, its own per-iteration timer (``Task.logger``), fp32 or ``precision=bf16``.

Each (case, implementation, precision) runs in a fresh subprocess (so the peak RSS is its own)
under the allocator this script was launched with, for ``--warmup`` untimed and ``--iters`` timed
iterations; the median timed iteration is reported with its GFLOP/s (FLOPs counted from the
architecture, see ``flops_per_iteration``) against the conv2d peak measured by the same script.
``--one CASE IMPL PRECISION --profile N`` runs one of them under the torch profiler instead::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python bench/matching_speed.py --out bench/results/matching_speed/run.json
    DDBENCH_ALLOCATOR=system python bench/matching_speed.py ...   # glibc defaults, both sides
    python bench/matching_speed.py --one dm10 ddbench bf16 --profile 25
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import (  # noqa: E402  (the original DC helpers, written out once)
    DiffAugment,
    ParamDiffAug,
    TensorDataset,
    count_forward_macs,
    dc_epoch,
    measure_peak,
)

from ddbench import _alloc  # noqa: E402
from ddbench import data as ddata  # noqa: E402
from ddbench.augment import DSA  # noqa: E402
from ddbench.method import Task, build_method  # noqa: E402
from ddbench.models import create_model  # noqa: E402
from ddbench.protocol import peak_memory_bytes  # noqa: E402
from ddbench.synset import atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {  # name: (method, ipc, outer_loop, inner_loop)
    "dm10": ("dm", 10, 1, 0),
    "dc1": ("dc", 1, 1, 1),
    "dc10": ("dc", 10, 10, 50),
}
BATCH_REAL, BATCH_TRAIN, LR_NET, LR_IMG_DC, LR_IMG_DM = 256, 256, 0.01, 0.1, 1.0


# ================================================================================================
# The original per-iteration work (re-implemented from DatasetCondensation main.py / main_DM.py)
# ================================================================================================


def distance_wb(gwr, gws):
    """DC's ``utils.distance_wb``: per output row 1 - cosine; 1-D (bias/norm) grads give 0."""
    shape = gwr.shape
    if len(shape) == 4:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:
        return 0
    return torch.sum(
        1
        - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 1e-6)
    )


def match_loss(gw_syn, gw_real):
    return sum(distance_wb(gr, gs) for gr, gs in zip(gw_real, gw_syn))


class Original:
    """State of the official scripts: normalised train tensor, per-class indices, the images."""

    def __init__(self, train, ipc, build, strategy):
        self.images_all = train.normalize(train.images)
        self.indices_class = [train.indices_of(c).tolist() for c in range(train.spec.num_classes)]
        self.k, self.ipc, self.build, self.strategy = train.spec.num_classes, ipc, build, strategy
        gen = torch.Generator().manual_seed(0)
        idx = torch.cat([train.indices_of(c)[:ipc] for c in range(self.k)])  # init real
        self.image_syn = self.images_all[idx].clone().requires_grad_(True)
        self.label_syn = torch.arange(self.k).repeat_interleave(ipc)
        self.param = ParamDiffAug()
        self.seed = int(torch.randint(0, 100000, (1,), generator=gen))

    def get_images(self, c, n):
        idx_shuffle = torch.randperm(len(self.indices_class[c]))[:n].tolist()
        return self.images_all[[self.indices_class[c][i] for i in idx_shuffle]]

    def dm_iteration(self, opt_img):
        net = self.build()
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        embed = net.embed
        loss = torch.tensor(0.0)
        for c in range(self.k):
            img_real = self.get_images(c, BATCH_REAL)
            img_syn = self.image_syn[c * self.ipc : (c + 1) * self.ipc]
            self.seed += 1
            img_real = DiffAugment(img_real, self.strategy, seed=self.seed, param=self.param)
            img_syn = DiffAugment(img_syn, self.strategy, seed=self.seed, param=self.param)
            output_real = embed(img_real).detach()
            output_syn = embed(img_syn)
            loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
        opt_img.zero_grad()
        loss.backward()
        opt_img.step()
        return float(loss)

    def dc_iteration(self, opt_img, outer_loop, inner_loop):
        net = self.build()
        net.train()
        net_parameters = list(net.parameters())
        optimizer_net = torch.optim.SGD(net.parameters(), lr=LR_NET)
        criterion = nn.CrossEntropyLoss()
        loss_avg = 0.0
        for ol in range(outer_loop):
            loss = torch.tensor(0.0)
            for c in range(self.k):
                img_real = self.get_images(c, BATCH_REAL)
                lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
                img_syn = self.image_syn[c * self.ipc : (c + 1) * self.ipc]
                lab_syn = torch.ones((self.ipc,), dtype=torch.long) * c
                output_real = net(img_real)
                loss_real = criterion(output_real, lab_real)
                gw_real = torch.autograd.grad(loss_real, net_parameters)
                gw_real = [g.detach().clone() for g in gw_real]
                output_syn = net(img_syn)
                loss_syn = criterion(output_syn, lab_syn)
                gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
                loss += match_loss(gw_syn, gw_real)
            opt_img.zero_grad()
            loss.backward()
            opt_img.step()
            loss_avg += float(loss)
            if ol == outer_loop - 1:
                break
            dst = TensorDataset(self.image_syn.detach().clone(), self.label_syn.clone())
            loader = DataLoader(dst, batch_size=BATCH_TRAIN, shuffle=True, num_workers=0)
            for _ in range(inner_loop):
                dc_epoch("train", loader, net, optimizer_net, criterion, "cpu", False, "", None)
        return loss_avg / outer_loop


# ================================================================================================
# One measurement (run in its own subprocess)
# ================================================================================================


class _Timer:
    """A ``Task.logger`` that keeps the engine's own per-iteration seconds."""

    def __init__(self):
        self.seconds: list[float] = []

    def metrics(self, values, step=None):
        if "seconds" in values:
            self.seconds.append(float(values["seconds"]))


def measure_one(case: str, impl: str, precision: str, warmup: int, iters: int) -> dict:
    method, ipc, outer, inner = CASES[case]
    train = ddata.load_split("fashion_mnist", "train")
    spec = train.spec

    def build():
        return create_model("convnet", spec.channels, spec.num_classes, spec.im_size)

    torch.manual_seed(0)
    times: list[float] = []
    if impl == "original":
        orig = Original(train, ipc, build, spec.dsa_strategy)
        lr = LR_IMG_DM if method == "dm" else LR_IMG_DC
        opt = torch.optim.SGD([orig.image_syn], lr=lr, momentum=0.5)
        for _ in range(warmup + iters):
            t = time.perf_counter()
            if method == "dm":
                orig.dm_iteration(opt)
            else:
                orig.dc_iteration(opt, outer, inner)
            times.append(time.perf_counter() - t)
    else:
        cfg = yaml.safe_load((REPO / "conf" / "method" / f"{method}.yaml").read_text())
        cfg.update(iterations=warmup + iters, batch_real=BATCH_REAL, init="real")
        timer = _Timer()
        task = Task(
            train=train,
            ipc=ipc,
            model_factory=build,
            generator=torch.Generator().manual_seed(0),
            seed=0,
            device=torch.device("cpu"),
            augment=DSA(spec.dsa_strategy),
            logger=timer,
            precision=precision,
        )
        build_method(cfg).distill(task)
        times = timer.seconds
    timed = times[warmup:]
    return {
        "case": case,
        "impl": impl,
        "precision": precision,
        "seconds_per_iteration": statistics.median(timed),
        "seconds": timed,
        "warmup_seconds": times[:warmup],
        "peak_rss_bytes": peak_memory_bytes(),
    }


def flops_per_iteration(case: str, fwd: float) -> float:
    """FLOPs of one outer iteration, counting a forward as ``fwd`` per image, a backward to the
    weights and inputs as 2 forwards, and DC's double backward through the synthetic gradient as
    3 more (approximate; augmentation, norms and the distance itself not counted)."""
    method, ipc, outer, inner = CASES[case]
    n_real, n_syn = 10 * BATCH_REAL, 10 * ipc
    if method == "dm":
        return fwd * (n_real + 3 * n_syn)
    matching = fwd * (3 * n_real + 6 * n_syn)
    return outer * matching + (outer - 1) * inner * 3 * fwd * n_syn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--impls", nargs="+", default=["original", "ddbench"])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default by case)")
    ap.add_argument("--skip-peak", action="store_true")
    ap.add_argument("--out", default="bench/results/matching_speed/run.json")
    ap.add_argument(
        "--profile", type=int, default=0, help="with --one: list the N costliest operators"
    )
    ap.add_argument("--one", nargs=3, metavar=("CASE", "IMPL", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    default_iters = {"dm10": 4, "dc1": 3, "dc10": 1}

    if args.one:
        case, impl, precision = args.one
        iters = args.iters or default_iters[case]
        if not args.profile:
            print(json.dumps(measure_one(case, impl, precision, args.warmup, iters)))
            return None
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            measure_one(case, impl, precision, args.warmup, iters)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
        return None

    env = {
        "allocator": _alloc.describe(),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": os.getloadavg(),
    }
    print(f"allocator: {env['allocator']}, {env['threads']} threads, torch {env['torch']}")
    spec = ddata.get_spec("fashion_mnist")
    macs, _ = count_forward_macs(
        create_model("convnet", spec.channels, spec.num_classes, spec.im_size), spec.shape
    )
    fwd = 2 * (macs["conv"] + macs["linear"])
    peak = None if args.skip_peak else measure_peak()
    if peak:
        print(f"peak conv2d fp32 {peak['conv2d_fp32']['gflops']:.1f} GFLOP/s, "
              f"bf16 {peak['conv2d_bf16']['gflops']:.1f} GFLOP/s")  # fmt: skip

    rows = []
    for case in args.cases:
        for impl in args.impls:
            for precision in args.precisions if impl == "ddbench" else ["fp32"]:
                cmd = [sys.executable, __file__, "--one", case, impl, precision]
                cmd += ["--warmup", str(args.warmup)]
                if args.iters:
                    cmd += ["--iters", str(args.iters)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                flops = flops_per_iteration(case, fwd)
                row["gflop_per_iteration"] = flops / 1e9
                row["gflops_achieved"] = flops / row["seconds_per_iteration"] / 1e9
                rows.append(row)
                print(
                    f"{case:5s} {impl:8s} {precision:4s} {row['seconds_per_iteration']:8.2f} s/it"
                    f"  {row['gflops_achieved']:6.1f} GFLOP/s  peak RSS "
                    f"{row['peak_rss_bytes'] / 2**30:.2f} GiB"
                )
    for case in args.cases:
        base = [r for r in rows if r["case"] == case and r["impl"] == "original"]
        for r in rows:
            if base and r["case"] == case and r["impl"] == "ddbench":
                r["speedup_vs_original"] = (
                    base[0]["seconds_per_iteration"] / r["seconds_per_iteration"]
                )
                print(f"{case:5s} ddbench {r['precision']}: {r['speedup_vs_original']:.2f}x")
    result = {"env": env, "peak": peak, "forward_flops_per_image": fwd, "rows": rows}
    if args.out:
        out = Path(args.out)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

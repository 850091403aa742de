"""How fast does ddbench evaluate a synthetic set under the ``standard`` recipe, compared with
the ORIGINAL DatasetCondensation (DC) evaluation loop, timed in the same process?

Recipe (``conf/protocol/standard.yaml``, one model per seed): ConvNet-3, SGD lr 0.01 momentum 0.9
wd 5e-4, batch 256, 1000 epochs, lr x0.1 at half, DSA in mode 'S' (one op per batch, params per
sample). The synthetic set is a seeded random real subset of Fashion-MNIST train (IPC 1 and 10).

Two implementations, run alternately in one process on the same sets:

* ``original``: a re-implementation of DC's ``utils.evaluate_synset``/``epoch``/``DiffAugment``
  (written out below, nothing imported from ddbench's engine or augment): ``TensorDataset`` +
  ``DataLoader(batch_size=256, shuffle=True, num_workers=0)``, DiffAugment per batch from torch's
  global RNG, per-batch ``loss.item()`` and numpy accuracy, ``Epoch + 1`` epochs, a new SGD
  optimiser with lr x0.1 after epoch ``Epoch // 2 + 1``. Seeded with ``torch.manual_seed(seed)``
  before the net is built (DC seeds it from the clock).
* ``ddbench``: ``ddbench.engine.train`` with the recipe of ``standard.yaml`` and ``DSA``, then
  ``ddbench.engine.accuracy`` (what ``ddbench evaluate`` runs, minus the CLI).

It also measures the machine's conv2d and matmul peak (fp32 and bf16) and reports the GFLOP/s each
training loop achieves (FLOPs of ConvNet-3 counted from the architecture; train step ~ 3x forward;
augmentation, norms and activations not counted).

Allocators. Both implementations run in this one process, so they always share one allocator;
this script applies the CLI's glibc ``mallopt`` settings to the whole process (that is the point:
the comparison isolates the training loop, not the allocator). This script does NOT re-exec
itself with tcmalloc as the ``ddbench`` CLI does; pick the allocator at launch::

    # glibc with ddbench's mallopt (no mmap for large blocks, big trim threshold), both sides
    python bench/eval_speed.py --ipc 1 10 --epochs 1000 --seeds 0 1 2 --impl both \\
        --out bench/results/eval_speed/run.json
    # plain glibc defaults, both sides
    DDBENCH_ALLOCATOR=system python bench/eval_speed.py ...
    # tcmalloc, both sides (what the ddbench CLI re-execs itself with where it is installed)
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/eval_speed.py ...

Shorter runs: ``--epochs 20`` times 20 epochs (21 for the original, which trains Epoch + 1) and
reports s/epoch and s per 1000 epochs EXTRAPOLATED (first epoch + 999 x mean of the later
epochs), labelled as such. ``--time-only`` skips the test evaluation. ``--compile`` is passed to
``train`` (default ``auto``, as the product: ``auto`` compiles runs of >= 1000 steps, so a
1000-epoch run compiles and a short ``--epochs`` run does not unless ``--compile on``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ddbench import _alloc
from ddbench import data as ddata
from ddbench.augment import DSA
from ddbench.engine import Recipe, accuracy, should_compile, train
from ddbench.models import create_model
from ddbench.protocol import Protocol

_alloc.configure()  # the CLI's glibc settings in this process (unless DDBENCH_ALLOCATOR=system)

REPO = Path(__file__).resolve().parents[1]

# DC's hard-coded evaluation hyper-parameters (utils.evaluate_synset / main.py defaults).
DC_LR, DC_MOMENTUM, DC_WD, DC_BATCH = 0.01, 0.9, 0.0005, 256


# ================================================================================================
# The original DC evaluation loop (re-implemented from DatasetCondensation/utils.py)
# ================================================================================================


class ParamDiffAug:
    def __init__(self):
        self.aug_mode = "S"  # 'multiple or single'
        self.prob_flip = 0.5
        self.ratio_scale = 1.2
        self.ratio_rotate = 15.0
        self.ratio_crop_pad = 0.125
        self.ratio_cutout = 0.5  # the size would be 0.5x0.5
        self.ratio_noise = 0.05
        self.brightness = 1.0
        self.saturation = 2.0
        self.contrast = 0.5
        self.batchmode = False
        self.latestseed = -1


def set_seed_DiffAug(param):
    if param.latestseed == -1:
        return
    torch.random.manual_seed(param.latestseed)
    param.latestseed += 1


def DiffAugment(x, strategy="", seed=-1, param=None):
    param.batchmode = seed != -1
    param.latestseed = seed
    if strategy == "None" or strategy == "none":
        return x
    if strategy:
        if param.aug_mode == "M":  # original
            for p in strategy.split("_"):
                for f in AUGMENT_FNS[p]:
                    x = f(x, param)
        elif param.aug_mode == "S":
            pbties = strategy.split("_")
            set_seed_DiffAug(param)
            p = pbties[torch.randint(0, len(pbties), size=(1,)).item()]
            for f in AUGMENT_FNS[p]:
                x = f(x, param)
        else:
            raise SystemExit(f"unknown augmentation mode: {param.aug_mode}")
        x = x.contiguous()
    return x


def rand_scale(x, param):
    # x>1, max scale; sx, sy: (0, +oo), 1: original size, 0.5: enlarge 2 times
    ratio = param.ratio_scale
    set_seed_DiffAug(param)
    sx = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    set_seed_DiffAug(param)
    sy = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    theta = [
        [
            [sx[i], 0, 0],
            [0, sy[i], 0],
        ]
        for i in range(x.shape[0])
    ]
    theta = torch.tensor(theta, dtype=torch.float)
    if param.batchmode:  # batch-wise:
        theta[:] = theta[0]
    grid = F.affine_grid(theta, x.shape, align_corners=True).to(x.device)
    x = F.grid_sample(x, grid, align_corners=True)
    return x


def rand_rotate(x, param):  # [-180, 180], 90: anticlockwise 90 degree
    ratio = param.ratio_rotate
    set_seed_DiffAug(param)
    theta = (torch.rand(x.shape[0]) - 0.5) * 2 * ratio / 180 * float(np.pi)
    theta = [
        [
            [torch.cos(theta[i]), torch.sin(-theta[i]), 0],
            [torch.sin(theta[i]), torch.cos(theta[i]), 0],
        ]
        for i in range(x.shape[0])
    ]
    theta = torch.tensor(theta, dtype=torch.float)
    if param.batchmode:  # batch-wise:
        theta[:] = theta[0]
    grid = F.affine_grid(theta, x.shape, align_corners=True).to(x.device)
    x = F.grid_sample(x, grid, align_corners=True)
    return x


def rand_flip(x, param):
    prob = param.prob_flip
    set_seed_DiffAug(param)
    randf = torch.rand(x.size(0), 1, 1, 1, device=x.device)
    if param.batchmode:  # batch-wise:
        randf[:] = randf[0]
    return torch.where(randf < prob, x.flip(3), x)


def rand_brightness(x, param):
    ratio = param.brightness
    set_seed_DiffAug(param)
    randb = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.batchmode:  # batch-wise:
        randb[:] = randb[0]
    x = x + (randb - 0.5) * ratio
    return x


def rand_saturation(x, param):
    ratio = param.saturation
    x_mean = x.mean(dim=1, keepdim=True)
    set_seed_DiffAug(param)
    rands = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.batchmode:  # batch-wise:
        rands[:] = rands[0]
    x = (x - x_mean) * (rands * ratio) + x_mean
    return x


def rand_contrast(x, param):
    ratio = param.contrast
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    set_seed_DiffAug(param)
    randc = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
    if param.batchmode:  # batch-wise:
        randc[:] = randc[0]
    x = (x - x_mean) * (randc + ratio) + x_mean
    return x


def rand_crop(x, param):
    # The image is padded on its surrounding and then cropped.
    ratio = param.ratio_crop_pad
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1], device=x.device)
    set_seed_DiffAug(param)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1], device=x.device)
    if param.batchmode:  # batch-wise:
        translation_x[:] = translation_x[0]
        translation_y[:] = translation_y[0]
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(x.size(2), dtype=torch.long, device=x.device),
        torch.arange(x.size(3), dtype=torch.long, device=x.device),
        indexing="ij",  # DC relies on the (then default) 'ij' indexing
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    x = x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)
    return x


def rand_cutout(x, param):
    ratio = param.ratio_cutout
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    offset_x = torch.randint(
        0, x.size(2) + (1 - cutout_size[0] % 2), size=[x.size(0), 1, 1], device=x.device
    )
    set_seed_DiffAug(param)
    offset_y = torch.randint(
        0, x.size(3) + (1 - cutout_size[1] % 2), size=[x.size(0), 1, 1], device=x.device
    )
    if param.batchmode:  # batch-wise:
        offset_x[:] = offset_x[0]
        offset_y[:] = offset_y[0]
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(cutout_size[0], dtype=torch.long, device=x.device),
        torch.arange(cutout_size[1], dtype=torch.long, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    x = x * mask.unsqueeze(1)
    return x


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "crop": [rand_crop],
    "cutout": [rand_cutout],
    "flip": [rand_flip],
    "scale": [rand_scale],
    "rotate": [rand_rotate],
}


class TensorDataset(Dataset):
    """DC's ``utils.TensorDataset``."""

    def __init__(self, images, labels):  # images: n x c x h x w tensor
        self.images = images.detach().float()
        self.labels = labels.detach()

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return self.images.shape[0]


def dc_epoch(mode, dataloader, net, optimizer, criterion, device, aug, strategy, dsa_param):
    """DC's ``utils.epoch`` (DSA branch)."""
    loss_avg, acc_avg, num_exp = 0, 0, 0
    net = net.to(device)
    criterion = criterion.to(device)
    if mode == "train":
        net.train()
    else:
        net.eval()
    for datum in dataloader:
        img = datum[0].float().to(device)
        if aug:
            img = DiffAugment(img, strategy, param=dsa_param)  # seed=-1: global RNG
        lab = datum[1].long().to(device)
        n_b = lab.shape[0]
        output = net(img)
        loss = criterion(output, lab)
        acc = np.sum(
            np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy())
        )
        loss_avg += loss.item() * n_b
        acc_avg += acc
        num_exp += n_b
        if mode == "train":
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return loss_avg / num_exp, acc_avg / num_exp


def train_original(build, seed, images, labels, epochs, strategy, device):
    """DC's ``utils.evaluate_synset`` training part; returns (net, epoch end times, final loss)."""
    torch.manual_seed(seed)  # DC: torch.random.manual_seed(int(time.time() * 1000) % 100000)
    net = build().to(device)
    images_train, labels_train = images.to(device), labels.to(device)
    lr = float(DC_LR)
    Epoch = int(epochs)
    lr_schedule = [Epoch // 2 + 1]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=DC_MOMENTUM, weight_decay=DC_WD)
    criterion = nn.CrossEntropyLoss().to(device)
    dst_train = TensorDataset(images_train, labels_train)
    trainloader = DataLoader(dst_train, batch_size=DC_BATCH, shuffle=True, num_workers=0)
    dsa_param = ParamDiffAug()
    _sync(device)
    stamps = [time.perf_counter()]
    loss_train = float("nan")
    for ep in range(Epoch + 1):
        loss_train, _ = dc_epoch(
            "train", trainloader, net, optimizer, criterion, device, True, strategy, dsa_param
        )
        if ep in lr_schedule:
            lr *= 0.1
            optimizer = torch.optim.SGD(
                net.parameters(), lr=lr, momentum=DC_MOMENTUM, weight_decay=DC_WD
            )
        _sync(device)
        stamps.append(time.perf_counter())
    return net, stamps, loss_train


@torch.no_grad()
def test_original(net, test_x, test_y, device):
    """DC's test pass: batch 256, no augmentation (under no_grad; same numbers, less memory)."""
    loader = DataLoader(TensorDataset(test_x, test_y), batch_size=256, shuffle=False)
    _, acc = dc_epoch("test", loader, net, None, nn.CrossEntropyLoss(), device, False, "", None)
    return float(acc) * 100


# ================================================================================================
# ddbench's side
# ================================================================================================


class _CompileWatch(logging.Handler):
    """Catches the engine's 'torch.compile failed' warning (it then trains eagerly)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.failed: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "torch.compile failed" in msg:
            self.failed.append(msg[:300])


def train_ddbench(build, seed, images, labels, recipe, strategy, device, compile, parallel=False):
    """``engine.train`` on one seed (or a list of seeds, trained together with ``parallel``);
    returns its result, the loop start + epoch-end timestamps, and whether compilation failed."""
    stamps: list[float] = []
    watch = _CompileWatch()
    logger = logging.getLogger("ddbench")
    logger.addHandler(watch)
    try:
        _sync(device)
        t_call = time.perf_counter()
        res = train(
            build,
            list(seed) if isinstance(seed, (list, tuple)) else [seed],
            images,
            labels,
            recipe,
            device=device,
            augment=DSA(strategy),
            compile=compile,
            parallel=parallel,
            on_epoch=lambda ep, loss: stamps.append(time.perf_counter()),
        )
        t_ret = time.perf_counter()
    finally:
        logger.removeHandler(watch)
    # The engine's own timer starts after the model is built, right before the epoch loop, and
    # stops just before it returns: the loop start is t_ret - res.seconds (up to microseconds).
    t0 = max(t_ret - res.seconds, t_call)
    return res, [t0] + stamps, watch.failed


# ================================================================================================
# Helpers: data, FLOPs, peak
# ================================================================================================


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def random_subset(split, ipc, seed):
    """``ipc`` random images per class (class by class), normalised; a generator seeded by seed."""
    g = torch.Generator().manual_seed(int(seed))
    xs, ys = [], []
    for c in range(split.num_classes):
        idx = split.indices_of(c)
        pick = idx[torch.randperm(len(idx), generator=g)[:ipc]]
        xs.append(split.images[pick])
        ys.append(torch.full((len(pick),), c, dtype=torch.long))
    return split.normalize(torch.cat(xs)), torch.cat(ys)


def count_forward_macs(model, shape):
    """Multiply-accumulates of one image's forward pass through the Conv2d and Linear layers,
    from the layers' shapes (forward hooks on a dummy input)."""
    macs = {"conv": 0, "linear": 0}
    layers = []

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs["conv"] += out[0].numel() * k
        layers.append(
            f"conv {m.in_channels}->{m.out_channels} k{m.kernel_size[0]} p{m.padding[0]} "
            f"out {tuple(out.shape[1:])}: {out[0].numel() * k:,} MAC"
        )

    def linear_hook(m, inp, out):
        macs["linear"] += m.in_features * m.out_features
        layers.append(
            f"linear {m.in_features}->{m.out_features}: {m.in_features * m.out_features:,} MAC"
        )

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return macs, layers


def _best_time(fn, min_seconds, max_reps):
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    t_all = time.perf_counter()
    while len(times) < max_reps and (len(times) < 2 or time.perf_counter() - t_all < min_seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), len(times)


@torch.no_grad()
def measure_peak(min_seconds=1.0, max_reps=20):
    """GFLOP/s of a large conv2d forward and a square matmul, in fp32 and bf16 (best of reps)."""
    out = {}
    n, c, hw, k = 256, 128, 16, 3
    conv_flops = 2 * n * c * hw * hw * c * k * k  # padding 1: output is n x c x hw x hw
    m = 2048
    mm_flops = 2 * m**3
    gx = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, hw, hw, generator=gx)
    w = torch.randn(c, c, k, k, generator=gx)
    a = torch.randn(m, m, generator=gx)
    b = torch.randn(m, m, generator=gx)
    for dtype in (torch.float32, torch.bfloat16):
        name = "fp32" if dtype == torch.float32 else "bf16"
        xd, wd, ad, bd = (t.to(dtype) for t in (x, w, a, b))
        s, reps = _best_time(
            lambda xd=xd, wd=wd: F.conv2d(xd, wd, padding=1), min_seconds, max_reps
        )
        out[f"conv2d_{name}"] = {
            "shape": f"[{n},{c},{hw},{hw}] x [{c},{c},{k},{k}] pad 1",
            "gflop": conv_flops / 1e9,
            "best_seconds": s,
            "reps": reps,
            "gflops": conv_flops / s / 1e9,
        }
        s, reps = _best_time(lambda ad=ad, bd=bd: ad @ bd, min_seconds, max_reps)
        out[f"matmul_{name}"] = {
            "shape": f"[{m},{m}] x [{m},{m}]",
            "gflop": mm_flops / 1e9,
            "best_seconds": s,
            "reps": reps,
            "gflops": mm_flops / s / 1e9,
        }
    return out


def load_standard_recipe(strategy, epochs):
    import yaml

    path = REPO / "conf" / "protocol" / "standard.yaml"
    cfg = yaml.safe_load(path.read_text())
    proto = Protocol.from_config(cfg)
    recipe: Recipe = proto.recipe(strategy)
    checks = {
        "lr": (recipe.lr, DC_LR),
        "momentum": (recipe.momentum, DC_MOMENTUM),
        "weight_decay": (recipe.weight_decay, DC_WD),
        "batch_size": (recipe.batch_size, DC_BATCH),
    }
    for key, (ours, dc) in checks.items():
        if ours != dc:
            print(f"WARNING: standard.yaml {key}={ours} differs from DC's {dc}", file=sys.stderr)
    return proto, dataclasses.replace(recipe, epochs=int(epochs))


def epoch_timing(stamps, epochs_full):
    """From epoch boundary timestamps: total, first epoch, steady (later epochs) s/epoch, and
    seconds per ``epochs_full`` epochs, measured when the run had that many, else extrapolated."""
    durs = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    total = stamps[-1] - stamps[0]
    later = durs[1:] or durs
    steady = sum(later) / len(later)
    n = len(durs)
    if n >= epochs_full:
        per_full, basis = total * epochs_full / n, "measured"
    else:
        per_full, basis = durs[0] + (epochs_full - 1) * steady, "extrapolated"
    return {
        "epochs_run": n,
        "train_seconds": total,
        "first_epoch_seconds": durs[0],
        "steady_s_per_epoch": steady,
        "steady_s_per_epoch_median": statistics.median(later),
        "s_per_1000_epochs": per_full,
        "s_per_1000_basis": basis,
    }


def _mean_std(v):
    if not v:
        return None, None
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(v) > 1 else 0.0


# ================================================================================================
# Main
# ================================================================================================


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--epochs", type=int, default=1000, help="recipe epochs (DC trains E+1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--impl", choices=["both", "original", "ddbench"], default="both")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="ddbench side only (precision=bf16: autocast); the original loop is always fp32",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--warmup-epochs", type=int, default=2, help="untimed eager epochs per impl")
    ap.add_argument("--time-only", action="store_true", help="skip the test evaluation")
    ap.add_argument("--skip-peak", action="store_true", help="skip the conv/matmul peak")
    ap.add_argument("--out", default="bench/results/eval_speed/run.json")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compile_arg = {"auto": "auto", "on": True, "off": False}[args.compile]
    impls = ["original", "ddbench"] if args.impl == "both" else [args.impl]

    env = {
        "allocator": _alloc.describe(),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
        "DDBENCH_ALLOCATOR": os.environ.get("DDBENCH_ALLOCATOR", ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_name(),
        "device": str(device),
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"allocator: {env['allocator']}   LD_PRELOAD={env['LD_PRELOAD']!r}   "
        f"DDBENCH_ALLOCATOR={env['DDBENCH_ALLOCATOR']!r}"
    )
    print(
        f"torch {env['torch']}, {env['threads']} threads, {env['cpu']} "
        f"({env['cpu_capability']}), load avg {env['loadavg_start']}"
    )

    spec = ddata.get_spec(args.dataset)
    proto, recipe = load_standard_recipe(None, args.epochs)
    strategy = spec.dsa_strategy if proto.augment == "dsa" else proto.augment
    recipe = dataclasses.replace(recipe, augment=strategy, precision=args.precision)
    print(f"recipe ({proto.name}, hash {proto.hash}, epochs -> {args.epochs}): {recipe}")

    def build():
        # ddbench's ConvNet is DC's ConvNet (networks.py) layer for layer: conv3x3 (padding 3 on
        # the first layer for 1-channel input: 28x28 -> 32x32), GroupNorm(128, 128) 'instancenorm',
        # ReLU, AvgPool2d(2) x 3, Linear(2048, 10). Used for both sides.
        return create_model("convnet", spec.channels, spec.num_classes, spec.im_size)

    macs, layers = count_forward_macs(build(), spec.shape)
    fwd_flops = 2 * (macs["conv"] + macs["linear"])
    train_flops = 3 * fwd_flops
    print(
        f"ConvNet-3 forward per image: conv {macs['conv']:,} MAC + linear {macs['linear']:,} "
        f"MAC = {fwd_flops / 1e6:.1f} MFLOP; train step ~3x = {train_flops / 1e6:.1f} MFLOP"
    )
    for line in layers:
        print(f"  {line}")

    peak = None
    if not args.skip_peak:
        peak = measure_peak()
        for k, v in peak.items():
            print(f"peak {k:12s} {v['shape']:32s} {v['gflops']:8.1f} GFLOP/s")

    train_split = ddata.load_split(args.dataset, "train")
    test = None if args.time_only else ddata.load_split(args.dataset, "test")
    test_x = None if test is None else train_split.normalize(test.images)

    runs = []
    for ipc in args.ipc:
        if args.warmup_epochs > 0:  # untimed, eager: first-touch costs out of the timed runs
            x, y = random_subset(train_split, ipc, args.seeds[0])
            for impl in impls:
                if impl == "original":
                    train_original(
                        build, args.seeds[0], x, y, args.warmup_epochs - 1, strategy, device
                    )
                else:
                    wr = dataclasses.replace(recipe, epochs=args.warmup_epochs)
                    train(
                        build,
                        [args.seeds[0]],
                        x,
                        y,
                        wr,
                        device=device,
                        augment=DSA(strategy),
                        compile=False,
                    )
        for si, seed in enumerate(args.seeds):
            x, y = random_subset(train_split, ipc, seed)
            n = len(x)
            steps = recipe.epochs * math.ceil(n / min(recipe.batch_size, n))
            order = impls if si % 2 == 0 else impls[::-1]  # alternate to cancel drift
            for impl in order:
                rec = {"ipc": ipc, "impl": impl, "seed": seed, "n_images": n}
                if impl == "original":
                    net, stamps, loss = train_original(
                        build, seed, x, y, args.epochs, strategy, device
                    )
                    rec.update(compiled=False, final_train_loss=loss)
                    if test is not None:
                        t = time.perf_counter()
                        rec["accuracy"] = test_original(net, test_x, test.labels, device)
                        rec["test_seconds"] = time.perf_counter() - t
                else:
                    res, stamps, failed = train_ddbench(
                        build, seed, x, y, recipe, strategy, device, compile_arg
                    )
                    rec.update(
                        compiled=bool(should_compile(compile_arg, device, steps)) and not failed,
                        compile_failed=failed,
                        engine_seconds=res.seconds,
                        final_train_loss=res.losses[-1] if res.losses else None,
                    )
                    if test is not None:
                        t = time.perf_counter()
                        accs = accuracy(
                            res.models, test.images, test.labels, transform=train_split.normalize
                        )
                        rec["accuracy"] = float(accs[0])
                        rec["test_seconds"] = time.perf_counter() - t
                rec.update(epoch_timing(stamps, 1000))
                rec["gflops_achieved"] = 1000 * n * train_flops / rec["s_per_1000_epochs"] / 1e9
                runs.append(rec)
                acc = f"{rec['accuracy']:.2f}%" if "accuracy" in rec else "-"
                print(
                    f"ipc {ipc:3d} {impl:8s} seed {seed}: {rec['epochs_run']} epochs in "
                    f"{rec['train_seconds']:.2f}s ({rec['steady_s_per_epoch'] * 1e3:.1f} ms/epoch "
                    f"steady), {rec['s_per_1000_epochs']:.1f}s/1000ep "
                    f"({rec['s_per_1000_basis']}), acc {acc}"
                )

    # ---------------------------------------------------------------- summary
    summary = []
    conv_peak = peak["conv2d_fp32"]["gflops"] if peak else None
    for ipc in args.ipc:
        base = None
        for impl in impls:
            rs = [r for r in runs if r["ipc"] == ipc and r["impl"] == impl]
            s_mean, s_std = _mean_std([r["s_per_1000_epochs"] for r in rs])
            a_mean, a_std = _mean_std([r["accuracy"] for r in rs if "accuracy" in r])
            g_mean, _ = _mean_std([r["gflops_achieved"] for r in rs])
            row = {
                "ipc": ipc,
                "impl": impl,
                "seeds": [r["seed"] for r in rs],
                "compiled": sorted({r["compiled"] for r in rs}),
                "epochs_run": rs[0]["epochs_run"],
                "s_per_1000_epochs_mean": s_mean,
                "s_per_1000_epochs_std": s_std,
                "s_per_1000_basis": rs[0]["s_per_1000_basis"],
                "steady_s_per_epoch_mean": _mean_std([r["steady_s_per_epoch"] for r in rs])[0],
                "accuracy_mean": a_mean,
                "accuracy_std": a_std,
                "gflops_achieved": g_mean,
                "fraction_of_fp32_conv_peak": g_mean / conv_peak if conv_peak else None,
            }
            if impl == "original":
                base = s_mean
            row["speedup_vs_original"] = base / s_mean if base else None
            summary.append(row)

    extrap = any(r["s_per_1000_basis"] == "extrapolated" for r in summary)
    star = "*" if extrap else ""
    print()
    print(
        f"allocator: {env['allocator']}  (LD_PRELOAD={env['LD_PRELOAD']!r}); "
        f"{env['threads']} threads; compile={args.compile}"
    )
    print()
    print(
        f"| ipc | impl | compiled | epochs run | s / 1000 epochs{star} | s / epoch (steady) | "
        "speedup vs original | accuracy (%) | GFLOP/s achieved | % fp32 conv peak |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        sp = f"{r['speedup_vs_original']:.2f}x" if r["speedup_vs_original"] else "-"
        acc = (
            f"{r['accuracy_mean']:.2f} +- {r['accuracy_std']:.2f}"
            if r["accuracy_mean"] is not None
            else "-"
        )
        frac = (
            f"{100 * r['fraction_of_fp32_conv_peak']:.1f}"
            if r["fraction_of_fp32_conv_peak"]
            else "-"
        )
        comp = "/".join("yes" if c else "no" for c in r["compiled"])
        print(
            f"| {r['ipc']} | {r['impl']} | {comp} | {r['epochs_run']} | "
            f"{r['s_per_1000_epochs_mean']:.1f} +- {r['s_per_1000_epochs_std']:.1f} | "
            f"{r['steady_s_per_epoch_mean'] * 1e3:.1f} ms | {sp} | {acc} | "
            f"{r['gflops_achieved']:.1f} | {frac} |"
        )
    if extrap:
        print(
            f"\n* EXTRAPOLATED from {args.epochs}-epoch runs (the original trains Epoch+1): "
            "first epoch + 999 x mean of the later epochs; not a measured 1000-epoch time."
        )
    else:
        print("\ns / 1000 epochs: measured train time x 1000 / epochs run (original: 1001 epochs).")
    if peak:
        print("\nPeak (best of reps, this process):")
        for k, v in peak.items():
            print(f"  {k:12s} {v['shape']:32s} {v['gflops']:8.1f} GFLOP/s")
    print(
        f"FLOPs per image per train step: {train_flops / 1e6:.1f} MFLOP "
        "(3 x forward; conv + linear only, augmentation not counted)"
    )

    env["loadavg_end"] = os.getloadavg()
    result = {
        "benchmark": "eval_speed",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {
            "dataset": args.dataset,
            "ipc": args.ipc,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "impl": args.impl,
            "compile": args.compile,
            "warmup_epochs": args.warmup_epochs,
            "time_only": args.time_only,
            "strategy": strategy,
            "protocol": {"name": proto.name, "hash": proto.hash},
            "recipe": dataclasses.asdict(recipe),
            "original": {
                "lr": DC_LR,
                "momentum": DC_MOMENTUM,
                "weight_decay": DC_WD,
                "batch_size": DC_BATCH,
                "epochs_run": args.epochs + 1,
                "lr_drop_after_epoch": args.epochs // 2 + 1,
            },
        },
        "env": env,
        "flops": {
            "forward_macs_per_image": macs,
            "forward_flops_per_image": fwd_flops,
            "train_flops_per_image": train_flops,
            "layers": layers,
        },
        "peak": peak,
        "summary": summary,
        "runs": runs,
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()

"""One check of every CUDA path of ddbench: one line per path, ``ok``, ``failed`` or ``skipped``.

Run it through ``bench/gpu_check.sh``, which first makes ddbench importable on a GPU node that
lacks hydra-core and omegaconf (docs/gpu.md). The paths, each on synthetic data of
Fashion-MNIST's shape (1x28x28, 10 classes, registered as a dataset in a temporary
``DDBENCH_DATA``; no dataset travels):

``standard_convnet``, ``standard_convnet_bn``
    the ``standard`` protocol's recipe (5 seeds, DSA, shortened) trained on a 10-images-per-class
    set by ``engine.train``, stacked (the seeds as one vmapped model) and one by one: after 5
    epochs the two must give the same models and test accuracies; over 50 epochs both are timed
    and their models must have learned (test accuracy above 20 %, chance is 10 %).
``dm_batched``
    DM with all classes in one forward (``batched: true``), a few iterations, against DM's
    per-class loop (``batched: false``): the same images.
``dc_iteration``
    one DC iteration (two matching steps with an inner training between them).
``mtt_bf16``
    one tiny expert trained through ``ddbench.experts``, then one MTT iteration under bf16
    autocast; its loss must be finite, within 5 % of the fp32 iteration's and not equal to it.
``compile``
    ``engine.train(compile=True)`` on the 5 stacked seeds for 5 epochs against eager training
    (compilation must not fall back to eager).
``torchrun_nccl``
    two processes under ``torchrun`` (NCCL for CUDA tensors) train as one process does; needs
    2 GPUs, skipped otherwise.

Tolerance. Stacked and one-by-one training, compiled and eager training, and the two DM modes
compute the same arithmetic on the same seeds, batch orders and DSA draws; only the order of
float sums differs (other kernels). TF32 is turned off for convolutions and matrix products, so
that is all that differs: float32 roundings (1e-7 relative) in each step. Training amplifies
them (compiled against eager on the CPU: 1e-7 after one step, 2e-6 after 5, 6e-5 after 10, 5e-4
after 30), so trainings are compared after 5 epochs of one step each, and the longer trainings
are only timed. Parameters (and BatchNorm buffers) must agree within
``atol=1e-4, rtol=1e-3`` (the tolerance tests/test_distributed.py applies to the same kind of
difference), and test accuracies within 1 percentage point (nearly equal models disagree only on
test images at a decision boundary). A real fault (another seed, a missed or repeated step, other
batches) moves parameters by 1e-2 and more; two different seeds are checked to be that far apart.

On a machine without CUDA every path is reported as ``skipped: no CUDA`` (nothing is imported
from ddbench, nothing trains) and the exit code is 0. ``--device cpu --tiny`` runs every path on
the CPU at tiny sizes (``torchrun_nccl`` then uses gloo), to test this script without a GPU.
Exit code: 0 when no path failed, 1 otherwise.

    bash bench/gpu_check.sh                      # on the GPU node
    bash bench/gpu_check.sh --only dm_batched,mtt_bf16 --json /tmp/gpu_check.json
    python bench/gpu_check.py --device cpu --tiny  # here, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# How engine.train is told to train the seeds stacked or one at a time: the one place to change.
STACKED = {"parallel": True}
ONE_BY_ONE = {"parallel": False}

PATHS = (
    "standard_convnet",
    "standard_convnet_bn",
    "dm_batched",
    "dc_iteration",
    "mtt_bf16",
    "compile",
    "torchrun_nccl",
)
PARAM_TOL = {"atol": 1e-4, "rtol": 1e-3}
ACC_TOL = 1.0  # percentage points
SEEDS = [0, 1, 2, 3, 4]  # the standard protocol's
DATASET = "gpu_check_fmnist_shape"


@dataclass(frozen=True)
class Sizes:
    train_per_class: int  # synthetic images per class (train and val; val is 10 % of them)
    test_per_class: int
    width: int  # ConvNet width
    ipc: int  # images per class of the trained set and of the distilled sets
    epochs: int  # the timed standard trainings
    compare_epochs: int  # the compared trainings (standard, compile)
    dm_iterations: int
    batch_real: int  # DM and DC
    expert_epochs: int  # the MTT expert's epochs
    syn_steps: int  # MTT student steps


GPU = Sizes(500, 200, 128, 10, 50, 5, 10, 256, 3, 20)
TINY = Sizes(40, 10, 16, 2, 30, 5, 2, 16, 3, 4)
TORCHRUN_EPOCHS = 3  # x 4 batches of 33 of the 100-image set (as tests/test_distributed.py)


class Skip(Exception):
    """The path cannot run here (not a failure)."""


@dataclass
class Result:
    path: str
    status: str  # ok | failed | skipped
    seconds: float
    detail: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        text = self.status + (f": {self.detail}" if self.detail else "")
        return f"{self.path:<20} {self.seconds:7.1f} s  {text}"


# --------------------------------------------------------------------------------- the setting


class Check:
    """The device, the sizes and the synthetic dataset shared by the paths."""

    def __init__(self, device: torch.device, sizes: Sizes, workdir: Path):
        self.device, self.sizes, self.workdir = device, sizes, workdir
        register_synthetic(sizes)
        from ddbench.data import load_split

        self.train = load_split(DATASET, "train")
        self.test = load_split(DATASET, "test")
        self.spec = self.train.spec

    def build(self, model: str = "convnet") -> Callable[[], torch.nn.Module]:
        from ddbench.models import create_model

        spec, width = self.spec, self.sizes.width
        return lambda: create_model(
            model, spec.channels, spec.num_classes, spec.im_size, net_width=width
        )

    def the_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``ipc`` train images of each class, normalised, and their labels."""
        ipc = self.sizes.ipc
        idx = torch.cat([self.train.indices_of(c)[:ipc] for c in range(self.spec.num_classes)])
        return self.train.normalize(self.train.images[idx]), self.train.labels[idx]

    def recipe(self, epochs: int):
        """The ``standard`` protocol's recipe (conf/protocol/standard.yaml), ``epochs`` long."""
        import importlib.resources

        import yaml

        from ddbench.protocol import Protocol

        text = (
            importlib.resources.files("ddbench.conf") / "protocol" / "standard.yaml"
        ).read_text()
        protocol = Protocol.from_config(yaml.safe_load(text))
        protocol = dataclasses.replace(protocol, epochs=epochs)
        if protocol.seeds != SEEDS:
            raise AssertionError(f"the standard protocol's seeds are {protocol.seeds}")
        return protocol.recipe(self.spec.dsa_strategy)

    def task(self, precision: str = "fp32", logger=None, seed: int = 0):
        from ddbench.augment import DSA
        from ddbench.method import Task

        return Task(
            train=self.train,
            ipc=self.sizes.ipc,
            model_factory=self.build(),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            device=self.device,
            augment=DSA(self.spec.dsa_strategy),
            logger=logger,
            precision=precision,
        )

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable, *args, **kw):
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        self.sync()
        return out, time.perf_counter() - t0


def synthetic_arrays(sizes: Sizes) -> dict[str, torch.Tensor]:
    """uint8 images of Fashion-MNIST's shape: per class a smooth random prototype, per image the
    prototype blended with smooth noise and pixel noise (learnable, not trivially)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(2024)

    def smooth(n: int) -> torch.Tensor:
        low = torch.rand(n, 1, 7, 7, generator=g)
        return F.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)

    protos = smooth(10)
    out = {}
    for split, per_class in (("train", sizes.train_per_class), ("test", sizes.test_per_class)):
        y = torch.arange(10).repeat_interleave(per_class)
        x = (
            0.3 * protos[y]
            + 0.55 * smooth(len(y))
            + 0.15 * torch.rand(len(y), 1, 28, 28, generator=g)
        )
        out[f"{split}_x"] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        out[f"{split}_y"] = y
    return out


def register_synthetic(sizes: Sizes) -> None:
    """Catalogue the synthetic dataset (prepared into ``$DDBENCH_DATA`` on first use)."""
    from ddbench.data import DatasetSpec, register_dataset

    arrays = synthetic_arrays(sizes)
    x = arrays["train_x"].float() / 255
    spec = DatasetSpec(
        DATASET, 1, (28, 28), tuple(f"class_{i}" for i in range(10)),
        (round(float(x.mean()), 4),), (round(float(x.std()), 4),),
        source="bench/gpu_check.py: seeded synthetic images of Fashion-MNIST's shape",
    )  # fmt: skip
    register_dataset(spec, lambda spec, raw: arrays)


# ------------------------------------------------------------------------------- comparisons


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's float parameters and buffers, on the CPU."""
    return {
        k: t.detach().float().cpu() for k, t in model.state_dict().items() if t.is_floating_point()
    }


def compare_models(a: list, b: list, what: str) -> float:
    """Largest parameter/buffer difference of models ``a[k]`` and ``b[k]``; raises beyond the
    tolerance."""
    return compare_states([state(m) for m in a], [state(m) for m in b], what)


def compare_states(a: list[dict], b: list[dict], what: str) -> float:
    """:func:`compare_models` of models given by their :func:`state`."""
    worst = 0.0
    atol, rtol = PARAM_TOL["atol"], PARAM_TOL["rtol"]
    for k, (sa, sb) in enumerate(zip(a, b)):
        for name, ta in sa.items():
            d = (ta - sb[name]).abs()
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
            if not bool((d <= atol + rtol * sb[name].abs()).all()):
                raise AssertionError(
                    f"{what}: model {k}'s {name} differs by up to {float(d.max()):.1e} "
                    f"(tolerance {atol:g} + {rtol:g} x |value|)"
                )
    return worst


def seed_gap(models: list) -> float:
    """Largest parameter difference of the first two models (different seeds)."""
    a, b = state(models[0]), state(models[1])
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def accuracies(check: Check, models: list) -> list[float]:
    from ddbench.engine import accuracy

    return accuracy(models, check.test.images, check.test.labels, transform=check.train.normalize)


def compare_accuracies(a: list[float], b: list[float], what: str) -> float:
    gap = max(abs(x - y) for x, y in zip(a, b))
    if gap > ACC_TOL:
        raise AssertionError(f"{what}: test accuracies differ by {gap:.2f} points: {a} vs {b}")
    return gap


# ---------------------------------------------------------------------------------- the paths


def standard(check: Check, model: str) -> tuple[str, dict]:
    from ddbench.engine import train

    x, y = check.the_set()
    build, sizes = check.build(model), check.sizes
    kw = dict(device=check.device, compile=False)
    # warm-up (CUDA context, cuDNN plans): one epoch of one model, not timed
    train(build, SEEDS[:1], x, y, check.recipe(1), **kw, **ONE_BY_ONE)
    # compared: a short training, before SGD has amplified the rounding differences
    short = check.recipe(sizes.compare_epochs)
    stacked = train(build, SEEDS, x, y, short, **kw, **STACKED)
    single = train(build, SEEDS, x, y, short, **kw, **ONE_BY_ONE)
    diff = compare_models(stacked.models, single.models, "stacked vs one by one")
    gap = seed_gap(single.models)
    if gap < 100 * PARAM_TOL["atol"]:
        raise AssertionError(f"seeds 0 and 1 trained to nearly the same model ({gap:.2e})")
    acc_gap = compare_accuracies(
        accuracies(check, stacked.models), accuracies(check, single.models), "stacked vs one by one"
    )
    # timed: a longer training; its models must have learned
    long = check.recipe(sizes.epochs)
    stacked, t_stacked = check.timed(train, build, SEEDS, x, y, long, **kw, **STACKED)
    single, t_single = check.timed(train, build, SEEDS, x, y, long, **kw, **ONE_BY_ONE)
    acc = accuracies(check, stacked.models) + accuracies(check, single.models)
    mean = sum(acc) / len(acc)
    if mean < 20.0:  # 10 classes: chance is 10 %
        raise AssertionError(f"the models did not learn: mean test accuracy {mean:.1f} %")
    metrics = {
        "images": len(x), "compare_epochs": short.epochs, "max_param_diff": diff,
        "seed_gap": gap, "acc_gap": acc_gap, "timed_epochs": long.epochs,
        "stacked_s": t_stacked, "one_by_one_s": t_single, "test_acc": acc,
    }  # fmt: skip
    detail = (
        f"{len(SEEDS)} seeds x {short.epochs} epochs: max |param diff| {diff:.1e}, acc gap "
        f"{acc_gap:.2f}; x {long.epochs} epochs: stacked {t_stacked:.2f} s, one by one "
        f"{t_single:.2f} s ({t_single / t_stacked:.2f}x), test acc {mean:.1f} %"
    )
    return detail, metrics


def build_method(cfg: dict):
    from ddbench.method import build_method as build

    return build(cfg)


def dm_config(sizes: Sizes, batched: bool) -> dict:
    return {
        "_target_": "ddbench.methods.dm.DM", "name": "dm", "iterations": sizes.dm_iterations,
        "lr_img": 1.0, "momentum_img": 0.5, "init": "real", "batch_real": sizes.batch_real,
        "dsa": True, "batched": batched,
    }  # fmt: skip


def dm_batched(check: Check) -> tuple[str, dict]:
    from ddbench.method import run_distill

    batched, t_b = check.timed(
        run_distill, build_method(dm_config(check.sizes, True)), check.task()
    )
    loop, t_l = check.timed(run_distill, build_method(dm_config(check.sizes, False)), check.task())
    init, _ = build_method(dm_config(check.sizes, True)).init_images(check.task())
    moved = float((batched.images - init.cpu()).abs().max())
    if not moved > 1e-3:
        raise AssertionError(f"the images did not move ({moved:.1e})")
    diff = compare_states(
        [{"images": batched.images}], [{"images": loop.images}], "batched vs per-class loop"
    )
    n = check.sizes.dm_iterations
    detail = (
        f"{n} iterations: batched {t_b / n:.3f} s/it, per-class loop {t_l / n:.3f} s/it; "
        f"same images (max diff {diff:.1e}, moved {moved:.2f})"
    )
    return detail, {"batched_s": t_b, "loop_s": t_l, "max_image_diff": diff}


def dc_iteration(check: Check) -> tuple[str, dict]:
    from ddbench.method import run_distill

    cfg = {
        "_target_": "ddbench.methods.gradient_matching.DC", "name": "dc", "iterations": 1,
        "lr_img": 0.1, "momentum_img": 0.5, "init": "noise", "batch_real": check.sizes.batch_real,
        "dsa": False, "lr_net": 0.01, "batch_train": 256, "outer_loop": 2, "inner_loop": 1,
        "distance": "ours",
    }  # fmt: skip
    method = build_method(cfg)
    init, _ = method.init_images(check.task())
    s, t = check.timed(run_distill, method, check.task())
    loss = s.meta["distillation"]["final_loss"]
    moved = float((s.images - init.cpu()).abs().max())
    if loss is None or not math.isfinite(loss) or not moved > 0:
        raise AssertionError(f"loss {loss}, images moved by {moved}")
    detail = f"1 iteration (2 matching steps, 1 inner epoch): {t:.2f} s, loss {loss:.3f}"
    return detail, {"seconds": t, "loss": loss}


class Losses:
    """A task logger that keeps the per-iteration losses."""

    def __init__(self):
        self.losses: list[float] = []

    def metrics(self, values, step=None):
        if "loss" in values:
            self.losses.append(float(values["loss"]))


def mtt_bf16(check: Check) -> tuple[str, dict]:
    from ddbench.experts import ExpertConfig, get_experts
    from ddbench.method import run_distill

    sizes = check.sizes
    experts = {
        "model": "convnet", "model_kwargs": {"net_width": sizes.width},
        "epochs": sizes.expert_epochs, "batch_size": 256, "lr": 0.01, "momentum": 0.0,
        "weight_decay": 0.0, "augment": "dsa",
    }  # fmt: skip
    cfg = {
        "_target_": "ddbench.methods.mtt.MTT", "name": "mtt", "iterations": 1, "lr_img": 1000.0,
        "momentum_img": 0.5, "lr_lr": 1e-5, "lr_teacher": 0.01, "lr_min": 1e-6,
        "syn_steps": sizes.syn_steps, "expert_epochs": 2,
        "max_start_epoch": sizes.expert_epochs - 2, "batch_syn": None, "num_experts": 1,
        "init": "real", "dsa": True, "experts": experts,
    }  # fmt: skip
    # the expert, trained and cached here, so that the iterations below only load it
    traj, t_expert = check.timed(
        get_experts, DATASET, ExpertConfig.from_config(experts), 1, check.device, progress=False
    )
    if traj[0].shape[0] != sizes.expert_epochs + 1:
        raise AssertionError(f"expert trajectory of shape {tuple(traj[0].shape)}")
    runs = {}
    for precision in ("bf16", "fp32"):
        rec = Losses()
        s, t = check.timed(run_distill, build_method(cfg), check.task(precision, rec))
        if s.meta["cost"]["precision"] != precision or len(rec.losses) != 1:
            raise AssertionError(f"{precision} run: {s.meta['cost']}, losses {rec.losses}")
        runs[precision] = (rec.losses[0], t, float(s.lr.reshape(-1)[0]))
    (bf16, t_bf16, lr), (fp32, t_fp32, _) = runs["bf16"], runs["fp32"]
    if not (math.isfinite(bf16) and math.isfinite(lr) and lr > 0):
        raise AssertionError(f"bf16 iteration: loss {bf16}, learned lr {lr}")
    if bf16 == fp32:
        raise AssertionError(f"the bf16 loss equals the fp32 loss ({bf16}): autocast not applied")
    if abs(bf16 - fp32) > 0.05 * abs(fp32):
        raise AssertionError(f"bf16 loss {bf16:.4f} is more than 5 % from fp32's {fp32:.4f}")
    detail = (
        f"expert ({sizes.expert_epochs} epochs) {t_expert:.1f} s; 1 iteration of "
        f"{sizes.syn_steps} steps: bf16 {t_bf16:.2f} s (loss {bf16:.4f}), fp32 {t_fp32:.2f} s "
        f"(loss {fp32:.4f})"
    )
    metrics = {"expert_s": t_expert, "bf16_s": t_bf16, "fp32_s": t_fp32}
    return detail, {**metrics, "bf16_loss": bf16, "fp32_loss": fp32}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def compile_path(check: Check) -> tuple[str, dict]:
    from ddbench.engine import train

    if check.device.type == "cpu":
        import shutil

        if not (shutil.which("cc") or shutil.which("gcc")):
            raise Skip("no C compiler for torch.compile on the CPU")
    x, y = check.the_set()
    recipe, build = check.recipe(check.sizes.compare_epochs), check.build()
    seen = _Warnings()
    logging.getLogger("ddbench").addHandler(seen)
    try:
        kw = dict(device=check.device, **STACKED)
        compiled, t_c = check.timed(train, build, SEEDS, x, y, recipe, compile=True, **kw)
        eager, t_e = check.timed(train, build, SEEDS, x, y, recipe, compile=False, **kw)
    finally:
        logging.getLogger("ddbench").removeHandler(seen)
    failed = [m for m in seen.messages if "torch.compile" in m]
    if failed:
        raise AssertionError(f"compilation fell back to eager: {failed[0][:200]}")
    diff = compare_models(compiled.models, eager.models, "compiled vs eager")
    acc_gap = compare_accuracies(
        accuracies(check, compiled.models), accuracies(check, eager.models), "compiled vs eager"
    )
    detail = (
        f"{len(SEEDS)} stacked seeds x {recipe.epochs} epochs: compiled {t_c:.1f} s (compilation "
        f"included), eager {t_e:.2f} s; max |param diff| {diff:.1e}, acc gap {acc_gap:.2f}"
    )
    return detail, {"compiled_s": t_c, "eager_s": t_e, "max_param_diff": diff}


def torchrun_work(check: Check, out: Path) -> dict:
    """One model alone and two stacked, trained on the set (batches of 33: the last global
    batch of each epoch is split unevenly over the ranks); their states and accuracies."""
    import torch.distributed as dist

    from ddbench.engine import Recipe, train, world_info

    x, y = check.the_set()
    recipe = Recipe(epochs=TORCHRUN_EPOCHS, batch_size=33, lr=0.05, augment=check.spec.dsa_strategy)
    dev = "cuda" if check.device.type == "cuda" else "cpu"
    alone = train(check.build(), [0], x, y, recipe, device=dev, compile=False)
    pair = train(check.build(), [1, 2], x, y, recipe, device=dev, compile=False, **STACKED)
    models = alone.models + pair.models
    rank, world = world_info()
    backend = str(dist.get_backend()) if dist.is_initialized() else ""
    result = {
        "states": [state(m) for m in models],
        "acc": accuracies(check, models),
        "world": [rank, world],
        "backend": backend,
        "device": str(next(models[0].parameters()).device),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{rank}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def torchrun_nccl(check: Check) -> tuple[str, dict]:
    if check.device.type == "cuda" and torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU visible; torchrun with NCCL needs 2")
    out = check.workdir / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).resolve()), "--torchrun-worker", str(out),
        "--device", check.device.type, *(["--tiny"] if check.sizes == TINY else []),
    ]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=check.workdir, env=env, capture_output=True, text=True, timeout=300)
    t_two = time.perf_counter() - t0
    if p.returncode != 0:
        raise AssertionError(f"torchrun exited {p.returncode}: {(p.stderr or p.stdout)[-600:]}")
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    if r0["world"] != [0, 2] or r1["world"] != [1, 2]:
        raise AssertionError(f"ranks {r0['world']}, {r1['world']}")
    want = "nccl" if check.device.type == "cuda" else "gloo"
    if want not in r0["backend"]:
        raise AssertionError(f"process group backend {r0['backend']!r}, expected {want}")
    for a, b in zip(r0["states"], r1["states"]):
        if not all(torch.equal(a[k], b[k]) for k in a):
            raise AssertionError("the two ranks hold different models")
    one = torchrun_work(check, check.workdir / "one_process")
    worst = compare_states(r0["states"], one["states"], "torchrun vs one process")
    gap = compare_accuracies(r0["acc"], one["acc"], "torchrun vs one process")
    detail = (
        f"2 processes ({r0['backend']}, {r0['device']}/{r1['device']}) {t_two:.1f} s with "
        f"start-up; same models on both ranks; vs one process max |param diff| {worst:.1e}, "
        f"acc gap {gap:.2f}"
    )
    if check.device.type == "cpu":
        detail += " (CPU: gloo only, NCCL not exercised)"
    return detail, {"seconds": t_two, "max_param_diff": worst, "backend": r0["backend"]}


RUNNERS: dict[str, Callable[[Check], tuple[str, dict]]] = {
    "standard_convnet": lambda c: standard(c, "convnet"),
    "standard_convnet_bn": lambda c: standard(c, "convnet_bn"),
    "dm_batched": dm_batched,
    "dc_iteration": dc_iteration,
    "mtt_bf16": mtt_bf16,
    "compile": compile_path,
    "torchrun_nccl": torchrun_nccl,
}


# ---------------------------------------------------------------------------------------- main


def strict_fp32() -> str:
    """Turn TF32 off for convolutions and matrix products (see the module docstring)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return "TF32 off"


@contextlib.contextmanager
def _workdir(tmp: str):
    """Data and caches (the synthetic dataset, the expert) live and die in ``tmp``."""
    keys = ("DDBENCH_DATA", "DDBENCH_CACHE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(DDBENCH_DATA=f"{tmp}/data", DDBENCH_CACHE=f"{tmp}/cache")
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_path(name: str, check: Check | None, setup_error: str | None) -> Result:
    t0 = time.perf_counter()
    if check is None:
        return Result(name, "failed", 0.0, f"setup: {setup_error}")
    try:
        torch.manual_seed(0)
        detail, metrics = RUNNERS[name](check)
        return Result(name, "ok", time.perf_counter() - t0, detail, metrics)
    except Skip as e:
        return Result(name, "skipped", time.perf_counter() - t0, str(e))
    except Exception as e:
        tb = traceback.format_exc(limit=-3)
        print(tb, file=sys.stderr, flush=True)
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return Result(name, "failed", time.perf_counter() - t0, reason[:400])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (for a CPU run)")
    ap.add_argument("--only", default="", help=f"comma-separated paths of {', '.join(PATHS)}")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--torchrun-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    only = [p for p in args.only.split(",") if p]
    unknown = sorted(set(only) - set(PATHS))
    if unknown:
        ap.error(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    sizes = TINY if args.tiny else GPU
    if args.torchrun_worker is not None:  # a process started by the torchrun_nccl path
        if args.device == "cuda":
            strict_fp32()  # as in the process it is compared with
        work = args.torchrun_worker
        torchrun_work(Check(torch.device(args.device), sizes, work), work)
        return 0

    t_start = time.perf_counter()
    results: list[Result] = []
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__}, no CUDA: every path skipped", flush=True)
        results = [Result(p, "skipped", 0.0, "no CUDA") for p in PATHS]
        for r in results:
            print(r.line(), flush=True)
    else:
        device = torch.device(args.device)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            where = (
                f"{name} x{torch.cuda.device_count()}, CUDA {torch.version.cuda}, {strict_fp32()}"
            )
        else:
            where = f"CPU, {torch.get_num_threads()} threads"
        sizes_name = "tiny" if args.tiny else "gpu"
        print(f"gpu_check: torch {torch.__version__}, {where}, sizes {sizes_name}", flush=True)
        with tempfile.TemporaryDirectory(prefix="ddbench_gpu_check_") as tmp, _workdir(tmp):
            work = Path(tmp)
            check, setup_error = None, None
            try:
                check = Check(device, sizes, work)
            except Exception as e:
                traceback.print_exc()
                setup_error = f"{type(e).__name__}: {e}"
            for p in PATHS:
                if only and p not in only:
                    r = Result(p, "skipped", 0.0, "not selected (--only)")
                else:
                    r = run_path(p, check, setup_error)
                results.append(r)
                print(r.line(), flush=True)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    total = time.perf_counter() - t_start
    print(f"gpu_check: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {total:.0f} s", flush=True)  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

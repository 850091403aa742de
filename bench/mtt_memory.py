"""Peak memory and time of ONE MTT iteration: ddbench's unroll vs the official one, side by side.

MTT (Cazenavette et al., CVPR 2022) unrolls ``syn_steps`` SGD steps of a student network on the
synthetic images and backpropagates the normalised parameter distance through all of them. The
sides, each in its own subprocess (peak memory = that process's peak resident set size):

* ``official``: a re-implementation of the unroll of ``mtt-distillation/distill.py`` (written out
  below, nothing of ddbench's MTT used): the network wrapped so that it runs on ONE flat parameter
  vector (the parameters deregistered and replaced by views of it, as the official
  ``ReparamModule``); a list ``student_params`` that grows by one flat vector per step; per step
  ``forward(x, flat_param=student_params[-1])``, cross entropy,
  ``torch.autograd.grad(ce, student_params[-1], create_graph=True)`` and
  ``student_params.append(student_params[-1] - syn_lr * grad)``; then
  ``mse(sum)/num_params`` of the student vs the target, divided by the same for the start, and
  one ``backward()`` over the whole graph, which keeps every step's graph alive until then.
* ``ddbench``: ``methods/mtt.py``'s ``MTT.matching_loss`` with ``checkpoint_unroll: false`` and
  the default ``kernels: auto`` (the fused instance norm + ReLU of ``ddbench.kernels``;
  ``--unfused``: ``kernels: off``, the stock norm and ReLU modules).
* ``ddbench_ckpt``: the same with ``checkpoint_unroll: true`` (each step recomputed in backward).
* ``ddbench_bf16`` / ``ddbench_ckpt_bf16`` (only with ``--sides``): the two above under
  ``precision=bf16`` (the student's convolutions in bf16, its weights and updates in fp32). Not
  bit-comparable with the fp32 official side: their image gradients must point the same way
  (cosine >= ``--bf16-min-cosine``) and their loss and lr gradient agree within
  ``--bf16-tolerance``.
* ``official_fp64`` (only with ``--sides``): the official unroll in float64, one iteration, not
  timed against the others: each side's distance from it is reported (``agreement.vs_fp64``).

The fp32 ddbench sides with ``--unfused`` run the official unroll's ops and must agree within
``--tolerance`` (relative L2). Through the fused kernels they round differently: a ReLU unit
whose input lies within rounding of zero can switch on one side and not the other, and over 20
steps such switches move the gradients by ~1e-2 (relative L2) where the ops agree to ~1e-7 per
step; they must point the same way (cosine >= ``--fused-min-cosine``, loss and lr gradient
within ``--fused-tolerance``), and ``official_fp64`` shows which side is closer to the exact
value.

Same inputs for all sides (written once by the parent process): the synthetic images (``ipc``
seeded real images per class of ``--dataset``'s train split, normalised), their labels, the
network (ConvNet-3, ddbench's default ``convnet``), the start and target parameters (start: the
network's initial parameters, seed 0; target: ``--expert-steps`` plain SGD steps (lr 0.01, batch
256) on the real train split from there: a quickly trained stand-in for an expert epoch), the
learned lr and the per-step plan (minibatch indices and DSA draws, drawn by ``MTT.unroll_plan``
from a generator seeded with ``--seed + iteration``, so every side sees the same batches and the
same augmentation). Each iteration is a whole MTT iteration: unroll, ``backward`` to the images
and the lr, and their SGD steps (lr_img 1000, lr_lr 1e-5, momentum 0.5, MTT's defaults). The
gradients of the first iteration are compared across sides (max abs difference / max abs value,
and relative L2), as are all iterations' losses.

Default settings: Fashion-MNIST, IPC 10, syn_steps 20, all 100 images per
step (``--batch-syn`` unset), DSA on. ``--expert-epochs 1`` also times ddbench's expert training
(``ddbench.experts``, the MTT ``buffer.py`` recipe) for one epoch on the full train split, in a
temporary cache, in its own subprocess.

    # the default settings, once per side (2 threads, tcmalloc preloaded in every side); times
    # compare the fastest iteration of each side (the first pays one-off costs: first-touch page
    # faults, compiling ddbench's kernels)
    OMP_NUM_THREADS=2 python bench/mtt_memory.py --iters 3 --expert-epochs 1 \\
        --json bench/results/mtt_memory/run.json
    # a quick check of the agreement, with the float64 reference
    OMP_NUM_THREADS=1 python bench/mtt_memory.py --syn-steps 3 --iters 1 \\
        --sides official ddbench official_fp64
    # where one bf16 iteration spends its time (one extra iteration under the torch profiler)
    OMP_NUM_THREADS=2 python bench/mtt_memory.py --sides ddbench_bf16 --iters 2 --profile 20

Allocator (``--allocator``): ``tcmalloc`` (default where Debian's is installed: what the ddbench
CLI re-execs itself with) preloads it into every side; ``glibc`` runs every side with glibc's
defaults (``DDBENCH_ALLOCATOR=system``, so ddbench's ``mallopt`` is off too); ``glibc-mallopt``
with ddbench's ``mallopt`` settings in every side. The CPU load average is recorded before and
after each side: on a shared machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
SIDES = {  # side: (checkpoint_unroll, precision)
    "official": (False, "fp32"),
    "ddbench": (False, "fp32"),
    "ddbench_ckpt": (True, "fp32"),
    "ddbench_bf16": (False, "bf16"),
    "ddbench_ckpt_bf16": (True, "bf16"),
    "official_fp64": (False, "fp64"),  # the reference for rounding: one iteration, in float64
}
DEFAULT_SIDES = [s for s, (_, precision) in SIDES.items() if precision == "fp32"]  # others: --sides
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
LR_IMG, LR_LR, LR_TEACHER, MOMENTUM = 1000.0, 1e-5, 0.01, 0.5


# ================================================================================================
# The official unroll (re-implemented from mtt-distillation's distill.py / reparam_module.py)
# ================================================================================================


class FlatParamNet(nn.Module):
    """The official ``ReparamModule`` idea: the wrapped network's parameters are deregistered and,
    per call, replaced by views of one flat vector ``[P]`` (named-modules order, no sharing)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self._slots: list[tuple[nn.Module, str, torch.Size]] = []
        flat = []
        for _, m in module.named_modules():
            for n, p in list(m.named_parameters(recurse=False)):
                self._slots.append((m, n, p.shape))
                flat.append(p.detach().reshape(-1))
                delattr(m, n)
        self.num_params = sum(s.numel() for _, _, s in self._slots)
        self._numels = [s.numel() for _, _, s in self._slots]
        self.initial = torch.cat(flat)

    def forward(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        for (m, n, shape), t in zip(self._slots, flat_param.split(self._numels)):
            setattr(m, n, t.view(shape))  # a plain attribute: a view of the flat vector
        return self.module(x)


def official_loss(
    net: FlatParamNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    start: torch.Tensor,
    target: torch.Tensor,
    plan: list[tuple[torch.Tensor, Any]],
) -> torch.Tensor:
    """The official unroll: every student vector is kept, and with it every step's graph."""
    student_params = [start.clone().requires_grad_(True)]
    for idx, draw in plan:
        x = images[idx]
        y = labels[idx]
        if draw is not None:
            x = draw(x)
        out = net(x, flat_param=student_params[-1])
        ce = F.cross_entropy(out, y)
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    num_params = net.num_params
    param_loss = F.mse_loss(student_params[-1], target, reduction="sum") / num_params
    param_dist = F.mse_loss(start, target, reduction="sum") / num_params
    return param_loss / param_dist


# ================================================================================================
# Shared set-up
# ================================================================================================


def build_net(dataset: str, kernels: str = "off") -> nn.Module:
    """ConvNet-3 for ``dataset``, seed 0; ``kernels``: ``ddbench.kernels``' mode (the official
    side and the shared inputs: ``off``, the stock modules)."""
    from ddbench.data import get_spec
    from ddbench.models import create_model

    spec = get_spec(dataset)
    torch.manual_seed(0)
    return create_model("convnet", spec.channels, spec.num_classes, spec.im_size, kernels=kernels)


def ddbench_kernels(args: argparse.Namespace) -> str:
    """The ddbench sides' ``kernels`` mode: ``auto`` (the fused block), ``off`` with
    ``--unfused``."""
    return "off" if args.unfused else "auto"


def make_inputs(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Images, labels, start and target parameters, written to ``path`` for the sides."""
    from safetensors.torch import save_file

    from ddbench import data
    from ddbench.experts import FlatModel

    train = data.load_split(args.dataset, "train")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.cat(
        [
            train.indices_of(c)[torch.randperm(len(train.indices_of(c)), generator=g)[: args.ipc]]
            for c in range(train.num_classes)
        ]
    )
    net = build_net(args.dataset)
    flat = FlatModel(net)
    start = flat.flatten(dict(net.named_parameters()))
    t0 = time.perf_counter()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(args.expert_steps):  # a quickly trained stand-in for the expert's target
        b = torch.randint(0, len(train), (256,), generator=g)
        loss = F.cross_entropy(net(train.normalize(train.images[b])), train.labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = flat.flatten(dict(net.named_parameters()))
    tensors = {
        "images_u8": train.images[idx].contiguous(),
        "images": train.normalize(train.images[idx]).contiguous(),
        "labels": train.labels[idx].contiguous(),
        "start": start,
        "target": target,
    }
    save_file(tensors, str(path))
    return {
        "num_params": flat.num_params,
        "target_distance": float((target - start).norm()),
        "expert_steps": args.expert_steps,
        "expert_steps_seconds": time.perf_counter() - t0,
    }


def planner(args: argparse.Namespace, images_u8: torch.Tensor, labels: torch.Tensor):
    """An MTT (for its ``unroll_plan`` and ``matching_loss``) and a task on the inputs."""
    from ddbench.augment import DSA
    from ddbench.data import RealDataset, get_spec
    from ddbench.method import Task
    from ddbench.methods.mtt import MTT

    spec = get_spec(args.dataset)
    checkpoint_unroll, precision = SIDES[args.side]
    m = MTT(
        syn_steps=args.syn_steps,
        batch_syn=args.batch_syn,
        expert_epochs=1,
        max_start_epoch=1,
        num_experts=1,
        experts={"epochs": 2},
        dsa=args.dsa,
        lr_img=LR_IMG,
        lr_lr=LR_LR,
        lr_teacher=LR_TEACHER,
        checkpoint_unroll=checkpoint_unroll,
    )
    task = Task(
        train=RealDataset(spec, "train", images_u8, labels),
        ipc=args.ipc,
        model_factory=lambda: build_net(args.dataset, ddbench_kernels(args)),
        generator=torch.Generator(),
        seed=args.seed,
        device=torch.device("cpu"),
        augment=DSA(spec.dsa_strategy),
        precision="fp32" if precision == "fp64" else precision,  # fp64: the official side only
    )
    return m, task


# ================================================================================================
# One side (a subprocess)
# ================================================================================================


def run_side(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file, save_file

    from ddbench import _alloc
    from ddbench.protocol import peak_memory_bytes

    _alloc.configure()  # the allocator settings of the chosen --allocator, as the CLI sets them

    t = load_file(args.inputs)
    dtype = torch.float64 if SIDES[args.side][1] == "fp64" else torch.float32
    t = {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}
    images = t["images"].clone().requires_grad_(True)
    labels = t["labels"]
    syn_lr = torch.tensor(LR_TEACHER, dtype=dtype).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=LR_IMG, momentum=MOMENTUM)
    opt_lr = torch.optim.SGD([syn_lr], lr=LR_LR, momentum=MOMENTUM)
    m, task = planner(args, t["images_u8"], labels)
    official = args.side.startswith("official")
    if official:
        net = FlatParamNet(build_net(args.dataset).to(dtype)).train()
        assert net.num_params == t["start"].numel()
    else:
        m.student = m.make_student(build_net(args.dataset, ddbench_kernels(args)))
        m.trajectories = [torch.stack([t["start"], t["target"]])]
        m.syn_lr = syn_lr
    setup_rss = peak_memory_bytes()
    out: dict[str, Any] = {"side": args.side, "iterations": []}
    for it in range(args.iters + (1 if args.profile else 0)):
        task.generator.manual_seed(args.seed + it)
        profiling = it == args.iters  # one extra, untimed iteration: where the time goes
        with profile(activities=[ProfilerActivity.CPU]) if profiling else nullcontext() as prof:
            t0 = time.perf_counter()
            if official:
                plan = m.unroll_plan(task, len(images))
                loss = official_loss(net, images, labels, syn_lr, t["start"], t["target"], plan)
            else:
                with task.autocast():  # the task's precision, as the image loop applies it
                    loss = m.matching_loss(task, images, labels, 0, 0, lr=syn_lr)
            t1 = time.perf_counter()
            opt_img.zero_grad(set_to_none=True)
            opt_lr.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            if it == 0:
                save_file(
                    {"images": images.grad.contiguous(), "lr": syn_lr.grad.reshape(1).contiguous()},
                    args.grads,
                )
            opt_img.step()
            opt_lr.step()
            t3 = time.perf_counter()
        if profiling:  # the profiler's overhead stays out of the timed iterations
            out["profile"] = prof.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=args.profile
            )
            break
        out["iterations"].append(
            {
                "loss": float(loss.detach()),
                "unroll_s": t1 - t0,
                "backward_s": t2 - t1,
                "seconds": t3 - t0,
                "peak_rss_bytes": peak_memory_bytes(),
            }
        )
        del loss
    out.update(
        setup_rss_bytes=setup_rss,
        peak_rss_bytes=peak_memory_bytes(),
        allocator=_alloc.describe(),
        threads=torch.get_num_threads(),
    )
    print("RESULT " + json.dumps(out))


def run_expert(args: argparse.Namespace) -> None:
    """Train one ddbench expert for ``--expert-epochs`` epochs (a temporary cache)."""
    import ddbench  # noqa: F401
    from ddbench import experts
    from ddbench.protocol import peak_memory_bytes

    cfg = experts.ExpertConfig(epochs=args.expert_epochs)
    with tempfile.TemporaryDirectory() as d:
        os.environ["DDBENCH_CACHE"] = d
        t0 = time.perf_counter()
        experts.get_experts(args.dataset, cfg, 1, "cpu", progress=False)
        seconds = time.perf_counter() - t0
        meta = experts.load_expert(experts.expert_path(args.dataset, cfg, 0))[1]
    out = {
        "side": "expert",
        "epochs": args.expert_epochs,
        "seconds": seconds,
        "train_seconds": meta["train_seconds"],
        "seconds_per_epoch": meta["train_seconds"] / args.expert_epochs,
        "config": meta["config"],
        "peak_rss_bytes": peak_memory_bytes(),
    }
    print("RESULT " + json.dumps(out))


# ================================================================================================
# The parent: inputs, one subprocess per side, comparison
# ================================================================================================


def _env(allocator: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("LD_PRELOAD", None)
    if allocator == "tcmalloc":
        env["LD_PRELOAD"] = TCMALLOC
    elif allocator == "glibc":
        env["DDBENCH_ALLOCATOR"] = "system"
    else:
        env.pop("DDBENCH_ALLOCATOR", None)
    return env


def _child(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *extra]
    load_before = os.getloadavg()
    p = subprocess.run(cmd, env=_env(args.allocator), capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(extra[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT ") :])
    res["load_average_before"] = [round(x, 2) for x in load_before]
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return res


def _rel(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Differences of ``a`` from the reference ``b``."""
    a, b = a.double(), b.double()
    return {
        "max_abs_diff_over_max_abs": float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)),
        "rel_l2": float((a - b).norm() / b.norm().clamp_min(1e-30)),
        "cosine": float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
    }


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    its = res["iterations"]
    secs = [i["seconds"] for i in its]
    return {
        "peak_rss_gb": round(res["peak_rss_bytes"] / 1e9, 3),
        "setup_rss_gb": round(res["setup_rss_bytes"] / 1e9, 3),
        "seconds_per_iteration_mean": round(statistics.fmean(secs), 2),
        "seconds_per_iteration_min": round(min(secs), 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--syn-steps", type=int, default=20)
    p.add_argument("--batch-syn", type=int, default=None, help="images per step (default: all)")
    p.add_argument("--iters", type=int, default=2, help="MTT iterations per side")
    p.add_argument("--no-dsa", dest="dsa", action="store_false", help="no DSA in the unroll")
    p.add_argument("--sides", nargs="+", default=DEFAULT_SIDES, choices=list(SIDES))
    p.add_argument("--expert-steps", type=int, default=5, help="SGD steps from start to target")
    p.add_argument("--expert-epochs", type=int, default=0, help="also time expert training")
    p.add_argument(
        "--allocator",
        choices=["tcmalloc", "glibc", "glibc-mallopt"],
        default="tcmalloc" if os.path.exists(TCMALLOC) else "glibc-mallopt",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--unfused",
        action="store_true",
        help="ddbench sides with kernels=off (the stock instance norm and ReLU modules)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="fp32 sides with --unfused (the official unroll's ops): max relative L2 of gradients",
    )
    p.add_argument(
        "--fused-tolerance",
        type=float,
        default=0.01,
        help="fp32 sides through the fused kernels: max rel. loss / lr grad diff",
    )
    p.add_argument(
        "--fused-min-cosine",
        type=float,
        default=0.999,
        help="fp32 sides through the fused kernels: min image grad cosine",
    )
    p.add_argument(
        "--bf16-tolerance",
        type=float,
        default=0.02,
        help="bf16 sides: max rel. loss / lr grad diff",
    )
    p.add_argument(
        "--bf16-min-cosine", type=float, default=0.99, help="bf16 sides: min image grad cosine"
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--profile", type=int, default=0, help="profile one extra, untimed iteration: top N ops"
    )
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--grads", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ipc < 1 or args.syn_steps < 1 or args.iters < 1:
        p.error("--ipc, --syn-steps and --iters must be >= 1")
    if args.side == "expert":
        return run_expert(args)
    if args.side == "inputs":
        info = make_inputs(args, Path(args.inputs))
        print("RESULT " + json.dumps(info))
        return None
    if args.side is not None:
        return run_side(args)

    from eval_speed import cpu_name  # bench/ is on the path when run as a script
    from safetensors.torch import load_file

    common = [
        "--dataset",
        args.dataset,
        "--ipc",
        str(args.ipc),
        "--syn-steps",
        str(args.syn_steps),
        "--iters",
        str(args.iters),
        "--seed",
        str(args.seed),
    ]
    if args.batch_syn is not None:
        common += ["--batch-syn", str(args.batch_syn)]
    if not args.dsa:
        common.append("--no-dsa")
    if args.unfused:
        common.append("--unfused")
    if args.profile:
        common += ["--profile", str(args.profile)]
    results: dict[str, Any] = {}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory() as d:
        inputs = Path(d) / "inputs.safetensors"
        extra = ["--side", "inputs", "--inputs", str(inputs), "--expert-steps"]
        info = _child(args, [*extra, str(args.expert_steps), *common])
        for side in args.sides:
            gpath = Path(d) / f"grads_{side}.safetensors"
            extra = ["--side", side, "--inputs", str(inputs), "--grads", str(gpath), *common]
            if SIDES[side][1] == "fp64":  # a reference for the first iteration, not timed
                extra[extra.index("--iters") + 1] = "1"
            results[side] = _child(args, extra)
            grads[side] = load_file(str(gpath))
            s = _summary(results[side])
            print(
                f"{side:13s} peak RSS {s['peak_rss_gb']:.2f} GB (after set-up "
                f"{s['setup_rss_gb']:.2f})  {s['seconds_per_iteration_mean']:.2f} s/iteration "
                f"(min {s['seconds_per_iteration_min']:.2f})  load {results[side]['load_average_after'][0]}",
                flush=True,
            )
            if "profile" in results[side]:
                print(results[side]["profile"])
        if args.expert_epochs > 0:
            extra = ["--side", "expert", "--dataset", args.dataset]
            extra += ["--expert-epochs", str(args.expert_epochs)]
            results["expert"] = _child(args, extra)
            print(f"expert training: {results['expert']['seconds_per_epoch']:.1f} s/epoch")
    ref = "official" if "official" in grads else next(iter(grads))
    agreement, failed = {}, []
    if "official_fp64" in grads:  # how far each side is from float64 (first iteration)
        exact = grads["official_fp64"]
        loss64 = results["official_fp64"]["iterations"][0]["loss"]
        for side in grads:
            if side == "official_fp64":
                continue
            loss = results[side]["iterations"][0]["loss"]
            agreement.setdefault("vs_fp64", {})[side] = {
                "loss_rel_diff": abs(loss - loss64) / abs(loss64),
                "image_grad": _rel(grads[side]["images"], exact["images"]),
                "lr_grad": _rel(grads[side]["lr"], exact["lr"]),
            }
            e = agreement["vs_fp64"][side]
            print(
                f"{side} vs official_fp64: loss rel diff {e['loss_rel_diff']:.2e}, image grad "
                f"rel L2 {e['image_grad']['rel_l2']:.2e}, cosine {e['image_grad']['cosine']:.5f}, "
                f"lr grad rel {e['lr_grad']['rel_l2']:.2e}"
            )
    for side in grads:
        if side == ref or SIDES[side][1] == "fp64":
            continue
        losses = [
            (i["loss"], j["loss"])
            for i, j in zip(results[side]["iterations"], results[ref]["iterations"])
        ]
        agreement[side] = {
            "vs": ref,
            "loss_max_rel_diff": max(abs(a - b) / abs(b) for a, b in losses),
            "image_grad": _rel(grads[side]["images"], grads[ref]["images"]),
            "lr_grad": _rel(grads[side]["lr"], grads[ref]["lr"]),
        }
        a = agreement[side]
        print(
            f"{side} vs {ref}: loss rel diff {a['loss_max_rel_diff']:.2e}, image grad rel L2 "
            f"{a['image_grad']['rel_l2']:.2e} (max {a['image_grad']['max_abs_diff_over_max_abs']:.2e}), "
            f"cosine {a['image_grad']['cosine']:.5f}, lr grad rel {a['lr_grad']['rel_l2']:.2e}"
        )
        if SIDES[side][1] == "bf16":  # the same direction, not the same digits
            ok = (
                a["image_grad"]["cosine"] >= args.bf16_min_cosine
                and max(a["lr_grad"]["rel_l2"], a["loss_max_rel_diff"]) <= args.bf16_tolerance
            )
        elif not args.unfused:  # fp32 rounded another way (the fused kernels): ReLU masks
            ok = (  # that flip on rounding grow over the steps
                a["image_grad"]["cosine"] >= args.fused_min_cosine
                and max(a["lr_grad"]["rel_l2"], a["loss_max_rel_diff"]) <= args.fused_tolerance
            )
        else:
            worst = max(a["image_grad"]["rel_l2"], a["lr_grad"]["rel_l2"], a["loss_max_rel_diff"])
            ok = worst <= args.tolerance
        if not ok:
            failed.append(side)
    summary = {s: _summary(r) for s, r in results.items() if s in SIDES and s != "official_fp64"}
    if ref in summary:
        for v in summary.values():
            v["memory_vs_official"] = round(v["peak_rss_gb"] / summary[ref]["peak_rss_gb"], 3)
            v["time_vs_official"] = round(  # steady state: the first iteration pays one-off
                v["seconds_per_iteration_min"] / summary[ref]["seconds_per_iteration_min"], 3
            )  # costs (first-touch page faults, compiling ddbench's kernels)
    report = {
        "settings": {
            "dataset": args.dataset,
            "ipc": args.ipc,
            "syn_steps": args.syn_steps,
            "batch_syn": args.batch_syn or "all",
            "dsa": args.dsa,
            "iters": args.iters,
            "model": "convnet (ConvNet-3, width 128, instancenorm, avgpool)",
            "allocator": args.allocator,
            "seed": args.seed,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "inputs": info,
        "summary": summary,
        "agreement": agreement,
        "sides": results,
        "goal": {
            "peak_rss_gb_max": 3.6,
            "seconds_per_iteration_max": 5.0,
            "memory_vs_official_max": 0.5,
        },
    }
    if args.json:
        from ddbench.synset import atomic_write

        text = json.dumps(report, indent=2) + "\n"
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.json}")
    if failed:
        raise SystemExit(f"gradients disagree beyond their tolerance: {failed}")


if __name__ == "__main__":
    main()

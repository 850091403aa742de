"""The one training engine: evaluation, experts, teachers and inner loops all train through it.

Tiny synthetic sets make per-step overhead dominate, so the engine keeps the data on the
device, gathers batches by index, augments whole batches at once, can run under bf16
autocast, and can train several models at once: their parameters are stacked and called
through ``torch.func.vmap`` (one grouped kernel per layer instead of K small ones).

Randomness is per model: model ``k`` is initialised after ``torch.manual_seed(seed_k)`` and
draws its batch order and augmentation from its own generator seeded with ``seed_k``, so a
model trains the same whether it is trained alone or in a group.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.augment import make_augment
from ddbench.errors import DDBenchError

log = logging.getLogger("ddbench")
LOG_EVERY_S = 60.0  # epoch log lines, when no progress bar can be shown, at most this often
_DATA_STREAM = 7919  # offsets the data generator's seed from the init seed


@dataclass
class BaseRecipe:
    """The training settings every recipe has: epochs, batch, optimiser, schedule, augmentation.
    :class:`Recipe` adds the loss and precision; the pinned recipes (an evaluation protocol, a
    transfer protocol's stage) add their own fields, name the augmentation their way and make
    the engine's :class:`Recipe` with :meth:`to_recipe`."""

    epochs: int
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # step | cosine | constant
    # fractions of the epochs where lr *= gamma (step); a tuple in a Recipe
    milestones: Sequence[float] = field(default_factory=lambda: [0.5])
    gamma: float = 0.1
    augment: str | None = None  # Recipe: a DSA strategy string, "dc:<ops>" (DC's own), or None

    def to_recipe(self, augment: str | None, **more) -> Recipe:
        """The engine's recipe of these settings, training with the DSA strategy ``augment``
        (or None) and the other :class:`Recipe` fields ``more`` (``lr`` among them replaces
        this one)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(BaseRecipe)}
        return Recipe(**{**own, "augment": augment, **more})

    def check(self, where: str, positive: Sequence[str] = ("lr",)) -> None:
        """Refuse the numbers a pinned recipe cannot train with: no epoch, an empty batch, or a
        field of ``positive`` that is not a positive number; one error naming ``where``."""
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DDBenchError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
        for key in positive:
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise DDBenchError(f"{where}: {key} must be a positive number, got {value!r}")


@dataclass
class Recipe(BaseRecipe):
    """How to train a model: optimiser, schedule, epochs, batch, augmentation, precision."""

    # ce (hard or soft targets) | kd (temperature-scaled KL to soft targets) | mse (to target
    # vectors [N,D], e.g. representations: the mean squared error over their D entries)
    loss: str = "ce"
    temperature: float = 1.0
    hard_weight: float = 0.0  # kd: loss = (1 - w) * T^2 * KL + w * CE(hard labels)
    mixup: float = 0.0  # Beta(a, a) mixup alpha; 0 = off
    cutmix: float = 0.0  # Beta(a, a) cutmix alpha; 0 = off (both on: one of the two per batch)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False  # models and (single-model) batches in channels_last memory format

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise DDBenchError(
                f"recipe needs epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        for key, allowed in (
            ("optimizer", ("sgd", "adamw")),
            ("schedule", ("step", "cosine", "constant")),
            ("loss", ("ce", "kd", "mse")),
            ("precision", ("fp32", "bf16")),
        ):
            if getattr(self, key) not in allowed:
                raise DDBenchError(f"recipe {key}={getattr(self, key)!r}; choose one of {allowed}")
        if not 0.0 <= self.hard_weight <= 1.0 or self.mixup < 0 or self.cutmix < 0:
            raise DDBenchError("recipe needs 0 <= hard_weight <= 1 and mixup, cutmix >= 0")
        self.milestones = tuple(self.milestones)


def lr_at(recipe: Recipe, epoch: int, base_lr: float) -> float:
    """The learning rate for (0-based) ``epoch``."""
    if recipe.schedule == "step":
        drops = sum(epoch >= int(recipe.epochs * m) for m in recipe.milestones)
        return base_lr * recipe.gamma**drops
    if recipe.schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / max(1, recipe.epochs)))
    return base_lr


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast context for ``precision='bf16'``, else a no-op. Without autocast's weight
    cache: a region may hold a whole distillation step (:meth:`ddbench.method.Task.autocast`),
    inside which a network is updated in place between forwards; a cached bf16 copy of its
    weights (kept until the outermost region ends) would be stale."""
    if precision == "bf16":
        return torch.autocast(
            device_type=torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False
        )
    return contextlib.nullcontext()


# CPU flags of native bf16 arithmetic (x86: AVX-512 BF16, AMX); elsewhere bf16 is emulated.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU that supports it without emulation, or a
    CPU with AVX-512 BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_flags() & set(NATIVE_BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where ``device`` computes bf16 natively (:func:`native_bf16`), else
    ``fp32``; ``fp32`` and ``bf16`` are returned as given."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise DDBenchError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    return precision


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Under ``torchrun`` (``WORLD_SIZE`` > 1) a
    plain ``cuda`` is this process's GPU, ``cuda:$LOCAL_RANK``."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DDBenchError(f"device={device} asked for, but CUDA is not available")
    if str(device) == "cuda" and world_info()[1] > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DDBenchError(
                f"torchrun process {local} of this node has no GPU ({torch.cuda.device_count()} "
                "visible): start at most one process per GPU, or use device=cpu"
            )
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


# ----------------------------------------------------------------------------- torchrun


def world_info() -> tuple[int, int]:
    """``(rank, world size)`` of this process: from the process group when one is initialised,
    else from torchrun's ``RANK``/``WORLD_SIZE``; ``(0, 1)`` outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE") or 1)
    return (int(os.environ.get("RANK") or 0), world) if world > 1 else (0, 1)


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the process that writes files and results."""
    return world_info()[0] == 0


def init_distributed() -> tuple[int, int]:
    """Join torchrun's process group (``env://``) unless already in one: gloo for CPU tensors
    and, where every process of the node has a GPU, NCCL for CUDA tensors. Returns
    ``(rank, world size)``."""
    import torch.distributed as dist

    rank, world = world_info()
    if world == 1 or dist.is_initialized():
        return rank, world
    if not dist.is_available():
        raise DDBenchError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    if torch.cuda.is_available() and torch.cuda.device_count() >= per_node:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    log.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), world, dist.get_backend())
    return dist.get_rank(), dist.get_world_size()


def _shard(batch: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of ``batch`` samples (sizes differ by at
    most one; a rank gets none when ``batch < world``)."""
    lo = rank * batch // world
    return slice(lo, (rank + 1) * batch // world)


def _broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values (one flat broadcast)."""
    import torch.distributed as dist

    tensors = [t for t in tensors if t.numel()]
    if tensors:
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
            dist.broadcast(flat, 0)
            for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(v.view_as(t))


def _sum_grads_at_end_of_backward(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Make ``loss.backward()`` end with the gradients of ``params`` summed over the ranks.

    A hook on ``loss`` (called as its backward starts) queues a callback for the end of that
    backward, as DistributedDataParallel does: one flat all-reduce of what this backward added
    to each ``.grad`` (gradients present before it are already reduced), with a flag per
    parameter so that one no rank reached keeps ``grad = None``.
    """
    import torch.distributed as dist
    from torch.autograd import Variable

    def reduce(before: list[torch.Tensor | None]) -> None:
        dev = params[0].device
        parts = []
        for p, b in zip(params, before):
            g = p.grad if p.grad is None or b is None else p.grad - b
            parts.append(torch.zeros(p.numel(), device=dev) if g is None else g.reshape(-1))
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        flat = torch.cat([*[t.float() for t in parts], flags])
        dist.all_reduce(flat)
        grads, reached = flat[: -len(params)], flat[-len(params) :].tolist()
        for p, b, v, f in zip(params, before, grads.split([p.numel() for p in params]), reached):
            if f == 0:
                p.grad = None
                continue
            g = v.view_as(p).to(p.dtype)
            p.grad = g if b is None else b + g

    def hook(grad: torch.Tensor) -> torch.Tensor:
        before = [None if p.grad is None else p.grad.detach().clone() for p in params]
        Variable._execution_engine.queue_callback(lambda: reduce(before))
        return grad

    loss.register_hook(hook)


class ModelStack:
    """K models called as one: ``forward(xs [K,B,...]) -> [K,B,classes]``.

    One model is called directly; several are stacked and vmapped, buffers included (a
    BatchNorm layer keeps each model's running statistics; :func:`stacks` decides when).
    """

    def __init__(self, models: Sequence[nn.Module]):
        self.models = list(models)
        if len(self.models) == 1:
            self.params = list(self.models[0].parameters())
            self._stacked = None
            return
        params, buffers = torch.func.stack_module_state(self.models)
        self._stacked = (params, buffers)
        self.params = list(params.values())
        base = copy.deepcopy(self.models[0]).to("meta")

        def call(p, b, x):
            return torch.func.functional_call(base, (p, b), (x,))

        self._vcall = torch.func.vmap(call, in_dims=(0, 0, 0))
        self._vcall_shared = torch.func.vmap(call, in_dims=(0, 0, None))

    def __len__(self) -> int:
        return len(self.models)

    def __call__(self, xs: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        if self._stacked is None:
            return self.models[0](xs if shared_input else xs[0]).unsqueeze(0)
        fn = self._vcall_shared if shared_input else self._vcall
        return fn(*self._stacked, xs)

    def train(self, mode: bool = True) -> None:
        for m in self.models:
            m.train(mode)

    def unstack(self) -> list[nn.Module]:
        """Copy trained stacked parameters back into the K modules and return them."""
        if self._stacked is not None:
            params, buffers = self._stacked
            for k, m in enumerate(self.models):
                for name, p in m.named_parameters():
                    p.data.copy_(params[name][k])
                for name, b in m.named_buffers():
                    b.data.copy_(buffers[name][k])
        return self.models


def _compiler_available() -> bool:
    import shutil

    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def should_compile(compile: bool | str, device: torch.device, total_steps: int) -> bool:
    """``auto``: compile long runs (>= 1000 steps), where ~30 s of compilation pays off."""
    if compile == "auto":
        return total_steps >= 1000 and (device.type == "cuda" or _compiler_available())
    return bool(compile)


class _Compiled:
    """``torch.compile`` of a forward function that falls back to eager if compilation fails."""

    def __init__(self, fn: Callable):
        self.eager = fn
        self.fn = torch.compile(fn, dynamic=False)
        self.failed = False

    def __call__(self, *args, **kw):
        if not self.failed:
            try:
                return self.fn(*args, **kw)
            except Exception as e:  # a missing compiler or an unsupported op: keep training
                import logging

                logging.getLogger("ddbench").warning(
                    "torch.compile failed (%s); training eagerly", str(e)[:200]
                )
                self.failed = True
        return self.eager(*args, **kw)


StepFn = Callable[
    [Callable[[], torch.Tensor], list[torch.Tensor], torch.optim.Optimizer], torch.Tensor
]
# per-sample loss [K,B] from (logits [K,B,C], targets [K,B], the teacher's output or None)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def stacks(
    parallel: bool | str, device: torch.device, model: nn.Module, step_fn: StepFn | None = None
) -> bool:
    """Whether :func:`train` trains several ``model``-like networks stacked (vmapped):
    ``parallel=True``/``False`` as asked; ``auto``: on CUDA, for models without BatchNorm and
    without a ``step_fn`` (on CPU one at a time is faster, ``bench/stacked_training.py``).
    Stacked BatchNorm layers keep per-model running statistics (``tests/test_engine.py``)."""
    if parallel == "auto":
        return step_fn is None and device.type == "cuda" and not has_batchnorm(model)
    return bool(parallel)


def build_models(
    build: Callable[[], nn.Module], seeds: Sequence[int], device: torch.device
) -> list[nn.Module]:
    """One model per seed, each initialised right after ``torch.manual_seed(seed)``."""
    models = []
    for s in seeds:
        torch.manual_seed(int(s))
        models.append(build().to(device))
    return models


def _loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    recipe: Recipe,
    weights: torch.Tensor | None,
    mixed: tuple[torch.Tensor, torch.Tensor] | None = None,
    soft: torch.Tensor | None = None,
    denom: int | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Per-model mean loss summed over models (``denom``: per-model sum over this batch divided
    by ``denom``, the global batch size, for a rank's share of a batch under torchrun).

    ``logits`` [K,B,C]; ``targets`` class indices [K,B] or soft targets [K,B,C] (probabilities
    under ``ce``, teacher logits under ``kd``); ``mixed = (targets_b, lam [K])``: hard targets
    of the mixed-in images and the mixing weight per model; ``soft``: teacher logits [K,B,C]
    computed online (``kd``). ``loss_fn(logits, targets, soft) -> [K,B]``: per-sample losses
    in place of the recipe's ``loss`` (a protocol's own loss, e.g. :func:`ddbench.dbr.dbr_loss`).
    """
    K, B, C = logits.shape
    flat = logits.reshape(K * B, C).float()

    def hard_ce(y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():  # soft targets: probabilities
            return -(y.reshape(K * B, C).float() * F.log_softmax(flat, 1)).sum(1).view(K, B)
        ce = F.cross_entropy(flat, y.reshape(K * B), reduction="none").view(K, B)
        if mixed is not None:
            y_b, lam = mixed
            ce_b = F.cross_entropy(flat, y_b.reshape(K * B), reduction="none").view(K, B)
            ce = lam.view(K, 1) * ce + (1 - lam.view(K, 1)) * ce_b
        return ce

    if loss_fn is not None:
        per = loss_fn(logits.float(), targets, soft)
    elif recipe.loss == "mse":
        if not targets.is_floating_point() or mixed is not None:
            raise DDBenchError("the mse loss needs float target vectors and no mixup/cutmix")
        per = ((flat - targets.reshape(K * B, C).float()) ** 2).mean(1).view(K, B)
    elif recipe.loss == "kd":
        teacher = soft if soft is not None else targets
        if not teacher.is_floating_point():
            raise DDBenchError("the kd loss needs soft targets: a teacher or the set's soft labels")
        T = recipe.temperature
        log_p = F.log_softmax(flat / T, 1)
        q = F.softmax(teacher.reshape(K * B, C).float() / T, 1)
        per = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(1).view(K, B) * T * T
        if recipe.hard_weight > 0:
            hard = targets if not targets.is_floating_point() else targets.argmax(-1)
            per = (1 - recipe.hard_weight) * per + recipe.hard_weight * hard_ce(hard)
    else:
        per = hard_ce(targets)
    if weights is not None:
        per = per * weights.view(K, B)
    return per.mean(1).sum() if denom is None else per.sum(1).sum() / denom


def _mix(
    xb: torch.Tensor, tb: torch.Tensor, recipe: Recipe, gens: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Mixup / CutMix of a batch ``xb`` [K,B,...] with a permutation of itself, per model.

    Returns the mixed images, the targets (soft targets mixed linearly) and, for hard
    targets, ``(targets of the mixed-in images, lam per model)`` for the loss.
    """
    import numpy as np

    K, B = xb.shape[:2]
    xs, ts, tbs, lams = [], [], [], []
    for k, g in enumerate(gens):
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
        use_cutmix = recipe.cutmix > 0 and (recipe.mixup <= 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [recipe.cutmix if use_cutmix else recipe.mixup])))
        perm = torch.randperm(B, generator=g).to(xb.device)
        x, x2 = xb[k], xb[k][perm]
        if use_cutmix:
            H, W = x.shape[-2:]
            ch, cw = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
            cy, cx = int(rng.integers(H)), int(rng.integers(W))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x2[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        else:
            x = lam * x + (1 - lam) * x2
        xs.append(x)
        t = tb[k]
        if t.is_floating_point():
            t = lam * t + (1 - lam) * t[perm]
        ts.append(t)
        tbs.append(tb[k][perm])
        lams.append(lam)
    lam_t = torch.tensor(lams, device=xb.device)
    mixed = None if tb.is_floating_point() else (torch.stack(tbs), lam_t)
    return torch.stack(xs), torch.stack(ts), mixed


def sgd_step(
    closure: Callable[[], torch.Tensor], params: list[torch.Tensor], opt: torch.optim.Optimizer
) -> torch.Tensor:
    """The engine's default step: backward of the batch's loss, then one optimiser step."""
    loss = closure()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _batch_loss(
    forward: Callable, xb, tb, recipe: Recipe, wb, mixed, soft, device: torch.device,
    denom: int | None = None, first: list | None = None, loss_fn: LossFn | None = None,
) -> torch.Tensor:  # fmt: skip
    """The loss of one (augmented, mixed) batch at the models' current parameters
    (``first``: a list that keeps the detached logits of the first call)."""
    with autocast(device, recipe.precision):
        logits = forward(xb)
    if first is not None and not first:
        first.append(logits.detach().float())
    return _loss(logits, tb, recipe, wb, mixed, soft, denom, loss_fn)


def _rank_loss(
    closure: Callable[[], torch.Tensor] | None, params: list[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """A rank's loss under torchrun (``closure`` None: its share of the batch is empty) whose
    backward ends with the gradients summed over the ranks."""
    loss = closure() if closure is not None else torch.zeros((), device=device, requires_grad=True)
    _sum_grads_at_end_of_backward(loss, params)
    return loss


@dataclass
class TrainResult:
    models: list[nn.Module]
    losses: list[float] = field(default_factory=list)  # mean train loss per epoch (over models)
    seconds: float = 0.0


def train(
    build: Callable[[], nn.Module] | None,
    seeds: Sequence[int] | None,
    images: torch.Tensor,
    targets: torch.Tensor,
    recipe: Recipe,
    *,
    device: torch.device | str = "auto",
    lr: float | None = None,
    weights: torch.Tensor | None = None,
    augment: Callable | None = None,
    parallel: bool | str = "auto",
    compile: bool | str = "auto",
    progress: bool | str = False,
    on_epoch: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    checkpoint_seconds: float = 0.0,
    resume: dict | None = None,
    step_fn: StepFn | None = None,
    distributed: bool | str = "auto",
    models: Sequence[nn.Module] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    generators: Sequence[torch.Generator] | None = None,
    steps: int | None = None,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train one fresh model per seed on ``(images, targets)`` with ``recipe``, or continue
    training given ``models``.

    ``targets`` are class indices ``[N]`` or soft targets ``[N,K]``; ``lr`` overrides the
    recipe's (a learned lr); ``augment(x, generator)`` is the batch augmentation (default:
    the augmentation ``recipe.augment`` names, :func:`ddbench.augment.make_augment`);
    ``parallel`` trains the models together (``True``/``False``; ``auto``: as :func:`stacks`
    decides, on CUDA unless they use BatchNorm); ``compile`` uses
    ``torch.compile`` for the forward
    (``auto``: for long runs where a compiler is present).

    ``teacher``: a trained model whose logits on each (augmented, mixed) batch are the soft
    targets of the ``kd`` loss (knowledge distillation with the teacher online).
    ``checkpoint(state)`` is called every ``checkpoint_every`` epochs (and after the last) with
    the full training state; passing that state back as ``resume`` continues the run exactly
    where it stopped (same models, optimiser, batch order and augmentation draws).
    ``checkpoint_seconds`` > 0 skips a due call made less than that many seconds after the
    previous one (or the start), so that short epochs are not slowed by writing state; the
    call after each group's last epoch is always made.

    ``step_fn(closure, params, optimizer) -> loss``: how one batch updates the parameters
    (default :func:`sgd_step`: backward of ``closure()`` then ``optimizer.step()``). ``closure()``
    recomputes the batch's loss at the current parameters (same images, augmentation and
    targets), so a step may evaluate it more than once (sharpness-aware experts, gradient
    penalties: :mod:`ddbench.experts`). With a ``step_fn`` the models train one at a time; a
    ``step_fn`` with the attribute ``takes_model = True`` is also given ``model=`` (the network
    being trained, e.g. to keep BatchNorm statistics out of a second pass).

    ``distributed`` (``auto``: when launched by ``torchrun`` with ``WORLD_SIZE`` > 1; ``False``:
    never) trains data-parallel (docs/distributed.md): every rank draws the same batch order,
    augmentation and mixing for the whole global batch, forwards its contiguous share, and the
    backward ends with the gradients summed over the ranks (each rank's loss is its share's
    sum over the global batch size), so the run is the one-process run up to float summation
    order (BatchNorm layers see per-rank batch statistics, as in DDP without SyncBatchNorm).
    Parameters start from rank 0's, buffers end as rank 0's; ``checkpoint`` is called on rank 0
    only, ``on_epoch`` on every rank (with the epoch loss summed over the ranks).

    Continuing (an inner loop that trains one network between outer steps, as DC's):
    ``models`` are existing modules, trained in place instead of built from ``build`` (``seeds``
    then only name them, default ``0..K-1``), and left in train mode. ``optimizers`` (one per
    model, over its parameters; needs ``models``) continue with their own state and lr: the
    recipe's optimiser, lr, momentum, weight decay and schedule are then unused, and the models
    train one at a time. ``generators`` (one per model) draw the batch order and augmentation
    in place of the streams seeded from ``seeds``. ``steps`` is a budget of optimiser steps per
    model in place of ``recipe.epochs``: ``ceil(steps / batches per epoch)`` shuffled epochs, the
    last one cut short. ``batch_transform(x, y) -> (x, y)`` rewrites each model's batch before
    the augmentation (FYI: the batch and its mirrors, :mod:`ddbench.fyi`); not with ``weights``
    or under torchrun.

    ``on_batch(rows, logits)`` is called after every step with the rows of ``images`` in the
    batch (``[K,B]``, this rank's share under torchrun) and the models' logits on it from the
    step's first forward, before the update (``[K,B,C]``, detached, float32: the augmented,
    mixed images, in train mode), e.g. to count forgetting events per presentation
    (:mod:`ddbench.methods.forgetting`); not with ``batch_transform``.

    ``loss_fn(logits [K,B,C], targets [K,B], soft) -> [K,B]``: the per-sample loss in place of
    ``recipe.loss`` (``soft``: the ``teacher``'s output on the batch, or None).
    """
    import time

    from tqdm import tqdm

    device = pick_device(device) if isinstance(device, str) else device
    rank, world = init_distributed() if distributed and world_info()[1] > 1 else (0, 1)
    if augment is None and recipe.augment:
        augment = make_augment(recipe.augment)
    x_all = images.to(device, torch.float32)
    y_all = targets.to(device)
    w_all = None if weights is None else weights.to(device, torch.float32)
    n = len(x_all)
    if n == 0:
        raise DDBenchError("cannot train on an empty set")
    built = models is None
    if not built:
        models = list(models)
        seeds = list(range(len(models))) if seeds is None else seeds
    elif build is None or seeds is None:
        raise DDBenchError("train needs build and seeds, or existing models=")
    if not built and len(seeds) != len(models):
        raise DDBenchError(f"{len(seeds)} seeds for {len(models)} models")
    if optimizers is not None and (models is None or len(optimizers) != len(models)):
        raise DDBenchError("optimizers= continues given models= (one optimiser per model)")
    if optimizers is not None and lr is not None:
        raise DDBenchError("lr= sets the engine's optimiser; a given optimiser keeps its own lr")
    if generators is not None and len(generators) != len(seeds):
        raise DDBenchError(f"{len(generators)} generators for {len(seeds)} models")
    if batch_transform is not None and (weights is not None or world > 1):
        raise DDBenchError("batch_transform cannot be combined with weights or torchrun")
    if batch_transform is not None and on_batch is not None:
        raise DDBenchError("on_batch sees rows of images, which a batch_transform rewrites")
    base_lr = float(recipe.lr if lr is None else lr)
    if optimizers is None and (not math.isfinite(base_lr) or base_lr <= 0):
        raise DDBenchError(f"learning rate must be positive and finite, got {base_lr}")
    bs = min(recipe.batch_size, n)
    if steps is not None:
        if steps < 0:
            raise DDBenchError(f"steps must be >= 0, got {steps}")
        recipe = dataclasses.replace(recipe, epochs=math.ceil(steps / math.ceil(n / bs)))
    if built:
        models = build_models(build, seeds, device)
    if recipe.channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)
    one_each = step_fn is not None or optimizers is not None
    if one_each and parallel is True and len(models) > 1:
        raise DDBenchError(
            "a step_fn or given optimisers see one model's parameters: train with parallel=False"
        )
    parallel = not one_each and stacks(parallel, device, models[0], step_fn)
    groups = [models] if parallel else [[m] for m in models]
    total_steps = recipe.epochs * math.ceil(n / bs) * len(groups)
    use_compile = should_compile(compile, device, total_steps)
    gens = (
        list(generators)
        if generators is not None
        else [torch.Generator().manual_seed(int(s) + _DATA_STREAM) for s in seeds]
    )
    epoch_losses = torch.zeros(recipe.epochs)
    first_group, first_epoch, opt_state = 0, 0, None
    if resume is not None:
        first_group, first_epoch, opt_state = _restore(resume, models, gens, epoch_losses, seeds)
    if teacher is not None:
        teacher = teacher.to(device).eval()
        if recipe.channels_last:
            teacher.to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
    start = time.perf_counter()
    desc = progress if isinstance(progress, str) else "train"
    bar = tqdm(
        total=recipe.epochs * len(groups),
        initial=first_group * recipe.epochs + first_epoch,
        desc=desc,
        disable=None if progress and rank == 0 else True,
        leave=False,
        unit="ep",
    )
    # Without a terminal (nohup, a batch job) the bar is off: log the epochs instead, at most
    # every LOG_EVERY_S seconds, so a long training still shows where it is.
    log_epochs = bool(progress) and rank == 0 and bar.disable
    last_log = last_save = start
    ep_loss = float("nan")
    for gi, group in enumerate(groups):
        if gi < first_group:
            continue
        stack = ModelStack(group)
        stack.train()
        if world > 1:
            _broadcast_(stack.params)
        forward = _Compiled(stack.__call__) if use_compile else stack
        g = [gens[models.index(m)] for m in group]
        K = len(group)
        if optimizers is not None:
            opt = optimizers[models.index(group[0])]
        elif recipe.optimizer == "sgd":
            opt = torch.optim.SGD(
                stack.params,
                lr=base_lr,
                momentum=recipe.momentum,
                weight_decay=recipe.weight_decay,
                fused=device.type in ("cpu", "cuda"),  # one kernel, not ~4 ops per parameter
            )
        else:
            opt = torch.optim.AdamW(stack.params, lr=base_lr, weight_decay=recipe.weight_decay)
        e0 = first_epoch if gi == first_group else 0
        if gi == first_group and opt_state is not None:
            opt.load_state_dict(opt_state)
        for ep in range(e0, recipe.epochs):
            if optimizers is None:
                for pg in opt.param_groups:
                    pg["lr"] = lr_at(recipe, ep, base_lr)
            order = torch.stack([torch.randperm(n, generator=gk) for gk in g]).to(device)
            total = torch.zeros((), device=device)
            seen = 0
            for b0 in range(0, n, bs):
                if steps is not None and ep * math.ceil(n / bs) + b0 // bs == steps:
                    break
                idx = order[:, b0 : b0 + bs]  # [K, B]
                xb = x_all[idx]  # [K, B, C, H, W]
                tb = y_all[idx]
                if batch_transform is not None:
                    pairs = [batch_transform(xb[k], tb[k]) for k in range(K)]
                    xb = torch.stack([p[0] for p in pairs])
                    tb = torch.stack([p[1] for p in pairs])
                if augment is not None:
                    xb = (
                        torch.stack([augment(xb[k], g[k]) for k in range(K)])
                        if K > 1
                        else augment(xb[0], g[0])[None]
                    )
                mixed = None
                if recipe.mixup > 0 or recipe.cutmix > 0:
                    xb, tb, mixed = _mix(xb, tb, recipe, g)
                B = idx.shape[1]
                if world > 1:  # this rank's share of the batch, augmented and mixed as a whole
                    part = _shard(B, rank, world)
                    xb, tb, idx = xb[:, part], tb[:, part], idx[:, part]
                    mixed = None if mixed is None else (mixed[0][:, part], mixed[1])
                if recipe.channels_last and K == 1:
                    xb = xb[0].contiguous(memory_format=torch.channels_last)[None]
                soft = None
                if teacher is not None and idx.shape[1]:
                    with torch.no_grad(), autocast(device, recipe.precision):
                        soft = torch.stack([teacher(xb[k]) for k in range(K)]).float()
                wb = None if w_all is None else w_all[idx]
                first: list | None = [] if on_batch is not None else None
                closure = functools.partial(
                    _batch_loss,
                    forward,
                    xb,
                    tb,
                    recipe,
                    wb,
                    mixed,
                    soft,
                    device,
                    first=first,
                    loss_fn=loss_fn,
                )
                if world > 1:
                    share = functools.partial(closure, denom=B) if idx.shape[1] else None
                    closure = functools.partial(_rank_loss, share, stack.params, device)
                if getattr(step_fn, "takes_model", False):
                    loss = step_fn(closure, stack.params, opt, model=stack.models[0])
                else:
                    loss = (step_fn or sgd_step)(closure, stack.params, opt)
                if first:
                    on_batch(idx, first[0])
                total += loss.detach() * B
                seen += B
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(total)
            ep_loss = float(total) / (seen * K)
            if not math.isfinite(ep_loss):
                raise DDBenchError(
                    f"training diverged (loss {ep_loss}) at epoch {ep}; lower the learning rate"
                )
            epoch_losses[ep] += ep_loss * K / len(models)
            if on_epoch is not None:
                on_epoch(ep, ep_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{ep_loss:.3f}", refresh=False)
            last = ep + 1 == recipe.epochs
            now = time.perf_counter()
            if log_epochs and (last or now - last_log >= LOG_EVERY_S):
                last_log = now
                log.info("%s: epoch %d/%d, loss %.4f, %.0fs", desc, gi * recipe.epochs + ep + 1,
                         recipe.epochs * len(groups), ep_loss, now - start)  # fmt: skip
            due = checkpoint_every > 0 and (ep + 1) % checkpoint_every == 0
            if (
                checkpoint is not None
                and rank == 0
                and (last or (due and now - last_save >= checkpoint_seconds))
            ):
                last_save = now
                stack.unstack()
                nxt = (gi + 1, 0) if last else (gi, ep + 1)
                checkpoint(_state(nxt, models, opt, gens, epoch_losses, seeds, last))
        stack.unstack()
        if world > 1:  # BatchNorm running statistics: rank 0's, as DDP broadcasts them
            _broadcast_([b for m in group for b in m.buffers() if b.is_floating_point()])
        if rank == 0 and built:
            log.info("trained seed(s) %s: final loss %.4f, %.0fs so far", [seeds[models.index(m)] for m in group],
                     ep_loss, time.perf_counter() - start)  # fmt: skip
    bar.close()
    for m in models if built else ():
        m.eval()
    return TrainResult(models, epoch_losses.tolist(), time.perf_counter() - start)


def _state(
    next_at: tuple[int, int],
    models: list[nn.Module],
    opt: torch.optim.Optimizer,
    gens: list[torch.Generator],
    epoch_losses: torch.Tensor,
    seeds: Sequence[int],
    group_done: bool,
) -> dict:
    """Everything needed to continue training at ``next_at = (group, epoch)``."""
    return {
        "group": next_at[0],
        "epoch": next_at[1],
        "seeds": [int(s) for s in seeds],
        "models": [
            {k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models
        ],
        "optimizer": None if group_done else copy.deepcopy(opt.state_dict()),
        "generators": [g.get_state() for g in gens],
        "epoch_losses": epoch_losses.clone(),
    }


def _restore(
    state: dict,
    models: list[nn.Module],
    gens: list[torch.Generator],
    epoch_losses: torch.Tensor,
    seeds: Sequence[int],
) -> tuple[int, int, dict | None]:
    if state.get("seeds") != [int(s) for s in seeds] or len(state["models"]) != len(models):
        raise DDBenchError("checkpoint was written for other seeds; it cannot be resumed here")
    for m, sd in zip(models, state["models"]):
        m.load_state_dict(sd)
    for g, gs in zip(gens, state["generators"]):
        g.set_state(gs)
    epoch_losses.copy_(state["epoch_losses"])
    return int(state["group"]), int(state["epoch"]), state.get("optimizer")


Output = torch.Tensor | tuple[torch.Tensor | None, ...]


@torch.no_grad()
def predict_batches(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 500,
    precision: str = "fp32",
    output: Callable[[nn.Module, torch.Tensor], Output] | None = None,
) -> Iterator[tuple[slice, Output]]:
    """The one prediction loop: each model (in eval mode, without gradients, under
    ``precision``) on ``images[index]`` (all images if None), ``batch_size`` at a time.

    A batch is moved to the models' device and passed through ``transform`` (else cast to
    float). Yields ``(rows, out)`` per batch, ``rows`` the slice of ``index`` (or ``images``) it
    covers; ``out`` is the models' logits ``[K, B, classes]`` stacked over the models, or, with
    ``output(model, x)``, what that returns stacked over the models (a tuple is stacked element
    by element; a None element stays None). Outputs are float32. Models without BatchNorm and
    without ``output`` run as one vmapped stack.
    """
    device = next(models[0].parameters()).device
    for m in models:
        m.eval()
    plain = output is None and not any(has_batchnorm(m) for m in models)
    stack = ModelStack(models) if plain else None
    n = len(images) if index is None else len(index)
    for b0 in range(0, n, batch_size):
        rows = slice(b0, min(n, b0 + batch_size))
        xb = (images[rows] if index is None else images[index[rows]]).to(device)
        xb = transform(xb) if transform is not None else xb.float()
        with autocast(device, precision):
            if stack is not None:
                out = stack(xb, shared_input=True)
            else:
                outs = [m(xb) if output is None else output(m, xb) for m in models]
                if isinstance(outs[0], tuple):
                    out = tuple(
                        None if parts[0] is None else torch.stack([p.float() for p in parts])
                        for parts in zip(*outs)
                    )
                else:
                    out = torch.stack(outs)
        yield rows, out if isinstance(out, tuple) else out.float()


def predict(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 500,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits ``[K, N, classes]`` of each model on ``images`` (uint8 or float), in batches
    (:func:`predict_batches`)."""
    batches = predict_batches(
        models, images, transform=transform, batch_size=batch_size, precision=precision
    )
    return torch.cat([out for _, out in batches], 1)


def accuracy(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    **kw,
) -> list[float]:
    """Top-1 accuracy (%) of each model."""
    logits = predict(models, images, **kw)
    correct = (logits.argmax(-1).cpu() == labels.view(1, -1)).float().mean(1) * 100
    return correct.tolist()


def accuracy_summary(
    seeds: Sequence[int], accs: Sequence[float], dtype: torch.dtype | None = None
) -> dict:
    """A result's ``accuracy`` entry for the accuracies ``accs`` of the models of ``seeds``:
    their mean and (population) std, computed in ``dtype`` (None: torch's default), and each
    seed's accuracy."""
    acc = torch.tensor(accs, dtype=dtype)
    return {
        "mean": float(acc.mean()),
        "std": float(acc.std(unbiased=False)) if len(acc) > 1 else 0.0,
        "per_seed": [{"seed": int(s), "accuracy": float(a)} for s, a in zip(seeds, accs)],
    }

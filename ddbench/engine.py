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
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.errors import DDBenchError

log = logging.getLogger("ddbench")
_DATA_STREAM = 7919  # offsets the data generator's seed from the init seed


@dataclass
class Recipe:
    """How to train a model: optimiser, schedule, epochs, batch, augmentation, precision."""

    epochs: int
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # step | cosine | constant
    milestones: tuple[float, ...] = (0.5,)  # fractions of the epochs where lr *= gamma (step)
    gamma: float = 0.1
    augment: str | None = None  # a DSA strategy string, or None
    loss: str = "ce"  # ce (hard or soft targets) | kd (temperature-scaled KL to soft targets)
    temperature: float = 1.0
    hard_weight: float = 0.0  # kd: loss = (1 - w) * T^2 * KL + w * CE(hard labels)
    mixup: float = 0.0  # Beta(a, a) mixup alpha; 0 = off
    cutmix: float = 0.0  # Beta(a, a) cutmix alpha; 0 = off (both on: one of the two per batch)
    precision: str = "fp32"  # fp32 | bf16 (autocast)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise DDBenchError(
                f"recipe needs epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        for key, allowed in (
            ("optimizer", ("sgd", "adamw")),
            ("schedule", ("step", "cosine", "constant")),
            ("loss", ("ce", "kd")),
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
    """bf16 autocast context for ``precision='bf16'``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DDBenchError(f"device={device} asked for, but CUDA is not available")
    return torch.device(device)


class ModelStack:
    """K models called as one: ``forward(xs [K,B,...]) -> [K,B,classes]``.

    One model is called directly; several are stacked and vmapped (models with BatchNorm
    running statistics cannot be, so the engine trains those one at a time).
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


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


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
) -> torch.Tensor:
    """Per-model mean loss summed over models.

    ``logits`` [K,B,C]; ``targets`` class indices [K,B] or soft targets [K,B,C] (probabilities
    under ``ce``, teacher logits under ``kd``); ``mixed = (targets_b, lam [K])``: hard targets
    of the mixed-in images and the mixing weight per model; ``soft``: teacher logits [K,B,C]
    computed online (``kd``).
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

    if recipe.loss == "kd":
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
    return per.mean(1).sum()


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


@dataclass
class TrainResult:
    models: list[nn.Module]
    losses: list[float] = field(default_factory=list)  # mean train loss per epoch (over models)
    seconds: float = 0.0


def train(
    build: Callable[[], nn.Module],
    seeds: Sequence[int],
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
    resume: dict | None = None,
) -> TrainResult:
    """Train one fresh model per seed on ``(images, targets)`` with ``recipe``.

    ``targets`` are class indices ``[N]`` or soft targets ``[N,K]``; ``lr`` overrides the
    recipe's (a learned lr); ``augment(x, generator)`` is the batch augmentation (default:
    DSA with ``recipe.augment``);
    ``parallel`` trains the models together (``auto``: on CUDA, unless they use BatchNorm;
    on CPU one at a time is as fast); ``compile`` uses ``torch.compile`` for the forward
    (``auto``: for long runs where a compiler is present).

    ``teacher``: a trained model whose logits on each (augmented, mixed) batch are the soft
    targets of the ``kd`` loss (knowledge distillation with the teacher online).
    ``checkpoint(state)`` is called every ``checkpoint_every`` epochs (and after the last) with
    the full training state; passing that state back as ``resume`` continues the run exactly
    where it stopped (same models, optimiser, batch order and augmentation draws).
    """
    import time

    from tqdm import tqdm

    device = pick_device(device) if isinstance(device, str) else device
    if augment is None and recipe.augment:
        from ddbench.augment import DSA

        augment = DSA(recipe.augment)
    x_all = images.to(device, torch.float32)
    y_all = targets.to(device)
    w_all = None if weights is None else weights.to(device, torch.float32)
    n = len(x_all)
    if n == 0:
        raise DDBenchError("cannot train on an empty set")
    base_lr = float(recipe.lr if lr is None else lr)
    if not math.isfinite(base_lr) or base_lr <= 0:
        raise DDBenchError(f"learning rate must be positive and finite, got {base_lr}")
    models = build_models(build, seeds, device)
    if parallel == "auto":
        parallel = device.type == "cuda" and not has_batchnorm(models[0])
    groups = [models] if parallel else [[m] for m in models]
    steps = recipe.epochs * math.ceil(n / min(recipe.batch_size, n)) * len(groups)
    use_compile = should_compile(compile, device, steps)
    gens = [torch.Generator().manual_seed(int(s) + _DATA_STREAM) for s in seeds]
    epoch_losses = torch.zeros(recipe.epochs)
    first_group, first_epoch, opt_state = 0, 0, None
    if resume is not None:
        first_group, first_epoch, opt_state = _restore(resume, models, gens, epoch_losses, seeds)
    if teacher is not None:
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    start = time.perf_counter()
    desc = progress if isinstance(progress, str) else "train"
    bar = tqdm(
        total=recipe.epochs * len(groups),
        initial=first_group * recipe.epochs + first_epoch,
        desc=desc,
        disable=None if progress else True,
        leave=False,
        unit="ep",
    )
    ep_loss = float("nan")
    for gi, group in enumerate(groups):
        if gi < first_group:
            continue
        stack = ModelStack(group)
        stack.train()
        forward = _Compiled(stack.__call__) if use_compile else stack
        g = [gens[models.index(m)] for m in group]
        K = len(group)
        if recipe.optimizer == "sgd":
            opt = torch.optim.SGD(
                stack.params, lr=base_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
            )
        else:
            opt = torch.optim.AdamW(stack.params, lr=base_lr, weight_decay=recipe.weight_decay)
        e0 = first_epoch if gi == first_group else 0
        if gi == first_group and opt_state is not None:
            opt.load_state_dict(opt_state)
        bs = min(recipe.batch_size, n)
        for ep in range(e0, recipe.epochs):
            for pg in opt.param_groups:
                pg["lr"] = lr_at(recipe, ep, base_lr)
            order = torch.stack([torch.randperm(n, generator=gk) for gk in g]).to(device)
            total = torch.zeros((), device=device)
            for b0 in range(0, n, bs):
                idx = order[:, b0 : b0 + bs]  # [K, B]
                xb = x_all[idx]  # [K, B, C, H, W]
                tb = y_all[idx]
                if augment is not None:
                    xb = (
                        torch.stack([augment(xb[k], g[k]) for k in range(K)])
                        if K > 1
                        else augment(xb[0], g[0])[None]
                    )
                mixed = None
                if recipe.mixup > 0 or recipe.cutmix > 0:
                    xb, tb, mixed = _mix(xb, tb, recipe, g)
                soft = None
                if teacher is not None:
                    with torch.no_grad(), autocast(device, recipe.precision):
                        soft = torch.stack([teacher(xb[k]) for k in range(K)]).float()
                with autocast(device, recipe.precision):
                    logits = forward(xb)
                wb = None if w_all is None else w_all[idx]
                loss = _loss(logits, tb, recipe, wb, mixed, soft)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * idx.shape[1]
            ep_loss = float(total) / (n * K)
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
            if checkpoint is not None and (
                last or (checkpoint_every > 0 and (ep + 1) % checkpoint_every == 0)
            ):
                stack.unstack()
                nxt = (gi + 1, 0) if last else (gi, ep + 1)
                checkpoint(_state(nxt, models, opt, gens, epoch_losses, seeds, last))
        stack.unstack()
        log.info("trained seed(s) %s: final loss %.4f, %.0fs so far", [seeds[models.index(m)] for m in group],
                 ep_loss, time.perf_counter() - start)  # fmt: skip
    bar.close()
    for m in models:
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


@torch.no_grad()
def predict(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 500,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits ``[K, N, classes]`` of each model on ``images`` (uint8 or float), in chunks."""
    device = next(models[0].parameters()).device
    for m in models:
        m.eval()
    stack = ModelStack(models) if not any(has_batchnorm(m) for m in models) else None
    outs = []
    for b0 in range(0, len(images), batch_size):
        xb = images[b0 : b0 + batch_size].to(device)
        xb = transform(xb) if transform is not None else xb.float()
        with autocast(device, precision):
            if stack is not None:
                out = stack(xb, shared_input=True)
            else:
                out = torch.stack([m(xb) for m in models])
        outs.append(out.float())
    return torch.cat(outs, 1)


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

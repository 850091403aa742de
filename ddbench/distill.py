"""Shared machinery of the methods that optimise synthetic images (DC, DSA, DM, ...).

:class:`ImageDistillation` owns the outer loop that every such method runs: initialise the images
(real or noise), build their optimiser and lr schedule, resume from the task's checkpointer,
iterate, report progress and metrics, checkpoint, optionally evaluate on the val split, and wrap
the result in a set. A method only writes its idea, the hook :meth:`ImageDistillation.step`::

    class MyMatching(ImageDistillation):
        name = "my_matching"

        def step(self, task, images, labels, it):
            net = self.fresh_net(task, frozen=True)
            loss = ...                      # a differentiable function of ``images``
            return self.update(loss)        # one optimiser step of the images; returns the loss

Hook contract: ``step`` updates the images itself, through :meth:`update` (zero_grad, backward,
optimiser step), as many times as it needs (DC updates them ``outer_loop`` times per iteration),
and returns the float loss to report. The loop runs each ``step`` in the task's precision
(:meth:`Task.autocast`: under ``precision=bf16`` the networks' matmuls and convolutions in bf16);
the shared helpers keep the data side in fp32 (real batches, DSA, the images' update), so a step
holds no precision code. Everything random (real batches, DSA seeds, network
initialisations, batch order of inner training) is drawn from ``task.generator``, whose state is
checkpointed with the images and the state of every optimiser (the images' and those a method
registers in :meth:`ImageDistillation.optimizers`) and of the lr schedule: a resumed run continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddbench import engine, fyi, modifiers  # noqa: F401  (fyi registers its modifier)
from ddbench.errors import DDBenchError
from ddbench.method import Method, Settings, Task
from ddbench.synset import SyntheticSet
from ddbench.synset import load as load_set

__all__ = ["ImageDistillation", "class_means", "optimizer_state", "load_optimizer_state"]

log = logging.getLogger("ddbench")

_SEED_HIGH = 2**31 - 1


class ImageDistillation(Method):
    """Base class of methods that learn synthetic images with an optimiser over an outer loop.

    Settings (common to all subclasses, :class:`ImageDistillation.Settings`):
      iterations     outer iterations (the budget)
      lr_img         learning rate of the images
      img_optimizer  ``sgd`` (momentum ``momentum_img``, 0.5) or ``adam`` (betas ``img_betas``)
      img_schedule   ``constant`` lr, or ``cosine``: ``lr_img (1 + cos(pi it / iterations)) / 2``
                     at (0-based) iteration ``it``
      init           ``real`` (ipc random real images per class) or ``noise`` (N(0, 1) in the
                     normalised space)
      init_from      a set file whose images start the set instead of ``init`` (same dataset and
                     image space, ``ipc`` images per class ordered by class): a warm start from
                     another method's set, or two runs started from the same images
      eval_every     every N iterations, train ``eval_seeds`` fresh models for ``eval_epochs``
                     epochs on the current images and log their accuracy on the VAL split (0: never)
      fyi            FYI (Son et al., ECCV 2024): match and train on the synthetic images together
                     with their horizontal mirrors (:mod:`ddbench.fyi`); recorded in the set. The
                     modifier it selects (:attr:`modifier`, :mod:`ddbench.modifiers`) is applied
                     by the shared helpers (:meth:`siamese`, the inner training), never by a step
    """

    @dataclass
    class Settings(Settings):
        iterations: int = 1000
        lr_img: float = 0.1
        momentum_img: float = 0.5  # MTT's distill.py:142 (and DC/DM's image optimisers)
        init: str = "real"
        init_from: str = ""
        eval_every: int = 0
        eval_epochs: int = 300
        eval_seeds: list[int] = field(default_factory=lambda: [0])
        fyi: bool = False
        img_optimizer: str = "sgd"  # sgd (momentum_img) | adam (img_betas)
        img_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
        img_schedule: str = "constant"  # constant | cosine (to 0 over the iterations)

        def __post_init__(self) -> None:
            if self.iterations < 0:
                raise DDBenchError(f"iterations must be >= 0, got {self.iterations}")
            if not (math.isfinite(self.lr_img) and self.lr_img > 0):
                raise DDBenchError(f"lr_img must be positive, got {self.lr_img}")
            if self.init not in ("real", "noise"):
                raise DDBenchError(f"init must be 'real' or 'noise', got {self.init!r}")
            if self.eval_every < 0 or self.eval_epochs < 1 or not self.eval_seeds:
                raise DDBenchError(
                    "eval_every must be >= 0, eval_epochs >= 1, eval_seeds non-empty"
                )
            if self.img_optimizer not in ("sgd", "adam"):
                raise DDBenchError(f"img_optimizer must be sgd or adam, got {self.img_optimizer!r}")
            if self.img_schedule not in ("constant", "cosine"):
                raise DDBenchError(
                    f"img_schedule must be constant or cosine, got {self.img_schedule!r}"
                )
            if len(self.img_betas) != 2 or not all(0 <= b < 1 for b in self.img_betas):
                raise DDBenchError(f"img_betas must be two numbers in [0, 1), got {self.img_betas}")

    name = "image_distillation"
    protocol = "standard"  # the evaluation protocol the sets expect
    # whether the method's start honours ``init_from``; a method whose set is not ``ipc`` images
    # per class started from images (compensators, stitched patches, learned targets) says no,
    # and ``init_from`` is then refused rather than silently ignored
    supports_init_from = True

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        if self.init_from and not self.supports_init_from:
            raise DDBenchError(
                f"{self.name}: init_from is not supported (its set does not start from ipc "
                "images per class); drop method.init_from"
            )
        self._opt: torch.optim.Optimizer | None = None
        self._sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self._modifier: modifiers.Modifier | None = None

    @property
    def modifier(self) -> modifiers.Modifier:
        """The transform of the synthetic batch the settings select (``fyi``), applied by the
        shared helpers (:mod:`ddbench.modifiers`); assignable, for a modifier of one's own."""
        if self._modifier is None:
            self._modifier = modifiers.from_config(fyi=self.fyi)
        return self._modifier

    @modifier.setter
    def modifier(self, modifier: modifiers.Modifier) -> None:
        self._modifier = modifier

    # ------------------------------------------------------------------------------ hooks

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        """One outer iteration: update ``images`` (through :meth:`update`), return the loss."""
        raise NotImplementedError

    def image_lr(self, task: Task) -> float:
        """The images' learning rate for this task (a subclass may make it depend on ipc)."""
        return self.lr_img

    def monitor_lr(self) -> float | None:
        """The lr the set would store now (a learned lr), for the ``eval_every`` monitor under a
        protocol with ``lr_from_set``; None: the method stores no lr."""
        return None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers the method steps itself besides the images' (e.g. a learned lr's), by
        name: the loop checkpoints and restores their state and the tensors they optimise with
        the images'."""
        return {}

    # ------------------------------------------------------------------------------ helpers

    def update(self, loss: torch.Tensor) -> float:
        """One optimiser step of the images on ``loss``; returns its value."""
        if self._opt is None:
            raise DDBenchError("update() is only available inside distill()")
        with torch.autocast(loss.device.type, enabled=False):  # backward outside autocast
            self._opt.zero_grad(set_to_none=True)
            loss.backward()
            self._opt.step()
        return float(loss.detach())

    @staticmethod
    def next_seed(task: Task) -> int:
        """A seed drawn from the task's generator."""
        return int(torch.randint(0, _SEED_HIGH, (1,), generator=task.generator))

    @staticmethod
    def sample_real(task: Task, c: int, n: int) -> torch.Tensor:
        """``n`` random normalised real images of class ``c`` (all of them if it has fewer)."""
        return task.real_images(c, n)

    @staticmethod
    def class_slice(task: Task, c: int) -> slice:
        """The rows of class ``c`` in the images (ordered by class, ``ipc`` each)."""
        return slice(c * task.ipc, (c + 1) * task.ipc)

    def fresh_net(self, task: Task, frozen: bool = False, channels_last: bool = False) -> nn.Module:
        """A newly initialised ``task.model_factory()`` in train mode, seeded from the task's
        generator (the global RNG is left untouched). ``frozen``: no parameter needs grad.
        ``channels_last``: weights (hence activations) in NHWC where that pays, i.e. in fp32 on
        CPU only: faster forward passes there (PyTorch's NCHW avg_pool2d is slow), but a slower
        double backward (DC) and, under bf16 autocast, slower NHWC group norm;
        ``bench/matching_speed.py`` measures both."""
        channels_last = channels_last and task.device.type == "cpu" and task.precision == "fp32"
        seed = self.next_seed(task)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = task.model_factory()
        net.train()
        if frozen:
            net.requires_grad_(False)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def siamese(
        self, task: Task, real: torch.Tensor, syn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Siamese DSA of a (real, synthetic) pair with a seed from the task's generator;
        the pair unchanged when ``dsa`` is off or the task has no augmentation. The synthetic
        batch is first the :attr:`modifier`'s (``fyi``: ``[syn; flip(syn)]``, twice the rows),
        and the augmentation the modifier's (``fyi``: a siamese flip, then one other op)."""
        syn, _ = self.modifier.apply(syn)
        if not self.dsa or task.augment is None:
            return real, syn
        with task.full_precision():
            augment = self.modifier.augmentation(task.augment)
            return augment.pair(real, syn, self.next_seed(task))

    def real_batches(self, task: Task, n: int) -> list[torch.Tensor]:
        """One batch of ``n`` real images per class."""
        return [self.sample_real(task, c, n) for c in range(task.num_classes)]

    # ------------------------------------------------------------------------------ the loop

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``ipc`` images per class, ordered by class, and their hard labels."""
        k, ipc = task.num_classes, task.ipc
        labels = torch.arange(k, device=task.device).repeat_interleave(ipc)
        if self.init_from:
            images = self.images_from(task, self.init_from)
        elif self.init == "real":
            per_class = [self.sample_real(task, c, ipc) for c in range(k)]
            short = [c for c, x in enumerate(per_class) if len(x) < ipc]
            if short:
                raise DDBenchError(
                    f"init=real needs {ipc} real images per class; class(es) {short} have fewer"
                )
            images = torch.cat(per_class)
        else:
            images = torch.randn((k * ipc, *task.spec.shape), generator=task.generator)
        return images.to(task.device, torch.float32).contiguous(), labels

    @staticmethod
    def images_from(task: Task, path: str) -> torch.Tensor:
        """The images of the set file ``path`` as the start of ``task``'s set: one clear error
        unless it holds ``task.ipc`` images of each class, ordered by class, of the task's dataset
        and image space."""
        s = load_set(path)
        k, ipc = task.num_classes, task.ipc
        where = f"init_from {path}"
        if s.meta.get("dataset") != task.spec.name:
            raise DDBenchError(
                f"{where}: a set of {s.meta.get('dataset')!r}, not {task.spec.name!r}"
            )
        if (s.zca is None) != (task.train.zca is None):
            raise DDBenchError(f"{where}: its image space (ZCA or not) is not the task's")
        want = torch.arange(k).repeat_interleave(ipc)
        if s.images.shape != (k * ipc, *task.spec.shape) or not torch.equal(
            s.hard_labels.cpu(), want
        ):
            raise DDBenchError(
                f"{where}: needs {ipc} image(s) per class ordered by class, shape "
                f"{(k * ipc, *task.spec.shape)}; it has {tuple(s.images.shape)}"
            )
        return s.images.clone()

    def distill(self, task: Task) -> SyntheticSet:
        self.apply_recipe(task.spec.name, task.ipc)
        self.modifier.check(task, self.name)
        images, labels = self.init_images(task)
        images.requires_grad_(True)
        self._opt, self._sched = self.image_optimizer(task, images)
        try:
            start, seconds_before = self._resume(task, images)
            loss = math.nan
            log_every = max(1, self.iterations // 20)
            t0 = time.perf_counter()
            bar = task.progress(
                range(start, self.iterations), total=self.iterations - start, desc=self.name
            )
            for it in bar:
                t_it = time.perf_counter()
                with task.autocast():
                    loss = self.step(task, images, labels, it)
                if not math.isfinite(loss):
                    raise DDBenchError(
                        f"{self.name}: the matching loss is {loss} at iteration {it}; "
                        "lower method.lr_img"
                    )
                if self._sched is not None:
                    self._sched.step()
                seconds = time.perf_counter() - t_it
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if task.logger is not None:
                    task.logger.metrics({"loss": loss, "seconds": seconds}, step=it)
                if (it + 1) % log_every == 0 or it + 1 == self.iterations:
                    done = it + 1 - start
                    log.info(
                        "%s: iteration %d/%d, loss %.4g (%.2f s/it)",
                        self.name, it + 1, self.iterations, loss,
                        (time.perf_counter() - t0) / done,
                    )  # fmt: skip
                if self.eval_every and (it + 1) % self.eval_every == 0:
                    self.evaluate(task, images.detach(), labels, step=it + 1)
                if task.checkpointer.due(it + 1):
                    spent = seconds_before + time.perf_counter() - t0
                    self._checkpoint(task, it + 1, images, spent)
        finally:
            self._opt = self._sched = None
        return task.make_set(
            images, labels, method=self, protocol=self.protocol,
            distillation={"iterations": self.iterations, "resumed_from": start,
                          "final_loss": loss if math.isfinite(loss) else None, "fyi": self.fyi,
                          "loop_seconds": seconds_before + time.perf_counter() - t0,
                          "seconds_before_resume": seconds_before},
        )  # fmt: skip

    def image_optimizer(
        self, task: Task, images: torch.Tensor
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """The images' optimiser (``img_optimizer``) and lr schedule (``img_schedule``; None
        for a constant lr), stepped once per iteration."""
        lr = self.image_lr(task)
        if self.img_optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                [images], lr=lr, betas=tuple(self.img_betas)
            )
        else:
            opt = torch.optim.SGD([images], lr=lr, momentum=self.momentum_img)
        if self.img_schedule == "constant":
            return opt, None
        # LambdaLR computes lr_img * factor(it) in closed form (CosineAnnealingLR's recursive
        # update drifts from it by rounding)
        span = max(1, self.iterations)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / span))
        )
        return opt, sched

    def evaluate(
        self, task: Task, images: torch.Tensor, labels: torch.Tensor, step: int | None = None
    ) -> float:
        """Mean accuracy (%) on the val split of ``eval_seeds`` models trained on the images for
        ``eval_epochs`` epochs with the augmentation and batch size of the protocol the method
        declares (for the task's dataset), the rest of the engine's default recipe. Under a
        protocol that trains with the set's lr (``lr_from_set``: ``learned_lr``), the lr is
        :meth:`monitor_lr`, the one the set would store now. Never touches test."""
        from ddbench.protocol import Protocol, protocol_config

        pinned = Protocol.from_config(protocol_config(self.protocol)).for_dataset(task.spec.name)
        augment = task.spec.dsa_strategy if pinned.augment == "dsa" else pinned.augment
        lr = engine.Recipe.lr
        if pinned.lr_from_set:
            learned = self.monitor_lr()
            if learned is None:
                raise DDBenchError(
                    f"{self.name}: protocol {self.protocol!r} trains with the set's lr, but the "
                    "method has no lr to store (monitor_lr)"
                )
            lr = learned
        recipe = engine.Recipe(
            epochs=self.eval_epochs, batch_size=pinned.batch_size, lr=lr, augment=augment,
            precision=task.precision,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # engine.train seeds the global RNG
            trained = engine.train(
                task.model_factory, self.eval_seeds, images.detach(), labels, recipe,
                device=task.device,
            )  # fmt: skip
        val = task.val
        accs = engine.accuracy(
            trained.models, val.images, val.labels, transform=task.normalize,
            precision=task.precision,
        )  # fmt: skip
        acc = sum(accs) / len(accs)
        log.info("%s: val accuracy %.2f %% at iteration %s", self.name, acc, step)
        if task.logger is not None:
            task.logger.metrics({"val_accuracy": acc}, step=step)
        return acc

    # ------------------------------------------------------------------------------ resume

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Extra tensors a subclass wants checkpointed that no optimiser holds (e.g. an EMA of
        the images); the optimisers of :meth:`optimizers`, their state and the tensors they
        optimise are checkpointed by the loop."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved."""

    def _stateful(self) -> dict[str, Any]:
        """The optimisers and schedule whose state a checkpoint holds, by name."""
        assert self._opt is not None
        out: dict[str, Any] = {"images": self._opt, **self.optimizers()}
        if self._sched is not None:
            out["images_schedule"] = self._sched
        return out

    def _learned(self) -> dict[str, torch.Tensor]:
        """The tensors the optimisers of :meth:`optimizers` optimise, by checkpoint name."""
        return {
            f"learned.{name}.{i}": p
            for name, opt in self.optimizers().items()
            for i, p in enumerate(p for group in opt.param_groups for p in group["params"])
        }

    def _checkpoint(self, task: Task, step: int, images: torch.Tensor, seconds: float) -> None:
        tensors = {"images": images.detach(), "rng": task.generator.get_state()}
        tensors.update({f"extra.{k}": v for k, v in self.state_tensors().items()})
        tensors.update({k: p.detach() for k, p in self._learned().items()})
        optim = {
            name: optimizer_state(obj.state_dict(), f"optim.{name}", tensors)
            for name, obj in self._stateful().items()
        }
        task.checkpointer.save(
            step, tensors, {"method": self.name, "seconds": seconds, "optim": optim}
        )

    def _resume(self, task: Task, images: torch.Tensor) -> tuple[int, float]:
        """``(iteration to start from, loop seconds spent before)``; restores the state."""
        loaded = task.checkpointer.load()
        if loaded is None:
            return 0, 0.0
        step, tensors, state = loaded
        saved = tensors.get("images")
        if saved is None or saved.shape != images.shape or "rng" not in tensors:
            log.warning("ignoring a checkpoint that does not hold this run's images")
            return 0, 0.0
        with torch.no_grad():
            images.copy_(saved.to(images.device))
        task.generator.set_state(tensors["rng"])
        saved_optim = state.get("optim", {})
        for name, obj in self._stateful().items():
            if name not in saved_optim:
                log.warning(
                    "%s: the checkpoint holds no state of %s; starting it fresh", self.name, name
                )
            else:
                obj.load_state_dict(load_optimizer_state(saved_optim[name], tensors))
        with torch.no_grad():
            for key, p in self._learned().items():
                if key in tensors:
                    p.copy_(tensors[key].reshape(p.shape).to(p.device))
        self.load_state_tensors(
            {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
        )
        step = min(int(step), self.iterations)
        log.info("%s: resuming from iteration %d", self.name, step)
        return step, float(state.get("seconds", 0.0))


# ---------------------------------------------------------------------------------- shared


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean rows ``[num_classes, F]`` of ``features [N, F]`` (one index_add)."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts.unsqueeze(1)


def optimizer_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of an optimiser's or scheduler's ``state_dict()``: each tensor is moved
    into ``tensors`` (named from ``prefix``) and replaced by ``{"tensor": name}``, each dict by
    ``{"items": [[key, value], ...]}`` (keeping integer keys). :func:`load_optimizer_state`
    inverts it."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach()
        return {"tensor": prefix}
    if isinstance(state, dict):
        return {
            "items": [[k, optimizer_state(v, f"{prefix}.{k}", tensors)] for k, v in state.items()]
        }
    if isinstance(state, (list, tuple)):
        return [optimizer_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise DDBenchError(f"cannot checkpoint optimiser state {prefix} of type {type(state).__name__}")


def load_optimizer_state(encoded: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The ``state_dict()`` that :func:`optimizer_state` encoded."""
    if isinstance(encoded, list):
        return [load_optimizer_state(v, tensors) for v in encoded]
    if isinstance(encoded, dict):
        if "tensor" in encoded:
            return tensors[encoded["tensor"]].clone()
        return {k: load_optimizer_state(v, tensors) for k, v in encoded["items"]}
    return encoded


def freeze_batchnorm(net: nn.Module, real: torch.Tensor) -> None:
    """DC's trick for BatchNorm nets: set the running statistics from a real batch, then put
    the BatchNorm layers in eval mode (tiny synthetic batches give no usable statistics)."""
    net.train()
    with torch.no_grad(), torch.autocast(real.device.type, enabled=False):
        net(real)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

"""Shared machinery of the methods that optimise synthetic images (DC, DSA, DM, ...).

:class:`ImageDistillation` owns the outer loop that every such method runs: initialise the images
(real or noise), build their SGD optimiser, resume from the task's checkpointer, iterate, report
progress and metrics, checkpoint, optionally evaluate on the val split, and wrap the result in a
set. A method only writes its idea, the hook :meth:`ImageDistillation.step`::

    class MyMatching(ImageDistillation):
        name = "my_matching"

        def step(self, task, images, labels, it):
            net = self.fresh_net(task, frozen=True)
            loss = ...                      # a differentiable function of ``images``
            return self.update(loss)        # one SGD step on the images; returns loss.item()

Hook contract: ``step`` updates the images itself, through :meth:`update` (zero_grad, backward,
optimiser step), as many times as it needs (DC updates them ``outer_loop`` times per iteration),
and returns the float loss to report. Everything random (real batches, DSA seeds, network
initialisations, batch order of inner training) is drawn from ``task.generator``, whose state is
checkpointed with the images and the optimiser's momentum: a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench import engine
from ddbench import fyi as _fyi
from ddbench.engine import autocast
from ddbench.errors import DDBenchError
from ddbench.method import Method, Task
from ddbench.synset import SyntheticSet

__all__ = ["ImageDistillation", "class_means", "train_steps"]

log = logging.getLogger("ddbench")

_SEED_HIGH = 2**31 - 1


class ImageDistillation(Method):
    """Base class of methods that learn synthetic images with SGD over an outer loop.

    Config (common to all subclasses):
      iterations     outer iterations (the budget)
      lr_img         SGD learning rate of the images; ``momentum_img`` its momentum (0.5)
      init           ``real`` (ipc random real images per class) or ``noise`` (N(0, 1) in the
                     normalised space)
      batch_real     real images per class and per matching step
      dsa            siamese DSA during matching (one draw shared by the real and synthetic batch)
      eval_every     every N iterations, train ``eval_seeds`` fresh models for ``eval_epochs``
                     epochs on the current images and log their accuracy on the VAL split (0: never)
      fyi            FYI (Son et al., ECCV 2024): match and train on the synthetic images together
                     with their horizontal mirrors (:mod:`ddbench.fyi`); recorded in the set
    """

    name = "image_distillation"
    protocol = "standard"  # the evaluation protocol the sets expect

    def __init__(
        self,
        iterations: int = 1000,
        lr_img: float = 0.1,
        momentum_img: float = 0.5,
        init: str = "real",
        batch_real: int = 256,
        dsa: bool = True,
        eval_every: int = 0,
        eval_epochs: int = 300,
        eval_seeds: list[int] | tuple[int, ...] = (0,),
        fyi: bool = False,
        **config: Any,
    ):
        super().__init__(
            iterations=iterations, lr_img=lr_img, momentum_img=momentum_img, init=init,
            batch_real=batch_real, dsa=dsa, eval_every=eval_every, eval_epochs=eval_epochs,
            eval_seeds=list(eval_seeds), fyi=fyi, **config,
        )  # fmt: skip
        if int(iterations) < 0:
            raise DDBenchError(f"iterations must be >= 0, got {iterations}")
        if not (math.isfinite(float(lr_img)) and float(lr_img) > 0):
            raise DDBenchError(f"lr_img must be positive, got {lr_img}")
        if init not in ("real", "noise"):
            raise DDBenchError(f"init must be 'real' or 'noise', got {init!r}")
        if int(batch_real) < 1:
            raise DDBenchError(f"batch_real must be >= 1, got {batch_real}")
        if int(eval_every) < 0 or int(eval_epochs) < 1 or not eval_seeds:
            raise DDBenchError("eval_every must be >= 0, eval_epochs >= 1, eval_seeds non-empty")
        self.iterations = int(iterations)
        self.lr_img = float(lr_img)
        self.momentum_img = float(momentum_img)
        self.init = init
        self.batch_real = int(batch_real)
        self.dsa = bool(dsa)
        self.eval_every = int(eval_every)
        self.eval_epochs = int(eval_epochs)
        self.eval_seeds = [int(s) for s in eval_seeds]
        self.fyi = bool(fyi)
        self._opt: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------------------ hooks

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        """One outer iteration: update ``images`` (through :meth:`update`), return the loss."""
        raise NotImplementedError

    def image_lr(self, task: Task) -> float:
        """The images' learning rate for this task (a subclass may make it depend on ipc)."""
        return self.lr_img

    # ------------------------------------------------------------------------------ helpers

    def update(self, loss: torch.Tensor) -> float:
        """One SGD step of the images on ``loss``; returns its value."""
        if self._opt is None:
            raise DDBenchError("update() is only available inside distill()")
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
        CPU only: there ~20-30 % faster forward passes (PyTorch's NCHW avg_pool2d is slow), but
        a slower double backward (DC), and under bf16 autocast ~1.7x SLOWER (NHWC bf16 group
        norm); bench/matching_speed.py measures both."""
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
        the pair unchanged when ``dsa`` is off or the task has no augmentation. With ``fyi``
        the synthetic batch is first ``[syn; flip(syn)]`` (twice the rows; :mod:`ddbench.fyi`)."""
        if self.fyi:
            syn = _fyi.flip_concat(syn)
        if not self.dsa or task.augment is None:
            return real, syn
        return task.augment.pair(real, syn, self.next_seed(task))

    def real_batches(self, task: Task, n: int | None = None) -> list[torch.Tensor]:
        """One batch of ``n`` (default ``batch_real``) real images per class."""
        return [self.sample_real(task, c, n or self.batch_real) for c in range(task.num_classes)]

    # ------------------------------------------------------------------------------ the loop

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``ipc`` images per class, ordered by class, and their hard labels."""
        k, ipc = task.num_classes, task.ipc
        labels = torch.arange(k, device=task.device).repeat_interleave(ipc)
        if self.init == "real":
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

    def distill(self, task: Task) -> SyntheticSet:
        if self.fyi:
            _fyi.check_task(task, self.name)
        images, labels = self.init_images(task)
        images.requires_grad_(True)
        self._opt = torch.optim.SGD([images], lr=self.image_lr(task), momentum=self.momentum_img)
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
                loss = self.step(task, images, labels, it)
                if not math.isfinite(loss):
                    raise DDBenchError(
                        f"{self.name}: the matching loss is {loss} at iteration {it}; "
                        "lower method.lr_img"
                    )
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
            self._opt = None
        return task.make_set(
            images, labels, method=self, protocol=self.protocol,
            distillation={"iterations": self.iterations, "resumed_from": start,
                          "final_loss": loss if math.isfinite(loss) else None, "fyi": self.fyi,
                          "loop_seconds": seconds_before + time.perf_counter() - t0,
                          "seconds_before_resume": seconds_before},
        )  # fmt: skip

    def evaluate(
        self, task: Task, images: torch.Tensor, labels: torch.Tensor, step: int | None = None
    ) -> float:
        """Mean accuracy (%) on the val split of ``eval_seeds`` models trained on the images for
        ``eval_epochs`` epochs (the set's protocol recipe otherwise). Never touches test."""
        augment = task.spec.dsa_strategy if self.protocol == "standard" else None
        recipe = engine.Recipe(epochs=self.eval_epochs, augment=augment, precision=task.precision)
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
        """Extra tensors a subclass wants checkpointed (e.g. a learned lr)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved."""

    def _checkpoint(self, task: Task, step: int, images: torch.Tensor, seconds: float) -> None:
        assert self._opt is not None
        tensors = {"images": images.detach(), "rng": task.generator.get_state()}
        momentum = self._opt.state.get(images, {}).get("momentum_buffer")
        if momentum is not None:
            tensors["opt_momentum"] = momentum
        tensors.update({f"extra.{k}": v for k, v in self.state_tensors().items()})
        task.checkpointer.save(step, tensors, {"method": self.name, "seconds": seconds})

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
        if "opt_momentum" in tensors:
            assert self._opt is not None
            self._opt.state[images]["momentum_buffer"] = tensors["opt_momentum"].to(images.device)
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


def train_steps(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    opt: torch.optim.Optimizer,
    augment: Any = None,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    fyi: bool = False,
) -> float:
    """``steps`` SGD steps of cross entropy for an EXISTING ``net`` and optimiser on ``(x, y)``:
    shuffled epochs of ``batch_size`` batches, the last one partial (a shuffling DataLoader), each
    batch augmented by ``augment(xb, generator)`` if given. Returns the last loss. ``fyi``: each
    batch is ``[xb; flip(xb)]`` (labels repeated) before the augmentation (:mod:`ddbench.fyi`).

    This is the inner loop of DC/DSA. ``engine.train`` builds fresh models from seeds and owns
    their optimiser, so it cannot continue training a network across outer steps; until the
    engine accepts existing models, this minimal loop is the one shared place for it.
    """
    net.train()
    n, done, loss = len(x), 0, torch.zeros(())
    bs = min(batch_size, n)
    while done < steps:
        order = torch.randperm(n, generator=generator).to(x.device)
        for b0 in range(0, n, bs):
            if done == steps:
                break
            idx = order[b0 : b0 + bs]
            xb, yb = x[idx], y[idx]
            if fyi:
                xb, yb = _fyi.flip_concat(xb), torch.cat([yb, yb])
            if augment is not None:
                xb = augment(xb, generator)
            with autocast(x.device, precision):
                out = net(xb)
            loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    return float(loss.detach())


def freeze_batchnorm(net: nn.Module, real: torch.Tensor) -> None:
    """DC's trick for BatchNorm nets: set the running statistics from a real batch, then put
    the BatchNorm layers in eval mode (tiny synthetic batches give no usable statistics)."""
    net.train()
    with torch.no_grad():
        net(real)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

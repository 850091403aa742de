"""Flat Trajectory Distillation (FTD; Du et al., CVPR 2023, "Minimizing the Accumulated Trajectory
Error to Improve Dataset Distillation").

FTD is MTT (:class:`ddbench.methods.mtt.MTT`) with two changes, and only these live here:

* **flat experts**: the experts are trained with GSAM, a sharpness-aware optimiser, so that their
  trajectories run through flat regions where the student's accumulated error costs less. This
  file registers the step (:class:`GSAMStep`) with the one expert trainer as ``step: gsam``
  (:func:`ddbench.experts.register_step`); FTD's ``experts`` default (``GSAM_EXPERTS``) selects
  it with its settings ``sam_rho``, ``gsam_alpha`` and ``sam_adaptive`` in
  ``experts.step_kwargs``;
* **an EMA of the synthetic images**: after every update ``ema = d * ema + (1 - d) * images``
  (``ema_decay`` d, the EMA starting at the initial images as timm's ``ModelEmaV2`` does). The
  EMA is what the set holds, what ``eval_every`` evaluates, and it is checkpointed with the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, register_step
from ddbench.method import Task
from ddbench.methods.mtt import MTT
from ddbench.synset import SyntheticSet

log = logging.getLogger("ddbench")


class GSAMStep:
    """The expert ``step_fn`` of FTD's flat experts: per batch, take the gradient ``g`` at ``w``,
    ascend to ``w + sam_rho * g / ||g||`` (ASAM's ``w^2 g / ||w g||`` with ``sam_adaptive``), take
    the gradient there, return to ``w``; ``gsam_alpha`` > 0 adds GSAM's surrogate-gap step
    (subtract ``alpha`` times the part of ``g`` orthogonal to the perturbed gradient); then the
    optimiser's step. Returns the loss at ``w``.

    BatchNorm's running statistics follow the first pass only: the engine hands the network to
    the step (``takes_model``) and the buffers of its BatchNorm layers are restored after the
    pass at the perturbed weights, as FTD's GSAM sets their momentum to 0 for that pass
    (``buffer/gsam/gsam.py`` 167-168 and 185-186, ``buffer/gsam/util.py`` 5-18); the batch
    count is restored too (their momentum-0 pass still increments it; only BatchNorm layers
    with ``momentum=None`` read it)."""

    takes_model = True  # ddbench.engine.train passes model=

    def __init__(self, sam_rho: float, gsam_alpha: float, sam_adaptive: bool):
        if not (sam_rho > 0 and gsam_alpha >= 0):
            raise DDBenchError("experts: gsam needs sam_rho > 0 and gsam_alpha >= 0")
        self.rho, self.alpha, self.adaptive = float(sam_rho), float(gsam_alpha), bool(sam_adaptive)

    def __call__(
        self,
        closure: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
        model: nn.Module | None = None,
    ) -> torch.Tensor:
        loss = closure()
        g = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            scale = [p.abs() if self.adaptive else 1.0 for p in params]
            norm = torch.sqrt(sum(((s * gi) ** 2).sum() for s, gi in zip(scale, g)))
            eps = [self.rho * s * s * gi / (norm + 1e-12) for s, gi in zip(scale, g)]
            for p, e in zip(params, eps):
                p.add_(e)
        kept = batchnorm_state(model)
        g_adv = list(torch.autograd.grad(closure(), params))
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
            for buf, saved in kept:  # the second pass leaves the running statistics alone
                buf.copy_(saved)
            if self.alpha > 0:  # GSAM: minus alpha x the part of g orthogonal to g_adv
                inner = sum((a * b).sum() for a, b in zip(g, g_adv))
                sq = sum((b * b).sum() for b in g_adv)
                coef = inner / (sq + 1e-12)
                g_adv = [b - self.alpha * (a - coef * b) for a, b in zip(g, g_adv)]
        opt.zero_grad(set_to_none=True)
        for p, gi in zip(params, g_adv):
            p.grad = gi
        opt.step()
        return loss.detach()


def batchnorm_state(model: nn.Module | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(buffer, copy)`` of every buffer of ``model``'s BatchNorm layers (running mean and
    variance, batch count); empty without a model or BatchNorm."""
    if model is None:
        return []
    return [
        (b, b.detach().clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in m.buffers()
    ]


register_step("gsam", GSAMStep, {"sam_rho": 0.0, "gsam_alpha": 0.0, "sam_adaptive": False})


# The GSAM expert recipe of FTD's buffer_FTD.py: run_buffer.sh --rho_max 0.01 --rho_min 0.01
# (constant), --alpha 0.4, --adaptive True (ASAM-style ascent).
GSAM_EXPERTS = {
    "step": "gsam",
    "step_kwargs": {"sam_rho": 0.01, "gsam_alpha": 0.4, "sam_adaptive": True},
}


class FTD(MTT):
    """MTT against sharpness-aware experts, producing the EMA of the images.

    Settings beyond :class:`MTT`'s: ``ema_decay`` in ``[0, 1)`` (0: the set holds the last
    images, as MTT's). The defaults are the FTD README's CIFAR-100 IPC 10 run.
    """

    @dataclass
    class Settings(MTT.Settings):
        # FTD's README / distill/run_distill.sh:7, CIFAR-100 IPC 10 (--syn_steps=20
        # --max_start_epoch=40 --ema_decay=0.9995); expert_epochs 2 and lr_lr 1e-5 are MTT's
        syn_steps: int = 20
        max_start_epoch: int = 40
        ema_decay: float = 0.9995  # the set holds the EMA of the images (0: the last images)
        experts: ExpertConfig = field(default_factory=lambda: ExpertConfig(**GSAM_EXPERTS))

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.ema_decay < 1.0:
                raise DDBenchError(f"ftd: ema_decay must be in [0, 1), got {self.ema_decay}")
            if self.experts.step != "gsam":
                log.warning(
                    "ftd: experts.step is %s, not gsam: no flat experts, FTD reduces to MTT + "
                    "image EMA",
                    self.experts.step,
                )

    name = "ftd"
    recipes = "ftd"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.ema: torch.Tensor | None = None

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        self.ema = None  # set from the initial images at the first step, or from a checkpoint

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        if self.ema is None:
            self.ema = images.detach().clone()
        value = super().step(task, images, labels, it)
        with torch.no_grad():
            self.ema.mul_(self.ema_decay).add_(images.detach(), alpha=1.0 - self.ema_decay)
        return value

    def evaluate(
        self, task: Task, images: torch.Tensor, labels: torch.Tensor, step: int | None = None
    ) -> float:
        return super().evaluate(task, images if self.ema is None else self.ema, labels, step)

    def distill(self, task: Task) -> SyntheticSet:
        s = super().distill(task)
        if self.ema is not None:  # None only for a run of 0 iterations: the initial images
            s.images = self.ema.detach().float().cpu()
        s.meta["distillation"].update(ema_decay=self.ema_decay, images="ema")
        return s

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.ema is None else {"ema_images": self.ema.detach()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "ema_images" in tensors:
            assert self.syn_lr is not None
            self.ema = tensors["ema_images"].to(self.syn_lr.device, torch.float32).clone()

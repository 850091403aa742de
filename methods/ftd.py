"""Flat Trajectory Distillation (FTD; Du et al., CVPR 2023, "Minimizing the Accumulated Trajectory
Error to Improve Dataset Distillation").

FTD is MTT (:class:`ddbench.methods.mtt.MTT`) with two changes, and only these live here:

* **flat experts**: the experts are trained with GSAM, a sharpness-aware optimiser, so that their
  trajectories run through flat regions where the student's accumulated error costs less. This
  is an option of the one expert trainer (``experts.sam_rho``, ``experts.gsam_alpha``,
  ``experts.sam_adaptive``; :class:`ddbench.experts.ExpertStep`), set in ``conf/method/ftd.yaml``;
* **an EMA of the synthetic images**: after every update ``ema = d * ema + (1 - d) * images``
  (``ema_decay`` d, the EMA starting at the initial images as timm's ``ModelEmaV2`` does). The
  EMA is what the set holds, what ``eval_every`` evaluates, and it is checkpointed with the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig
from ddbench.method import Task
from ddbench.methods.mtt import MTT
from ddbench.synset import SyntheticSet

log = logging.getLogger("ddbench")


# The GSAM expert recipe of FTD's buffer_FTD.py: run_buffer.sh --rho_max 0.01 --rho_min 0.01
# (constant), --alpha 0.4, --adaptive True (ASAM-style ascent).
GSAM_EXPERTS = {"sam_rho": 0.01, "gsam_alpha": 0.4, "sam_adaptive": True}


class FTD(MTT):
    """MTT against sharpness-aware experts, producing the EMA of the images.

    Settings beyond :class:`MTT`'s: ``ema_decay`` in ``[0, 1)`` (0: the set holds the last
    images, as MTT's). The defaults are the FTD README's CIFAR-100 IPC 10 run.
    """

    @dataclass
    class Settings(MTT.Settings):
        syn_steps: int = 20
        max_start_epoch: int = 40
        ema_decay: float = 0.9995  # the set holds the EMA of the images (0: the last images)
        experts: ExpertConfig = field(default_factory=lambda: ExpertConfig(**GSAM_EXPERTS))

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.ema_decay < 1.0:
                raise DDBenchError(f"ftd: ema_decay must be in [0, 1), got {self.ema_decay}")
            if self.experts.sam_rho <= 0:
                log.warning("ftd: experts.sam_rho is 0: plain experts, FTD reduces to MTT + EMA")

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
        out = super().state_tensors()
        if self.ema is not None:
            out["ema_images"] = self.ema.detach()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        if "ema_images" in tensors:
            assert self.syn_lr is not None
            self.ema = tensors["ema_images"].to(self.syn_lr.device, torch.float32).clone()

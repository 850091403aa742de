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
from typing import Any

import torch

from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.methods.mtt import MTT
from ddbench.synset import SyntheticSet

log = logging.getLogger("ddbench")


class FTD(MTT):
    """MTT against sharpness-aware experts, producing the EMA of the images.

    Config (beyond :class:`MTT`'s): ``ema_decay`` in ``[0, 1)`` (0: the set holds the last
    images, as MTT's).
    """

    name = "ftd"

    def __init__(self, ema_decay: float = 0.999, **config: Any):
        super().__init__(ema_decay=ema_decay, **config)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise DDBenchError(f"ftd: ema_decay must be in [0, 1), got {ema_decay}")
        if self.expert_cfg.sam_rho <= 0:
            log.warning("ftd: experts.sam_rho is 0: plain experts, FTD reduces to MTT + image EMA")
        self.ema_decay = float(ema_decay)
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

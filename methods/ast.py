"""AST (Shen, Yang and Lam, 2023/2024, "Efficient Dataset Distillation through Alignment with
Smooth and High-Quality Expert Trajectories").

AST is MTT (:class:`ddbench.methods.mtt.MTT`) with five parts, each switchable in the config;
only these live here:

* **smooth experts**: this file registers their step (:class:`SmoothStep`: ``clip_grad``,
  ``grad_penalty``) with the one expert trainer as ``step: smooth``
  (:func:`ddbench.experts.register_step`), selected in ``conf/method/ast.yaml``;
* **representative initialisation** (``representative_init: herding | kcenter | null``): the
  initial images of each class are the real images a herding (or k-center) selection picks in
  the feature space (``embed``) of an expert (``representative_expert`` at
  ``representative_epoch``), starting at the one nearest the class centroid: for ``ipc=1``
  exactly the image closest to the centroid (the helpers of :mod:`ddbench.coreset`);
* **balanced inner-loop loss** (``balanced_loss``): in each student step, every class present in
  the batch contributes equally to the cross entropy (``mean_c mean_{i: y_i = c} CE_i``) instead
  of in proportion to its images in the (random) batch; equal to plain CE on a balanced batch;
* **intermediate matching loss** (``intermediate_weight`` > 0): the student after
  ``round(k * syn_steps / expert_epochs)`` steps is also matched with the expert at
  ``start + k`` (k = 1 .. expert_epochs - 1), each normalised like the final term; their mean,
  times the weight, is added to the loss;
* **weight perturbation** (``weight_perturb`` = alpha > 0): the starting parameters are
  perturbed per tensor, ``w + alpha * d * w`` with ``d`` Gaussian, half its entries dropped,
  scaled to unit norm (as AST's code), drawn from the task's generator; the normaliser of the
  matching loss uses the perturbed start too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ddbench.coreset import class_features, herding_select, kcenter_select, pick_per_class
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, register_step
from ddbench.method import Task
from ddbench.methods.mtt import MTT

log = logging.getLogger("ddbench")

_SELECT = {"herding": herding_select, "kcenter": kcenter_select}


class SmoothStep:
    """The expert ``step_fn`` of AST's smooth experts: the gradient of
    ``loss + grad_penalty * ||grad loss||`` (a double backward when ``grad_penalty`` > 0),
    clipped to the global norm ``clip_grad`` (null: unclipped), then the optimiser's step."""

    def __init__(self, clip_grad: float | None, grad_penalty: float):
        if (clip_grad is not None and not clip_grad > 0) or not grad_penalty >= 0:
            raise DDBenchError("experts: smooth needs clip_grad > 0 (or null), grad_penalty >= 0")
        self.clip, self.penalty = clip_grad, float(grad_penalty)
        self.double_backward = self.penalty > 0

    def __call__(
        self,
        closure: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
    ) -> torch.Tensor:
        loss = closure()
        if self.penalty:
            g = torch.autograd.grad(loss, params, create_graph=True)
            norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
            g = torch.autograd.grad(loss + self.penalty * norm, params)
        else:
            g = torch.autograd.grad(loss, params)
        opt.zero_grad(set_to_none=True)
        for p, gi in zip(params, g):
            p.grad = gi
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        opt.step()
        return loss.detach()


register_step("smooth", SmoothStep, {"clip_grad": None, "grad_penalty": 0.0})


def balanced_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft targets ``[B, K]`` whose cross entropy (mean over the batch) is the class-balanced
    one: row ``i`` is its label distribution times ``B / (n_present * n_{y_i})``, where ``y_i``
    is its (argmax) class, ``n_c`` the rows of class ``c`` and ``n_present`` the classes present."""
    probs = targets if targets.is_floating_point() else F.one_hot(targets, num_classes).float()
    hard = probs.argmax(1)
    counts = torch.bincount(hard, minlength=num_classes).to(probs.dtype)
    present = (counts > 0).sum()
    weight = len(hard) / (present * counts[hard])
    return probs * weight.unsqueeze(1)


class AST(MTT):
    """MTT with AST's switches (see the module docstring)."""

    @dataclass
    class Settings(MTT.Settings):
        lr_img: float = 100.0
        lr_lr: float = 1e-06
        representative_init: str | None = "herding"  # herding | kcenter | null (MTT's init)
        representative_expert: int = 0  # features of this expert ...
        representative_epoch: int = -1  # ... at this epoch (-1: the trained expert)
        balanced_loss: bool = True  # --balance_loss: class-balanced CE in the student steps
        intermediate_weight: float = 1.0  # --agg_middle_loss; its weight is ddbench's (0: off)
        weight_perturb: float = 0.5  # --weight_perturb alpha of the start's perturbation (0: off)
        # MTT's recipe plus smoothing; clip_grad and grad_penalty are ddbench's values, not found
        # in AST's public code (docs/methods.md)
        experts: ExpertConfig = field(
            default_factory=lambda: ExpertConfig(
                step="smooth", step_kwargs={"clip_grad": 1.0, "grad_penalty": 0.1}
            )
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            init = self.representative_init
            if init is not None and init not in _SELECT:
                raise DDBenchError(
                    f"ast: representative_init={init!r}; choose herding, kcenter or null"
                )
            if not 0 <= self.representative_expert < self.num_experts:
                raise DDBenchError(
                    f"ast: representative_expert {self.representative_expert} is not one"
                )
            if not -(self.experts.epochs + 1) <= self.representative_epoch <= self.experts.epochs:
                raise DDBenchError(
                    f"ast: representative_epoch {self.representative_epoch} is outside"
                )
            if self.intermediate_weight < 0 or self.weight_perturb < 0:
                raise DDBenchError("ast: intermediate_weight and weight_perturb must be >= 0")

    name = "ast"
    recipes = "ast"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self._trace: list[torch.Tensor] | None = None
        self._theta0: torch.Tensor | None = None
        self._num_classes = 0

    # ------------------------------------------------------------------------------ init

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        self._num_classes = task.num_classes

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Representative real images per class, or MTT's initialisation."""
        if self.representative_init is None:
            return super().init_images(task)
        net = task.model_factory().to(task.device)
        flat = self.trajectories[self.representative_expert][self.representative_epoch]
        torch.nn.utils.vector_to_parameters(flat.to(task.device), net.parameters())
        pick, k, ipc = _SELECT[self.representative_init], task.num_classes, task.ipc
        for c in range(k):
            if (n := len(task.train.indices_of(c))) < ipc:
                raise DDBenchError(f"ast: class {c} has {n} real images, fewer than {ipc}")
        rows = pick_per_class(
            task, lambda c: class_features(task, net, c, chunk=256), lambda f: pick(f, ipc)
        )
        images = task.normalize(task.train.images[rows].to(task.device))
        labels = torch.arange(k, device=task.device).repeat_interleave(ipc)
        return images.to(torch.float32).contiguous(), labels

    # ------------------------------------------------------------------------------ the unroll

    def batch_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Class-balanced soft targets (``balanced_loss``), else MTT's."""
        return balanced_targets(labels, self._num_classes) if self.balanced_loss else labels

    def _student_step(
        self,
        w: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        lr: torch.Tensor,
        idx: torch.Tensor,
        draw: Any,
    ) -> torch.Tensor:
        w_next = super()._student_step(w, images, labels, lr, idx, draw)
        if self._trace is not None:
            self._trace.append(w_next)
        return w_next

    def start_params(self, task: Task, theta: torch.Tensor) -> torch.Tensor:
        """The (perturbed, if enabled) start; kept for the intermediate terms' normaliser."""
        if self.weight_perturb > 0:
            theta = self.perturbed_start(task, theta)
        self._theta0 = theta
        return theta

    def perturbed_start(self, task: Task, theta: torch.Tensor) -> torch.Tensor:
        """AST's weight perturbation of flat parameters ``theta``, tensor by tensor."""
        assert self.student is not None
        parts = []
        for p in theta.split(self.student.numels):
            d = torch.randn(p.shape, generator=task.generator)
            d = d * (torch.rand(p.shape, generator=task.generator) >= 0.5)
            d = (d / d.norm().clamp_min(1e-12)).to(p.device)
            parts.append(p + self.weight_perturb * d * p)
        return torch.cat(parts)

    def matching_loss(
        self,
        task: Task,
        images: torch.Tensor,
        labels: torch.Tensor,
        expert: int,
        start: int,
        lr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MTT's loss from the (perturbed) start, plus the intermediate matching terms."""
        self._trace = [] if self.intermediate_weight > 0 and self.expert_epochs > 1 else None
        try:
            loss = super().matching_loss(task, images, labels, expert, start, lr)
            trace, theta0 = self._trace, self._theta0
        finally:
            self._trace = None  # recomputed steps (checkpoint_unroll) are not recorded
        if not trace:
            return loss
        traj, terms = self.trajectories[expert], []
        for k in range(1, self.expert_epochs):
            target = traj[start + k].to(task.device)
            step = max(1, round(k * self.syn_steps / self.expert_epochs))
            terms.append(((trace[step - 1] - target) ** 2).sum() / ((theta0 - target) ** 2).sum())
        return loss + self.intermediate_weight * torch.stack(terms).mean()

"""AST (Shen, Yang and Lam, "Efficient Dataset Distillation through Alignment with Smooth and
High-Quality Expert Trajectories"), re-implemented from the authors' code
(shenjiyuan123/AST-Alignment-with-Smooth-Expert @8030869; line numbers below are of that commit).

AST is MTT (:class:`ddbench.methods.mtt.MTT`) with these parts, each switchable in the config:

* **smooth experts** (``buffer.py`` with README.md:12's ``--optim SGDMOM --loss_decay --gp
  True``): SGD lr 0.003, momentum 0.9, weight decay 1e-3 (``buffer.py`` 150, 162-163), the lr
  times 0.6 after epoch ``epochs // 2 + 1`` with a fresh optimiser (``buffer.py`` 88, 121-131),
  and per batch the step registered here as ``step: smooth`` (:class:`SmoothStep`): the cross
  entropy times a weight rising 0.5, 0.55, ..., 0.95 over the first 10 epochs (``buffer.py``
  90-93), plus 2 x the mean of ``(||d sum(logits) / d x||_channels - 1)^2`` over the pixels of
  the un-augmented batch ``x`` (``utils.py`` 379-441, ``epoch_gp``); no gradient clipping;
* **representative initialisation** (``representative_init: kmeans``, their ``--pix_init avg``,
  ``distill.py`` 112-193): per class, k-means (scikit-learn, ``random_state=0``) on the logits of
  an expert at its last epoch, and the real images nearest each cluster centre;
* **balanced inner-loop loss** (``balance_loss``, ``distill.py`` 531-536): every student step's
  cross entropy is scaled by a factor of the start epoch ``s`` (``h = max_start_epoch // 2``):
  ``log_5(s - h + 8)`` for ``s >= h``, else ``1 / log_5(h - s + 8)``;
* **student momentum** (``student_momentum``, their ``--mom`` 0.9, ``distill.py`` 547-556): the
  unrolled student takes heavy-ball steps ``b = mom * b + g``, ``w -= lr * b``;
* **intermediate matching loss** (``agg_middle_loss``, ``distill.py`` 488-498, 560-565,
  623-626): the student after ``k * (syn_steps // expert_epochs)`` steps is also matched with
  the expert at ``start + k`` (``k = 1 .. expert_epochs - 1``), each term normalised by the
  distance of the (perturbed) start to that target; the terms are added to the loss;
* **weight perturbation** (``weight_perturb``, ``distill.py`` 252-267, 470-471): every
  convolution weight ``w`` (4-D tensor) of the start becomes ``w + d * w`` with ``d`` Gaussian
  scaled to unit norm over the tensor (alpha 1); other tensors are left alone. The noise is
  drawn from the task's generator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddbench.coreset import class_features, herding_select, kcenter_select, model_outputs
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, register_step
from ddbench.method import Task
from ddbench.methods.mtt import MTT

log = logging.getLogger("ddbench")

# buffer.py 91: the weight of the cross entropy in the first epochs of --loss_decay (then 1)
LOSS_DECAY = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
_INITS = ("kmeans", "herding", "kcenter")


class SmoothStep:
    """The expert ``step_fn`` of AST's smooth experts (``utils.py`` ``epoch_gp``/``epoch_flat``).

    The loss of one batch is ``decay * CE + grad_penalty * mean((||grad_x||_c - 1)^2)``:
    ``decay`` is :data:`LOSS_DECAY` of the epoch with ``loss_decay`` (1 from epoch 10, and
    without it), ``grad_x`` the gradient of the sum of the logits on the batch before
    augmentation with respect to those images, ``||.||_c`` its norm over the channels (per
    image and pixel: their ``torch.norm(gradients, p=2, dim=1)``), the mean over images and
    pixels. ``reset_momentum``: the optimiser's momentum restarts whenever the lr changes, as
    their new optimiser at the lr drop (``buffer.py`` 121-131); the lr it was built under is kept
    in the optimiser's param groups, so a resumed training resets where an unbroken one does.
    Returns the batch's loss (penalty included)."""

    uses_context = True  # the epoch, the un-augmented batch, the forward (ExpertStepContext)

    def __init__(self, grad_penalty: float, loss_decay: bool, reset_momentum: bool):
        if not (math.isfinite(grad_penalty) and grad_penalty >= 0):
            raise DDBenchError(f"experts: smooth needs grad_penalty >= 0, got {grad_penalty}")
        self.penalty, self.loss_decay = float(grad_penalty), bool(loss_decay)
        self.reset_momentum = bool(reset_momentum)
        self.double_backward = self.penalty > 0
        self.context: Any = None

    def weight(self, epoch: int) -> float:
        """The cross entropy's weight in ``epoch`` (0-based)."""
        return LOSS_DECAY[epoch] if self.loss_decay and epoch < len(LOSS_DECAY) else 1.0

    def __call__(
        self,
        closure: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
    ) -> torch.Tensor:
        ctx = self.context
        if ctx is None:
            raise DDBenchError("experts: the smooth step needs the expert trainer's context")
        loss = closure() * self.weight(ctx.epoch)
        if self.penalty:
            x = ctx.inputs.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(ctx.forward(params, x).sum(), x, create_graph=True)
            loss = loss + self.penalty * ((gx.norm(dim=1) - 1) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        if self.reset_momentum:
            for group in opt.param_groups:
                if group.setdefault("momentum_lr", group["lr"]) != group["lr"]:
                    for p in group["params"]:
                        opt.state.pop(p, None)
                    group["momentum_lr"] = group["lr"]
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            # the double backward can give a weight's gradient other strides than the weight's
            # (conv weights); the engine's fused SGD would then apply it in the wrong order
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        opt.step()
        return loss.detach()


register_step(
    "smooth", SmoothStep, {"grad_penalty": 0.0, "loss_decay": False, "reset_momentum": False}
)


def balance_factor(start: int, max_start_epoch: int) -> float:
    """``distill.py`` 532-536: the factor of the inner cross entropy at start epoch ``start``."""
    half = max_start_epoch // 2
    if start >= half:
        return math.log(start - half + 8, 5)
    return 1.0 / math.log(half - start + 8, 5)


def kmeans_rows(logits: torch.Tensor, ipc: int, clusters: int) -> torch.Tensor:
    """The rows of ``logits`` ``[n, C]`` (one class) that ``--pix_init avg`` picks: k-means with
    ``clusters`` centres and the ``ipc // clusters`` rows nearest each centre (``distill.py``
    157-170), where ``ipc`` is a multiple of ``clusters``; otherwise (their code then picks
    ``int(ipc / clusters)`` per centre: none at ``ipc < clusters``) ``ipc`` centres and the row
    nearest each, their ``kmeans_ipc`` (line 161). A row may be picked for two centres."""
    from sklearn.cluster import KMeans

    k, per = (clusters, ipc // clusters) if ipc % clusters == 0 else (ipc, 1)
    if len(logits) < k:
        raise DDBenchError(f"ast: {len(logits)} images of a class for {k} k-means clusters")
    feats = logits.detach().float().cpu().numpy()
    # n_init 10: scikit-learn's default before 1.4, when their code was released
    centres = KMeans(n_clusters=k, random_state=0, n_init=10).fit(feats).cluster_centers_
    rows = [np.argsort(((feats - c) ** 2).sum(1), kind="stable")[:per] for c in centres]
    return torch.from_numpy(np.concatenate(rows)).long()


class AST(MTT):
    """MTT with AST's parts (see the module docstring)."""

    @dataclass
    class Settings(MTT.Settings):
        # distill.sh:16, CIFAR-10 IPC 10 on flat (smooth) experts: --lr_img=100 --lr_lr=1e-06
        lr_img: float = 100.0
        lr_lr: float = 1e-06
        # --pix_init avg: kmeans; herding and kcenter (expert features) are ddbench's
        # alternatives; null: MTT's initialisation
        representative_init: str | None = "kmeans"
        representative_expert: int = 0  # logits (features) of this expert ...
        representative_epoch: int = -1  # ... at this epoch (-1: the trained expert)
        representative_clusters: int = 10  # kmeans: their ipc_visual (distill.py 113)
        balance_loss: bool = True  # --balance_loss (distill.py 531-536)
        student_momentum: float = 0.9  # --mom (distill.py 547-556, 704)
        agg_middle_loss: bool = True  # --agg_middle_loss (distill.py 560-565, 623-626)
        weight_perturb: bool = True  # --weight_perturb (distill.py 252-267, alpha 1 at 471)
        # README.md:12's experts: buffer.py --optim SGDMOM --loss_decay --gp True, 50 epochs
        experts: ExpertConfig = field(
            default_factory=lambda: ExpertConfig(
                lr=0.003,
                momentum=0.9,
                weight_decay=0.001,  # buffer.py 150, 162, 163
                schedule="step",
                milestones=[0.54],
                gamma=0.6,  # x0.6 from epoch 27 of 50
                step="smooth",
                step_kwargs={"grad_penalty": 2.0, "loss_decay": True, "reset_momentum": True},
            )  # fmt: skip
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            init = self.representative_init
            if init is not None and init not in _INITS:
                raise DDBenchError(
                    f"ast: representative_init={init!r}; choose kmeans, herding, kcenter or null"
                )
            if not 0 <= self.representative_expert < self.num_experts:
                raise DDBenchError(
                    f"ast: representative_expert {self.representative_expert} is not one"
                )
            if not -(self.experts.epochs + 1) <= self.representative_epoch <= self.experts.epochs:
                raise DDBenchError(
                    f"ast: representative_epoch {self.representative_epoch} is outside"
                )
            if self.representative_clusters < 1:
                raise DDBenchError("ast: representative_clusters must be >= 1")
            if not 0 <= self.student_momentum < 1:
                raise DDBenchError(
                    f"ast: student_momentum must be in [0, 1), got {self.student_momentum}"
                )

    name = "ast"
    recipes = "ast"

    # ------------------------------------------------------------------------------ init

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Representative real images per class, or MTT's initialisation (also when
        ``init_from`` gives the start)."""
        if self.representative_init is None or self.init_from:
            return super().init_images(task)
        net = task.model_factory().to(task.device)
        flat = self.trajectories[self.representative_expert][self.representative_epoch]
        torch.nn.utils.vector_to_parameters(flat.to(task.device), net.parameters())
        k, ipc = task.num_classes, task.ipc
        for c in range(k):
            if (n := len(task.train.indices_of(c))) < ipc:
                raise DDBenchError(f"ast: class {c} has {n} real images, fewer than {ipc}")
        picked = []
        for c in task.progress(range(k), total=k, desc="representative init"):
            if self.representative_init == "kmeans":
                rows = kmeans_rows(
                    self.class_logits(task, net, c), ipc, self.representative_clusters
                )
            else:
                select = herding_select if self.representative_init == "herding" else kcenter_select
                rows = select(class_features(task, net, c, chunk=256), ipc).cpu()
            picked.append(task.train.indices_of(c)[rows])
        images = task.normalize(task.train.images[torch.cat(picked)].to(task.device))
        labels = torch.arange(k, device=task.device).repeat_interleave(ipc)
        return images.to(torch.float32).contiguous(), labels

    @staticmethod
    def class_logits(task: Task, net: nn.Module, c: int) -> torch.Tensor:
        """The logits ``[n_c, K]`` of ``net`` (eval mode) on the train images of class ``c``."""
        idx = task.train.indices_of(c)
        out = torch.empty(len(idx), task.num_classes, device=task.device)
        for rows, _, logits in model_outputs(task, [net], idx, chunk=256):
            out[rows] = logits[0]
        return out

    # ------------------------------------------------------------------------------ the unroll

    def start_params(self, task: Task, theta: torch.Tensor) -> torch.Tensor:
        """The (perturbed, if enabled) start."""
        return self.perturbed_start(task, theta) if self.weight_perturb else theta

    def perturbed_start(self, task: Task, theta: torch.Tensor) -> torch.Tensor:
        """AST's weight perturbation of flat parameters ``theta``: 4-D tensors only."""
        assert self.student is not None
        parts = []
        for p, shape in zip(theta.split(self.student.numels), self.student.shapes):
            if len(shape) == 4:
                d = torch.randn(p.shape, generator=task.generator)
                p = p + (d / d.norm()).to(p.device) * p
            parts.append(p)
        return torch.cat(parts)

    def _momentum_step(
        self, w: torch.Tensor, b: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
        lr: torch.Tensor, idx: torch.Tensor, draw: Any, scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """One student step: the (balance-scaled) cross entropy's gradient into the heavy-ball
        buffer ``b``, then ``w - lr * b``."""
        ce = self.student_loss(w, images, labels, idx, draw) * scale
        (g,) = torch.autograd.grad(ce, w, create_graph=True)
        b = self.student_momentum * b + g
        return w - lr * b, b

    def middle_steps(self) -> dict[int, int]:
        """``{student step: expert epochs after the start}`` of the intermediate targets."""
        if not self.agg_middle_loss:
            return {}
        every = self.syn_steps // self.expert_epochs
        return {every * k: k for k in range(1, self.expert_epochs) if every * k > 0}

    def matching_loss(
        self,
        task: Task,
        images: torch.Tensor,
        labels: torch.Tensor,
        expert: int,
        start: int,
        lr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The normalised distance after the momentum unroll from the (perturbed) start, plus
        the intermediate terms; differentiable w.r.t. the images and the lr."""
        lr = self.syn_lr if lr is None else lr
        traj = self.trajectories[expert]
        theta0 = self.start_params(task, traj[start].to(task.device))
        scale = balance_factor(start, self.max_start_epoch) if self.balance_loss else 1.0
        middle = self.middle_steps()

        def term(w: torch.Tensor, epochs: int) -> torch.Tensor:
            target = traj[start + epochs].to(task.device)
            return ((w - target) ** 2).sum() / ((theta0 - target) ** 2).sum()

        w = theta0.clone().requires_grad_(True)
        b = torch.zeros_like(w)  # their first step's b = g: 0.9 * 0 + g
        terms = []
        for t, (idx, draw) in enumerate(self.unroll_plan(task, len(images)), 1):
            args = (w, b, images, labels, lr, idx, draw, scale)
            if self.checkpoint_unroll:  # (checkpoint replays the precision of the forward)
                w, b = checkpoint(self._momentum_step, *args, use_reentrant=False)
            else:
                w, b = self._momentum_step(*args)
            if t in middle:
                terms.append(term(w, middle[t]))
        return term(w, self.expert_epochs) + sum(terms)

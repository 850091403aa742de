"""Matching Training Trajectories (MTT; Cazenavette et al., CVPR 2022).

Experts are networks trained on the real data whose parameters were recorded after every epoch
(:mod:`ddbench.experts`, cached once per dataset/model/recipe). Per iteration: pick an expert and
a start epoch ``s < max_start_epoch``; start a student at the expert's parameters ``theta_s``,
take ``syn_steps`` SGD steps of cross entropy on minibatches (``batch_syn``) of the synthetic
images (a fresh DSA draw per step) with a LEARNED lr, and compare the result with the expert
``expert_epochs`` epochs later::

    loss = ||theta_student - theta_{s+M}||^2 / ||theta_s - theta_{s+M}||^2

Backpropagating through the whole unroll updates the images (SGD ``lr_img``, momentum 0.5) and
the lr (SGD ``lr_lr``, momentum 0.5; kept >= ``lr_min``). The set stores the learned lr and is
evaluated with the ``learned_lr`` protocol. ``checkpoint_unroll: true`` recomputes each unrolled
step in the backward pass (``torch.utils.checkpoint``): the same loss and gradients, memory of
about one step (docs/methods.md). Under ``precision=bf16`` the student's convolutions and linear
layers run in bf16 (the loop's autocast) while its flat weights, the updates and the parameter
distance stay fp32. The experts must live in the task's image space (ZCA or not, the same
``zca_eps``): a mismatch is refused before any expert is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ddbench.distill import ImageDistillation
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, FlatModel, check_expert_space, get_experts
from ddbench.method import Task
from ddbench.synset import SyntheticSet


class MTT(ImageDistillation):
    """Trajectory matching with a learned student lr. The defaults are CIFAR-10 IPC 10 as MTT's
    run scripts have it without ZCA (``distill.py``'s ``lr_img`` and ``lr_teacher``);
    ``conf/recipes/mtt.yaml`` holds the published values per setting.
    """

    @dataclass
    class Settings(ImageDistillation.Settings):
        iterations: int = 5000  # MTT's --Iteration
        lr_img: float = 1000.0  # SGD lr of the pixels (momentum_img 0.5)
        lr_lr: float = 1e-05  # SGD lr of the learned lr (momentum 0.5)
        lr_teacher: float = 0.01  # initial learned lr (= the experts' lr)
        lr_min: float = 1e-06  # ddbench's: the learned lr is clamped to >= this (MTT does not)
        dsa: bool = True  # a DSA draw per student step (distill.py's --dsa True)
        syn_steps: int = 30  # student SGD steps per iteration (N)
        expert_epochs: int = 2  # target: the expert this many epochs after the start (M)
        max_start_epoch: int = 20  # start epochs are drawn from [0, max_start_epoch) (T+)
        batch_syn: int | None = None  # null: all synthetic images per step (MTT's default)
        num_experts: int = 10  # MTT trains 100; experts are cached ($DDBENCH_CACHE/experts)
        experts: ExpertConfig = field(default_factory=ExpertConfig)  # buffer.py's recipe
        checkpoint_unroll: bool = False  # recompute each unrolled step in backward (less memory)

        def __post_init__(self) -> None:
            super().__post_init__()
            for key in ("syn_steps", "expert_epochs", "max_start_epoch", "num_experts"):
                if getattr(self, key) < 1:
                    raise DDBenchError(f"mtt: {key} must be >= 1, got {getattr(self, key)}")
            if self.max_start_epoch + self.expert_epochs > self.experts.epochs:
                raise DDBenchError(
                    f"mtt: max_start_epoch ({self.max_start_epoch}) + expert_epochs "
                    f"({self.expert_epochs}) exceeds the experts' {self.experts.epochs} epochs"
                )
            for key in ("lr_lr", "lr_teacher", "lr_min"):
                v = getattr(self, key)
                if not (math.isfinite(v) and v > 0):
                    raise DDBenchError(f"mtt: {key} must be positive, got {v}")
            if self.batch_syn is not None and self.batch_syn < 1:
                raise DDBenchError(f"mtt: batch_syn must be >= 1 or null, got {self.batch_syn}")

    name = "mtt"
    protocol = "learned_lr"
    recipes = "mtt"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.syn_lr: torch.Tensor | None = None
        self._lr_opt: torch.optim.Optimizer | None = None
        self.trajectories: list[torch.Tensor] = []
        self.student: FlatModel | None = None

    # ------------------------------------------------------------------------------ setup

    def prepare(self, task: Task) -> None:
        """Load (or train) the experts, build the functional student and the learned lr."""
        check_expert_space(self.name, self.experts, task)
        self.student = self.make_student(task.model_factory().to(task.device))
        self.trajectories = get_experts(task.spec.name, self.experts, self.num_experts, task.device)
        if self.trajectories[0].shape[1] != self.student.num_params:
            raise DDBenchError(
                f"mtt: the experts have {self.trajectories[0].shape[1]} parameters, the task's model "
                f"{self.student.num_params}: set method.experts.model/model_kwargs to the model's"
            )
        self.syn_lr = torch.tensor(self.lr_teacher, device=task.device).requires_grad_(True)
        self._lr_opt = torch.optim.SGD([self.syn_lr], lr=self.lr_lr, momentum=0.5)

    def make_student(self, net: torch.nn.Module) -> FlatModel:
        """The functional student on ``net`` (in train mode)."""
        return FlatModel(net.train())

    def distill(self, task: Task) -> SyntheticSet:
        self.apply_recipe(task.spec.name, task.ipc)
        self.prepare(task)
        s = super().distill(task)
        assert self.syn_lr is not None
        s.lr = self.syn_lr.detach().float().cpu().reshape(1)
        s.meta["distillation"]["learned_lr"] = float(s.lr)
        return s

    # ------------------------------------------------------------------------------ the idea

    def start_range(self) -> tuple[int, int]:
        """The range ``[low, high)`` the start epochs are drawn from now."""
        return 0, self.max_start_epoch

    def sample_expert(self, task: Task) -> tuple[int, int]:
        """``(expert index, start epoch)`` drawn from the task's generator."""
        g = task.generator
        e = int(torch.randint(0, len(self.trajectories), (1,), generator=g))
        s = int(torch.randint(*self.start_range(), (1,), generator=g))
        return e, s

    def start_params(self, task: Task, theta: torch.Tensor) -> torch.Tensor:
        """The student's starting parameters from the expert's ``theta`` (AST perturbs them)."""
        return theta

    def unroll_plan(self, task: Task, n: int) -> list[tuple[torch.Tensor, Any]]:
        """Per student step: the synthetic indices and a DSA draw (or None), all drawn up front
        from the task's generator so a recomputed step (``checkpoint_unroll``) sees the same."""
        bs = n if self.batch_syn is None else min(self.batch_syn, n)
        H, W = task.spec.shape[-2:]
        plan, chunks = [], []
        for _ in range(self.syn_steps):
            if not chunks:  # MTT's order: shuffled chunks of batch_syn, taken from the end
                chunks = list(torch.randperm(n, generator=task.generator).split(bs))
            idx = chunks.pop().to(task.device)
            draw = None
            if self.dsa and task.augment is not None:  # for the modifier's rows
                draw = task.augment.draw(self.modifier.rows(len(idx)), H, W, task.generator)
            plan.append((idx, draw))
        return plan

    def _student_step(
        self,
        w: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        lr: torch.Tensor,
        idx: torch.Tensor,
        draw: Any,
    ) -> torch.Tensor:
        (g,) = torch.autograd.grad(
            self.student_loss(w, images, labels, idx, draw), w, create_graph=True
        )
        return w - lr * g

    def student_loss(
        self, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
        draw: Any,
    ) -> torch.Tensor:  # fmt: skip
        """The cross entropy of the student at ``w`` on the (modified, augmented) batch ``idx``."""
        assert self.student is not None
        x, y = self.modifier.apply(images[idx], self.batch_targets(labels[idx]))
        if draw is not None:
            x = draw(x)
        return F.cross_entropy(self.student(w, x).float(), y)

    def batch_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The cross-entropy targets of one student step's batch (subclasses reweight them)."""
        return labels

    def matching_loss(
        self,
        task: Task,
        images: torch.Tensor,
        labels: torch.Tensor,
        expert: int,
        start: int,
        lr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The normalised parameter distance after unrolling from ``experts[expert][start]``
        (batches and DSA draws from the task's generator); differentiable w.r.t. the images
        and the lr (default: the learned one)."""
        lr = self.syn_lr if lr is None else lr
        traj = self.trajectories[expert]
        theta0 = self.start_params(task, traj[start].to(task.device))
        target = traj[start + self.expert_epochs].to(task.device)
        w = theta0.clone().requires_grad_(True)
        for idx, draw in self.unroll_plan(task, len(images)):
            if self.checkpoint_unroll:  # (checkpoint replays the precision of the forward)
                w = checkpoint(
                    self._student_step, w, images, labels, lr, idx, draw, use_reentrant=False
                )
            else:
                w = self._student_step(w, images, labels, lr, idx, draw)
        return ((w - target) ** 2).sum() / ((theta0 - target) ** 2).sum()

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        assert self._lr_opt is not None and self.syn_lr is not None
        expert, start = self.sample_expert(task)
        loss = self.matching_loss(task, images, labels, expert, start)
        self._lr_opt.zero_grad(set_to_none=True)
        value = self.update(loss)  # backward reaches the lr too
        self._lr_opt.step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.lr_min)
        if task.logger is not None:
            task.logger.metrics(
                {"syn_lr": float(self.syn_lr.detach()), "start_epoch": start}, step=it
            )
        return value

    def monitor_lr(self) -> float | None:
        """The current learned lr: the ``eval_every`` monitor trains with it, as ``learned_lr``
        trains with the one the set stores."""
        return None if self.syn_lr is None else float(self.syn_lr.detach())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        assert self._lr_opt is not None
        return {"lr": self._lr_opt}

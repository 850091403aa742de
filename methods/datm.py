"""Difficulty-Aligned Trajectory Matching (DATM; Guo et al., ICLR 2024, "Towards Lossless Dataset
Distillation via Difficulty-Aligned Trajectory Matching").

DATM is MTT (:class:`ddbench.methods.mtt.MTT`) with four changes, and only these live here
(docs/methods.md gives the paper's values and the deviations from the official code):

* a **difficulty-aligned matching range**: start epochs are drawn from
  ``[min_start_epoch, upper)``, ``upper`` growing linearly from ``max_start_epoch`` to
  ``max_start_epoch_final`` over ``expansion_iterations``: the early (easy) parts of the
  trajectories first, later (harder) ones as the set improves;
* **learned soft labels**: per image a logit vector, initialised with the mean outputs (at
  ``label_epoch``) of the experts that classify the initial image correctly (``label_average``;
  off, or without ``correct_init``: the outputs of ``label_expert`` alone) and optimised with the
  images;
  the student's inner loss is the soft cross entropy to ``softmax(logits)``, which the set
  stores, made class-consistent first (:func:`ddbench.relabel.class_consistent`);
* **correct-only initialisation** (``correct_init``): the initial real images of each class are
  drawn among those the label expert classifies correctly (topped up if too few);
* a **loss threshold** (``threshold``): an iteration whose matching loss exceeds it updates
  nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ddbench.engine import predict_batches
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, FlatModel
from ddbench.method import Task
from ddbench.methods.ftd import GSAM_EXPERTS
from ddbench.methods.mtt import MTT
from ddbench.relabel import class_consistent
from ddbench.synset import SyntheticSet

log = logging.getLogger("ddbench")


# DATM's expert recipe, README.md:31: buffer_FTD.py --train_epochs=100 --rho_max=0.01
# --rho_min=0.01 --alpha=0.3 --lr_teacher=0.01 --mom=0. --batch_train=256 (adaptive: its default
# True, buffer_FTD.py:147): FTD's GSAM experts, trained 100 epochs with alpha 0.3.
DATM_EXPERTS = {
    "epochs": 100,
    "step": "gsam",
    "step_kwargs": {**GSAM_EXPERTS["step_kwargs"], "gsam_alpha": 0.3},
}


class DATM(MTT):
    """MTT with a growing start-epoch range and learned soft labels (module docstring). Its sets
    declare the ``datm`` protocol: ``learned_lr`` with batch 128, the ``batch_train`` of every
    DATM config (``configs/*/ConvIN/IPC*.yaml``)."""

    name = "datm"
    protocol = "datm"

    @dataclass
    class Settings(MTT.Settings):
        # configs/CIFAR-10/ConvIN/IPC10.yaml: Iteration 10000, lr_img 100, syn_steps 80,
        # batch_syn 100, lr_y 2.0, Momentum_y 0.9, threshold 1, the range 0 / 10 -> 20 over 1000
        iterations: int = 10000
        lr_img: float = 100.0
        syn_steps: int = 80
        batch_syn: int | None = 100
        min_start_epoch: int = 0  # start epochs are drawn from [min_start_epoch, upper)
        max_start_epoch: int = 10  # current_max_start_epoch: the upper bound at iteration 0
        max_start_epoch_final: int | None = 20  # the bound after the expansion (null: fixed)
        expansion_iterations: int | None = 1000  # expansion_end_epoch (null: all iterations)
        soft_labels: bool = True  # learned soft labels (false: hard labels, as MTT)
        lr_y: float = 2.0  # SGD lr of the label logits
        momentum_y: float = 0.9
        # the expert whose logits initialise the labels (DATM.py 203: the first expert file) ...
        label_expert: int = 0
        label_epoch: int = -1  # ... at this epoch (Label_Model_Timestamp, -1: the trained expert)
        # with correct_init: the initial logits are the mean of every expert's (at label_epoch)
        # that classifies the image correctly (DATM.py 269-307); false: label_expert's alone
        label_average: bool = True
        correct_init: bool = True  # pix_init samples_predicted_correctly: real images it gets right
        threshold: float | None = 1.0  # skip an iteration whose loss exceeds it (null: never)
        # DATM trains its experts with FTD's buffer_FTD.py (GSAM), 100 epochs, alpha 0.3
        experts: ExpertConfig = field(default_factory=lambda: ExpertConfig(**DATM_EXPERTS))

        def __post_init__(self) -> None:
            super().__post_init__()
            final = self.final_start_epoch
            if final + self.expert_epochs > self.experts.epochs:
                raise DDBenchError(
                    f"datm: max_start_epoch_final ({final}) + expert_epochs "
                    f"({self.expert_epochs}) exceeds the experts' {self.experts.epochs} epochs"
                )
            if not 0 <= self.min_start_epoch < self.max_start_epoch <= final:
                raise DDBenchError(
                    "datm: need 0 <= min_start_epoch < max_start_epoch <= max_start_epoch_final, "
                    f"got {self.min_start_epoch}, {self.max_start_epoch}, {final}"
                )
            if self.expansion_iterations is not None and self.expansion_iterations < 1:
                raise DDBenchError(
                    f"datm: expansion_iterations must be >= 1, got {self.expansion_iterations}"
                )
            if not (math.isfinite(self.lr_y) and self.lr_y > 0 and 0 <= self.momentum_y < 1):
                raise DDBenchError("datm: lr_y must be positive and momentum_y in [0, 1)")
            if not 0 <= self.label_expert < self.num_experts:
                raise DDBenchError(
                    f"datm: label_expert {self.label_expert} is not one of the experts"
                )
            if not -(self.experts.epochs + 1) <= self.label_epoch <= self.experts.epochs:
                raise DDBenchError(
                    f"datm: label_epoch {self.label_epoch} is outside the trajectories"
                )

        @property
        def final_start_epoch(self) -> int:
            f = self.max_start_epoch_final
            return self.max_start_epoch if f is None else f

    recipes = "datm"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.label_logits: torch.Tensor | None = None
        self._y_opt: torch.optim.Optimizer | None = None
        self._it = 0
        self._skipped = 0

    # ------------------------------------------------------------------------------ the range

    def upper_start_epoch(self, it: int) -> int:
        """The (exclusive) upper bound of the start epochs at iteration ``it``."""
        span = self.expansion_iterations or max(1, self.iterations)
        grown = self.max_start_epoch + int(
            (self.settings.final_start_epoch - self.max_start_epoch) * it / span
        )
        return min(grown, self.settings.final_start_epoch)

    def start_range(self) -> tuple[int, int]:
        return self.min_start_epoch, self.upper_start_epoch(self._it)

    # ------------------------------------------------------------------------------ the labels

    def label_model(self, task: Task) -> tuple[FlatModel, torch.Tensor]:
        """The label expert: an eval-mode network and its flat parameters."""
        net = FlatModel(task.model_factory().to(task.device).eval())
        return net, self.trajectories[self.label_expert][self.label_epoch].to(task.device)

    def _correct_real(self, task: Task, c: int, net: FlatModel, w: torch.Tensor) -> torch.Tensor:
        """``ipc`` real images of class ``c`` the label expert classifies correctly (random order
        from the task's generator), topped up with others if the class has too few; the
        prediction stops at the first batch that completes ``ipc``."""
        idx = task.train.indices_of(c)
        idx = idx[torch.randperm(len(idx), generator=task.generator)]
        right, wrong = [], []
        for rows, logits in predict_batches(
            [net.module], task.train.images, index=idx, transform=task.normalize,
            batch_size=256, output=lambda m, x: net(w, x),
        ):  # fmt: skip
            ok = (logits[0].argmax(1) == c).cpu()
            right.append(idx[rows][ok])
            wrong.append(idx[rows][~ok])
            if sum(len(r) for r in right) >= task.ipc:
                break
        right_t = torch.cat(right)[: task.ipc]
        if len(right_t) < task.ipc:
            log.warning(
                "datm: the label expert classifies only %d real images of class %d correctly; "
                "filling the other %d of ipc %d with images it gets wrong",
                len(right_t), c, task.ipc - len(right_t), task.ipc,
            )  # fmt: skip
            right_t = torch.cat([right_t, torch.cat(wrong)[: task.ipc - len(right_t)]])
        return task.normalize(task.train.images[right_t].to(task.device))

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """MTT's images (or correctly classified real ones; ``init_from``: that set's images),
        plus the label logits, computed on them."""
        net, w = self.label_model(task)
        if self.correct_init and self.init == "real" and not self.init_from:
            k, ipc = task.num_classes, task.ipc
            short = [c for c in range(k) if len(task.train.indices_of(c)) < ipc]
            if short:
                raise DDBenchError(
                    f"init=real needs {ipc} real images per class; {short} have fewer"
                )
            images = torch.cat([self._correct_real(task, c, net, w) for c in range(k)])
            labels = torch.arange(k, device=task.device).repeat_interleave(ipc)
            images = images.to(torch.float32).contiguous()
        else:
            images, labels = super().init_images(task)
        if self.soft_labels:
            with torch.no_grad():
                logits = self.initial_logits(images, labels, net, w)
            agree = float((logits.argmax(1) == labels).float().mean()) * 100
            log.info("datm: the initial label logits agree with %.1f %% of the classes", agree)
            self.label_logits = logits.clone().requires_grad_(True)
            self._y_opt = torch.optim.SGD(
                [self.label_logits], lr=self.lr_y, momentum=self.momentum_y
            )
        return images, labels

    def initial_logits(
        self, images: torch.Tensor, labels: torch.Tensor, net: FlatModel, w: torch.Tensor
    ) -> torch.Tensor:
        """The labels' initial logits. DATM's ``samples_predicted_correctly`` (``correct_init``
        with ``label_average``): per image, the mean logits of the experts (every one, at
        ``label_epoch``) whose prediction is its class (``distill/DATM.py`` 269-307); an image
        none of them gets right (a topped-up one) takes the mean of all, where DATM's would be
        0 / 0. Otherwise the label expert's logits (DATM's ``pix_init real``: one expert)."""
        if not (self.label_average and self.correct_init and self.init == "real"):
            return net(w, images).float()
        outs = torch.stack(
            [net(t[self.label_epoch].to(images.device), images).float() for t in self.trajectories]
        )  # [E, N, K]
        right = (outs.argmax(2) == labels).unsqueeze(2).float()
        count = right.sum(0)
        logits = (outs * right).sum(0) / count.clamp_min(1)
        none = count.squeeze(1) == 0
        if none.any():
            log.warning(
                "datm: no expert classifies %d initial image(s) correctly; their labels start "
                "from the mean logits of all %d experts",
                int(none.sum()), len(outs),
            )  # fmt: skip
            logits[none] = outs.mean(0)[none]
        return logits

    # ------------------------------------------------------------------------------ the loop

    def evaluate(
        self, task: Task, images: torch.Tensor, labels: torch.Tensor, step: int | None = None
    ) -> float:
        if self.soft_labels and self.label_logits is not None:
            labels = F.softmax(self.label_logits.detach(), 1)
        return super().evaluate(task, images, labels, step)

    def update(self, loss: torch.Tensor) -> float:
        if self.threshold is not None and float(loss.detach()) > self.threshold:
            self._skipped += 1  # DATM: a too distant match updates nothing
            return float(loss.detach())
        return super().update(loss)

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        self._it = it
        if task.logger is not None:
            task.logger.metrics({"upper_start_epoch": self.upper_start_epoch(it)}, step=it)
        if not self.soft_labels:
            return super().step(task, images, labels, it)
        assert self.label_logits is not None and self._y_opt is not None
        self._y_opt.zero_grad(set_to_none=True)
        value = super().step(task, images, F.softmax(self.label_logits, 1), it)
        self._y_opt.step()  # no-op when the threshold skipped the backward (no gradient)
        return value

    def distill(self, task: Task) -> SyntheticSet:
        self._skipped = 0
        s = super().distill(task)
        meta = s.meta["distillation"]
        meta["skipped_iterations"] = self._skipped
        if self.soft_labels:
            assert self.label_logits is not None
            # a set's classes are its labels' argmax (at most ipc each): rows whose learned
            # argmax left their class swap that logit with the class's (SRe2L's class_consistent)
            logits, changed = class_consistent(self.label_logits.detach().float().cpu(), s.labels)
            if changed:
                log.warning(
                    "datm: %d learned label(s) favoured another class; their class's logit and "
                    "their largest were swapped to keep each image's class",
                    changed,
                )
            s.labels = F.softmax(logits, 1)
            meta["labels_made_class_consistent"] = changed
        return s

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {} if self._y_opt is None else {"labels": self._y_opt}
        return {**super().optimizers(), **extra}

"""SRe2L: Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023).

* **Squeeze**: a BatchNorm network trained on the real train split: a cached teacher
  (:func:`ddbench.teachers.get_teacher`, trained once by the core engine).
* **Recover**: ``ipc`` images per class, from noise, optimised with Adam (cosine lr; the image
  loop's ``img_optimizer: adam``, ``img_schedule: cosine``) so that the
  frozen teacher (eval mode) classifies them as their class and so that the statistics they
  induce at every BatchNorm layer match the layer's running statistics::

      loss = CE(teacher(A(x)), y) + r_bn * sum_l m_l (||mu_l(A(x)) - running_mean_l||_2
                                                      + ||var_l(A(x)) - running_var_l||_2)

  ``A`` is a random resized crop and a horizontal flip (only where the dataset's DSA strategy
  flips), then a random roll ("jitter"); ``m_l`` is ``first_bn_multiplier`` for the first
  BatchNorm layer and 1 for the others. ``crop: auto`` crops and flips only images larger than
  32 pixels, as the authors' code: their CIFAR recovery (``SRe2L/*small_dataset/
  recover_cifar.py`` 78-81, 32 px) only rolls, their Tiny-ImageNet (``recover_tiny.py`` 50,
  64 px) and ImageNet (``recover/data_synthesis.py`` 56-57) recoveries crop (0.08-1) and flip. As in SRe2L, the images are recovered in batches of one
  image per class (the ``j``-th image of every class forms batch ``j``): BatchNorm statistics
  are taken per batch, and each batch draws its own crop, flip and roll. All batches run through
  the teacher in one forward (the teacher normalises with its running statistics, so a sample's
  output does not depend on its batch) and their losses are summed; Adam's update is
  element-wise, so this equals optimising the batches one after another. Images stay in the
  normalised space and are clipped to the valid pixel range after every step.
* **Relabel**: the teacher's logits on each final image (one label per image, not per
  augmented view; the set's metadata names the teacher, its config included, so that the
  ``sre2l`` protocol relabels every augmented crop online with it) are the set's soft labels, stored as ``float16`` ``[N, K]`` (``label_dtype``)
  or top-k (``label_topk: k``) (:mod:`ddbench.relabel`); ``ddbench.load`` gives back dense
  ``[N, K]`` logits. A set's classes are its labels' argmax: where the teacher's argmax is not
  the image's class, the two logits swap (``mismatch: swap``). The set expects the ``sre2l``
  protocol (the recovery teacher online on every crop, as the papers evaluate); ``kd`` scores it
  with the protocol's own teacher, ``kd_set`` trains on the stored labels.

The teacher machinery (BatchNorm-statistics hooks, the crop/flip/jitter augmentations) is in
:mod:`ddbench.recover`. CDA (curriculum on the crop scale, ``methods/cda.py``) and CV-DD (a
committee of teachers, ``methods/cvdd.py``) are subclasses that change one hook each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.distill import ImageDistillation
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.recover import (
    DEFAULT_TEACHER,
    Member,
    by_slot,
    flips,
    jitter,
    load_members,
    pixel_range,
    random_resized_crop,
)
from ddbench.relabel import check_label_settings, relabel_set
from ddbench.synset import SyntheticSet
from ddbench.teachers import TeacherConfig

__all__ = ["SRe2L"]


class SRe2L(ImageDistillation):
    """Squeeze (a cached BatchNorm teacher), recover (Adam on noise: CE + BN-statistics
    matching under crop/flip/jitter) and relabel (the teacher's logits, stored compactly).
    ``teacher`` keys left out take :data:`ddbench.recover.DEFAULT_TEACHER`'s values."""

    @dataclass
    class Settings(ImageDistillation.Settings):
        iterations: int = 1000  # recover iterations (the paper's 1K)
        lr_img: float = 0.25  # Adam lr, cosine-annealed to 0 over the iterations
        img_optimizer: str = "adam"  # the loop's Adam ...
        img_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # recover_cifar.py:71
        img_schedule: str = "cosine"  # ... with its lr cosine-annealed to 0
        r_bn: float = 0.01  # weight of the BN-statistics loss next to CE
        first_bn_multiplier: float = 10.0  # extra weight of the first BatchNorm layer
        # true | false | auto: crop (and flip) only images larger than 32 px (module docstring)
        crop: Any = "auto"
        crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop
        flip: Any = "auto"  # true | false | auto: flip where the dataset's DSA strategy flips
        jitter: int = 4  # random roll of up to N pixels per batch (the paper's 4 at 32x32)
        init: str = "noise"  # noise (the paper: N(0, 1) in the normalised space) | real
        teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(**DEFAULT_TEACHER))
        label_dtype: str = "float16"  # soft labels (teacher logits) as float16 [N, K] | float32
        label_topk: int | None = None  # null: all K logits | k: the k largest + classes + fill
        # images the teacher puts in another class: swap the two logits (Wen et al. 2019's
        # knowledge adjustment, ddbench.relabel.class_consistent) | error
        mismatch: str = "swap"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.fyi:
                raise DDBenchError("sre2l: fyi is not supported")
            if not (self.r_bn >= 0 and self.first_bn_multiplier >= 0):
                raise DDBenchError("r_bn and first_bn_multiplier must be >= 0")
            if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
                raise DDBenchError(
                    f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}"
                )
            if self.flip not in (True, False, "auto"):
                raise DDBenchError(f"flip must be true, false or auto, got {self.flip!r}")
            if self.crop not in (True, False, "auto"):
                raise DDBenchError(f"crop must be true, false or auto, got {self.crop!r}")
            if self.jitter < 0:
                raise DDBenchError(f"jitter must be >= 0, got {self.jitter}")
            check_label_settings(self.label_dtype, self.label_topk, self.mismatch)

    name = "sre2l"
    protocol = "sre2l"
    recipes = "sre2l"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.members: list[Member] = []

    # ------------------------------------------------------------------ hooks for subclasses

    def teacher_configs(self) -> list:
        """The teachers to squeeze into (one for SRe2L; the committee for CV-DD)."""
        return [self.teacher]

    def crop_scale_at(self, it: int) -> tuple[float, float]:
        """The RandomResizedCrop scale range at iteration ``it`` (fixed in SRe2L; CDA's
        curriculum overrides this)."""
        return (self.crop_scale[0], self.crop_scale[1])

    def recovery_loss(
        self, task: Task, x: torch.Tensor, y: torch.Tensor, group_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the augmented batch ``x`` (groups of ``group_size``), summed over the
        groups, and its parts for logging."""
        ce, bn = self.members[0].losses(x, y, group_size, self.first_bn_multiplier)
        loss = (ce + self.r_bn * bn).sum()
        return loss, {"ce": float(ce.detach().mean()), "bn": float(bn.detach().mean())}

    def relabel(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        """The soft labels (logits ``[N, K]``, float32) of the final images."""
        return self.members[0].logits(images)

    def relabel_meta(self) -> dict[str, Any]:
        m = self.members[0].meta
        return {"teacher": {"key": m["key"], "model": m["config"]["model"],
                            "val_accuracy": m["val_accuracy"], "config": m["config"]}}  # fmt: skip

    # ------------------------------------------------------------------ recover

    def load_members(self, task: Task) -> None:
        self.members = load_members(task, self.teacher_configs())

    def crops(self, task: Task) -> bool:
        """Whether recovery crops and flips (``crop``; ``auto``: images larger than 32 px)."""
        return task.spec.im_size[-1] > 32 if self.crop == "auto" else bool(self.crop)

    def augment_batch(self, task: Task, x: torch.Tensor, it: int) -> torch.Tensor:
        """Crop + flip (where :meth:`crops`), then jitter, one draw per batch, all from
        ``task.generator``."""
        k = task.num_classes
        if self.crops(task):
            flip = flips(task.spec, self.flip)
            x = random_resized_crop(x, k, self.crop_scale_at(it), task.generator, flip)
        return jitter(x, k, self.jitter, task.generator)

    def bn_statistics_loss(self, task: Task, images: torch.Tensor) -> float:
        """The BatchNorm-statistics loss (summed over layers and batches, first layer weighted)
        of ``images`` (ordered by class) without augmentation: a fixed measure of recovery."""
        x = by_slot(images.to(task.device), task.ipc)
        y = by_slot(torch.arange(task.num_classes).repeat_interleave(task.ipc), task.ipc)
        with torch.no_grad():
            _, bn = self.members[0].losses(
                x, y.to(task.device), task.num_classes, self.first_bn_multiplier
            )
        return float(bn.sum())

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        with task.full_precision():  # the crops' sampling grids in fp32
            x = self.augment_batch(task, by_slot(images, task.ipc), it)
        y = by_slot(labels, task.ipc)
        loss, parts = self.recovery_loss(task, x, y, task.num_classes)
        value = self.update(loss)  # Adam on the images, the loop's cosine lr
        lo, hi = pixel_range(task.spec, images.device)
        with torch.no_grad():
            images.copy_(torch.maximum(torch.minimum(images, hi), lo))
        if task.logger is not None:
            task.logger.metrics(parts, step=it)
        return value / task.ipc  # per batch of one image per class

    # ------------------------------------------------------------------ relabel

    def distill(self, task: Task) -> SyntheticSet:
        if self.label_topk is not None and self.label_topk >= task.num_classes:
            raise DDBenchError(
                f"label_topk={self.label_topk} keeps all {task.num_classes} classes; use "
                "label_topk: null (dense labels) or fewer classes"
            )
        self.load_members(task)
        try:
            synset = super().distill(task)
            logits = self.relabel(task, synset.images.to(task.device))
            meta = self.relabel_meta()
        finally:
            for m in self.members:
                m.remove()
            self.members = []
        intended = torch.arange(task.num_classes).repeat_interleave(task.ipc)
        return relabel_set(
            synset, logits, intended, method=self.name, label_dtype=self.label_dtype,
            label_topk=self.label_topk, mismatch=self.mismatch, meta=meta,
        )  # fmt: skip

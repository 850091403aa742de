"""INFER: inter-class feature compensators (Zhang, Du, Liu & Zhou, "Breaking Class Barriers:
Efficient Dataset Distillation via Inter-Class Feature Compensator", ICLR 2025).

Read from the authors' code, zhangxin-xd/UFC @83d19f8 (``ufc_generation/ufc_cifar.py``,
``ufc_validation/val_static.py``, ``sh/ufc_cifar.sh``); nothing of it is copied.

* **Budget split** (``ufc_cifar.py`` 252-253): with ``M`` teachers and ``K`` classes, ``B =
  int(ipc / (M / K + 1))`` real images per class are stored, in ``B`` batches of one image per
  class, and ``B M`` compensators, one per (batch, teacher): ``B K + B M <= ipc K`` stored
  image-sized tensors. IPC 10 on ten classes with four teachers: 7 real images per class and 28
  compensators. Where the formula gives ``B = 0`` (IPC 1 on ten classes) INFER is not defined
  and is refused.
* **Universal Feature Compensator** (``ufc_cifar.py`` 23-129): for teacher ``m`` and batch
  ``b``, one perturbation ``u`` of an image's shape, from zeros, optimised so that the frozen
  teacher (eval mode) classifies every ``x_c + u`` of the batch as its class ``c``, with SRe2L's
  BatchNorm-statistics term (:class:`ddbench.recover.Member`, first BatchNorm layer weighted
  ``first_bn_multiplier`` = 10)::

      loss = CE(f_m(roll(x_b + u)), y) + r_bn * sum_l m_l (||mu_l - running_mean_l||_2
                                                            + ||var_l - running_var_l||_2)

  Adam (betas 0.5, 0.9) at lr 0.25 cosine-annealed to 0 over 1000 iterations, a random roll
  ("jitter") of up to 4 pixels per batch, no crop; ``r_bn`` 1 (``sh/ufc_cifar.sh --r-bn 1``).
  All (batch, teacher) compensators are optimised together in one loop (Adam's update is
  element-wise and each compensator's loss involves only itself, so this equals the code's one
  compensator after another, with a roll drawn per batch).
* **Composition**: the set yields the ``B K`` real images and, for each compensator, its batch
  plus the compensator clipped to the valid pixel range (``(B + B M) K`` images; the view
  ``compensated`` of :mod:`ddbench.synset`). The file stores the real images, the compensators
  (an extra tensor) and the labels; its bytes count all three.
* **Static labels** (``val_static.py`` 200-217): one soft label per composed image, the mean of
  the ``M`` teachers' logits on it (no augmentation), stored as :mod:`ddbench.relabel` stores
  logits (float16, class-consistent). The evaluation (protocol ``infer``) interpolates them with
  the images' mixup coefficient (mixup alpha 0.8) and trains with KL at temperature 30 (AdamW
  lr 0.001, weight decay 0.01, cosine: ``val_static.py`` 30, 234-235, 239-249; batch 64,
  400 epochs: ``sh/ufc_cifar.sh``).

The authors' teachers are ResNet-18, MobileNetV2, EfficientNet-B0 and ShuffleNet; ddbench's
default ``teachers`` are four BatchNorm ConvNets of the teacher cache (three of them CV-DD's
committee), which run on a CPU and train in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.distill import ImageDistillation
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.methods.sre2l import SRe2L
from ddbench.recover import DEFAULT_TEACHER, Member, jitter
from ddbench.relabel import relabel_set
from ddbench.synset import SyntheticSet, compensated_view
from ddbench.teachers import TeacherConfig

__all__ = ["DEFAULT_TEACHERS", "INFER", "budget_split", "static_logits"]

DEFAULT_TEACHERS: list[dict[str, Any]] = [
    {"model": "convnet_bn", "seed": 0},
    {"model": "convnet_bn", "model_kwargs": {"net_depth": 4}, "seed": 1},
    {"model": "convnet_bn", "model_kwargs": {"net_width": 64}, "seed": 2},
    {"model": "convnet_bn", "model_kwargs": {"net_depth": 2}, "seed": 3},
]


def budget_split(ipc: int, num_classes: int, teachers: int) -> tuple[int, int]:
    """``(B, U)``: real images per class and compensators for an ipc budget, as the authors'
    ``ipc_init = int(ipc / (M / K + 1))`` with ``U = B M``; an error where ``B`` is 0."""
    b = int(ipc / (teachers / num_classes + 1))
    if b < 1:
        need = -(-(teachers + num_classes) // num_classes)  # ceil(M/K + 1)
        raise DDBenchError(
            f"infer: ipc {ipc} with {teachers} teachers and {num_classes} classes leaves no real "
            f"image per class (int(ipc / (M/K + 1)) = 0); INFER needs ipc >= {need} here, or "
            "fewer teachers"
        )
    return b, b * teachers


def static_logits(members: list[Member], images: torch.Tensor) -> torch.Tensor:
    """The mean of the members' float32 logits on ``images`` (INFER's static labels)."""
    return sum(m.logits(images) for m in members) / len(members)


class INFER(SRe2L):
    """Real images plus inter-class feature compensators (module docstring). Settings (besides
    SRe2L's recovery settings; ``teacher``, ``crop`` and ``init`` are fixed): ``teachers``, the
    ``M`` teachers (TeacherConfig nodes; keys left out take SRe2L's default teacher's values)."""

    @dataclass
    class Settings(SRe2L.Settings):
        r_bn: float = 1.0  # sh/ufc_cifar.sh --r-bn 1
        crop: Any = False  # ufc_cifar.py only rolls
        init: str = "real"  # compensators start at zero over real images
        teacher: Any = None  # not used: the teachers below
        teachers: list[dict[str, Any]] = field(
            default_factory=lambda: [dict(t) for t in DEFAULT_TEACHERS]
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.teacher is not None:
                raise DDBenchError("infer takes a list of `teachers`, not `teacher`")
            if self.crop is not False or self.init != "real":
                raise DDBenchError("infer composes real images and compensators: crop: false, "
                                   "init: real")  # fmt: skip
            if not self.teachers:
                raise DDBenchError("infer needs at least one teacher")
            if self.eval_every:
                raise DDBenchError("infer: eval_every is not supported (the loop optimises the "
                                   "compensators, not a set's images)")  # fmt: skip
            self.teachers = [{**DEFAULT_TEACHER, **dict(t)} for t in self.teachers]
            for t in self.teachers:
                TeacherConfig.from_config(t)  # a bad teacher fails here

    name = "infer"
    supports_init_from = False  # real images plus compensators, not ipc started images
    protocol = "infer"
    recipes = "infer"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.real: torch.Tensor | None = None  # [B K, C, H, W], batch-major

    def teacher_configs(self) -> list:
        return [TeacherConfig.from_config(t) for t in self.teachers]

    def split(self, task: Task) -> tuple[int, int]:
        return budget_split(task.ipc, task.num_classes, len(self.teachers))

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """The real images (``B`` random ones per class from ``task.generator``, kept in
        :attr:`real`, batch ``b`` = rows ``b K .. b K + K - 1``) and the optimised tensor: the
        ``U`` compensators, zeros (with their teachers' indices as labels)."""
        k = task.num_classes
        b, u = self.split(task)
        per_class = [task.real_images(c, b) for c in range(k)]
        short = [c for c, x in enumerate(per_class) if len(x) < b]
        if short:
            raise DDBenchError(f"infer needs {b} real images per class; class(es) {short} have "
                               "fewer")  # fmt: skip
        self.real = torch.stack(per_class, 1).reshape(b * k, *task.spec.shape).contiguous()
        comp = torch.zeros((u, *task.spec.shape), device=task.device)
        return comp, torch.arange(u, device=task.device) // b

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        """One Adam step of every compensator: teacher ``m`` sees its ``B`` batches, each plus
        its own compensator and rolled by its own draw."""
        assert self.real is not None
        k = task.num_classes
        b = len(self.real) // k
        y = torch.arange(k, device=images.device).repeat(b)
        loss, parts = images.new_zeros(()), {}
        for m, member in enumerate(self.members):
            u = images[m * b : (m + 1) * b]
            x = (self.real.view(b, k, *self.real.shape[1:]) + u[:, None]).flatten(0, 1)
            with task.full_precision():
                x = jitter(x, k, self.jitter, task.generator)
            ce, bn = member.losses(x, y, k, self.first_bn_multiplier)
            loss = loss + (ce + self.r_bn * bn).sum()
            parts.update(
                {f"ce_{m}": float(ce.detach().mean()), f"bn_{m}": float(bn.detach().mean())}
            )
        value = self.update(loss)
        if task.logger is not None:
            task.logger.metrics(parts, step=it)
        return value / len(images)  # per (batch, teacher)

    def relabel_meta(self) -> dict[str, Any]:
        return {
            "static": "mean",
            "teachers": [
                {"key": m.meta["key"], "model": m.meta["config"]["model"],
                 "val_accuracy": m.meta["val_accuracy"], "config": m.meta["config"]}
                for m in self.members
            ],
        }  # fmt: skip

    def distill(self, task: Task) -> SyntheticSet:
        if self.label_topk is not None and self.label_topk >= task.num_classes:
            raise DDBenchError(
                f"label_topk={self.label_topk} keeps all {task.num_classes} classes; use "
                "label_topk: null (dense labels) or fewer classes"
            )
        k = task.num_classes
        b, u = self.split(task)
        self.load_members(task)
        try:
            comp = ImageDistillation.distill(self, task)  # the loop over the compensators
            assert self.real is not None
            classes = torch.arange(k).repeat(b + u)  # the composed images' classes, in order
            synset = task.make_set(
                self.real, classes, method=self, protocol=self.protocol,
                distillation={**comp.meta["distillation"], "real_per_class": b,
                              "compensators": u, "teachers": len(self.members)},
                view="compensated", extras={"compensators": {"role": "compensator"}},
            )  # fmt: skip
            synset.extras = {"compensators": comp.images.detach().float().cpu()}
            composed = compensated_view(synset.images, synset.extras, synset.meta, self.name)
            logits = static_logits(self.members, composed.to(task.device))
            meta = self.relabel_meta()
        finally:
            for m in self.members:
                m.remove()
            self.members, self.real = [], None
        return relabel_set(
            synset, logits, classes, method=self.name, label_dtype=self.label_dtype,
            label_topk=self.label_topk, mismatch=self.mismatch, meta=meta,
        )  # fmt: skip

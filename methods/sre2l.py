"""SRe2L: Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023).

* **Squeeze**: a BatchNorm network trained on the real train split: a cached teacher
  (:func:`ddbench.teachers.get_teacher`, trained once by the core engine).
* **Recover**: ``ipc`` images per class, from noise, optimised with Adam (cosine lr; the image
  loop's ``img_optimizer: adam``, ``img_schedule: cosine``) so that the
  frozen teacher (eval mode) classifies them as their class and so that the statistics they
  induce at every BatchNorm layer match the layer's running statistics::

      loss = CE(teacher(A(x)), y) + r_bn * sum_l m_l (||mu_l(A(x)) - running_mean_l||_2
                                                      + ||var_l(A(x)) - running_var_l||_2)

  ``A`` is a random resized crop, a horizontal flip (only where the dataset's DSA strategy
  flips) and a random roll ("jitter"); ``m_l`` is ``first_bn_multiplier`` for the first
  BatchNorm layer and 1 for the others. As in SRe2L, the images are recovered in batches of one
  image per class (the ``j``-th image of every class forms batch ``j``): BatchNorm statistics
  are taken per batch, and each batch draws its own crop, flip and roll. All batches run through
  the teacher in one forward (the teacher normalises with its running statistics, so a sample's
  output does not depend on its batch) and their losses are summed; Adam's update is
  element-wise, so this equals optimising the batches one after another. Images stay in the
  normalised space and are clipped to the valid pixel range after every step.
* **Relabel**: the teacher's logits on each final image (one label per image, not per
  augmented view) are the set's soft labels, stored as ``float16`` ``[N, K]`` (``label_dtype``),
  half the bytes of float32, or top-k (``label_topk: k``): the k largest logits of each row in
  ``label_dtype``, their classes (uint8 up to 256 classes) and one fill value per row (the mean
  of the dropped logits), ``N (k (s + i) + s)`` bytes for ``s``-byte values and ``i``-byte
  indices (:func:`ddbench.synset.encode_topk`). The stored bytes are the set's label bytes, and
  ``ddbench.load`` gives back dense ``[N, K]`` logits (the fill in the dropped classes). A
  set's classes are its labels' argmax: where the teacher's argmax is not the image's class,
  :func:`class_consistent` swaps the two logits. The set expects the ``kd`` protocol (teacher
  online); ``kd_set`` trains on the stored labels.

CDA (curriculum on the crop scale, ``methods/cda.py``) and CV-DD (a committee of teachers,
``methods/cvdd.py``) are subclasses that change one hook each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.distill import ImageDistillation
from ddbench.engine import predict
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.synset import SyntheticSet, decode_topk, encode_topk
from ddbench.teachers import TeacherConfig

__all__ = [
    "SRe2L", "BNStatHook", "Member", "class_consistent", "jitter", "random_resized_crop",
    "stored_labels",
]  # fmt: skip

DEFAULT_TEACHER: dict[str, Any] = {
    "model": "convnet_bn",
    "model_kwargs": {},
    "epochs": 5,
    "batch_size": 256,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "schedule": "cosine",
    "augment": "none",
    "seed": 0,
}
LABEL_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# ----------------------------------------------------------------------------- the pieces


class BNStatHook:
    """Forward hook on a BatchNorm layer: the distance of the batch statistics of its input to
    the layer's running statistics, ``||mu - running_mean||_2 + ||var - running_var||_2``
    (biased variance), one value per group of ``group_size`` consecutive samples (``loss``,
    shape ``[G]``)."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm):
        self.module = module
        self.group_size: int | None = None
        self.loss: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        x = inputs[0].float()
        n, c = x.shape[:2]
        k = self.group_size or n
        if n % k:
            raise DDBenchError(f"BatchNorm hook: batch of {n} is not a multiple of groups of {k}")
        g = x.reshape(n // k, k, c, -1).transpose(1, 2).reshape(n // k, c, -1)  # [G, C, k*HW]
        mean = g.mean(2)
        var = g.var(2, unbiased=False)
        rm = module.running_mean.float()
        rv = module.running_var.float()
        self.loss = (var - rv).norm(dim=1) + (mean - rm).norm(dim=1)

    def remove(self) -> None:
        self.handle.remove()


class Member:
    """A frozen teacher (eval mode) with a :class:`BNStatHook` on each of its BatchNorm layers."""

    def __init__(self, net: nn.Module, meta: dict):
        self.net = net.eval()
        self.net.requires_grad_(False)
        self.meta = meta
        self.hooks = [
            BNStatHook(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        if not self.hooks:
            raise DDBenchError(
                f"SRe2L needs a teacher with BatchNorm layers; {meta['config']['model']!r} has none "
                "(use e.g. convnet_bn, resnet18_bn or vgg11_bn)"
            )

    def losses(
        self, x: torch.Tensor, y: torch.Tensor, group_size: int, first_bn_multiplier: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per group of ``group_size`` consecutive samples: (mean cross entropy ``[G]``,
        BatchNorm-statistics loss ``[G]``, the first layer weighted by ``first_bn_multiplier``)."""
        for h in self.hooks:
            h.group_size, h.loss = group_size, None
        out = self.net(x)
        ce = F.cross_entropy(out.float(), y, reduction="none").view(-1, group_size).mean(1)
        bn = sum(
            (first_bn_multiplier if i == 0 else 1.0) * h.loss for i, h in enumerate(self.hooks)
        )
        return ce, bn

    def logits(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """The teacher's float32 logits ``[N, K]`` on ``x`` (fp32, in batches)."""
        for h in self.hooks:
            h.group_size = None
        return predict([self.net], x, batch_size=batch_size)[0]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def random_resized_crop(
    x: torch.Tensor,
    group_size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    flip: bool = True,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """``torchvision.transforms.RandomResizedCrop`` (+ ``RandomHorizontalFlip``) applied to a
    batch tensor, once per group of ``group_size`` consecutive samples (torchvision draws one
    crop and one flip per batch tensor). The crop box is drawn as torchvision does (area fraction
    in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, integer box); when all tries
    fail the whole image is used (torchvision's fallback for square images). The box is resized
    back to the image size bilinearly (``grid_sample``), so the op is differentiable."""
    n, _, h, w = x.shape
    groups = n // group_size
    thetas = []
    for _ in range(groups):
        box = (0, 0, h, w)
        tries = torch.rand(10, 4, generator=generator, dtype=torch.float64)
        for s_u, r_u, i_u, j_u in tries.tolist():
            area = h * w * (scale[0] + (scale[1] - scale[0]) * s_u)
            r = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r_u)
            cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
            if 0 < cw <= w and 0 < ch <= h:
                box = (min(int(i_u * (h - ch + 1)), h - ch), min(int(j_u * (w - cw + 1)), w - cw))
                box = (*box, ch, cw)
                break
        i, j, ch, cw = box
        mirrored = flip and bool(torch.rand(1, generator=generator) < 0.5)
        sx = (-1.0 if mirrored else 1.0) * cw / w
        tx, ty = (j + cw / 2) * 2 / w - 1, (i + ch / 2) * 2 / h - 1
        thetas.append([[sx, 0.0, tx], [0.0, ch / h, ty]])
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device).repeat_interleave(group_size, 0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def class_consistent(logits: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Soft labels whose argmax is each image's class: in rows where it is not, the logit of the
    class and the largest logit swap places (the "probability shift" of knowledge adjustment:
    Wen, Lai & Qian, "Preparing Lessons: Improve Knowledge Distillation with Better Supervision",
    arXiv:1911.07471), so the row keeps the
    teacher's values; on a tie the class's logit moves up by one ulp. Returns the labels and the
    number of rows changed. A set's class counts are those of its labels' argmax, at most ipc."""
    out = logits.clone()
    rows = (out.argmax(1) != classes).nonzero().flatten()
    if len(rows):
        c, top = classes[rows], out[rows].argmax(1)
        mine = out[rows, c].clone()
        out[rows, c] = out[rows, top]
        out[rows, top] = mine
        tied = rows[out[rows].argmax(1) != c]
        if len(tied):
            v = out[tied, classes[tied]]
            out[tied, classes[tied]] = torch.nextafter(v, torch.full_like(v, math.inf))
    return out, len(rows)


def stored_labels(
    logits: torch.Tensor, classes: torch.Tensor, dtype: str = "float16", topk: int | None = None
) -> tuple[torch.Tensor, int, dict[str, Any] | None]:
    """Relabelled logits ``[N, K]`` as a set stores them: cast to ``dtype`` (clamped to its
    range), made class-consistent (:func:`class_consistent`) and, with ``topk``, reduced to the
    ``topk`` largest per row plus a fill (:func:`ddbench.synset.encode_topk`), in memory exactly
    what ``ddbench.load`` gives back. Returns the labels, the number of rows swapped and the
    set's ``label_storage`` metadata (None for dense labels)."""
    if dtype not in LABEL_DTYPES:
        raise DDBenchError(f"label_dtype must be one of {list(LABEL_DTYPES)}, got {dtype!r}")
    info = torch.finfo(LABEL_DTYPES[dtype])
    labels = logits.detach().float().clamp(info.min, info.max).to(LABEL_DTYPES[dtype]).cpu()
    labels, adjusted = class_consistent(labels, classes.cpu())
    if topk is None:
        return labels, adjusted, None
    t = encode_topk(labels, topk)
    labels = decode_topk(t["label_values"], t["label_indices"], t["label_fill"], labels.shape[1])
    return labels, adjusted, {"format": "topk", "k": topk}


def jitter(
    x: torch.Tensor, group_size: int, limit: int, generator: torch.Generator
) -> torch.Tensor:
    """SRe2L's jitter: ``torch.roll`` by a random ``(dy, dx)`` in ``[0, limit]``, per group."""
    if limit <= 0:
        return x
    shifts = torch.randint(0, limit + 1, (len(x) // group_size, 2), generator=generator).tolist()
    return torch.cat(
        [
            torch.roll(x[g * group_size : (g + 1) * group_size], shifts=(dy, dx), dims=(2, 3))
            for g, (dy, dx) in enumerate(shifts)
        ]
    )


# ----------------------------------------------------------------------------- SRe2L


class SRe2L(ImageDistillation):
    """Squeeze (a cached BatchNorm teacher), recover (Adam on noise: CE + BN-statistics
    matching under crop/flip/jitter) and relabel (the teacher's logits, stored compactly).

    Settings: ``teacher`` (a :class:`ddbench.teachers.TeacherConfig`; keys left out take
    ``DEFAULT_TEACHER``'s values), ``iterations``, ``lr_img`` (Adam's lr, cosine-annealed to 0:
    the loop's ``img_optimizer: adam``, ``img_schedule: cosine``, ``img_betas``), ``r_bn``,
    ``first_bn_multiplier``, ``crop_scale`` (RandomResizedCrop's scale range), ``flip``
    (``auto``: where the dataset's DSA strategy flips), ``jitter`` (max roll in pixels), ``init``
    (``noise``, as in the paper, or ``real``), ``label_dtype`` (``float16`` or ``float32`` soft
    labels), ``label_topk`` (null: all K logits; k: the k largest, their classes and a fill per
    row), ``mismatch`` (what to do with images the teacher does not put in their class:
    ``swap``, see :func:`class_consistent`, or ``error``).
    """

    @dataclass
    class Settings(ImageDistillation.Settings):
        iterations: int = 1000  # recover iterations (the paper's 1K)
        lr_img: float = 0.25  # Adam lr, cosine-annealed to 0 over the iterations
        img_optimizer: str = "adam"  # the loop's Adam ...
        img_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
        img_schedule: str = "cosine"  # ... with its lr cosine-annealed to 0
        r_bn: float = 0.01  # weight of the BN-statistics loss next to CE
        first_bn_multiplier: float = 10.0  # extra weight of the first BatchNorm layer
        crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
        flip: Any = "auto"  # true | false | auto: flip where the dataset's DSA strategy flips
        jitter: int = 4  # random roll of up to N pixels per batch (the paper's 4 at 32x32)
        init: str = "noise"  # noise (the paper: N(0, 1) in the normalised space) | real
        teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(**DEFAULT_TEACHER))
        label_dtype: str = "float16"  # soft labels (teacher logits) as float16 [N, K] | float32
        label_topk: int | None = None  # null: all K logits | k: the k largest + classes + fill
        mismatch: str = "swap"  # swap the two logits (Wen et al. 2019's knowledge adjustment)

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
            if self.jitter < 0:
                raise DDBenchError(f"jitter must be >= 0, got {self.jitter}")
            if self.label_dtype not in LABEL_DTYPES:
                raise DDBenchError(
                    f"label_dtype must be one of {list(LABEL_DTYPES)}, got {self.label_dtype!r}"
                )
            if self.label_topk is not None and self.label_topk < 1:
                raise DDBenchError(
                    "label_topk must be null (all logits) or a number of classes >= 1, got "
                    f"{self.label_topk!r}"
                )
            if self.mismatch not in ("swap", "error"):
                raise DDBenchError(f"mismatch must be swap or error, got {self.mismatch!r}")

    name = "sre2l"
    protocol = "kd"

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
                            "val_accuracy": m["val_accuracy"]}}  # fmt: skip

    # ------------------------------------------------------------------ helpers

    def flips(self, task: Task) -> bool:
        if self.flip == "auto":
            from ddbench.augment import parse_strategy

            return "flip" in parse_strategy(task.spec.dsa_strategy)
        return bool(self.flip)

    def pixel_range(self, task: Task, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid pixel range ``[0, 1]`` in the normalised space, per channel."""
        mean = torch.tensor(task.spec.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(task.spec.std, device=device).view(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    @staticmethod
    def by_slot(x: torch.Tensor, ipc: int) -> torch.Tensor:
        """Rows ordered by class (``ipc`` each) -> ordered by slot: batch ``j`` = the ``j``-th
        image of every class, batches consecutive."""
        k = len(x) // ipc
        return x.reshape(k, ipc, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    def augment_batch(self, task: Task, x: torch.Tensor, it: int) -> torch.Tensor:
        """Crop + flip, then jitter, one draw per batch, all from ``task.generator``."""
        k = task.num_classes
        x = random_resized_crop(x, k, self.crop_scale_at(it), task.generator, self.flips(task))
        return jitter(x, k, self.jitter, task.generator)

    def bn_statistics_loss(self, task: Task, images: torch.Tensor) -> float:
        """The BatchNorm-statistics loss (summed over layers and batches, first layer weighted)
        of ``images`` (ordered by class) without augmentation: a fixed measure of recovery."""
        x = self.by_slot(images.to(task.device), task.ipc)
        y = self.by_slot(torch.arange(task.num_classes).repeat_interleave(task.ipc), task.ipc)
        with torch.no_grad():
            _, bn = self.members[0].losses(
                x, y.to(task.device), task.num_classes, self.first_bn_multiplier
            )
        return float(bn.sum())

    def load_members(self, task: Task) -> None:
        from ddbench.teachers import get_teacher

        self.members = []
        with torch.random.fork_rng(devices=[]):  # teacher training seeds the global RNG
            for cfg in self.teacher_configs():
                net, meta = get_teacher(task.spec.name, cfg, device=task.device)
                self.members.append(Member(net, meta))

    # ------------------------------------------------------------------ the loop

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        with task.full_precision():  # the crops' sampling grids in fp32
            x = self.augment_batch(task, self.by_slot(images, task.ipc), it)
        y = self.by_slot(labels, task.ipc)
        loss, parts = self.recovery_loss(task, x, y, task.num_classes)
        value = self.update(loss)  # Adam on the images, the loop's cosine lr
        lo, hi = self.pixel_range(task, images.device)
        with torch.no_grad():
            images.copy_(torch.maximum(torch.minimum(images, hi), lo))
        if task.logger is not None:
            task.logger.metrics(parts, step=it)
        return value / task.ipc  # per batch of one image per class

    def distill(self, task: Task) -> SyntheticSet:
        if self.label_topk is not None and self.label_topk >= task.num_classes:
            raise DDBenchError(
                f"label_topk={self.label_topk} keeps all {task.num_classes} classes; use "
                "label_topk: null (dense labels) or fewer classes"
            )
        self.load_members(task)
        try:
            synset = super().distill(task)
            images = synset.images.to(task.device)
            logits = self.relabel(task, images)
            relabel_meta = self.relabel_meta()
        finally:
            for m in self.members:
                m.remove()
            self.members = []
        intended = torch.arange(task.num_classes).repeat_interleave(task.ipc)
        predicted = logits.argmax(1).cpu()
        if self.mismatch == "error" and not torch.equal(predicted, intended):
            raise DDBenchError(
                f"{self.name}: the teacher's argmax differs from the recovered class on "
                f"{int((predicted != intended).sum())} image(s) (mismatch: error); raise "
                "method.iterations, or use mismatch: swap"
            )
        labels, adjusted, storage = stored_labels(
            logits, intended, self.label_dtype, self.label_topk
        )
        if storage is not None:
            synset.meta["label_storage"] = storage
        synset.labels = labels
        synset.meta["relabel"] = {
            "format": "logits",
            "dtype": self.label_dtype,
            "topk": self.label_topk,
            "agreement": float((predicted == intended).float().mean()),
            "adjusted": adjusted,
            **relabel_meta,
        }
        return synset

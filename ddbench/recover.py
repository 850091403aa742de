"""Recovering images from a trained teacher: what SRe2L-style methods share.

A method that recovers images from a frozen BatchNorm teacher (SRe2L and its variants CDA and
CV-DD; INFER, NRR-DD, PCA and HeLlO build on the same pieces) gets from here:

- :data:`DEFAULT_TEACHER`: the cached teacher (:mod:`ddbench.teachers`) these methods squeeze
  the real data into, and :func:`load_members`, which loads (or trains, once per dataset) the
  teachers of a run as :class:`Member` objects;
- :class:`Member`: a frozen teacher (eval mode) with a :class:`BNStatHook` on each of its
  BatchNorm layers: per group of samples, the cross entropy and the distance of the batch
  statistics to the layer's running statistics (:meth:`Member.losses`), and its logits on a
  set of images through the engine's prediction loop (:meth:`Member.logits`);
- the recovery augmentations, drawn once per group of consecutive samples from a generator and
  differentiable: :func:`random_resized_crop` (+ flip) and :func:`jitter`; :func:`flips` says
  whether a dataset's augmentation flips;
- :func:`by_slot` (one batch per image slot, one image per class) and :func:`pixel_range` (the
  valid pixel range in the normalised space, for clipping);
- what the ``sre2l`` protocol needs to score a set as these papers do: :class:`StudentCrop`
  (the student's RandomResizedCrop + flip, one draw per image), :func:`batch_statistics` (a
  copy of a network whose BatchNorm layers normalise with the batch's statistics) and
  :class:`Committee` (members' logits weighted and summed: CV-DD's relabel).

Relabelling the recovered images (class-consistent soft labels, compact storage) is in
:mod:`ddbench.relabel`.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.augment import parse_strategy
from ddbench.data import DatasetSpec
from ddbench.engine import predict
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.teachers import get_teacher

__all__ = [
    "BNStatHook", "Committee", "DEFAULT_TEACHER", "Member", "StudentCrop", "apply_crops",
    "batch_statistics", "by_slot", "draw_crops", "flips", "jitter", "load_members",
    "pixel_range", "random_resized_crop",
]  # fmt: skip

# ddbench's choice, not the papers' (their teachers are ResNet-18s trained for 200 epochs and
# more, docs/methods.md): a ConvNet-3 with BatchNorm, whose statistics the recovery matches,
# trained briefly with the engine's usual SGD recipe; the `sre2l` protocol's default teacher.
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


def load_members(task: Task, configs: list) -> list[Member]:
    """The cached teachers of ``configs`` (:class:`ddbench.teachers.TeacherConfig`), trained on
    a cache miss without touching the global RNG, as :class:`Member` objects."""
    members = []
    with torch.random.fork_rng(devices=[]):  # teacher training seeds the global RNG
        for cfg in configs:
            net, meta = get_teacher(task.spec.name, cfg, device=task.device)
            members.append(Member(net, meta))
    return members


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
    crop and one flip per batch tensor): :func:`draw_crops`, then :func:`apply_crops`."""
    n, _, h, w = x.shape
    crops = draw_crops(n // group_size, h, w, scale, generator, flip, ratio)
    return apply_crops(x, crops, group_size)


def draw_crops(
    n: int,
    h: int,
    w: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    flip: bool = True,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """``n`` crop boxes of an ``h x w`` image drawn as torchvision's ``RandomResizedCrop`` draws
    them (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, integer
    box; the whole image when all tries fail, torchvision's fallback for square images), each
    with a horizontal flip drawn with probability 1/2 where ``flip``: int64 ``[n, 5]`` rows
    ``(top, left, height, width, mirrored)``."""
    out = []
    for _ in range(n):
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
        mirrored = flip and bool(torch.rand(1, generator=generator) < 0.5)
        out.append([*box, int(mirrored)])
    return torch.tensor(out, dtype=torch.int64).view(n, 5)


def apply_crops(x: torch.Tensor, crops: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """The boxes ``crops`` (:func:`draw_crops`, one per group of ``group_size`` consecutive
    samples) cut from ``x``, mirrored where marked, and resized back to the image size
    bilinearly (``grid_sample``), so the op is differentiable."""
    _, _, h, w = x.shape
    thetas = []
    for i, j, ch, cw, mirrored in crops.tolist():
        sx = (-1.0 if mirrored else 1.0) * cw / w
        tx, ty = (j + cw / 2) * 2 / w - 1, (i + ch / 2) * 2 / h - 1
        thetas.append([[sx, 0.0, tx], [0.0, ch / h, ty]])
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device).repeat_interleave(group_size, 0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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


def flips(spec: DatasetSpec, flip: Any = "auto") -> bool:
    """Whether to flip: ``flip``, or with ``auto``, where the dataset's DSA strategy flips."""
    if flip == "auto":
        return "flip" in parse_strategy(spec.dsa_strategy)
    return bool(flip)


def by_slot(x: torch.Tensor, ipc: int) -> torch.Tensor:
    """Rows ordered by class (``ipc`` each) -> ordered by slot: batch ``j`` = the ``j``-th image
    of every class, batches consecutive."""
    k = len(x) // ipc
    return x.reshape(k, ipc, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def pixel_range(spec: DatasetSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixel range ``[0, 1]`` in the normalised space, per channel."""
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


class StudentCrop:
    """The student's augmentation in SRe2L's evaluation (VILA-Lab/SRe2L
    ``SRe2L/validate/train_KD.py`` 94-95): ``RandomResizedCrop(scale=scale)`` and, where
    ``flip``, ``RandomHorizontalFlip``, drawn per image (a data loader's per-sample transform)
    from the engine's generator; called as ``augment(x, generator)`` by
    :func:`ddbench.engine.train`."""

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), flip: bool = True):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise DDBenchError(f"crop scale must satisfy 0 < low <= high <= 1, got {list(scale)}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = bool(flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_resized_crop(x, 1, self.scale, generator, self.flip)


def batch_statistics(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (hooks dropped) whose BatchNorm layers normalise every batch with its
    own statistics, in eval mode too, and keep no running statistics: the relabel of CV-DD,
    which runs its committee in train mode (``relabel/relabel.py`` 282-285: ``--eval-mode F``,
    "Applying BSSL")."""
    hooks = {m: m._forward_hooks for m in net.modules()}  # a BNStatHook holds tensors of a graph
    try:
        for m in hooks:
            m._forward_hooks = OrderedDict()
        out = copy.deepcopy(net)
    finally:
        for m, h in hooks.items():
            m._forward_hooks = h
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return out.eval().requires_grad_(False)


class Committee(nn.Module):
    """Teachers whose logits are summed with fixed weights, ``sum_i w_i f_i(x)`` (CV-DD's
    relabel, ``relabel/relabel.py`` 297-325); a committee of one with weight 1 is that teacher."""

    def __init__(self, nets: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        if len(nets) != len(weights) or not nets:
            raise DDBenchError(f"a committee needs one weight per member: {len(nets)} members, "
                               f"{len(weights)} weights")  # fmt: skip
        self.members = nn.ModuleList(nets)
        self.weights = [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x).float() for w, m in zip(self.weights, self.members))

"""Per-crop stored soft labels (FKD, used by SRe2L, CDA and CV-DD), made and replayed.

FKD ("A Fast Knowledge Distillation Framework", Shen & Xing, ECCV 2022), as SRe2L's relabel
uses it (VILA-Lab/SRe2L ``SRe2L/relabel/generate_soft_label.py`` 198-224, ``utils_fkd.py``),
stores for every epoch of the student's training and every image the crop (RandomResizedCrop
box and flip), the cutmix applied to it and the teacher's logits on the result; the student
replays those crops and learns their stored labels, with no teacher at training time.

:func:`make_crop_labels` is that relabel pass: per epoch, a box and flip per image
(:func:`ddbench.recover.draw_crops`), a cutmix partner (a permutation of the set), a mixing
weight ``lam ~ Beta(a, a)`` and its box (as FKD's ``rand_bbox``) per image, and the teacher's
logits on the mixed crop, computed in batches of ``batch_size`` images in a shuffled order (the
order matters only to teachers that normalise with the batch's statistics). Everything comes
from one generator seeded with ``seed`` (FKD's ``--fkd-seed``), so every student replays the
same labels. FKD draws one mixing weight and box per batch of its loader and replays its
batches in the stored order; here they are drawn per image, so that a student's own batch
order can replay them.

:class:`CropReplay` replays them inside :func:`ddbench.engine.train`: the engine trains on
image indices (``targets = arange(N)``); its ``batch_transform`` builds each batch's stored
mixed crops and the class labels, and the ``teacher`` it is given returns the stored logits of
that batch (the engine calls the teacher after the transform, once per model and batch).
:meth:`CropLabels.nbytes` is what a set storing them would hold: boxes and cutmix boxes as
``uint8`` pixel offsets (``int16`` above 255 pixels), flips as ``uint8``, partners as the
smallest integer type holding ``N``, mixing weights as ``float16`` and the logits in
``dtype``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ddbench.errors import DDBenchError
from ddbench.recover import apply_crops, draw_crops
from ddbench.relabel import LABEL_DTYPES

__all__ = ["CropLabels", "CropReplay", "make_crop_labels", "stored_bytes"]


@dataclass
class CropLabels:
    """Stored per-crop labels of ``N`` images over ``E`` epochs."""

    crops: torch.Tensor  # int64 [E, N, 5]: top, left, height, width, mirrored
    partners: torch.Tensor  # int64 [E, N]: the image whose crop is cut into this one
    lams: torch.Tensor  # float32 [E, N]: the share of this crop after the cutmix (1: no mix)
    boxes: torch.Tensor  # int64 [E, N, 4]: y0, y1, x0, x1 of the pasted region
    logits: torch.Tensor  # [E, N, K] in the stored dtype

    @property
    def epochs(self) -> int:
        return self.crops.shape[0]

    def nbytes(self, image_size: int) -> int:
        """Bytes these labels take as stored (see the module docstring)."""
        e, n = self.partners.shape
        logits = self.logits.numel() * self.logits.element_size()
        return stored_bytes(e, n, 0, image_size) + logits

    def mixed(self, images: torch.Tensor, epoch: int, rows: torch.Tensor) -> torch.Tensor:
        """The stored (cut-mixed) crops of ``images[rows]`` at ``epoch``."""
        e = epoch
        return _mixed(images, self.crops[e], self.partners[e], self.boxes[e], rows)


def stored_bytes(
    epochs: int, n: int, num_classes: int, image_size: int, logit_bytes: int = 2
) -> int:
    """Bytes of per-crop labels for ``n`` images over ``epochs`` epochs, as stored (the module
    docstring): per crop its box (``4o`` bytes, ``o`` = 1 up to 255 px), flip, partner's
    index, float16 mixing weight, cutmix box (``4o``) and ``num_classes`` logits."""
    offset = 1 if image_size <= 255 else 2
    index = 1 if n <= 2**8 else 2 if n <= 2**15 else 4
    return epochs * n * (4 * offset + 1 + index + 2 + 4 * offset + num_classes * logit_bytes)


def _mixed(
    images: torch.Tensor, crops: torch.Tensor, partners: torch.Tensor, boxes: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Image ``r``'s crop with its partner's crop pasted into its box, for ``r`` in ``rows``."""
    out = apply_crops(images[rows], crops[rows])
    other = apply_crops(images[partners[rows]], crops[partners[rows]])
    for k, (y0, y1, x0, x1) in enumerate(boxes[rows].tolist()):
        out[k, :, y0:y1, x0:x1] = other[k, :, y0:y1, x0:x1]
    return out


def _cutmix(
    n: int, h: int, w: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: a partner (a permutation of the set), ``lam ~ Beta(alpha, alpha)`` and FKD's
    ``rand_bbox`` (``relabel/utils_fkd.py``): a box of ``sqrt(1 - lam)`` of each side around a
    uniform centre, clipped to the image; the returned ``lam`` is the share left uncovered."""
    partners = torch.randperm(n, generator=generator)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    boxes = []
    for lam in rng.beta(alpha, alpha, n):
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        boxes.append([max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0),
                      min(cx + cw // 2, w)])  # fmt: skip
    box = torch.tensor(boxes, dtype=torch.int64).view(n, 4)
    lams = 1 - ((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])).float() / (h * w)
    return partners, lams, box


def make_crop_labels(
    images: torch.Tensor,
    teacher: nn.Module,
    *,
    epochs: int,
    scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    cutmix: float = 0.0,
    seed: int = 42,
    batch_size: int = 128,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
) -> CropLabels:
    """The relabel pass (module docstring): ``epochs`` epochs of crops, cutmix (Beta(``cutmix``,
    ``cutmix``); 0: none) and the ``teacher``'s logits on them (eval mode), stored in ``dtype``."""
    if dtype not in LABEL_DTYPES:
        raise DDBenchError(f"crop label dtype must be one of {list(LABEL_DTYPES)}, got {dtype!r}")
    if epochs < 1 or cutmix < 0:
        raise DDBenchError(f"crop labels need epochs >= 1 and cutmix >= 0, got {epochs}, {cutmix}")
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    x = images.to(device, torch.float32)
    teacher = teacher.to(device).eval()
    crops, partners, lams, boxes, logits = [], [], [], [], []
    for _ in range(epochs):
        crops.append(draw_crops(n, h, w, scale, g, flip))
        if cutmix > 0:
            p, lam, box = _cutmix(n, h, w, cutmix, g)
        else:
            p, lam, box = torch.arange(n), torch.ones(n), torch.zeros(n, 4, dtype=torch.int64)
        partners.append(p)
        lams.append(lam)
        boxes.append(box)
        order = torch.randperm(n, generator=g)
        epoch_logits: torch.Tensor | None = None
        with torch.no_grad():
            for b0 in range(0, n, batch_size):
                rows = order[b0 : b0 + batch_size]
                y = teacher(_mixed(x, crops[-1], p, box, rows)).float().cpu()
                if epoch_logits is None:
                    epoch_logits = torch.empty(n, y.shape[1])
                epoch_logits[rows] = y
        assert epoch_logits is not None
        logits.append(epoch_logits.to(LABEL_DTYPES[dtype]))
    return CropLabels(
        torch.stack(crops), torch.stack(partners), torch.stack(lams), torch.stack(boxes),
        torch.stack(logits),
    )  # fmt: skip


class CropReplay(nn.Module):
    """Replays :class:`CropLabels` in :func:`ddbench.engine.train` (module docstring): pass
    :meth:`transform` as ``batch_transform``, the replay itself as ``teacher`` and
    ``arange(N)`` as the targets. ``models``: how many models the engine trains together (its
    transform runs once per model and batch); ``batches``: batches per epoch. A student epoch
    ``e`` replays stored epoch ``e mod E``."""

    what = "crop replay"  # names the replay in its errors

    def __init__(
        self, labels: CropLabels, images: torch.Tensor, classes: torch.Tensor, *,
        models: int, batches: int,
    ):  # fmt: skip
        super().__init__()
        self.labels, self.images, self.classes = labels, images, classes
        self.models, self.batches = models, batches
        self.calls = 0
        self.pending: list[tuple[int, torch.Tensor]] = []

    def transform(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = (self.calls // self.models // self.batches) % self.labels.epochs
        self.calls += 1
        rows_cpu = rows.cpu()
        self.pending.append((epoch, rows_cpu))
        images = self.images.to(x.device)
        return self.labels.mixed(images, epoch, rows_cpu).to(x.dtype), self.classes.to(rows.device)[
            rows
        ]

    def take(self, x: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The stored epoch and rows of the batch ``x`` (the oldest one :meth:`transform` gave
        whose labels are not yet taken)."""
        if not self.pending:
            raise DDBenchError(f"{self.what}: labels asked for before the batch transform")
        epoch, rows = self.pending.pop(0)
        if len(rows) != len(x):
            raise DDBenchError(f"{self.what}: a batch of {len(x)} for {len(rows)} stored labels")
        return epoch, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        epoch, rows = self.take(x)
        return self.labels.logits[epoch, rows].to(x.device).float()

"""Distance-Based Representative (DBR) labels: two numbers per replayed crop instead of a
soft-label vector (NRR-DD, Tran et al., CVPR 2025, "Knowledge Transfer" stage).

FKD-style relabelling (:mod:`ddbench.crop_labels`) stores, per epoch of the student's training
and per image, a crop (RandomResizedCrop box and flip), a cutmix partner and box, and the
teacher's ``K`` logits on the mixed crop. DBR keeps the crops and replaces the ``K`` logits by
two distances of the teacher's prediction ``p_T`` on the mixed crop:

    d_org = CE(p_T, onehot(y))        the image's own class
    d_aug = CE(p_T, onehot(y_mix))    the class of the image cut into it (its cutmix partner)

so a set stores ``[E, N, 2]`` numbers (:func:`make_dbr_labels`). The crops need not be stored:
they are drawn from one generator seeded with the stored ``seed`` (as FKD's ``--fkd-seed``) and
are redrawn identically at evaluation (:func:`replay_crops`). The student ``S`` replays the same
mixed crops and learns (:func:`dbr_loss`)::

    L = lam CE(p_S, y) + (1 - lam) CE(p_S, y_mix)
        + dbr_weight (|CE(p_S, y) - d_org| + |CE(p_S, y_mix) - d_aug|)

the cutmix-mixed hard-label cross entropy plus the distance-matching term (the paper's
``L_sce + alpha_dbr L_dbr``). Where the authors' code could not be read here, the choices are
ours and said so in docs/methods.md: the distance is the cross entropy to the one-hot label, the
matching term the absolute difference, ``y_mix`` the partner's class (``lam = 1``, no cut: the
image itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.crop_labels import CropLabels, CropReplay, make_crop_labels
from ddbench.errors import DDBenchError
from ddbench.relabel import LABEL_DTYPES

__all__ = ["DBRReplay", "dbr_loss", "distances", "make_dbr_labels", "replay_crops"]


def distances(logits: torch.Tensor, classes: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """``[..., 2]``: the cross entropies of ``logits`` ``[..., K]`` to the one-hot ``classes``
    and to the one-hot classes of ``partners`` (rows of ``classes``)."""
    logp = F.log_softmax(logits.float(), -1)
    own = -logp.gather(-1, classes.expand(logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    other = -logp.gather(-1, classes[partners].unsqueeze(-1)).squeeze(-1)
    return torch.stack([own, other], -1).clamp_min(0)


def make_dbr_labels(
    images: torch.Tensor,
    classes: torch.Tensor,
    teacher: nn.Module,
    *,
    epochs: int,
    scale: Sequence[float] = (0.08, 1.0),
    flip: bool = True,
    cutmix: float = 1.0,
    seed: int = 42,
    batch_size: int = 128,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The DBR labels of ``images`` (of hard ``classes``): ``[epochs, N, 2]`` distances in
    ``dtype`` and the set's ``label_storage`` entry that replays their crops."""
    if dtype not in LABEL_DTYPES:
        raise DDBenchError(f"DBR label dtype must be one of {list(LABEL_DTYPES)}, got {dtype!r}")
    scale = (float(scale[0]), float(scale[1]))
    crops = make_crop_labels(
        images, teacher, epochs=epochs, scale=scale, flip=flip, cutmix=cutmix, seed=seed,
        batch_size=batch_size, dtype="float32", device=device,
    )  # fmt: skip
    cls = classes.cpu().long()
    d = torch.stack([distances(crops.logits[e], cls, crops.partners[e]) for e in range(epochs)])
    info = torch.finfo(LABEL_DTYPES[dtype])
    storage = {
        "format": "dbr", "epochs": int(epochs), "seed": int(seed), "scale": list(scale),
        "flip": bool(flip), "cutmix": float(cutmix),
    }  # fmt: skip
    return d.clamp(0, info.max).to(LABEL_DTYPES[dtype]), storage


class _NoTeacher(nn.Module):
    """Stands for the teacher when only the crops are redrawn (no logits are needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), 1)


def replay_crops(images: torch.Tensor, storage: dict[str, Any], batch_size: int) -> CropLabels:
    """The crops, partners and cutmix boxes that :func:`make_dbr_labels` drew for ``images``
    with the set's ``storage`` entry (the same generator draws; no teacher is run)."""
    return make_crop_labels(
        images, _NoTeacher(), epochs=int(storage["epochs"]), scale=tuple(storage["scale"]),
        flip=bool(storage["flip"]), cutmix=float(storage["cutmix"]), seed=int(storage["seed"]),
        batch_size=batch_size, dtype="float32",
    )  # fmt: skip


class DBRReplay(CropReplay):
    """:class:`ddbench.crop_labels.CropReplay` whose "teacher" gives, for each replayed crop,
    ``[d_org, d_aug, partner's class, lam]`` (``[B, 4]``, float) for :func:`dbr_loss`."""

    def __init__(
        self, crops: CropLabels, distances: torch.Tensor, images: torch.Tensor,
        classes: torch.Tensor, *, models: int, batches: int,
    ):  # fmt: skip
        if distances.shape[:2] != crops.partners.shape:
            raise DDBenchError(
                f"DBR labels: {tuple(distances.shape)} distances for crops of "
                f"{tuple(crops.partners.shape)} (epochs, images)"
            )
        super().__init__(crops, images, classes, models=models, batches=batches)
        self.distances = distances.float()

    what = "DBR replay"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        epoch, rows = self.take(x)
        partners = self.labels.partners[epoch, rows]
        out = torch.cat(
            [
                self.distances[epoch, rows],
                self.classes.cpu()[partners].float()[:, None],
                self.labels.lams[epoch, rows].float()[:, None],
            ],
            1,
        )
        return out.to(x.device)


def dbr_loss(weight: float):
    """The student's loss on DBR labels (module docstring) as an engine ``loss_fn``: per-sample
    ``[K,B]`` from the logits ``[K,B,C]``, the classes ``[K,B]`` and :class:`DBRReplay`'s
    ``[K,B,4]``."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, stored: torch.Tensor | None):
        if stored is None or stored.shape[-1] != 4:
            raise DDBenchError("the dbr loss needs the DBR replay's stored distances")
        logp = F.log_softmax(logits.float(), -1)
        own = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        other = -logp.gather(-1, stored[..., 2].long().unsqueeze(-1)).squeeze(-1)
        lam = stored[..., 3]
        sce = lam * own + (1 - lam) * other
        match = (own - stored[..., 0]).abs() + (other - stored[..., 1]).abs()
        return sce + weight * match

    return loss

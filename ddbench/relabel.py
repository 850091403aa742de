"""Relabelling a set with a teacher's soft labels: what SRe2L-style methods share.

A method whose set is labelled by a teacher's logits (SRe2L, CDA, CV-DD; INFER, NRR-DD, PCA and
HeLlO relabel the same way) gets from here:

- :func:`relabel_set`: the set's soft labels from the final logits, as the set stores them
  (float16 or float32, dense or top-k), class-consistent, with the ``relabel`` metadata, and the
  one-line error of ``mismatch: error``; :func:`check_label_settings` checks its settings;
- :func:`class_consistent`: soft labels whose argmax is each image's class (also used by
  DATM's learned labels);
- :func:`stored_labels`: logits cast, made class-consistent and reduced to top-k exactly as
  ``ddbench.load`` gives them back (:func:`ddbench.synset.encode_topk`).

A dense ``float16`` ``[N, K]`` label is half the bytes of float32; top-k (``label_topk: k``)
keeps the k largest logits of each row, their classes (uint8 up to 256 classes) and one fill
value per row (the mean of the dropped logits): ``N (k (s + i) + s)`` bytes for ``s``-byte
values and ``i``-byte indices.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ddbench.errors import DDBenchError
from ddbench.synset import SyntheticSet, decode_topk, encode_topk

__all__ = [
    "LABEL_DTYPES", "check_label_settings", "class_consistent", "relabel_set", "stored_labels",
]  # fmt: skip

LABEL_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def check_label_settings(label_dtype: str, label_topk: int | None, mismatch: str) -> None:
    """One-line errors for bad ``label_dtype``, ``label_topk`` or ``mismatch`` settings."""
    if label_dtype not in LABEL_DTYPES:
        raise DDBenchError(f"label_dtype must be one of {list(LABEL_DTYPES)}, got {label_dtype!r}")
    if label_topk is not None and label_topk < 1:
        raise DDBenchError(
            f"label_topk must be null (all logits) or a number of classes >= 1, got {label_topk!r}"
        )
    if mismatch not in ("swap", "error"):
        raise DDBenchError(f"mismatch must be swap or error, got {mismatch!r}")


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


def relabel_set(
    synset: SyntheticSet,
    logits: torch.Tensor,
    intended: torch.Tensor,
    *,
    method: str,
    label_dtype: str,
    label_topk: int | None,
    mismatch: str,
    meta: dict[str, Any],
) -> SyntheticSet:
    """Give ``synset`` the soft labels ``logits`` (``[N, K]`` float32) of images whose classes
    are ``intended``: refused with ``mismatch: error`` where the argmax differs, else stored by
    :func:`stored_labels`; ``meta`` (the teacher's description) joins ``meta["relabel"]``."""
    predicted = logits.argmax(1).cpu()
    if mismatch == "error" and not torch.equal(predicted, intended):
        raise DDBenchError(
            f"{method}: the teacher's argmax differs from the recovered class on "
            f"{int((predicted != intended).sum())} image(s) (mismatch: error); raise "
            "method.iterations, or use mismatch: swap"
        )
    labels, adjusted, storage = stored_labels(logits, intended, label_dtype, label_topk)
    if storage is not None:
        synset.meta["label_storage"] = storage
    synset.labels = labels
    synset.meta["relabel"] = {
        "format": "logits",
        "dtype": label_dtype,
        "topk": label_topk,
        "agreement": float((predicted == intended).float().mean()),
        "adjusted": adjusted,
        **meta,
    }
    return synset

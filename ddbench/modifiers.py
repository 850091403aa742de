"""Modifiers: one transform of the synthetic batch that the shared loop applies for any method.

A modifier maps a batch of synthetic images (and their labels) to the batch a method actually
feeds its networks. The core applies it in the places every image method goes through, so a
method file holds no modifier code:

* the synthetic side of a siamese pair (:meth:`ddbench.distill.ImageDistillation.siamese`: DC,
  DSA, DM, DataDAM match on the modified images; the real batch is untouched);
* each batch of the inner training on the synthetic set (DC/DSA's network updates);
* the augmentation of these two (:meth:`Modifier.augmentation`: FYI's DSA flips first);
* each student step of trajectory matching (MTT and its family: :meth:`MTT.unroll_plan` draws DSA
  parameters for :meth:`Modifier.rows` images, the student trains on :meth:`Modifier.apply`).

Evaluation never sees a modifier: it trains on the set as saved. A method picks its modifier
from its config (``method.fyi=true``: :class:`ddbench.fyi.FlipYourImages`) through
:func:`from_config`.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Modifier", "from_config", "register"]


class Modifier:
    """The identity modifier, and the interface of all: a modifier overrides :meth:`apply` and
    :meth:`rows` together (``len(apply(x)[0]) == rows(len(x))``)."""

    name = "none"

    def rows(self, n: int) -> int:
        """How many rows :meth:`apply` makes of a batch of ``n`` (random draws per row, such as
        DSA's, are drawn for this many)."""
        return n

    def apply(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch to train or match on: images (differentiable in ``x``) and labels (None if
        ``y`` is None)."""
        return x, y

    def check(self, task: Any, method: str) -> None:
        """Refuse (or warn about) a task the modifier does not suit; called once per run."""

    def augmentation(self, augment: Any) -> Any:
        """The augmentation to use on the modified batches in place of the task's ``augment``
        (the siamese pair and DC/DSA's inner training); the identity keeps ``augment``."""
        return augment


_REGISTRY: dict[str, type[Modifier]] = {}


def register(cls: type[Modifier]) -> type[Modifier]:
    """Class decorator: make ``cls`` (by its ``name``) selectable by :func:`from_config`."""
    _REGISTRY[cls.name] = cls
    return cls


def from_config(fyi: bool = False) -> Modifier:
    """The modifier a method's config selects (``fyi``: flip your images, registered by
    :mod:`ddbench.fyi`, which :mod:`ddbench.distill` imports)."""
    return _REGISTRY["fyi"]() if fyi else Modifier()

"""FYI, "Flip Your Images for Dataset Distillation" (Son, Oh, Baek and Ham, ECCV 2024), as a
modifier of any method that learns images (:class:`ddbench.distill.ImageDistillation`,
``method.fyi=true``).

The paper's observation, *bilateral equivalence*: in natural-image datasets an object part seen
on the left of one image is as likely to be seen on the right of another, so the statistics a
method matches (gradients, features, trajectories) are the same for an image and its mirror. A
synthetic image then gains nothing by putting a part on one side rather than the other and ends
up duplicating discriminative parts on both sides, spending its pixels on left-right symmetry
instead of on details. FYI's fix changes neither the objective nor the network: wherever the
method feeds its synthetic images to a network, it feeds them together with their horizontal
mirrors, ``S ∪ flip(S)``, so that every image and its mirror are optimised jointly and each half
of an image can carry different details. Here (as in the authors' code):

FYI is a modifier (:class:`FlipYourImages`, a :class:`ddbench.modifiers.Modifier`): the batch
``(x, y)`` becomes ``([x; flip(x)], [y; y])``, and the core applies it wherever a synthetic batch
meets a network (:mod:`ddbench.modifiers`):

* matching: the synthetic images of a class are ``[S_c; flip(S_c)]`` (twice as many rows, the
  gradient of both halves reaching ``S_c``) before the siamese DSA draw they share with the real
  batch; the real batch is untouched;
* DC/DSA inner training of the network on the synthetic set: every batch is doubled the same way
  (batch size unchanged, as the authors' final code);
* trajectory matching (MTT and its family): every unrolled student step trains on its batch of
  synthetic images together with their mirrors (DSA parameters drawn for both halves);
* nothing else: evaluation trains on the set as saved (``ipc`` images per class; the protocol's
  own augmentation decides about flips), and the set records ``fyi`` in its metadata.

Datasets whose DSA strategy has no ``flip`` (MNIST, SVHN, digits): their classes are not
mirror-invariant (a mirrored 2 or 7 is not a digit), so they have no bilateral equivalence and
FYI has nothing to fix there; the paper evaluates FYI on CIFAR-10/100, Tiny-ImageNet and
ImageNet only. Its one MNIST experiment is a toy that first *creates* bilateral equivalence by
adding the mirrored copies of the real images to the training set, to show that the synthetic
digits then turn left-right symmetric (the authors' script for it has FYI's switch too). ddbench does not second-guess
the config: ``fyi=true`` still flips on such a dataset (it is what the config asks for, and it is
how the toy is reproduced, see ``tests/test_datadam_fyi.py``), but :func:`check_task` logs a
warning that the mirrored synthetic images are then matched to unmirrored real ones.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ddbench.modifiers import Modifier, register

__all__ = ["FlipYourImages", "check_task", "flip_concat", "has_flip", "mirror_symmetry"]

log = logging.getLogger("ddbench")


def flip_concat(x: torch.Tensor) -> torch.Tensor:
    """``[x; flip_W(x)]`` along the batch: ``2N`` rows, the mirrors last (differentiable)."""
    return torch.cat([x, x.flip(-1)])


@register
class FlipYourImages(Modifier):
    """FYI's modifier: every synthetic batch together with its horizontal mirrors."""

    name = "fyi"

    def rows(self, n: int) -> int:
        return 2 * n

    def apply(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return flip_concat(x), None if y is None else torch.cat([y, y])

    def check(self, task: Any, method: str) -> None:
        check_task(task, method)


def has_flip(task: Any) -> bool:
    """Whether horizontal flips preserve the task's labels, as its DSA strategy says (the
    task's augmentation if it has one, else the dataset's default strategy)."""
    strategy = getattr(task.augment, "ops", None)
    if strategy is None:
        strategy = task.spec.dsa_strategy.split("_")
    return "flip" in strategy


def check_task(task: Any, method: str) -> None:
    """Warn when FYI runs on a dataset without label-preserving flips (see the module doc)."""
    if not has_flip(task):
        log.warning(
            "%s: fyi=true on %s, whose DSA strategy has no flip: its classes are not "
            "mirror-invariant (no bilateral equivalence, nothing for FYI to fix), and the "
            "mirrored synthetic images are matched to unmirrored real ones",
            method, task.spec.name,
        )  # fmt: skip


def mirror_symmetry(images: torch.Tensor) -> torch.Tensor:
    """Left-right symmetry of each image, ``[N]`` in ``[-1, 1]``: the cosine between the image
    and its horizontal mirror, each image centred on its own mean (1: mirror-symmetric, 0: no
    relation, -1: anti-symmetric). The quantity bilateral equivalence drives up and FYI down."""
    x = images.detach().float().flatten(1)
    x = (x - x.mean(1, keepdim=True)).view_as(images)
    m = x.flip(-1)
    num = (x * m).flatten(1).sum(1)
    return num / x.flatten(1).pow(2).sum(1).clamp_min(1e-12)

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
  batch; the real batch gets no mirrors (only the DSA below);
* DC/DSA inner training of the network on the synthetic set: every batch is doubled the same way
  (batch size unchanged, as the authors' final code);
* trajectory matching (MTT and its family): every unrolled student step trains on its batch of
  synthetic images together with their mirrors (DSA parameters drawn for both halves);
* the DSA of the matching and of the DC/DSA inner training (:class:`FlipFirstDSA`, as the
  DiffAugment of the authors' code; the trajectory students keep the plain DSA):
  when the strategy has ``flip`` and other ops, a random horizontal flip (probability 0.5) is
  always applied, then ONE op drawn from the other ops (plain DSA draws one op of all, flip
  included); siamese pairs share the flip and the op;
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

from ddbench.augment import DSA, DSADraw
from ddbench.errors import DDBenchError
from ddbench.modifiers import Modifier, register

__all__ = [
    "FlipFirstDSA",
    "FlipYourImages",
    "check_task",
    "flip_concat",
    "has_flip",
    "mirror_symmetry",
]

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

    def augmentation(self, augment: Any) -> Any:
        """:class:`FlipFirstDSA` of a DSA whose strategy has ``flip`` and other ops; any other
        augmentation (none, flip alone, no flip, DC's) unchanged."""
        if isinstance(augment, DSA) and "flip" in augment.ops and len(set(augment.ops)) > 1:
            return FlipFirstDSA(augment.strategy)
        return augment


class FlipFirstDSA:
    """The DSA of FYI's code (its ``DiffAugment``, mode 'S'): a random horizontal flip with
    probability 0.5 always, then one op drawn from the strategy's other ops, each with the
    parameters of :class:`ddbench.augment.DSA`.

    ``fda(x, generator)`` flips each image on its own draw (as the inner training's non-siamese
    call); :meth:`pair` gives the real and the synthetic batch one flip draw and one op.
    """

    def __init__(self, strategy: str):
        self.strategy = strategy
        dsa = DSA(strategy)
        if "flip" not in dsa.ops or len(set(dsa.ops)) < 2:
            raise DDBenchError(
                f"FlipFirstDSA needs a strategy with 'flip' and another op, got {strategy!r}"
            )
        self.ops = dsa.ops
        self.flip = DSA("flip")
        self.rest = DSA("_".join(o for o in dsa.ops if o != "flip"))

    def __repr__(self) -> str:
        return f"FlipFirstDSA({self.strategy!r})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample flips, then one op (of the others) for the batch, from ``generator``."""
        return self.rest(self.flip(x, generator), generator)

    def siamese(self, seed: int, height: int, width: int) -> tuple[DSADraw, DSADraw]:
        """The shared flip draw and the shared draw of one other op, from a CPU generator
        seeded with ``seed`` (in this order)."""
        g = torch.Generator().manual_seed(int(seed))
        flip = self.flip.draw(1, height, width, g, shared=True)
        return flip, self.rest.draw(1, height, width, g, shared=True)

    def pair(
        self, x_real: torch.Tensor, x_syn: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Siamese: the same flip decision and the same op and parameters for both batches."""
        if x_real.shape[1:] != x_syn.shape[1:]:
            raise DDBenchError(
                f"siamese DSA needs images of one shape, got {tuple(x_real.shape[1:])} "
                f"and {tuple(x_syn.shape[1:])}"
            )
        flip, rest = self.siamese(seed, x_real.shape[-2], x_real.shape[-1])
        return rest(flip(x_real)), rest(flip(x_syn))


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

"""PCA: Prune, Combine and Augment (Xiao, Liu, He & Wang, "Rethinking Large-scale Dataset
Compression: Shifting Focus From Labels to Images", arXiv:2502.06434), evaluated with hard
labels only.

* **Prune**: score every train image with a pruning score of the selection family (``prune:
  el2n`` or ``forgetting``, :mod:`ddbench.methods.el2n`, :mod:`ddbench.methods.forgetting`,
  scores cached across runs; ``scorer`` overrides their settings; ``random``: no score) and
  keep the easiest (lowest-scored; ``keep: hardest`` for the opposite) ``ipc x factor^2``
  images of each class, ties broken by the task's generator.
* **Combine**: stitch ``factor x factor`` of them, each down-scaled to ``1/factor`` of the side,
  into one stored image (:func:`ddbench.augment.stitch`; 2x2 tiles of 14x14 for 28x28): ``ipc``
  stored images per class, the same bytes as ``ipc`` real images. The tiles of one stored image
  are images of one class, taken in score order, and the stored image carries that class as its
  hard label (RDED's stitching of same-class patches, which PCA's Combine builds on), so no
  label beyond the class is stored.
* **Augment**: the set is scored under ``pca_hard`` (the benchmark's hard-label recipe with a
  crop that keeps each tile whole, ``augment: tiles:<factor>``, :class:`ddbench.augment.TileCrop`)
  instead of a RandomResizedCrop that would cut tiles apart.

PCA's code is not released: this follows the paper's description; the choices it leaves open
(the tiles' class, the order of tiles, the constrained crop's draw) are ours, listed in
docs/methods.md. The benchmark's recipe is ArmandXiao/Rethinking-Dataset-Compression
``rethinkdc/dc_config/standard_hard_config.yaml`` (conf/protocol/hard_rrc.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.augment import stitch
from ddbench.coreset import check_choice
from ddbench.errors import DDBenchError
from ddbench.method import Method, Settings, Task
from ddbench.synset import SyntheticSet

__all__ = ["PCA"]


class PCA(Method):
    """Prune (keep the easiest images by a pruning score), combine (``factor^2`` down-scaled
    images per stored image), scored with hard labels under a tile-preserving crop."""

    @dataclass
    class Settings(Settings):
        prune: str = "el2n"  # el2n | forgetting | random: the pruning score
        scorer: dict[str, Any] = field(default_factory=dict)  # the scorer's settings
        keep: str = "easiest"  # easiest (the paper: prune the hard images) | hardest
        factor: int = 2  # tiles per side of a stored image

        def __post_init__(self) -> None:
            check_choice("pca", "prune", self.prune, ("el2n", "forgetting", "random"))
            check_choice("pca", "keep", self.keep, ("easiest", "hardest"))
            if isinstance(self.factor, bool) or self.factor < 1:
                raise DDBenchError(f"pca: factor must be a whole number >= 1, got {self.factor}")
            if "keep" in self.scorer:
                raise DDBenchError("pca: set keep on pca itself, not in scorer")
            if self.prune == "random" and self.scorer:
                raise DDBenchError("pca: prune=random uses no scorer settings")

    name = "pca"
    protocol = "pca_hard"

    def scores(self, task: Task) -> torch.Tensor:
        """``[N]`` pruning scores of the train split (higher = harder)."""
        if self.prune == "random":
            return torch.zeros(len(task.train))
        if self.prune == "el2n":
            from ddbench.methods.el2n import EL2N as Scorer
        else:
            from ddbench.methods.forgetting import Forgetting as Scorer
        return Scorer(**self.scorer).score(task)["score"].detach().cpu()

    def distill(self, task: Task) -> SyntheticSet:
        f2 = self.factor**2
        h, w = task.spec.im_size
        if h % self.factor or w % self.factor:
            raise DDBenchError(f"pca: factor {self.factor} does not divide the {h}x{w} images")
        sizes = torch.bincount(task.train.labels, minlength=task.num_classes)
        if int(sizes.min()) < task.ipc * f2:
            raise DDBenchError(
                f"pca: ipc={task.ipc} x {f2} tiles needs {task.ipc * f2} images of every class; "
                f"the smallest class has {int(sizes.min())}: lower ipc or factor"
            )
        scores = self.scores(task)
        picked = []
        for c in range(task.num_classes):
            idx = task.train.indices_of(c)
            perm = torch.randperm(len(idx), generator=task.generator)
            order = torch.argsort(scores[idx[perm]], descending=self.keep == "hardest", stable=True)
            picked.append(idx[perm[order[: task.ipc * f2]]])
        idx = torch.cat(picked)
        tiles = task.normalize(task.train.images[idx].to(task.device))
        images = stitch(tiles, self.factor)
        labels = torch.arange(task.num_classes).repeat_interleave(task.ipc)
        return task.make_set(
            images, labels, method=self, protocol=self.protocol,
            tiles={"factor": self.factor, "indices": idx.tolist(),
                   "label": "the class shared by the stored image's tiles"},
        )  # fmt: skip

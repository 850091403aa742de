"""DP4TL: source-class pruning for transfer learning (Zhang et al., NeurIPS 2023, "Selectivity
Drives Productivity: Efficient Dataset Pruning for Enhanced Transfer Learning").

The source's classes are ranked by how often the **target's** train images map to them, and the
most-hit ``keep_classes`` fraction of them is kept (at least ``min_classes``):

- ``lm`` (label mapping): a surrogate classifier of the source (a cached teacher trained on the
  source's train split, :mod:`ddbench.teachers`) predicts a source class for each target image
  (read in the source's normalised space); a class's count is its number of predictions
  (OPTML-Group/DP4TL @main, src/auxiliary/lm_selection_for_imagenet.py: ``topk`` of the
  prediction histogram);
- ``fm`` (feature mapping): each target image goes to the source class whose mean
  representation (its centroid) is nearest in a self-supervised encoder's feature space
  (:mod:`ddbench.encoders`, trained on the source); a class's count is the number of target
  images it is nearest to (src/auxiliary/fm_selection_for_imagenet.py; its loop writes each
  distance into the row of the target image, ``distance_score[i]``, where the paper's rule is
  the distance to every class; the paper's rule is the one implemented);
- ``random``: the classes in a seeded random order (the baseline at the same ratio).

Ties rank the lower class first. The set holds ``ipc`` random train images (the task's seed) of
each kept class, or all of a kept class's images where it has fewer: a labelled subset of the
source (a normal set file) that the transfer protocol pre-trains on with the cross entropy over
the source's classes. The metadata records the target, the kept classes and every class's count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddbench import data, engine
from ddbench.encoders import EncoderConfig, encode, get_encoder
from ddbench.errors import DDBenchError
from ddbench.method import Method, Settings, Task
from ddbench.synset import SyntheticSet
from ddbench.teachers import TeacherConfig, get_teacher

MAPPINGS = ("lm", "fm", "random")


def rank_classes(counts: torch.Tensor) -> list[int]:
    """Class indices by decreasing count, ties to the lower class."""
    return sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))


def centroid_counts(source_feats, source_labels, target_feats, num_classes: int) -> torch.Tensor:
    """Per source class, how many target rows have its centroid (mean source feature) nearest."""
    sums = source_feats.new_zeros(num_classes, source_feats.shape[1])
    sums.index_add_(0, source_labels, source_feats)
    sizes = torch.bincount(source_labels, minlength=num_classes)
    centroids = sums / sizes.clamp_min(1).unsqueeze(1).to(sums.dtype)
    dist = torch.cdist(target_feats, centroids)
    dist[:, sizes == 0] = float("inf")  # a class without images has no centroid
    return torch.bincount(dist.argmin(1), minlength=num_classes)


class DP4TL(Method):
    """Source-class pruning by label or feature mapping (module docstring)."""

    @dataclass
    class Settings(Settings):
        target: str = "digits28"  # the target dataset (of the source's image shape)
        mapping: str = "lm"  # lm | fm | random
        keep_classes: float = 0.5  # fraction of the source's classes kept
        min_classes: int = 1  # keep at least this many classes
        surrogate: TeacherConfig = field(default_factory=TeacherConfig)  # lm's classifier
        encoder: EncoderConfig = field(default_factory=EncoderConfig)  # fm's features

        def __post_init__(self) -> None:
            if self.mapping not in MAPPINGS:
                raise DDBenchError(
                    f"dp4tl: mapping must be one of {MAPPINGS}, got {self.mapping!r}"
                )
            if not 0 < self.keep_classes <= 1:
                raise DDBenchError(
                    f"dp4tl: keep_classes must be in (0, 1], got {self.keep_classes}"
                )
            if self.min_classes < 1:
                raise DDBenchError(f"dp4tl: min_classes must be >= 1, got {self.min_classes}")
            data.get_spec(self.target)

    name = "dp4tl"
    kind = "transfer"  # a source subset for pre-training, scored by `ddbench transfer`

    def class_counts(self, task: Task) -> torch.Tensor:
        """How many target train images map to each source class (:attr:`mapping`)."""
        k = task.num_classes
        if self.mapping == "random":
            return k - torch.randperm(k, generator=task.generator).argsort()  # rank = position
        target = data.load_split(self.target, "train")
        if target.spec.shape != task.spec.shape:
            raise DDBenchError(
                f"dp4tl: the target {self.target} has images {target.spec.shape}, the source "
                f"{task.spec.name} {task.spec.shape}; pick a target of the source's shape"
            )
        if self.mapping == "lm":
            net, _ = get_teacher(task.spec.name, self.surrogate, device=task.device)
            logits = engine.predict([net], target.images, transform=task.train.standardize)[0]
            return torch.bincount(logits.argmax(1).cpu(), minlength=k)
        net, _ = get_encoder(task.spec.name, self.encoder, device=task.device)
        source_feats = encode(net, task.train.images, task.train.standardize).cpu()
        target_feats = encode(net, target.images, task.train.standardize).cpu()
        return centroid_counts(source_feats, task.train.labels, target_feats, k)

    def distill(self, task: Task) -> SyntheticSet:
        counts = self.class_counts(task)
        keep = min(
            task.num_classes, max(self.min_classes, round(self.keep_classes * task.num_classes))
        )
        kept = sorted(rank_classes(counts)[:keep])
        picked = []
        for c in kept:
            idx = task.train.indices_of(c)
            picked.append(idx[torch.randperm(len(idx), generator=task.generator)[: task.ipc]])
        idx = torch.cat(picked)
        images = task.normalize(task.train.images[idx])
        synset = task.make_set(
            images, task.train.labels[idx], method=self, protocol="transfer",
            indices=idx.tolist(), target=self.target, kept_classes=kept,
            class_counts=[int(v) for v in counts],
        )  # fmt: skip
        synset.meta["ipc"] = int(torch.bincount(task.train.labels[idx]).max())
        return synset

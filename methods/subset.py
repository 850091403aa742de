"""Real-image baselines: a seeded random subset per class, and the whole train split."""

from __future__ import annotations

import torch

from ddbench.method import Method, Task, check_class_budget
from ddbench.synset import SyntheticSet


class Random(Method):
    """``ipc`` real training images per class, drawn uniformly with the task's seed (at most
    as many as the smallest class has)."""

    name = "random"

    def distill(self, task: Task) -> SyntheticSet:
        check_class_budget(task, self.name)
        picked = []
        for c in range(task.num_classes):
            idx = task.train.indices_of(c)
            picked.append(idx[torch.randperm(len(idx), generator=task.generator)[: task.ipc]])
        idx = torch.cat(picked)
        images = task.normalize(task.train.images[idx])
        return task.make_set(images, task.train.labels[idx], method=self, indices=idx.tolist())


class Full(Method):
    """The whole train split: the upper bound every table reports ("Whole dataset")."""

    name = "full"

    def distill(self, task: Task) -> SyntheticSet:
        images = task.normalize(task.train.images)
        synset = task.make_set(images, task.train.labels, method=self, full_dataset=True)
        synset.meta["ipc"] = int(torch.bincount(task.train.labels).max())
        return synset

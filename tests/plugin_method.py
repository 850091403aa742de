"""A method defined outside ddbench, to show that plug-ins need no change to ddbench."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddbench.method import Method, Settings, Task


class MeanShifted(Method):
    """Class means of a few real images, brightened: a toy idea in one small file."""

    @dataclass
    class Settings(Settings):
        brightness: float = 0.0  # added to every pixel of the class means
        per_class: int = 8  # real images averaged per class

    name = "mean_shifted"

    def distill(self, task: Task):
        images, labels = [], []
        for c in range(task.num_classes):
            x = task.real_images(c, n=self.per_class)
            images.append(x.mean(0, keepdim=True).repeat(task.ipc, 1, 1, 1) + self.brightness)
            labels.append(torch.full((task.ipc,), c))
        return task.make_set(torch.cat(images), torch.cat(labels), method=self)

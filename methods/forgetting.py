"""Forgetting events (Toneva et al., ICLR 2019), the DC paper's coreset baseline.

An image is *forgotten* when a network that classified it correctly after one epoch gets it
wrong after the next; the images forgotten most often are the hard ones. The shared machinery
(scores cached across runs, keeping the top of each class, the engine-trained networks and the
prediction loop) is in :mod:`ddbench.coreset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ddbench.coreset import ScoreSelection, check_choice, check_positive, draw_seeds, model_outputs
from ddbench.method import Task

__all__ = ["Forgetting"]


class Forgetting(ScoreSelection):
    """Forgetting events (Toneva et al. 2019), the DC paper's baseline.

    One model is trained on the train split with the engine for ``epochs``; after every epoch
    all train images are classified (unaugmented, eval mode) and a *forgetting event* is
    counted for each image that was correct after the previous epoch and is wrong now. Images
    never classified correctly after any epoch are ranked by their plain count of 0
    (``never_learned: count``, the default, as DeepCore; closer to the DC paper's numbers, see
    docs/benchmarks.md), or, as in Toneva et al., treated as forgotten infinitely often
    (``never_learned: hardest``: they are picked first). ``keep: hardest`` (default) keeps the
    most forgotten images of each class, ``keep: easiest`` the unforgettable ones. Ties (many
    images share a count) are broken by ``task.generator``.
    """

    name = "forgetting"

    @dataclass
    class Settings(ScoreSelection.Settings):
        epochs: int = 10  # epochs of the counting run (constant lr, no augmentation)
        # count: never-learned images rank by their 0 events (DeepCore) | hardest: as forgotten
        # infinitely often, picked first (Toneva); count is closer to the DC paper
        never_learned: str = "count"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_positive("forgetting", "epochs", self.epochs)
            check_choice("forgetting", "never_learned", self.never_learned, ("hardest", "count"))

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``count`` (forgetting events), ``learned`` (ever correct), ``correct`` (after the
        last epoch), and ``score`` (``count``, ``inf`` where never learned if so configured)."""
        (seed,) = draw_seeds(task, 1)
        out = self._scores(task, [seed], lambda: self._count(task, seed))
        score = out["count"].float().clone()
        if self.never_learned == "hardest":
            score[~out["learned"].bool()] = math.inf
        return {**out, "score": score}

    def _count(self, task: Task, seed: int) -> dict[str, torch.Tensor]:
        n = len(task.train)
        labels = task.train.labels.to(task.device)
        state = {
            "count": torch.zeros(n, dtype=torch.long, device=task.device),
            "learned": torch.zeros(n, dtype=torch.bool, device=task.device),
            "correct": torch.zeros(n, dtype=torch.bool, device=task.device),
        }
        built: list[nn.Module] = []

        def build() -> nn.Module:
            m = task.model_factory()
            built.append(m)
            return m

        def on_epoch(epoch: int, loss: float) -> None:
            # The engine trains a single model in place (parallel=False), so the module made by
            # `build` holds the current weights.
            model = built[-1]
            now = torch.empty(n, dtype=torch.bool, device=task.device)
            for rows, _, logits in model_outputs(task, [model], chunk=self.chunk):
                now[rows] = logits[0].argmax(1) == labels[rows]
            model.train()
            state["count"] += state["correct"] & ~now
            state["learned"] |= now
            state["correct"] = now

        self._train(task, [seed], self.epochs, desc="forgetting", build=build, on_epoch=on_epoch)
        return state

"""Forgetting events (Toneva et al., ICLR 2019), the DC paper's coreset baseline.

An image is *forgotten* when a network that classified it correctly at one presentation gets it
wrong at the next; the images forgotten most often are the hard ones. The shared machinery
(scores cached across runs, keeping the top of each class, the engine-trained networks and the
prediction loop) is in :mod:`ddbench.coreset`; the sources of each default are in
docs/methods.md ("Selection baselines").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ddbench.coreset import (
    ScoreSelection,
    check_augment,
    check_choice,
    check_positive,
    draw_seeds,
    model_outputs,
)
from ddbench.method import Task

__all__ = ["Forgetting"]


class Forgetting(ScoreSelection):
    """Forgetting events (Toneva et al. 2019), the DC paper's baseline.

    One model is trained on the train split with the engine for ``epochs`` (SGD at ``lr``, the
    ``schedule``, DSA ``augment``). ``count: batch`` (default, the paper's definition) reads
    each image's correctness at every mini-batch presentation, from the training forward pass
    before the update (train mode, the augmented image), and counts a *forgetting event* each
    time an image correct at its previous presentation is wrong at this one: Toneva et al.'s
    ``run_cifar.py:97-102`` and ``order_examples_by_forgetting.py:28-30``, DeepCore's
    ``forgetting.py:31-37``. ``count: epoch`` (the cheaper variant) classifies all train images
    after every epoch instead (unaugmented, eval mode), so an image is forgotten at most
    ``epochs // 2`` times and many images tie.

    Images never classified correctly are ranked by their plain count of 0
    (``never_learned: count``, the default, as DeepCore; closer to the DC paper's numbers, see
    docs/benchmarks.md), or, as in Toneva et al., treated as forgotten infinitely often
    (``never_learned: hardest``: they are picked first). ``keep: hardest`` (default) keeps the
    most forgotten images of each class, ``keep: easiest`` the unforgettable ones. Ties are
    broken by ``task.generator``.
    """

    name = "forgetting"

    @dataclass
    class Settings(ScoreSelection.Settings):
        # batch: per mini-batch presentation (Toneva et al., DeepCore) | epoch: one eval pass
        # over the train split after each epoch (cheaper, coarser)
        count: str = "batch"
        # epochs of the counting run; 200 as Toneva et al. (run_cifar.py:225-228,
        # run_mnist.py:205-209) and Paul et al. (run_full_data.py:41)
        epochs: int = 200
        # step: lr x0.2 at 30/60/80 % of the epochs (run_cifar.py:495-496) | constant | cosine
        schedule: str = "step"
        # DSA strategy | auto (the dataset's strategy) | none
        augment: str = "auto"
        # count: never-learned images rank by their 0 events (DeepCore) | hardest: as forgotten
        # infinitely often, picked first (Toneva); count is closer to the DC paper
        never_learned: str = "count"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_positive("forgetting", "epochs", self.epochs)
            check_choice("forgetting", "count", self.count, ("batch", "epoch"))
            check_choice("forgetting", "schedule", self.schedule, ("step", "constant", "cosine"))
            check_augment("forgetting", self.augment)
            check_choice("forgetting", "never_learned", self.never_learned, ("hardest", "count"))

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``count`` (forgetting events), ``learned`` (ever correct), ``correct`` (at the last
        presentation or after the last epoch), and ``score`` (``count``, ``inf`` where never
        learned if so configured)."""
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

        def update(rows: torch.Tensor, now: torch.Tensor) -> None:
            state["count"][rows] += state["correct"][rows] & ~now
            state["learned"][rows] |= now
            state["correct"][rows] = now

        def on_batch(rows: torch.Tensor, logits: torch.Tensor) -> None:
            rows = rows.reshape(-1)  # one model: [1,B] -> [B], each row once per batch
            update(rows, logits.reshape(len(rows), -1).argmax(1) == labels[rows])

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
            update(torch.arange(n, device=task.device), now)

        hook = {"on_batch": on_batch} if self.count == "batch" else {"on_epoch": on_epoch}
        self._train(
            task, [seed], self.epochs, desc="forgetting", build=build, augment=self.augment,
            schedule=self.schedule, **hook,
        )  # fmt: skip
        return state

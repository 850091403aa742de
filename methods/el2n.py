"""EL2N and GraNd (Paul, Ganguli & Dziugaite, NeurIPS 2021): data pruning by how much an image
still contributes to the loss early in training.

Both score every train image with networks after a few epochs of (early) training (or at
initialisation), averaged over several networks, and keep the hardest images of each class:
EL2N the norm of the error vector ``softmax(f(x)) - onehot(y)``, GraNd the norm of the loss
gradient (here of the last layer, in closed form). The shared machinery (scores cached across
runs, keeping the top of each class, the engine-trained networks and the prediction loop) is
in :mod:`ddbench.coreset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddbench.coreset import ScoreSelection, check_positive, draw_seeds, model_outputs
from ddbench.method import Task

__all__ = ["EL2N", "GraNd"]


class _EarlyTrainingScore(ScoreSelection):
    """Scores averaged over ``models`` networks trained ``epochs`` epochs (0: at init)."""

    needs_embedding = False

    @dataclass
    class Settings(ScoreSelection.Settings):
        models: int = 3  # networks averaged
        epochs: int = 10  # epochs of (early) training of each; 0: at initialisation

        def __post_init__(self) -> None:
            super().__post_init__()
            check_positive("selection", "models", self.models)
            check_positive("selection", "epochs", self.epochs, minimum=0)

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Per-model score ``[K,B]`` from embeddings ``[K,B,F]`` and ``softmax - onehot``."""
        raise NotImplementedError

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``score`` (mean over models) and ``correct`` (fraction of the models right)."""
        seeds = draw_seeds(task, self.models)
        return self._scores(task, seeds, lambda: self._score(task, seeds))

    def _score(self, task: Task, seeds: list[int]) -> dict[str, torch.Tensor]:
        models = self._train(task, seeds, self.epochs, desc=self.name)
        n, k = len(task.train), task.num_classes
        labels = task.train.labels.to(task.device)
        score = torch.empty(n, device=task.device)
        correct = torch.empty(n, device=task.device)
        for rows, emb, logits in model_outputs(
            task, models, chunk=self.chunk, embed=self.needs_embedding, desc=f"{self.name} scores"
        ):
            y = labels[rows]
            err = logits.softmax(-1) - nn.functional.one_hot(y, k).float()  # [K,B,C]
            score[rows] = self.per_model(emb, err).mean(0)
            correct[rows] = (logits.argmax(-1) == y).float().mean(0)
        return {"score": score, "correct": correct}


class EL2N(_EarlyTrainingScore):
    """EL2N (Paul et al. 2021): ``|| softmax(f(x)) - onehot(y) ||_2`` averaged over ``models``
    networks after ``epochs`` epochs of (early) training. ``keep: hardest`` (default, as the
    paper prunes the easy images) keeps the highest scores of each class."""

    name = "el2n"

    def per_model(self, emb: torch.Tensor | None, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1)


class GraNd(_EarlyTrainingScore):
    """GraNd (Paul et al. 2021), the usual cheap form: the norm of the cross-entropy gradient
    with respect to the last linear layer, in closed form. For logits ``W e + b`` the gradient
    is ``(p - y) e^T`` for ``W`` and ``p - y`` for ``b``, so its norm is
    ``||p - y|| * sqrt(||e||^2 + 1)``. Averaged over ``models`` networks after ``epochs``
    epochs (``epochs: 0`` is the paper's at-initialisation score)."""

    name = "grand"
    needs_embedding = True

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1) * (emb.pow(2).sum(-1) + 1).sqrt()

"""EL2N and GraNd (Paul, Ganguli & Dziugaite, NeurIPS 2021): data pruning by how much an image
still contributes to the loss early in training.

Both score every train image with networks early in training (EL2N) or at initialisation
(GraNd), averaged over several networks, and keep the hardest images of each class: EL2N the
norm of the error vector ``softmax(f(x)) - onehot(y)``, GraNd the norm of the loss gradient
with respect to all the parameters (or, the cheaper variant, to the last layer, in closed
form). The shared machinery (scores cached across runs, keeping the top of each class, the
engine-trained networks and the prediction loop) is in :mod:`ddbench.coreset`; the sources of
each default are in docs/methods.md ("Selection baselines").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ddbench.coreset import (
    ScoreSelection,
    check_augment,
    check_choice,
    check_positive,
    draw_seeds,
    model_outputs,
)
from ddbench.method import Task

__all__ = ["EL2N", "GraNd"]


class _EarlyTrainingScore(ScoreSelection):
    """Scores averaged over ``models`` networks trained ``epochs`` epochs (0: at init) at a
    constant lr with DSA ``augment``."""

    needs_embedding = False

    @dataclass
    class Settings(ScoreSelection.Settings):
        models: int = 10  # networks averaged (Paul et al.: 10 independent runs)
        epochs: int = 20  # epochs of (early) training of each; 0: at initialisation
        augment: str = "auto"  # DSA strategy | auto (the dataset's strategy) | none

        def __post_init__(self) -> None:
            super().__post_init__()
            check_positive("selection", "models", self.models)
            check_positive("selection", "epochs", self.epochs, minimum=0)
            check_augment("selection", self.augment)

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Per-model score ``[K,B]`` from embeddings ``[K,B,F]`` and ``softmax - onehot``."""
        raise NotImplementedError

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``score`` (mean over models) and ``correct`` (fraction of the models right)."""
        seeds = draw_seeds(task, self.models)
        return self._scores(task, seeds, lambda: self._score(task, seeds))

    def _trained(self, task: Task, seeds: list[int]) -> list[nn.Module]:
        return self._train(task, seeds, self.epochs, desc=self.name, augment=self.augment)

    def _score(self, task: Task, seeds: list[int]) -> dict[str, torch.Tensor]:
        models = self._trained(task, seeds)
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
    """EL2N (Paul et al. 2021): ``|| softmax(f(x)) - onehot(y) ||_2`` (data_diet
    ``scores.py:10-17``) averaged over ``models`` networks (10) after ``epochs`` epochs (20) of
    SGD at a constant lr with the dataset's DSA augmentation: the paper's epoch-20 score of 10
    runs of an augmented recipe whose lr first decays at epoch 60 (``run_full_data.py:33-45``).
    The cheaper variant is ``models: 3, epochs: 10, augment: none``. ``keep: hardest``
    (default, as the paper prunes the easy images) keeps the highest scores of each class."""

    name = "el2n"

    def per_model(self, emb: torch.Tensor | None, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1)


class GraNd(_EarlyTrainingScore):
    """GraNd (Paul et al. 2021): the norm of the gradient of an image's cross-entropy loss,
    averaged over ``models`` networks (10) after ``epochs`` epochs (0: at initialisation).

    ``gradient: full`` (default, the paper's: data_diet ``scores.py:37-46``) is the gradient with
    respect to every parameter, per image (``torch.func``), in eval mode (``utils.py:47-52``);
    ``gradient: last_layer`` (the cheaper variant, as DeepCore's ``grand.py:28-51``) is the
    gradient with respect to the last linear layer, in closed form: for logits ``W e + b`` it
    is ``(p - y) e^T`` for ``W`` and ``p - y`` for ``b``, so its norm is
    ``||p - y|| * sqrt(||e||^2 + 1)``.
    """

    name = "grand"

    @dataclass
    class Settings(_EarlyTrainingScore.Settings):
        epochs: int = 0  # at initialisation (the paper); > 0: after that many epochs
        gradient: str = "full"  # full: all parameters (the paper) | last_layer: closed form

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("grand", "gradient", self.gradient, ("full", "last_layer"))

    @property
    def needs_embedding(self) -> bool:
        return self.gradient == "last_layer"

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1) * (emb.pow(2).sum(-1) + 1).sqrt()

    def _score(self, task: Task, seeds: list[int]) -> dict[str, torch.Tensor]:
        if self.gradient == "last_layer":
            return super()._score(task, seeds)
        models = self._trained(task, seeds)
        n = len(task.train)
        labels = task.train.labels.to(task.device)
        score = torch.zeros(n, device=task.device)
        correct = torch.zeros(n, device=task.device)
        for model in models:
            per_sample = _per_sample_gradients(model.eval())
            chunks = range(0, n, self.chunk)
            for b0 in task.progress(chunks, total=math.ceil(n / self.chunk), desc="grand scores"):
                rows = slice(b0, b0 + self.chunk)
                x = task.normalize(task.train.images[rows]).to(task.device, torch.float32)
                grads, logits = per_sample(x, labels[rows])
                sq = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
                score[rows] += sq.sqrt() / len(models)
                correct[rows] += (logits[:, 0].argmax(-1) == labels[rows]).float() / len(models)
        return {"score": score, "correct": correct}


def _per_sample_gradients(model: nn.Module):
    """``f(x [B,...], y [B]) -> ({name: gradient [B,...]}, logits [B,1,C])``: the gradient of
    each image's cross-entropy loss wrt every parameter of ``model`` (as it is, float32)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        logits = functional_call(model, (p, buffers), (x[None],))
        return nn.functional.cross_entropy(logits, y[None]), logits.detach()

    per_sample = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0))
    return lambda x, y: per_sample(params, x, y)

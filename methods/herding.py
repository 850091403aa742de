"""Selection in a feature space: herding and k-center, the DC paper's coreset baselines.

Per class, the train images are embedded (``model.embed``) by a feature network and a greedy
rule picks ``ipc`` of them: herding brings the running mean of the picks closest to the class
mean, k-center adds the image farthest from those picked. The shared machinery (budget checks,
the engine-trained networks, the prediction loop, :func:`~ddbench.coreset.herding_select`,
:func:`~ddbench.coreset.kcenter_select`) is in :mod:`ddbench.coreset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddbench.coreset import (
    Selection,
    check_choice,
    check_positive,
    class_features,
    draw_seeds,
    herding_select,
    kcenter_select,
    pick_per_class,
)
from ddbench.method import Task
from ddbench.teachers import TeacherConfig, get_teacher

__all__ = ["FEATURES", "Herding", "KCenter"]

FEATURES = ("teacher", "trained", "random", "pixels")


class _FeatureSelection(Selection):
    """Per-class selection in the embedding space (``model.embed``) of a feature network.

    ``features: teacher`` (default) embeds with the cached trained teacher of
    :mod:`ddbench.teachers` (``teacher``: its config; the default is the ``kd`` protocol's, so
    selection and KD share one network, trained once per dataset); ``features: trained`` trains
    one ``task.model_factory()`` for ``feature_epochs`` on the whole train split with the
    engine; ``features: random`` uses a randomly initialised one; ``features: pixels`` uses the
    normalised images themselves (no network). The DC paper's herding/k-center baselines embed
    with a ConvNet trained on the real data.
    ``normalize: true`` L2-normalises the features first (as iCaRL's herding).
    """

    @dataclass
    class Settings(Selection.Settings):
        features: str = "teacher"  # teacher (cached, shared with kd) | trained | random | pixels
        feature_epochs: int = 1  # epochs of training for features=trained (constant lr)
        normalize: bool = False  # L2-normalise features first (as iCaRL)
        teacher: dict[str, Any] = field(default_factory=dict)  # TeacherConfig overrides

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("selection", "features", self.features, FEATURES)
            check_positive("selection", "feature_epochs", self.feature_epochs, minimum=0)

    def feature_model(self, task: Task) -> nn.Module | None:
        """The feature network (its seed drawn from ``task.generator``), in eval mode; ``None``
        for ``features: pixels``."""
        if self.features == "pixels":
            return None
        if self.features == "teacher":
            cfg = TeacherConfig.from_config(self.teacher)
            return get_teacher(task.spec.name, cfg, device=task.device)[0]
        (seed,) = draw_seeds(task, 1)
        epochs = self.feature_epochs if self.features == "trained" else 0
        if epochs == 0:
            return self._train(task, [seed], 0, desc="")[0]
        return self._trained_model(task, seed, epochs, "features")

    def features_of(self, task: Task, model: nn.Module | None, c: int) -> torch.Tensor:
        """The (optionally L2-normalised) features of class ``c``, ``[n_c, F]``."""
        if model is None:  # features: pixels
            f = task.real_images(c).flatten(1)
        else:
            f = class_features(task, model, c, self.chunk)
        return torch.nn.functional.normalize(f, dim=1) if self.normalize else f

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, task: Task) -> torch.Tensor:
        model = self.feature_model(task)
        return pick_per_class(
            task,
            lambda c: self.features_of(task, model, c),
            lambda feats: self.pick(task, feats),
            desc=self.name,
        )


class Herding(_FeatureSelection):
    """Herding (Welling 2009), the DC paper's baseline: per class, greedily add the image whose
    features bring the running mean of the selection closest to the class mean."""

    name = "herding"

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        return herding_select(feats, task.ipc)


class KCenter(_FeatureSelection):
    """Greedy k-center (Sener & Savarese 2018), the DC paper's baseline: per class, start from
    the image nearest the class mean (``init: mean``) or a random one (``init: random``, from
    ``task.generator``), then repeatedly add the image farthest from the selected ones.
    Distances are computed in chunks with a running min-distance vector (O(n) memory)."""

    name = "kcenter"

    @dataclass
    class Settings(_FeatureSelection.Settings):
        init: str = "mean"  # mean | random (first center drawn with the task seed)

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("kcenter", "init", self.init, ("mean", "random"))

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        first = None
        if self.init == "random":
            first = int(torch.randint(len(feats), (1,), generator=task.generator))
        return kcenter_select(feats, task.ipc, first=first)

"""CV-DD: Dataset Distillation via Committee Voting (Cui, Li, Ma, Bi, Luo & Shen, 2025).

SRe2L (``methods/sre2l.py``) with a committee of teachers instead of one. Every recovery batch
(one image per class) goes through the members that vote on it, and its loss is their
prior-performance-weighted sum::

    loss = sum_i w_i (CE(f_i(A(x)), y) + r_bn * BN_i(A(x))),   w = softmax(p / T)

``p_i`` is member ``i``'s prior performance (by default its cached val accuracy in %; the
official code takes each model's number from ``--model-weight``), ``T`` the
``weight_temperature`` (5 in the official code, ``recover/recover.py`` 233
``--weight-temperature``), and the softmax runs over the members voting on that batch.
``members_per_step``: the number of members that vote on each batch, drawn at random per batch
(the paper's default committee of N=2 out of a pool of 5, ``--selected-size 2`` in
``recover/scripts/cifar10_experiments/recover_voter_ipc10.sh``); null lets all members vote.

The soft labels are the logits of the whole committee, ``sum_i v_i f_i(x)`` with
``v = softmax(p / relabel_temperature)`` over all members (``relabel/relabel.py`` 299-305: the
temperature is 10 there, not the recovery's 5), each member normalising with the statistics of
the batch (``relabel_bn: batch``; the official relabel runs its models in train mode,
``relabel/relabel.py`` 282-285). Here the batches are the recovery batches, one image per
class; the official relabel's are its FKD batches of augmented crops (16 images on CIFAR-10,
forwarded in halves of 8). The set records the committee (each member's config and ``v_i``),
so the ``sre2l`` protocol labels every augmented crop with the same committee online.

Initialisation: the official CIFAR-10 script starts from patches (``--initialisation-method
Patches --patch-diff medium``) read from pre-made files that the authors distribute separately
(``recover/utils_recover.py`` 205-239); the code that selects them is not in their repository.
ddbench starts from random real images of each class (``init: real``), the nearest it can state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.methods.sre2l import SRe2L
from ddbench.recover import DEFAULT_TEACHER, batch_statistics, by_slot
from ddbench.synset import SyntheticSet
from ddbench.teachers import TeacherConfig

__all__ = ["CVDD", "DEFAULT_COMMITTEE", "voting_weights"]

# ddbench's choice (the authors' pool is ResNet-18/50, ShuffleNetV2, MobileNetV2 and
# DenseNet-121): three BatchNorm ConvNets of other depth, width and seed.
DEFAULT_COMMITTEE: list[dict[str, Any]] = [
    {"model": "convnet_bn", "seed": 0},
    {"model": "convnet_bn", "model_kwargs": {"net_depth": 4}, "seed": 1},
    {"model": "convnet_bn", "model_kwargs": {"net_width": 64}, "seed": 2},
]


def voting_weights(priors: list[float], temperature: float, voting: str = "prior") -> torch.Tensor:
    """CV-DD's prior-performance-guided voting: ``softmax(priors / temperature)``; ``equal``:
    ``1 / len(priors)`` each."""
    if voting == "equal":
        return torch.full((len(priors),), 1.0 / len(priors), dtype=torch.float64)
    return torch.softmax(torch.tensor(priors, dtype=torch.float64) / temperature, 0)


class CVDD(SRe2L):
    """SRe2L recovered and relabelled by a voting committee of teachers (module docstring).

    Settings (besides SRe2L's, ``teacher`` excepted): ``committee`` (a list of
    :class:`ddbench.teachers.TeacherConfig` nodes; keys left out take SRe2L's default teacher
    values), ``voting`` (``prior`` or ``equal``), ``priors`` (one number per member, in %; null:
    the members' cached val accuracies), ``weight_temperature``, ``members_per_step``.
    """

    @dataclass
    class Settings(SRe2L.Settings):
        init: str = "real"  # nearest to the paper's real-patch initialisation | noise
        iterations: int = 4000  # recover/scripts/*/recover_voter_ipc*.sh --iteration 4000
        crop: Any = True  # recover_voter_*.sh --apply-data-augmentation: crop + flip at 32 px
        teacher: Any = None  # not used: the committee teaches
        committee: list[dict[str, Any]] = field(
            default_factory=lambda: [dict(c) for c in DEFAULT_COMMITTEE]
        )
        voting: str = "prior"  # prior: softmax(prior / T) | equal
        priors: list[float] | None = None  # one number (%) per member; null: cached val acc.
        weight_temperature: float = 5.0  # T (the official default)
        members_per_step: int | None = 2  # voters per recovery batch (the paper's N=2); null: all
        relabel_temperature: float = 10.0  # v = softmax(prior / this) (relabel/relabel.py 303)
        relabel_bn: str = "batch"  # batch: members use the batch's statistics | running

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.teacher is not None:
                raise DDBenchError("cvdd takes a committee of teachers, not `teacher`")
            self.committee = [{**DEFAULT_TEACHER, **dict(c)} for c in self.committee]
            for c in self.committee:
                TeacherConfig.from_config(c)  # a bad member fails here
            if self.voting not in ("prior", "equal"):
                raise DDBenchError(f"voting must be prior or equal, got {self.voting!r}")
            m = len(self.committee)
            if self.priors is not None and len(self.priors) != m:
                raise DDBenchError(f"{len(self.priors)} priors for a committee of {m}")
            if not self.weight_temperature > 0:
                raise DDBenchError(
                    f"weight_temperature must be positive, got {self.weight_temperature}"
                )
            if not self.relabel_temperature > 0:
                raise DDBenchError(
                    f"relabel_temperature must be positive, got {self.relabel_temperature}"
                )
            if self.relabel_bn not in ("batch", "running"):
                raise DDBenchError(f"relabel_bn must be batch or running, got {self.relabel_bn!r}")
            n = self.members_per_step
            if n is not None and not 1 <= n <= m:
                raise DDBenchError(f"members_per_step must be in [1, {m}], got {n}")

    name = "cvdd"
    recipes = "cvdd"

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self.voters: list[list[int]] = []  # per recovery batch (slot): the members voting on it

    def teacher_configs(self) -> list:
        return [TeacherConfig.from_config(c) for c in self.committee]

    def member_priors(self) -> list[float]:
        """Each member's prior performance: ``priors``, else its cached val accuracy (%)."""
        if self.priors is not None:
            return self.priors
        return [float(m.meta["val_accuracy"]) for m in self.members]

    def weights(self, members: list[int]) -> torch.Tensor:
        """The voting weights of ``members`` in recovery (softmax over them only)."""
        p = self.member_priors()
        return voting_weights([p[i] for i in members], self.weight_temperature, self.voting)

    def relabel_weights(self) -> list[float]:
        """The weights of all members in the relabel: ``softmax(prior / relabel_temperature)``
        (``equal``: ``1 / m``)."""
        return voting_weights(self.member_priors(), self.relabel_temperature, self.voting).tolist()

    def recovery_loss(
        self, task: Task, x: torch.Tensor, y: torch.Tensor, group_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        groups = len(x) // group_size
        if len(self.voters) != groups:
            raise DDBenchError(f"cvdd: {groups} recovery batches but {len(self.voters)} votes")
        # weight[g, i]: member i's vote on batch g (0 when it does not vote on it)
        weight = torch.zeros(groups, len(self.members), dtype=torch.float64)
        for g, members in enumerate(self.voters):
            weight[g, members] = self.weights(members)
        loss, parts = x.new_zeros(()), {}
        for i, member in enumerate(self.members):
            rows_of = weight[:, i].nonzero().flatten().tolist()
            if not rows_of:
                continue
            if len(rows_of) == groups:
                xi, yi = x, y
            else:
                idx = torch.cat(
                    [torch.arange(g * group_size, (g + 1) * group_size) for g in rows_of]
                ).to(x.device)
                xi, yi = x[idx], y[idx]
            ce, bn = member.losses(xi, yi, group_size, self.first_bn_multiplier)
            w = weight[rows_of, i].to(x.device, torch.float32)
            loss = loss + (w * (ce + self.r_bn * bn)).sum()
            parts.update(
                {f"ce_{i}": float(ce.detach().mean()), f"bn_{i}": float(bn.detach().mean())}
            )
        return loss, parts

    def relabel(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        """The committee's weighted logits (module docstring); with ``relabel_bn: batch`` each
        recovery batch (one image per class) is normalised with its own statistics."""
        w = self.relabel_weights()
        if self.relabel_bn == "running":
            return sum(wi * m.logits(images) for wi, m in zip(w, self.members))
        x = by_slot(images, task.ipc)  # batch j: the j-th image of every class
        out = torch.zeros(len(x), task.num_classes, device=x.device)
        with torch.no_grad():
            for wi, m in zip(w, self.members):
                net = batch_statistics(m.net)
                for b0 in range(0, len(x), task.num_classes):
                    out[b0 : b0 + task.num_classes] += wi * net(x[b0 : b0 + task.num_classes])
        # back to class order: by_slot with ipc and the number of classes swapped inverts it
        return by_slot(out, task.num_classes)

    def relabel_meta(self) -> dict[str, Any]:
        w = self.relabel_weights()
        return {
            "committee": [
                {
                    "key": m.meta["key"],
                    "model": m.meta["config"]["model"],
                    "val_accuracy": m.meta["val_accuracy"],
                    "config": m.meta["config"],
                    "prior": p,
                    "weight": wi,
                }  # fmt: skip
                for m, p, wi in zip(self.members, self.member_priors(), w)
            ],
            "voting": self.voting,
            "weight_temperature": self.weight_temperature,
            "relabel_temperature": self.relabel_temperature,
            "bn": self.relabel_bn,
        }

    def draw_voters(self, task: Task) -> list[list[int]]:
        """The members voting on each recovery batch (one per image slot), fixed for the whole
        recovery: all of them, or ``members_per_step`` drawn from ``task.generator``."""
        m = len(self.committee)
        if self.members_per_step is None:
            return [list(range(m)) for _ in range(task.ipc)]
        return [
            sorted(torch.randperm(m, generator=task.generator)[: self.members_per_step].tolist())
            for _ in range(task.ipc)
        ]

    def distill(self, task: Task) -> SyntheticSet:
        self.voters = self.draw_voters(task)  # before anything else draws: same on resume
        synset = super().distill(task)
        synset.meta["relabel"]["voters"] = self.voters
        return synset

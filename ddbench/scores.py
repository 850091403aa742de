"""DD-Ranking's robustness and value scores (IOR, HLR, LRS, ARS) over the board's results.

The formulas follow DD-Ranking (github.com/NUS-HPC-AI-Lab/DD-Ranking, commit b8b0966,
``ddranking/metrics/hard_label.py`` and ``soft_label.py`` ``compute_metrics``,
``ddranking/metrics/aug_robust.py`` ``compute_metrics``)::

    IOR   = acc(set, P) - acc(random subset, P)                    improvement over random
    HLR   = acc(full train split, H) - acc(set, H)                 hard-label recovery
    alpha = w * IOR - (1 - w) * HLR,   LRS = (e^alpha - e^-1) / (e - e^-1)          w = 0.5
    beta  = g * (acc(set, P) - acc(random, P))
            + (1 - g) * (acc(set, P0) - acc(random, P0)),
                                       ARS = (e^beta - e^-1) / (e - e^-1)           g = 0.5

``P`` is the entry's protocol, ``H`` a protocol training on the set's hard labels, ``P0`` the
pinned protocol that is ``P`` without augmentation. Two differences, on purpose:

- accuracies are **fractions** in [0, 1]. DD-Ranking passes percentages to ``exp`` (its
  ``validate`` returns top-1 in percent), so alpha lies in [-100, 100] and its LRS leaves
  [0, 1]; on fractions alpha and beta lie in [-1, 1] and LRS, ARS in [0, 1];
- every accuracy is ddbench's pinned protocol: the **final epoch** at the protocol's **fixed
  learning rate**, mean over its seeds. DD-Ranking keeps the best test accuracy over epochs
  and searches a learning-rate grid on the test split, which selects on test.

The scores are computed from the mean accuracies (DD-Ranking averages per-round scores; for
IOR and HLR the two agree, for LRS and ARS they differ by the curvature of ``exp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WEIGHT = 0.5  # DD-Ranking's default lrs_lambda and ars_lambda
_LO, _HI = math.exp(-1.0), math.exp(1.0)


def _fraction(acc: float) -> float:
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"an accuracy must be a fraction in [0, 1], got {acc}")
    return float(acc)


def ior(syn: float, random: float) -> float:
    """Improvement over a random subset at the same IPC, protocol and model (fractions)."""
    return _fraction(syn) - _fraction(random)


def hlr(full: float, syn_hard: float) -> float:
    """Hard-label recovery: full-train-split accuracy minus the set's hard-label accuracy."""
    return _fraction(full) - _fraction(syn_hard)


def normalise(x: float) -> float:
    """DD-Ranking's map of [-1, 1] onto [0, 1]: ``(e^x - e^-1) / (e - e^-1)``."""
    return (math.exp(x) - _LO) / (_HI - _LO)


def lrs(ior_value: float, hlr_value: float, w: float = WEIGHT) -> float:
    """Label-Robust Score from IOR and HLR (fractions): ``normalise(w*IOR - (1-w)*HLR)``."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the LRS weight must be in [0, 1], got {w}")
    return normalise(w * ior_value - (1.0 - w) * hlr_value)


def ars(ior_aug: float, ior_noaug: float, g: float = WEIGHT) -> float:
    """Augmentation-Robust Score from the improvements over random with and without
    augmentation (fractions): ``normalise(g*IOR_aug + (1-g)*IOR_noaug)``."""
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"the ARS weight must be in [0, 1], got {g}")
    return normalise(g * ior_aug + (1.0 - g) * ior_noaug)


# ----------------------------------------------------------------------------- on the board


@dataclass(frozen=True)
class Result:
    """One scored result of a board entry (a set under one protocol and model)."""

    entry: str  # the entry's path, relative to the board
    sha256: str
    method: str
    dataset: str
    budget: int | str  # the IPC, or "full" for the whole train split
    protocol: str
    protocol_hash: str
    model: str  # the model and its kwargs (the board's model label)
    accuracy: float  # mean over the protocol's seeds, in percent
    hard_labels: bool  # trained on the set's hard labels


@dataclass(frozen=True)
class Score:
    """A score, or None with the reason it cannot be computed."""

    value: float | None
    why: str = ""

    def show(self, places: int = 3) -> str:
        return "-" if self.value is None else f"{self.value:+.{places}f}"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def no_aug_counterpart(protocol: str) -> str | None:
    """The pinned protocol that equals ``protocol`` with ``augment: none`` (same hash as
    ``protocol`` with its augmentation turned off), or None."""
    from dataclasses import replace

    from ddbench.protocol import Protocol, pinned_protocol_hash, protocol_config

    cfg = protocol_config(protocol)
    if cfg is None:
        return None
    p = Protocol.from_config(cfg)
    if p.augment == "none":
        return None
    want = replace(p, augment="none").hash
    import importlib.resources

    folder = importlib.resources.files("ddbench.conf") / "protocol"
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        name = f.name.removesuffix(".yaml")
        if f.name.endswith(".yaml") and pinned_protocol_hash(name) == want:
            return name
    return None


class BoardScores:
    """IOR, HLR, LRS and ARS of every result, from the references among ``results``.

    The random reference of a result is the mean accuracy of the ``random`` results of the same
    dataset, IPC, protocol (hash) and model; the full-data reference of a hard-label result is
    the mean of the results of sets holding the whole train split (budget ``full``) under the
    same protocol and model; the set's hard-label accuracy is its own when its protocol trains
    on its hard labels, else that of another result of the same set that does (``standard``
    first), same model; ARS needs the set and a random subset also under the protocol's
    no-augmentation counterpart (:func:`no_aug_counterpart`).
    """

    def __init__(self, results: list[Result], counterpart=no_aug_counterpart):
        self.results = results
        self._counterpart = counterpart
        self._noaug: dict[str, str | None] = {}

    def _noaug_of(self, protocol: str) -> str | None:
        if protocol not in self._noaug:
            self._noaug[protocol] = self._counterpart(protocol)
        return self._noaug[protocol]

    def _random(self, r: Result, protocol_hash: str) -> float | None:
        accs = [x.accuracy for x in self.results
                if x.method == "random" and x.dataset == r.dataset and x.budget == r.budget
                and x.protocol_hash == protocol_hash and x.model == r.model]  # fmt: skip
        return _mean(accs) / 100 if accs else None

    def _same_set(self, r: Result, pred) -> list[Result]:
        return [x for x in self.results if x.sha256 == r.sha256 and x.model == r.model and pred(x)]

    def ior(self, r: Result) -> Score:
        if r.budget == "full":
            return Score(None, "the whole train split has no random reference")
        rnd = self._random(r, r.protocol_hash)
        if rnd is None:
            return Score(None, f"no random subset at IPC {r.budget} under {r.protocol}/{r.model}")
        return Score(ior(r.accuracy / 100, rnd))

    def hard_result(self, r: Result) -> Result | None:
        """The result of ``r``'s set on its hard labels (``r`` itself when it is one)."""
        if r.hard_labels:
            return r
        others = self._same_set(r, lambda x: x.hard_labels)
        others.sort(key=lambda x: (x.protocol != "standard", x.protocol))
        return others[0] if others else None

    def hlr(self, r: Result) -> Score:
        if r.budget == "full":
            return Score(None, "the whole train split is the reference")
        h = self.hard_result(r)
        if h is None:
            return Score(None, "no hard-label result of this set")
        full = [x.accuracy for x in self.results
                if x.budget == "full" and x.dataset == r.dataset
                and x.protocol_hash == h.protocol_hash and x.model == h.model]  # fmt: skip
        if not full:
            return Score(None, f"no full-train-split result under {h.protocol}/{h.model}")
        return Score(hlr(_mean(full) / 100, h.accuracy / 100))

    def lrs(self, r: Result) -> Score:
        i, h = self.ior(r), self.hlr(r)
        if i.value is None or h.value is None:
            return Score(None, "; ".join(s.why for s in (i, h) if s.value is None))
        return Score(lrs(i.value, h.value))

    def ars(self, r: Result) -> Score:
        i = self.ior(r)
        if i.value is None:
            return i
        p0 = self._noaug_of(r.protocol)
        if p0 is None:
            return Score(None, f"no pinned protocol is {r.protocol} without augmentation")
        mine = self._same_set(r, lambda x: x.protocol == p0)
        if not mine:
            return Score(None, f"no result of this set under {p0}/{r.model}")
        h0 = mine[0].protocol_hash
        rnd = self._random(r, h0)
        if rnd is None:
            return Score(None, f"no random subset at IPC {r.budget} under {p0}/{r.model}")
        return Score(ars(i.value, ior(mine[0].accuracy / 100, rnd)))

    def all(self, r: Result) -> dict[str, Score]:
        return {"ior": self.ior(r), "hlr": self.hlr(r), "lrs": self.lrs(r), "ars": self.ars(r)}


def result_of(entry_path: str, e: dict[str, Any], budget: int | str, model: str) -> Result:
    """A :class:`Result` of a board entry's result dict ``e``."""
    return Result(
        entry=entry_path, sha256=e["synset"]["sha256"], method=e["method"], dataset=e["dataset"],
        budget=budget, protocol=e["protocol"]["name"], protocol_hash=e["protocol"]["hash"],
        model=model, accuracy=float(e["accuracy"]["mean"]),
        hard_labels=(e.get("labels") or {}).get("kind") == "hard",
    )  # fmt: skip

"""DD-Ranking's scores (ddbench/scores.py) against values computed by hand, and their
references found on a board's results."""

from __future__ import annotations

import math

import pytest

from ddbench import scores
from ddbench.scores import BoardScores, Result


def test_formulas_against_hand_computed_values():
    # syn 80 %, random 70 %, full 95 %: IOR 0.10, HLR 0.15,
    # alpha = 0.5 * 0.10 - 0.5 * 0.15 = -0.025, LRS = (e^-0.025 - e^-1) / (e - e^-1)
    assert scores.ior(0.80, 0.70) == pytest.approx(0.10)
    assert scores.hlr(0.95, 0.80) == pytest.approx(0.15)
    assert scores.lrs(0.10, 0.15) == pytest.approx(0.2584368, abs=1e-7)
    # ARS: beta = 0.5 * 0.10 + 0.5 * 0.05 = 0.075 -> (e^0.075 - e^-1) / (e - e^-1)
    assert scores.ars(0.10, 0.05) == pytest.approx(0.3020779, abs=1e-7)
    # the normalisation maps [-1, 1] onto [0, 1]; 0 (no gain, no loss) to 1 / (e + 1)
    assert scores.normalise(-1.0) == pytest.approx(0.0)
    assert scores.normalise(1.0) == pytest.approx(1.0)
    assert scores.normalise(0.0) == pytest.approx(1 / (math.e + 1))
    # the weights move the score between its two terms
    assert scores.lrs(0.10, 0.15, w=1.0) == pytest.approx(scores.normalise(0.10))
    assert scores.lrs(0.10, 0.15, w=0.0) == pytest.approx(scores.normalise(-0.15))


def test_fractions_keep_the_scores_in_the_unit_interval_and_percentages_are_refused():
    for syn, rnd, full in ((0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (0.5, 0.5, 0.5)):
        i, h = scores.ior(syn, rnd), scores.hlr(full, syn)
        assert 0.0 <= scores.lrs(i, h) <= 1.0 and 0.0 <= scores.ars(i, i) <= 1.0
    with pytest.raises(ValueError, match="fraction"):
        scores.ior(80.0, 70.0)  # percentages, as DD-Ranking passes them
    with pytest.raises(ValueError, match="weight"):
        scores.lrs(0.1, 0.1, w=2.0)


def _r(method, acc, protocol="p", budget=10, sha=None, hard=True, model="convnet"):
    return Result(entry=f"{method}-{sha or method}", sha256=sha or method, method=method,
                  dataset="d", budget=budget, protocol=protocol, protocol_hash=protocol * 4,
                  model=model, accuracy=acc, hard_labels=hard)  # fmt: skip


def test_board_scores_find_their_references_and_say_what_is_missing():
    rows = [
        _r("random", 70.0, sha="r1"), _r("random", 72.0, sha="r2"),  # mean 71
        _r("dm", 80.0),
        _r("full", 95.0, budget="full"),
        _r("sre2l", 85.0, protocol="kd", hard=False, sha="s"),  # its own: soft labels
        _r("sre2l", 40.0, protocol="p", sha="s"),  # the same set on its hard labels
        _r("random", 60.0, protocol="kd", sha="r3"),
        _r("dm", 75.0, protocol="p0"), _r("random", 68.0, protocol="p0", sha="r4"),
        _r("dm", 50.0, model="lenet"),  # no random subset on lenet
    ]  # fmt: skip
    b = BoardScores(rows, counterpart=lambda p: {"p": "p0"}.get(p))
    dm = b.all(rows[2])
    assert dm["ior"].value == pytest.approx(0.80 - 0.71)
    assert dm["hlr"].value == pytest.approx(0.95 - 0.80)
    assert dm["lrs"].value == pytest.approx(scores.lrs(0.09, 0.15))
    assert dm["ars"].value == pytest.approx(scores.ars(0.09, 0.75 - 0.68))
    # a random subset against the mean of the random subsets (itself alone: exactly 0)
    assert b.ior(rows[0]).value == pytest.approx(-0.01)
    assert BoardScores([rows[0], rows[2]]).ior(rows[0]).value == 0.0
    # soft-label protocol: IOR under it, HLR from the same set's hard-label result
    s = b.all(rows[4])
    assert s["ior"].value == pytest.approx(0.85 - 0.60)
    assert s["hlr"].value == pytest.approx(0.95 - 0.40)
    assert (
        s["ars"].value is None and "no pinned protocol is kd without augmentation" in s["ars"].why
    )
    lenet = b.all(rows[-1])
    assert (
        lenet["ior"].value is None
        and "no random subset at IPC 10 under p/lenet" in lenet["ior"].why
    )
    assert "no full-train-split result under p/lenet" in lenet["hlr"].why
    assert lenet["lrs"].value is None and lenet["lrs"].show() == "-"
    full = b.all(rows[3])
    assert all(v.value is None for v in full.values())


def test_the_shipped_no_augmentation_counterparts():
    assert scores.no_aug_counterpart("standard") == "noaug"
    assert scores.no_aug_counterpart("noaug") is None  # it has no augmentation to remove
    assert scores.no_aug_counterpart("dc") is None  # nodsa changes the epochs too

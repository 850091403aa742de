"""FYI's DSA (ddbench/fyi.py FlipFirstDSA): a flip always, then one other op, on the real digits."""

from __future__ import annotations

import pytest
import torch
from conftest import make_task

from ddbench.augment import DSA
from ddbench.errors import DDBenchError
from ddbench.fyi import FlipFirstDSA, FlipYourImages, flip_concat
from ddbench.methods import gradient_matching
from ddbench.methods.dm import DM
from ddbench.methods.gradient_matching import DSA as DSAMethod
from ddbench.modifiers import Modifier

FLIP = "color_crop_cutout_flip_scale_rotate"


def test_flip_then_one_of_the_other_ops(digits_train):
    """Siamese draws: the flip decided on its own (about half the seeds), the op always one of the
    five others; both batches get the same flip and op, applied flip first."""
    x = make_task(digits_train, 1).real_images(n=12)
    fda = FlipYourImages().augmentation(DSA(FLIP))
    assert isinstance(fda, FlipFirstDSA)
    coins, ops, flip_mattered = [], set(), False
    for seed in range(200):
        flip, rest = fda.siamese(seed, 8, 8)
        coin = bool(flip.params["flip"]["flip"].item())
        coins.append(coin)
        ops.add(rest.op)
        if seed < 20:
            a, b = fda.pair(x, x[:3], seed)
            torch.testing.assert_close(a, rest(x.flip(-1) if coin else x))
            torch.testing.assert_close(b, a[:3])
            flip_mattered |= coin and not torch.allclose(a, rest(x))
    assert ops == {"color", "crop", "cutout", "scale", "rotate"}
    assert 0.35 < sum(coins) / len(coins) < 0.65
    assert flip_mattered


def test_only_strategies_with_flip_and_another_op_change(digits_train):
    fyi = FlipYourImages()
    for augment in (None, DSA("flip"), DSA(digits_train.spec.dsa_strategy)):  # digits: no flip
        assert fyi.augmentation(augment) is augment
    plain = DSA(FLIP)
    assert Modifier().augmentation(plain) is plain
    with pytest.raises(DDBenchError, match="'flip' and another op"):
        FlipFirstDSA("color_crop")


def test_matching_pairs_use_fyis_dsa(digits_train):
    """ImageDistillation.siamese with fyi: [S; flip(S)] and the real batch through FlipFirstDSA,
    with the seed the task's generator gives."""
    task = make_task(digits_train, 1, seed=3, strategy=FLIP)
    real, syn = task.real_images(0, 16), task.real_images(1, 2)
    method = DM(fyi=True)
    for _ in range(5):
        state = task.generator.get_state()
        got_real, got_syn = method.siamese(task, real, syn)
        task.generator.set_state(state)
        seed = method.next_seed(task)
        want_real, want_syn = FlipFirstDSA(FLIP).pair(real, flip_concat(syn), seed)
        torch.testing.assert_close(got_real, want_real)
        torch.testing.assert_close(got_syn, want_syn)


def test_dsa_inner_training_uses_fyis_dsa(digits_train, monkeypatch):
    """DSA + FYI trains its inner network on [x; flip(x)] augmented by FlipFirstDSA (their
    epoch(..., batch_aug=True) with their DiffAugment); without FYI, by the task's DSA."""
    seen = []
    real_train = gradient_matching.train

    def spy(*args, **kwargs):
        seen.append(kwargs["augment"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(gradient_matching, "train", spy)
    for fyi in (True, False):
        seen.clear()
        task = make_task(digits_train, 2, strategy=FLIP)
        method = DSAMethod(batch_real=16, fyi=fyi, iterations=1, outer_loop=2, inner_loop=1)
        method.distill(task)
        assert seen, "the inner training did not run"
        for augment in seen:
            assert isinstance(augment, FlipFirstDSA) == fyi
            assert augment.strategy == FLIP

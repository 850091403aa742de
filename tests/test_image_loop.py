"""The image loop's optimiser, lr schedule and generic optimiser checkpoints
(ddbench/distill.py), on the real digits data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import check_resume, make_task

from ddbench.distill import ImageDistillation, load_optimizer_state, optimizer_state
from ddbench.errors import DDBenchError
from ddbench.method import Checkpointer
from ddbench.methods.dm import DM

pytestmark = pytest.mark.usefixtures("one_thread")


class Pull(ImageDistillation):
    """Pulls the images towards a fixed target; records the optimiser and lr of each step."""

    name = "pull"

    def step(self, task, images, labels, it):
        self.seen.append((type(self._opt).__name__, self._opt.param_groups[0]["lr"]))
        return self.update(((images - 0.5) ** 2).sum())


def _pull(**kw) -> Pull:
    m = Pull(**{"iterations": 5, "lr_img": 0.1, **kw})
    m.seen = []
    return m


def test_the_image_optimiser_and_schedule_come_from_the_settings(digits_train):
    """``img_optimizer: adam`` + ``img_schedule: cosine`` is torch's Adam with the closed-form
    cosine lr ``lr_img (1 + cos(pi it / iterations)) / 2``: the same images as a hand-written
    loop; the default is SGD (momentum ``momentum_img``) at a constant lr."""
    m = _pull(img_optimizer="adam", img_betas=(0.5, 0.9), img_schedule="cosine")
    s = m.distill(make_task(digits_train, 1))
    cosine = [0.5 * (1 + math.cos(math.pi * it / 5)) * 0.1 for it in range(5)]
    assert m.seen == [("Adam", lr) for lr in cosine]

    x, _ = _pull().init_images(make_task(digits_train, 1))
    x.requires_grad_(True)
    adam = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9))
    for lr in cosine:
        adam.param_groups[0]["lr"] = lr
        adam.zero_grad()
        ((x - 0.5) ** 2).sum().backward()
        adam.step()
    assert torch.equal(s.images, x.detach())

    sgd = _pull()
    sgd.distill(make_task(digits_train, 1))
    assert sgd.seen == [("SGD", 0.1)] * 5


def test_bad_image_optimiser_settings_are_refused():
    for kw in ({"img_optimizer": "lbfgs"}, {"img_schedule": "step"}, {"img_betas": (0.9, 1.0)}):
        with pytest.raises(DDBenchError, match="img_"):
            Pull(**kw)


def test_optimiser_and_schedule_state_round_trips_through_a_checkpoint(tmp_path):
    """:func:`optimizer_state` stores a ``state_dict()`` as tensors + JSON; restored into fresh
    objects, the next steps are the same as the original's."""

    def make():
        torch.manual_seed(0)
        w = torch.randn(5, requires_grad=True)
        v = torch.randn(3, requires_grad=True)
        opts = [torch.optim.SGD([w], lr=0.1, momentum=0.5), torch.optim.Adam([v], lr=0.05)]
        sched = torch.optim.lr_scheduler.LambdaLR(opts[1], lambda it: 1 / (1 + it))
        return (w, v), opts, sched

    def run(params, opts, sched, n):
        for _ in range(n):
            for o in opts:
                o.zero_grad()
            sum((p**3).sum() for p in params).backward()
            for o in opts:
                o.step()
            sched.step()

    params, opts, sched = make()
    run(params, opts, sched, 3)
    tensors: dict[str, torch.Tensor] = {}
    state = {
        name: optimizer_state(obj.state_dict(), name, tensors)
        for name, obj in zip(("sgd", "adam", "sched"), (*opts, sched))
    }
    ck = Checkpointer(tmp_path, "k")
    ck.save(3, tensors, {"optim": state})
    _, loaded_tensors, loaded = ck.load()
    assert json.dumps(loaded) == json.dumps({"optim": state})
    params2, opts2, sched2 = make()
    with torch.no_grad():
        for p, q in zip(params2, params):
            p.copy_(q)
    for name, obj in zip(("sgd", "adam", "sched"), (*opts2, sched2)):
        obj.load_state_dict(load_optimizer_state(loaded["optim"][name], loaded_tensors))
    run(params, opts, sched, 2)
    run(params2, opts2, sched2, 2)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
    assert opts2[1].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"] == 0.05 * (1 / 6)


def test_a_killed_run_with_adam_and_cosine_resumes_exactly(digits_train, tmp_path):
    """Adam's moments and the schedule's position are checkpointed for any method."""
    cfg = dict(iterations=4, batch_real=32, img_optimizer="adam", img_schedule="cosine")
    check_resume(DM, cfg, digits_train, tmp_path)


def test_init_from_starts_the_loop_from_a_set_file_and_refuses_a_mismatched_one(
    digits_train, tmp_path
):
    """``init_from``: the loop starts from the images of a saved set (0 iterations give them
    back unchanged; a step moves them as from any start); a set of another IPC or with its
    classes out of order is refused with the file named."""
    from ddbench.synset import save

    start = _pull(iterations=0).distill(make_task(digits_train, 2, seed=3))
    path = save(start, tmp_path / "start.safetensors")
    again = _pull(iterations=0, init_from=str(path)).distill(make_task(digits_train, 2, seed=9))
    assert torch.equal(again.images, start.images)
    assert not torch.equal(_pull(iterations=0).distill(make_task(digits_train, 2, seed=9)).images,
                           start.images)  # fmt: skip
    moved = _pull(iterations=1, init_from=str(path)).distill(make_task(digits_train, 2, seed=9))
    assert torch.allclose(moved.images, start.images - 0.1 * 2 * (start.images - 0.5))

    with pytest.raises(DDBenchError, match="start.safetensors.*per class"):
        _pull(iterations=0, init_from=str(path)).distill(make_task(digits_train, 1))
    swapped = type(start)(start.images.flip(0), start.labels.flip(0), dict(start.meta))
    bad = save(swapped, tmp_path / "swapped.safetensors")
    with pytest.raises(DDBenchError, match="ordered by class"):
        _pull(iterations=0, init_from=str(bad)).distill(make_task(digits_train, 2))

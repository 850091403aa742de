"""Precision is applied by the image loop and the task (ddbench/method.py, ddbench/distill.py),
never by a method file, on the real digits data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_task

from ddbench.distill import ImageDistillation

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = Path(__file__).parents[1] / "methods"


def test_no_method_file_sets_a_precision_of_its_own():
    for path in sorted(METHODS.glob("*.py")):
        code = path.read_text()
        assert not re.search(r"(?<!task\.)autocast\(", code), path.name
        assert "import autocast" not in code and "torch.bfloat16" not in code, path.name


class _Probe(ImageDistillation):
    """Records, inside its step, whether autocast is on and what the shared helpers give."""

    @dataclass
    class Settings(ImageDistillation.Settings):
        dsa: bool = True  # siamese DSA (the dataset's strategy)

    name = "probe"

    def step(self, task, images, labels, it):
        real, syn = self.siamese(task, self.sample_real(task, 0, 8), images[:2])
        net = self.fresh_net(task, frozen=True)
        self.seen = {
            "autocast": torch.is_autocast_enabled("cpu"),
            "logits": net(images[:2]).dtype,
            "pair": (real.detach().clone(), syn.detach().clone()),
        }
        return self.update((syn**2).mean())


def test_the_loop_runs_each_step_in_the_tasks_precision_and_keeps_the_data_side_fp32(
    digits_train,
):
    """Under precision=bf16 a step's network runs in bf16 (the loop's autocast), while the
    shared helpers (real batch, siamese DSA with scale and rotate) give exactly what they give
    in fp32 outside any autocast."""
    for precision in ("fp32", "bf16"):
        m = _Probe(iterations=1)
        task = make_task(digits_train, 2)
        task.precision = precision
        m.distill(task)
        assert m.seen["autocast"] == (precision == "bf16")
        want = torch.bfloat16 if precision == "bf16" else torch.float32
        assert m.seen["logits"] == want
        # replay the draws outside the loop, in plain fp32
        replay = _Probe(iterations=1)
        task2 = make_task(digits_train, 2)
        images, _ = replay.init_images(task2)
        real, syn = replay.siamese(task2, replay.sample_real(task2, 0, 8), images[:2])
        assert torch.equal(real, m.seen["pair"][0]) and torch.equal(syn, m.seen["pair"][1])


def test_an_autocast_region_sees_a_network_updated_in_place_within_it(digits_train):
    """A step may update a network between forwards (DC's inner training): the task's autocast
    keeps no stale bf16 copy of the weights, also through a nested region."""
    task = make_task(digits_train, 2)
    task.precision = "bf16"
    net = task.model_factory()
    x = task.real_images(0, 4)
    with task.autocast():
        with task.autocast():
            before = net(x).float()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(2.0)
        after = net(x).float()
    with task.autocast():
        fresh = net(x).float()
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)

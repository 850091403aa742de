"""DC, DSA and DM over the shared outer loop (ddbench/distill.py), on the real digits data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import Rec, check_lowers_loss, check_resume, make_task

from ddbench import synset
from ddbench.distill import ImageDistillation, class_means
from ddbench.errors import DDBenchError
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.dm import DM
from ddbench.methods.gradient_matching import DC, DSA, gradient_distance
from ddbench.models import create_model

CONF = Path(__file__).parents[1] / "conf" / "method"
FAST = {"batch_real": 32}  # per-class real batch; tiny nets make each iteration ~0.1 s

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ distance


def test_gradient_distance_known_values():
    g = [torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(10, 8), torch.randn(10)]
    assert float(gradient_distance(g, g)) == pytest.approx(0.0, abs=1e-4)
    # 1-D tensors (biases, norms) are ignored by 'ours', not by mse
    other_bias = [g[0], torch.randn(4), g[2], torch.randn(10)]
    assert float(gradient_distance(other_bias, g)) == pytest.approx(0.0, abs=1e-4)
    assert float(gradient_distance(other_bias, g, "mse")) > 0
    # orthogonal rows: 1 - cos = 1 for each of the 3 rows
    eye = torch.eye(3)
    rolled = eye.roll(1, dims=1)
    assert float(gradient_distance([rolled], [eye])) == pytest.approx(3.0, abs=1e-5)
    # rows at known angles, and conv tensors reshaped to [out, -1]
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    expected = (1 - 1 / math.sqrt(2)) + 2.0
    assert float(gradient_distance([b], [a])) == pytest.approx(expected, abs=1e-5)
    assert float(gradient_distance([b.view(2, 1, 2, 1)], [a.view(2, 1, 1, 2)])) == pytest.approx(
        expected, abs=1e-5
    )
    assert float(gradient_distance([b], [a], "mse")) == pytest.approx(float(((a - b) ** 2).sum()))
    va, vb = a.flatten(), b.flatten()
    cos = float(va @ vb / (va.norm() * vb.norm()))
    assert float(gradient_distance([b], [a], "cos")) == pytest.approx(1 - cos, abs=1e-5)
    with pytest.raises(DDBenchError, match="unknown gradient distance"):
        gradient_distance([a], [b], "l3")


def test_class_means_handle_unequal_classes():
    f = torch.arange(12.0).view(6, 2)
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    m = class_means(f, y, 4)
    assert torch.allclose(m[0], f[:3].mean(0)) and torch.allclose(m[2], f[4:].mean(0))
    assert torch.equal(m[3], torch.zeros(2))


# ------------------------------------------------------------------------------ DM


def test_dm_batched_equals_per_class(digits_train):
    images = digits_train.normalize(digits_train.images[:40].float() / 255).clone()
    images = images[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    out = []
    for batched, channels_last in ((False, False), (True, False), (True, True), (False, True)):
        m = DM(batched=batched, **FAST)
        task = make_task(digits_train, ipc=4, seed=3)
        x = images.clone().requires_grad_(True)
        net = m.fresh_net(task, frozen=True, channels_last=channels_last)
        loss = m.matching_loss(task, net, x)
        loss.backward()
        out.append((loss.detach(), x.grad))
    assert float(out[0][0]) > 0 and float(out[0][1].abs().sum()) > 0
    for loss, grad in out[1:]:
        assert torch.allclose(loss, out[0][0], rtol=1e-5)
        assert torch.allclose(grad, out[0][1], rtol=1e-4, atol=1e-7)


def test_fresh_net_channels_last_is_nhwc_only_for_fp32_on_cpu(digits_train):
    """``channels_last=True`` (DM, DataDAM): NHWC pays in fp32 on CPU, not under bf16."""
    m = DM(**FAST)
    for precision, nhwc in (("fp32", True), ("bf16", False)):
        task = make_task(digits_train, ipc=1)
        task.precision = precision
        net = m.fresh_net(task, channels_last=True)
        w = next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert w.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert w.is_contiguous() == (not nhwc)


def test_dm_lr_rule_and_config_validation():
    t = type("T", (), {"ipc": 100})()
    assert DM().image_lr(t) == 10.0 and DM(lr_img_large_ipc=None).image_lr(t) == 1.0
    t.ipc = 10
    assert DM().image_lr(t) == 1.0
    with pytest.raises(DDBenchError, match="init"):
        DM(init="zeros")
    with pytest.raises(DDBenchError, match="outer_loop"):
        DC().loops(7)
    assert DC.for_setting("mnist", 10).loops(10) == (10, 50)
    assert DC(outer_loop=2, inner_loop=3).loops(7) == (2, 3)


# ------------------------------------------------------------------------------ all methods


@pytest.mark.parametrize(
    "method, ipc",
    [
        (DM(iterations=15, **FAST), 2),
        (DC(iterations=6, **FAST), 1),
        (DSA(iterations=5, outer_loop=2, inner_loop=2, **FAST), 2),
    ],
    ids=["dm", "dc", "dsa"],
)
def test_method_lowers_its_matching_loss_and_makes_a_valid_set(method, ipc, digits_train, tmp_path):
    check_lowers_loss(method, digits_train, ipc, tmp_path)


def test_init_noise_and_real(digits_train):
    task = make_task(digits_train, 3)
    real, labels = DM(init="real").init_images(task)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert real.min() >= task.normalize(torch.zeros(1, 1, 1, 1)).item() - 1e-6
    noise, _ = DC(init="noise").init_images(task)
    assert noise.shape == real.shape and abs(float(noise.std()) - 1) < 0.2
    with pytest.raises(DDBenchError, match="fewer"):
        DM(init="real").init_images(make_task(digits_train, 1000))


def test_eval_every_reports_val_accuracy(digits_train, split_cache):
    rec = Rec()
    task = make_task(digits_train, 1, val=lambda: split_cache("digits", "val"), logger=rec)
    DM(iterations=2, eval_every=2, eval_epochs=3, **FAST).distill(task)
    acc = [v["val_accuracy"] for step, v in rec.seen if "val_accuracy" in v]
    assert len(acc) == 1 and 0 <= acc[0] <= 100


@pytest.mark.parametrize(
    "method, protocol, dataset_strategy",
    [(DM, "standard", True), (DC, "dc", False), (DC, "nodsa", False)],
)
def test_in_loop_evaluation_augments_as_the_declared_protocol(
    digits_train, split_cache, monkeypatch, method, protocol, dataset_strategy
):
    """The val check trains with the augmentation of the protocol the method declares (DSA
    under standard; none under dc/nodsa on digits), not with a rule of its own."""
    import ddbench.distill as distill

    seen = []
    real_train = distill.engine.train

    def spy(factory, seeds, images, labels, recipe, **kw):
        seen.append(recipe.augment)
        return real_train(factory, seeds, images, labels, recipe, **kw)

    monkeypatch.setattr(distill.engine, "train", spy)
    task = make_task(digits_train, 1, val=lambda: split_cache("digits", "val"))
    m = method(iterations=0, eval_epochs=1, **FAST)
    m.protocol = protocol
    m.evaluate(task, *m.init_images(task))
    assert seen == [task.spec.dsa_strategy if dataset_strategy else "none"]


# ------------------------------------------------------------------------------ resume


def test_resume_continues_from_the_checkpoint_exactly(digits_train, tmp_path):
    check_resume(DM, dict(iterations=4, **FAST), digits_train, tmp_path)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "name, cls, expected",
    [
        ("dm", DM, {"iterations": 20000, "lr_img": 1.0, "init": "real", "batched": "auto"}),
        ("dc", DC, {"iterations": 1000, "lr_img": 0.1, "init": "noise", "dsa": False}),
        ("dsa", DSA, {"iterations": 1000, "lr_img": 0.1, "init": "real", "dsa": True}),
    ],
)
def test_configs_hold_the_paper_defaults(name, cls, expected):
    cfg = packaged_config(name)
    m = build_method(cfg)
    assert type(m) is cls and isinstance(m, ImageDistillation) and cfg["name"] == name
    assert m.momentum_img == 0.5 and m.batch_real == 256 and m.eval_every == 0
    for k, v in expected.items():
        assert getattr(m, k) == v, k
    if cls is not DM:
        assert m.lr_net == 0.01 and m.distance == "ours"
        assert (
            cls.for_setting("mnist", 50).outer_loop,
            cls.for_setting("mnist", 50).inner_loop,
        ) == (50, 10)


def test_cli_runs_dm_end_to_end(tmp_path):
    """`ddbench run method=dm`: the Hydra node builds the method; the set records its config."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "r"
    env = dict(os.environ, DDBENCH_ALLOCATOR="system", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")
    args = ["run", "method=dm", "dataset=digits", "ipc=1", "method.iterations=3",
            "method.batch_real=32", "checkpoint_every=2", "protocol=quick", "protocol.epochs=2",
            "model.kwargs.net_width=16", "progress=false", f"hydra.run.dir={out}"]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "ddbench.cli", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "result.json").read_text())["method"] == "dm"
    s = synset.load(out / "synset.safetensors")
    assert s.meta["method"]["config"]["iterations"] == 3 and s.meta["protocol"] == "standard"
    assert not (out / "checkpoint.safetensors").exists()  # cleared once the set is saved


def test_dc_freezes_batchnorm_statistics_with_real_data(digits_train):
    """DC's BatchNorm handling: running stats from a real batch, BN in eval mode for matching."""
    task = make_task(digits_train, 1)
    task.model_factory = lambda: create_model("convnet_bn", 1, 10, (8, 8), net_width=16)
    modes = []
    method = DC(iterations=1, outer_loop=2, inner_loop=1, **FAST)
    matching_loss = method.matching_loss

    def spy(task, net, images):
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        modes.append([m.training for m in bns] + [bool(bns[0].running_mean.abs().sum() > 0)])
        return matching_loss(task, net, images)

    method.matching_loss = spy
    s = method.distill(task)
    assert modes == [[False, False, False, True]] * 2 and torch.isfinite(s.images).all()

"""AST (methods/ast.py) against the authors' code (AST-Alignment-with-Smooth-Expert @8030869):
the smooth expert step and recipe, the balanced inner loss, the student momentum, the
intermediate matching terms, the weight perturbation and the k-means initialisation, each
checked against an independent computation on the real digits data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Killed, kill_training_after_epoch, make_task
from torch import nn

from ddbench import engine, experts
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, ExpertStepContext
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.ast import AST, LOSS_DECAY, SmoothStep, balance_factor, kmeans_rows
from ddbench.methods.mtt import MTT

pytestmark = pytest.mark.usefixtures("one_thread")

# plain experts that learn digits within 4 epochs: the distillation tests need trajectories only
EXPERTS = {"model_kwargs": {"net_width": 16}, "epochs": 4, "lr": 0.05, "batch_size": 64,
           "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "step": "plain",
           "step_kwargs": {}}  # fmt: skip
BASE = dict(iterations=2, lr_img=100.0, lr_teacher=0.2, syn_steps=4, batch_syn=10,
            num_experts=1, experts=EXPERTS, expert_epochs=2, max_start_epoch=2)  # fmt: skip
OFF = dict(representative_init=None, balance_loss=False, agg_middle_loss=False,
           weight_perturb=False, student_momentum=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ast_experts")


@pytest.fixture
def cached(shared_cache, monkeypatch):
    monkeypatch.setenv("DDBENCH_CACHE", str(shared_cache))


def _ready(digits_train, ipc=2, **kw):
    a = AST(**{**BASE, **kw})
    task = make_task(digits_train, ipc)
    a.prepare(task)
    images, labels = a.init_images(task)
    return a, task, images.requires_grad_(True), labels


def _loss(a, task, images, labels, seed=7, start=None):
    task.generator.manual_seed(seed)
    e, s = a.sample_expert(task)
    return a.matching_loss(task, images, labels, e, s if start is None else start)


# ---------------------------------------------------------------------------- smooth experts


def _digits_batch(digits_train, n=12):
    x = digits_train.normalize(digits_train.images[:n])
    return torch.cat([x, 0.5 * x**2], 1), digits_train.labels[:n]  # 2 channels


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(108, 10))


def _smooth_grads(net, x, y, epoch, **kw):
    """The gradient :class:`SmoothStep` leaves (SGD lr 0) for a batch whose augmented view is
    ``x`` flipped (the penalty must see ``x``)."""
    step = SmoothStep(**{"grad_penalty": 0.0, "loss_decay": False, "reset_momentum": False, **kw})
    step.context = ExpertStepContext(net, epoch)
    step.context.observe(x, y)
    params = list(net.parameters())
    step(lambda: F.cross_entropy(net(x.flip(-1)), y), params, torch.optim.SGD(params, lr=0.0))
    return [p.grad.clone() for p in params]


def test_smooth_step_is_their_decayed_ce_plus_the_input_gradient_penalty(digits_train):
    x, y = _digits_batch(digits_train)
    net = _net()
    params = list(net.parameters())
    got = _smooth_grads(net, x, y, 0, grad_penalty=2.0, loss_decay=True)
    # independently: per image, d sum(logits) / d x, its norm over the 2 channels per pixel
    pen = 0.0
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(net(xi).sum(), xi, create_graph=True)
        pen = pen + ((torch.sqrt(gi[0, 0] ** 2 + gi[0, 1] ** 2) - 1) ** 2).sum()
    pen = pen / (len(x) * 8 * 8)  # the mean over images and pixels
    loss = 0.5 * F.cross_entropy(net(x.flip(-1)), y) + 2.0 * pen
    for g, e in zip(got, torch.autograd.grad(loss, params)):
        torch.testing.assert_close(g, e)
    # the weight rises over 10 epochs, then 1; no penalty and no decay: the plain gradient
    plain = torch.autograd.grad(F.cross_entropy(net(x.flip(-1)), y), params)
    assert LOSS_DECAY[0] == 0.5 and LOSS_DECAY[-1] == 0.95 and len(LOSS_DECAY) == 10
    for epoch, w in ((3, 0.65), (9, 0.95), (10, 1.0), (30, 1.0)):
        for g, e in zip(_smooth_grads(net, x, y, epoch, loss_decay=True), plain):
            torch.testing.assert_close(g, w * e)
    for g, e in zip(_smooth_grads(net, x, y, 0), plain):
        torch.testing.assert_close(g, e)


def test_a_smooth_expert_epoch_is_one_sgd_step_on_their_loss(digits_train, tmp_path, monkeypatch):
    """The trainer's whole path (engine, its fused SGD, the context) on one full-batch epoch
    equals a plain SGD step on ``CE + 2 mean((||grad_x||_c - 1)^2)`` from the same network (the
    double backward gives conv weights gradients with other strides than the weights: they must
    reach the fused optimiser in the weights' layout)."""
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path))
    cfg = dataclasses.replace(
        AST().experts, model_kwargs={"net_width": 16}, epochs=1, batch_size=4096,
        milestones=[1.0], augment="none",  # (0.54 of 1 epoch: the drop would be at epoch 0)
        step_kwargs={"grad_penalty": 2.0, "reset_momentum": True},
    )  # fmt: skip
    traj = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    torch.manual_seed(cfg.seed)
    net = experts.build_expert_model("digits", cfg)
    params = list(net.parameters())
    x, y = digits_train.normalize(digits_train.images), digits_train.labels
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(net(xg).sum(), xg, create_graph=True)
    loss = F.cross_entropy(net(x), y) + 2.0 * ((gx.norm(dim=1) - 1) ** 2).mean()
    opt = torch.optim.SGD(params, lr=0.003, momentum=0.9, weight_decay=1e-3, foreach=False)
    opt.zero_grad()
    loss.backward()
    opt.step()
    want = experts.FlatModel(net).flatten(dict(net.named_parameters()))
    assert float((traj[1] - traj[0]).abs().max()) > 1e-4  # it moved
    torch.testing.assert_close(traj[1], want, rtol=0, atol=1e-6)


def test_smooth_step_restarts_momentum_when_the_lr_drops(digits_train):
    x, y = _digits_batch(digits_train)

    def run(reset):
        net = _net()
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
        step = SmoothStep(grad_penalty=0.0, loss_decay=False, reset_momentum=reset)
        step.context = ExpertStepContext(net)
        for lr in (0.1, 0.1, 0.06):
            for group in opt.param_groups:
                group["lr"] = lr
            before = [p.detach().clone() for p in params]
            grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
            step(lambda: F.cross_entropy(net(x), y), params, opt)
        return before, grads, params

    before, grads, params = run(True)
    for b, g, p in zip(before, grads, params):  # a fresh optimiser: the step is lr * (g + wd w)
        torch.testing.assert_close(p.detach(), b - 0.06 * (g + 1e-3 * b))
    before, grads, params = run(False)
    assert not torch.allclose(params[0].detach(), before[0] - 0.06 * (grads[0] + 1e-3 * before[0]))


def test_ast_experts_follow_their_recipe_and_resume_exactly(tmp_path, monkeypatch, digits_train):
    # AST's experts, tiny: 3 epochs, the lr drop after the first
    cfg = dataclasses.replace(AST().experts, model_kwargs={"net_width": 8}, epochs=3,
                              milestones=[0.5])  # fmt: skip
    assert cfg.step == "smooth" and (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.003, 0.9, 1e-3)
    seen = []
    real_call = SmoothStep.__call__

    def spy(self, closure, params, opt):
        seen.append((self.context.epoch, opt.param_groups[0]["lr"], self.context.inputs))
        return real_call(self, closure, params, opt)

    monkeypatch.setattr(SmoothStep, "__call__", spy)
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "a"))
    unbroken = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    per_epoch = math.ceil(len(digits_train.labels) / 256)
    assert [s[0] for s in seen] == [e for e in range(3) for _ in range(per_epoch)]
    lrs = sorted({(s[0], round(s[1], 10)) for s in seen})
    assert lrs == [(0, 0.003), (1, 0.0018), (2, 0.0018)]  # x0.6 at the milestone
    # the step sees the batch before augmentation: rows of the normalised train images
    train = digits_train.normalize(digits_train.images).flatten(1)
    rows = seen[0][2].flatten(1)
    assert len(rows) == 256 and all((train == r).all(1).any() for r in rows)
    # killed before the lr drop, resumed: the same epochs, weights and momentum restart
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "b"))
    real_train = kill_training_after_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        experts.get_experts("digits", cfg, 1, "cpu", progress=False)
    monkeypatch.setattr(engine, "train", real_train)
    resumed = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    assert torch.equal(resumed, unbroken) and torch.isfinite(unbroken).all()


def test_the_schedule_fields_enter_the_expert_key_only_when_set():
    plain, step = ExpertConfig(), ExpertConfig(schedule="step")
    assert ExpertConfig(milestones=[0.5], gamma=0.1).key("digits") == plain.key("digits")
    assert ExpertConfig(gamma=0.6).key("digits") == plain.key("digits")  # constant: no effect
    keys = {step.key("digits"), plain.key("digits")}
    keys |= {ExpertConfig(schedule="step", **kw).key("digits")
             for kw in ({"gamma": 0.6}, {"milestones": [0.54]})}  # fmt: skip
    assert len(keys) == 4
    # a variant's settings at their defaults are the plain step (a command line turns AST's off)
    off = ExpertConfig(step="plain", step_kwargs={"grad_penalty": 0.0, "loss_decay": False})
    assert off.step_fn() is None and off.key("digits") == plain.key("digits")
    with pytest.raises(DDBenchError, match="loss_decay=True need a step variant"):
        ExpertConfig(step="plain", step_kwargs={"loss_decay": True})
    for bad in ({"gamma": 0.0}, {"milestones": [1.5]}):
        with pytest.raises(DDBenchError, match="milestones"):
            ExpertConfig(**bad)
    with pytest.raises(DDBenchError, match="grad_penalty"):
        ExpertConfig(step="smooth", step_kwargs={"grad_penalty": -1.0})
    # 50 epochs: the lr drops after epoch 26 (0-based), buffer.py's train_epochs // 2 + 1
    ast = AST().experts
    recipe = engine.Recipe(epochs=ast.epochs, schedule=ast.schedule,
                           milestones=tuple(ast.milestones), gamma=ast.gamma)  # fmt: skip
    assert engine.lr_at(recipe, 26, 0.003) == 0.003
    assert engine.lr_at(recipe, 27, 0.003) == pytest.approx(0.0018)
    assert engine.lr_at(recipe, 49, 0.003) == pytest.approx(0.0018)


# ---------------------------------------------------------------------------- the unroll


def test_balance_factor_is_their_log5_of_the_start_epoch():
    assert balance_factor(10, 20) == pytest.approx(math.log(8) / math.log(5))
    assert balance_factor(17, 20) == pytest.approx(math.log(15) / math.log(5))
    assert balance_factor(3, 20) == pytest.approx(math.log(5) / math.log(15))
    assert balance_factor(0, 25) == pytest.approx(math.log(5) / math.log(20))


def test_ast_off_is_mtt_and_balance_loss_scales_the_students_steps(digits_train, cached):
    a, task, images, labels = _ready(digits_train, **OFF)
    mtt = MTT(**{k: v for k, v in a.config.items() if k in MTT.Settings.__dataclass_fields__})
    mtt.prepare(task)
    torch.testing.assert_close(_loss(a, task, images, labels), _loss(mtt, task, images, labels))
    # without momentum, scaling every step's CE by f is taking steps of lr * f
    b, *_ = _ready(digits_train, **{**OFF, "balance_loss": True})
    for start in (0, 1):
        f = balance_factor(start, b.max_start_epoch)
        task.generator.manual_seed(7)
        e, _ = b.sample_expert(task)
        got = b.matching_loss(task, images, labels, e, start)
        task.generator.manual_seed(7)
        b.sample_expert(task)
        want = a.matching_loss(task, images, labels, e, start, lr=a.syn_lr * f)
        torch.testing.assert_close(got, want)
        assert f != pytest.approx(1.0)


def test_ast_unroll_is_their_momentum_unroll_with_the_middle_terms(digits_train, cached):
    kw = {**OFF, "student_momentum": 0.9, "agg_middle_loss": True, "syn_steps": 5}
    a, task, images, labels = _ready(digits_train, **kw)
    assert a.middle_steps() == {2: 1}  # 5 // 2 steps per expert epoch
    assert AST(syn_steps=20, expert_epochs=3).middle_steps() == {6: 1, 12: 2}
    assert AST(syn_steps=30, expert_epochs=2, agg_middle_loss=False).middle_steps() == {}
    got = _loss(a, task, images, labels, start=1)
    # by hand: b = 0.9 b + g (b = g at the first step), w -= lr b; distances to the expert
    task.generator.manual_seed(7)
    a.sample_expert(task)
    traj, lr = a.trajectories[0], a.syn_lr
    w = traj[1].clone().requires_grad_(True)
    ws, b = [], None
    for idx, draw in a.unroll_plan(task, len(images)):
        (g,) = torch.autograd.grad(
            a.student_loss(w, images, labels, idx, draw), w, create_graph=True
        )
        b = g if b is None else 0.9 * b + g
        w = w - lr * b
        ws.append(w)

    def dist(u, e):
        return ((u - traj[1 + e]) ** 2).sum() / ((traj[1] - traj[1 + e]) ** 2).sum()

    want = dist(ws[-1], 2) + dist(ws[1], 1)
    torch.testing.assert_close(got, want)
    gi = torch.autograd.grad(got, images)[0]
    torch.testing.assert_close(gi, torch.autograd.grad(want, images)[0])
    # the same loss and gradient with the unroll recomputed in the backward pass
    c, *_ = _ready(digits_train, **kw, checkpoint_unroll=True)
    again = _loss(c, task, images, labels, start=1)
    torch.testing.assert_close(again, got)
    torch.testing.assert_close(torch.autograd.grad(again, images)[0], gi, rtol=1e-4, atol=1e-7)


def test_weight_perturbation_moves_conv_weights_only_by_unit_relative_noise(digits_train, cached):
    a, task, *_ = _ready(digits_train, **{**OFF, "weight_perturb": True})
    theta = a.trajectories[0][2]
    task.generator.manual_seed(3)
    p1 = a.start_params(task, theta)
    task.generator.manual_seed(3)
    assert torch.equal(a.start_params(task, theta), p1)
    convs = 0
    for name, shape, w, q in zip(a.student.names, a.student.shapes,
                                 theta.split(a.student.numels), p1.split(a.student.numels)):  # fmt: skip
        if len(shape) == 4:
            convs += 1
            d = (q - w)[w != 0] / w[w != 0]
            assert float(d.norm()) == pytest.approx(1.0, rel=1e-3), name
        else:
            assert torch.equal(q, w), name
    assert convs == 3


# ---------------------------------------------------------------------------- initialisation


def test_kmeans_init_takes_the_images_nearest_the_logit_centres(digits_train, cached):
    a, task, images, labels = _ready(digits_train, ipc=1)  # one centre: the mean logit
    net = task.model_factory()
    torch.nn.utils.vector_to_parameters(a.trajectories[0][-1], net.parameters())
    net.eval()
    for c in (0, 4, 9):
        idx = task.train.indices_of(c)
        with torch.no_grad():
            logits = net(task.normalize(task.train.images[idx]))
        i = int(idx[((logits - logits.mean(0)) ** 2).sum(1).argmin()])
        torch.testing.assert_close(images[c : c + 1], task.normalize(task.train.images[i : i + 1]))
    assert torch.equal(labels, torch.arange(10))
    # ipc a multiple of the clusters: ipc // clusters nearest each centre
    b, task2, images2, labels2 = _ready(digits_train, ipc=2, representative_clusters=1)
    idx = task2.train.indices_of(3)
    with torch.no_grad():
        logits = net(task2.normalize(task2.train.images[idx]))
    two = idx[((logits - logits.mean(0)) ** 2).sum(1).argsort()[:2]]
    torch.testing.assert_close(images2[6:8], task2.normalize(task2.train.images[two]))
    # ipc below the 10 clusters: ipc centres, one image each
    rows = kmeans_rows(logits, 2, 10)
    assert torch.equal(rows, kmeans_rows(logits, 2, 2)) and len(set(rows.tolist())) == 2
    with pytest.raises(DDBenchError, match="clusters"):
        kmeans_rows(logits[:5], 10, 10)


def test_the_packaged_ast_config_is_the_authors(digits_train):
    m = build_method(packaged_config("ast", ["model.kwargs.net_width=16"]))
    assert type(m) is AST and m.protocol == "learned_lr"
    assert (m.representative_init, m.balance_loss, m.agg_middle_loss, m.weight_perturb) == (
        "kmeans",
        True,
        True,
        True,
    )
    assert m.student_momentum == 0.9 and m.representative_clusters == 10
    e = m.experts
    assert (e.step, e.epochs, e.batch_size, e.lr, e.momentum, e.weight_decay) == (
        "smooth",
        50,
        256,
        0.003,
        0.9,
        0.001,
    )
    assert e.step_kwargs == {"grad_penalty": 2.0, "loss_decay": True, "reset_momentum": True}
    assert (e.schedule, e.milestones, e.gamma) == ("step", [0.54], 0.6)
    with pytest.raises(DDBenchError, match="representative_init"):
        AST(representative_init="average")

"""FTD, DATM and AST (methods/ftd.py, datm.py, ast.py) over MTT, and the expert-step variants
they register with the expert trainer (ddbench/experts.py's hook: FTD's GSAM, AST's smooth
experts), on the real digits data; AST's own parts: tests/test_ast.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import Killed, check_resume, counting, kill_training_after_epoch, make_task

import ddbench
from ddbench import engine, experts, synset
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, register_step
from ddbench.method import Checkpointer, build_method
from ddbench.methods import packaged_config
from ddbench.methods.ast import AST, SmoothStep
from ddbench.methods.datm import DATM
from ddbench.methods.ftd import FTD, GSAMStep
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.relabel import class_consistent

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).parents[1] / "conf"
# experts that learn digits within 4 epochs (batch 64), GSAM-trained as FTD's/DATM's are
EXPERTS = {"model_kwargs": {"net_width": 16}, "epochs": 4, "lr": 0.05, "batch_size": 64,
           "step": "gsam", "step_kwargs": {"sam_rho": 0.05, "gsam_alpha": 0.4}}  # fmt: skip
# 4 student steps cover an expert epoch of 21 steps at lr 0.05 only with a larger lr
COMMON = dict(iterations=4, lr_img=100.0, lr_teacher=0.2, syn_steps=4, batch_syn=10,
              num_experts=2, experts=EXPERTS)  # fmt: skip
CFGS = {
    FTD: dict(COMMON, expert_epochs=1, max_start_epoch=2, ema_decay=0.5),
    DATM: dict(COMMON, expert_epochs=1, max_start_epoch=1, max_start_epoch_final=3),
    AST: dict(COMMON, expert_epochs=2, max_start_epoch=2, lr_lr=1e-05),
}
# the expert fields that existed before the step variants: plain keys must not change
OLD_FIELDS = ("model", "model_kwargs", "epochs", "batch_size", "lr", "momentum", "weight_decay",
              "schedule", "augment", "zca", "zca_eps", "seed")  # fmt: skip


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("experts")


@pytest.fixture
def cached_experts(shared_cache, monkeypatch) -> Path:
    """One expert cache for this module's method tests: each expert is trained once."""
    monkeypatch.setenv("DDBENCH_CACHE", str(shared_cache))
    return shared_cache


def _ready(cls, digits_train, ipc=2, **kw):
    """A method with its experts, a task, the initial images (requiring grad) and labels."""
    m = cls(**{**CFGS[cls], **kw})
    task = make_task(digits_train, ipc)
    m.prepare(task)
    images, labels = m.init_images(task)
    return m, task, images.requires_grad_(True), labels


def _targets(m, labels):
    """The labels the student trains on: DATM's current soft labels, else the hard ones."""
    logits = getattr(m, "label_logits", None)
    return labels if logits is None else F.softmax(logits, 1)


def _fixed(m, task, images, labels, seed=7):
    task.generator.manual_seed(seed)
    e, s = m.sample_expert(task)
    return m.matching_loss(task, images, _targets(m, labels), e, s)


# ---------------------------------------------------------------------------- expert variants


def _step_on(step, w0, closure_of):
    """Run ``step`` once on a copy of ``w0`` with SGD lr 0 (parameters unchanged): the gradient
    it leaves in ``p.grad``."""
    w = w0.clone().requires_grad_(True)
    step(lambda: closure_of(w), [w], torch.optim.SGD([w], lr=0.0))
    return w.grad


def gsam(sam_rho=0.0, gsam_alpha=0.0, sam_adaptive=False):
    return GSAMStep(sam_rho, gsam_alpha, sam_adaptive)


def test_expert_steps_use_the_ascent_point_and_gsam_as_defined():
    torch.manual_seed(0)
    a, w0 = torch.randn(5, 5), torch.randn(5)

    def loss_of(w):  # non-quadratic, so the gradient changes along the ascent
        return torch.log1p(torch.exp(a @ w)).sum()

    def grad_at(w):
        w = w.detach().clone().requires_grad_(True)
        return torch.autograd.grad(loss_of(w), w)[0]

    g = grad_at(w0)
    rho = 0.3
    g_adv = grad_at(w0 + rho * g / g.norm())
    sam = _step_on(gsam(sam_rho=rho), w0, loss_of)
    torch.testing.assert_close(sam, g_adv)
    assert not torch.allclose(sam, g)
    # GSAM: minus alpha x the component of g orthogonal to g_adv
    vertical = g - (g @ g_adv) / (g_adv @ g_adv) * g_adv
    gsam_g = _step_on(gsam(sam_rho=rho, gsam_alpha=0.4), w0, loss_of)
    torch.testing.assert_close(gsam_g, g_adv - 0.4 * vertical)
    # adaptive (ASAM) ascent: w^2 g / ||w g||
    g_ada = grad_at(w0 + rho * w0 * w0 * g / (w0.abs() * g).norm())
    ada = _step_on(gsam(sam_rho=rho, sam_adaptive=True), w0, loss_of)
    torch.testing.assert_close(ada, g_ada)


def _old_key(fields: dict) -> str:
    """The key as it was computed when the variants' settings were flat expert fields."""
    canon = json.dumps({"dataset": "digits", **fields}, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_expert_step_variants_keep_the_cache_keys_they_had_as_expert_fields():
    plain = ExpertConfig(**{"model_kwargs": {"net_width": 16}, "epochs": 3})
    old = {k: v for k, v in dataclasses.asdict(plain).items() if k in OLD_FIELDS}
    # source (imported experts) is hashed only when set: test_trajectory_parity.py; milestones
    # and gamma only where not at their defaults under schedule: step
    added = {"step", "step_kwargs", "source", "milestones", "gamma"}
    assert set(dataclasses.asdict(plain)) - set(OLD_FIELDS) == added
    assert plain.key("digits") == _old_key(old)
    variants = [("gsam", dict(sam_rho=0.05)), ("gsam", dict(sam_rho=0.05, gsam_alpha=0.4)),
                ("gsam", dict(sam_rho=0.05, sam_adaptive=True)), ("smooth", dict(grad_penalty=2.0)),
                ("smooth", dict(loss_decay=True)),
                ("smooth", dict(grad_penalty=2.0, loss_decay=True))]  # fmt: skip
    keys = set()
    for step, kw in variants:
        cfg = dataclasses.replace(plain, step=step, step_kwargs=kw)
        assert cfg.key("digits") == _old_key({**old, **kw})  # cached experts keep their paths
        keys.add(cfg.key("digits"))
        # a setting given at its default is not part of the key
        full = dataclasses.replace(cfg, step_kwargs={"gsam_alpha": 0.0, **kw} if step == "gsam"
                                   else {"reset_momentum": False, **kw})  # fmt: skip
        assert full.key("digits") == cfg.key("digits")
    assert len(keys) == len(variants) and plain.key("digits") not in keys
    for bad in (dict(step="gsam", step_kwargs={"sam_rho": -1.0}),
                dict(step="gsam", step_kwargs={"gsam_alpha": 0.4}),
                dict(step="gsam", step_kwargs={"clip_grad": 1.0}),
                dict(step="smooth", step_kwargs={"sam_rho": 0.1}),
                dict(step="smooth", step_kwargs={"grad_penalty": -0.1}),
                dict(step="smooth", step_kwargs={}), dict(step_kwargs={"sam_rho": 0.1}),
                dict(step="sharp")):  # fmt: skip
        with pytest.raises(DDBenchError, match="experts:"):
            ExpertConfig.from_config({**old, **bad})


def test_a_method_registers_an_expert_step_that_the_trainer_then_uses(monkeypatch):
    """The hook: a step registered under a name trains experts whose config names it; its
    settings are checked by name, and no setting may belong to two variants."""
    calls = []

    class Halved:
        def __init__(self, factor):
            self.factor = factor

        def __call__(self, closure, params, opt):
            loss = closure()
            calls.append(self.factor)
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = self.factor * g
            opt.step()
            return loss.detach()

    monkeypatch.setattr(experts, "_STEPS", dict(experts._STEPS))
    register_step("halved", Halved, {"factor": 1.0})
    with pytest.raises(DDBenchError, match="belong to another variant"):
        register_step("other", Halved, {"factor": 1.0, "x": 0})
    base = {"model_kwargs": {"net_width": 8}, "epochs": 1, "lr": 0.05, "batch_size": 256}
    cfg = ExpertConfig(**base, step="halved", step_kwargs={"factor": 0.5})
    traj = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    assert calls and set(calls) == {0.5} and torch.isfinite(traj).all()
    plain = experts.get_experts("digits", ExpertConfig(**base), 1, "cpu", progress=False)[0]
    assert torch.equal(traj[0], plain[0]) and not torch.allclose(traj[-1], plain[-1])


def test_expert_variants_train_through_the_engine_and_move_differently(monkeypatch):
    base = {"model_kwargs": {"net_width": 8}, "epochs": 2, "lr": 0.05, "batch_size": 64}
    steps_seen = []
    real_train = engine.train

    def spy(*a, step_fn=None, **k):
        steps_seen.append(step_fn)
        return real_train(*a, step_fn=step_fn, **k)

    monkeypatch.setattr(engine, "train", spy)
    plain = experts.get_experts("digits", ExpertConfig(**base), 1, "cpu", progress=False)[0]
    assert steps_seen == [None]  # plain experts: the engine's default step, as before
    for step, kw, cls in (("gsam", dict(sam_rho=0.05, gsam_alpha=0.4), GSAMStep),
                          ("smooth", dict(grad_penalty=2.0, loss_decay=True), SmoothStep)):  # fmt: skip
        cfg = ExpertConfig(**base, step=step, step_kwargs=kw)
        traj = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
        assert isinstance(steps_seen[-1], cls)
        assert traj.shape == plain.shape and torch.isfinite(traj).all()
        assert torch.equal(traj[0], plain[0])  # same seed, same initial network
        assert not torch.allclose(traj[-1], plain[-1])  # another optimiser, another trajectory
        assert synset.read_header(experts.expert_path("digits", cfg, 0))["key"] == cfg.key("digits")


def test_a_killed_sam_expert_training_resumes_and_ends_as_an_unbroken_one(tmp_path, monkeypatch):
    cfg = ExpertConfig(model_kwargs={"net_width": 8}, epochs=3, step="gsam",
                       step_kwargs={"sam_rho": 0.05, "gsam_alpha": 0.4})  # fmt: skip
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "a"))
    real_train = kill_training_after_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        experts.get_experts("digits", cfg, 1, "cpu", progress=False)
    monkeypatch.setattr(engine, "train", real_train)
    resumed = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "b"))
    unbroken = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    assert torch.equal(resumed, unbroken)


# ---------------------------------------------------------------------------- all three


@pytest.mark.parametrize("cls", [FTD, DATM, AST], ids=lambda c: c.name)
def test_iterations_on_fixed_draws_reduce_the_matching_loss(cls, digits_train, cached_experts):
    m, task, images, labels = _ready(cls, digits_train)
    before = float(_fixed(m, task, images, labels).detach())
    assert 0 < before < 10
    m._opt = torch.optim.SGD([images], lr=m.lr_img, momentum=0.5)
    lr0 = float(m.syn_lr.detach())
    for _ in range(5):
        task.generator.manual_seed(7)  # the same expert, start, batches, DSA draws, perturbation
        m.step(task, images, labels, 0)
    after = float(_fixed(m, task, images, labels).detach())
    assert after < 0.9 * before, (before, after)
    assert float(m.syn_lr.detach()) != lr0


@pytest.mark.parametrize("cls", [FTD, DATM, AST], ids=lambda c: c.name)
def test_the_learned_lr_is_positive_and_stored_and_the_set_loads(
    cls, digits_train, cached_experts, tmp_path
):
    s = cls(**{**CFGS[cls], "iterations": 2}).distill(make_task(digits_train, 2))
    assert s.lr is not None and s.lr.shape == (1,)
    assert 0 < float(s.lr) != pytest.approx(COMMON["lr_teacher"])  # learned, not the init
    assert s.meta["protocol"] == cls.protocol and s.meta["method"]["name"] == cls.name
    back = ddbench.load(synset.save(s, tmp_path / f"{cls.name}.safetensors"))
    assert torch.equal(back.lr, s.lr) and torch.equal(back.images, s.images)
    assert back.images.shape == (20, 1, 8, 8)


# ---------------------------------------------------------------------------- FTD


def test_ftd_sets_hold_the_ema_of_the_images(digits_train, cached_experts):
    seen = []

    class Recording(FTD):
        def step(self, task, images, labels, it):
            value = super().step(task, images, labels, it)
            seen.append(images.detach().clone())
            return value

    m = Recording(**CFGS[FTD])
    task = make_task(digits_train, 2)
    init, _ = m.init_images(make_task(digits_train, 2))
    s = m.distill(task)
    ema, d = init, CFGS[FTD]["ema_decay"]
    for x in seen:
        ema = d * ema + (1 - d) * x
    assert len(seen) == 4
    torch.testing.assert_close(s.images, ema)
    assert not torch.allclose(s.images, seen[-1])  # not the last images
    assert s.meta["distillation"]["images"] == "ema" and m.experts.step == "gsam"


def test_a_killed_ftd_run_resumes_with_its_ema(digits_train, cached_experts, tmp_path):
    check_resume(FTD, CFGS[FTD], digits_train, tmp_path)  # compares the saved EMA images
    m = FTD(**CFGS[FTD])
    m.distill(make_task(digits_train, 2))
    assert set(m.state_tensors()) == {"ema_images"}  # the lr and its momentum: the loop's


# ---------------------------------------------------------------------------- DATM


def test_datm_start_epoch_range_grows_as_configured():
    m = DATM(iterations=100, min_start_epoch=1, max_start_epoch=3, max_start_epoch_final=9,
             expansion_iterations=None, expert_epochs=1, experts={"epochs": 10})  # fmt: skip
    uppers = [m.upper_start_epoch(it) for it in range(100)]
    assert uppers[0] == 3 and 3 < uppers[50] < 9 and m.upper_start_epoch(100) == 9
    assert all(a <= b for a, b in zip(uppers, uppers[1:]))
    m.trajectories = [torch.zeros(1)] * 2  # sampling needs only their number
    g = torch.Generator().manual_seed(0)

    class _T:
        generator = g

    def starts(it):
        m._it = it
        return [m.sample_expert(_T)[1] for _ in range(300)]

    early, late = starts(0), starts(99)
    assert min(early) == 1 and max(early) == 2  # [min_start_epoch, max_start_epoch)
    assert min(late) == 1 and max(late) == uppers[-1] - 1
    fast = DATM(iterations=100, max_start_epoch=3, max_start_epoch_final=9, expansion_iterations=10,
                expert_epochs=1, experts={"epochs": 10})  # fmt: skip
    assert fast.upper_start_epoch(5) == 6 and fast.upper_start_epoch(10) == 9
    assert fast.upper_start_epoch(50) == 9
    with pytest.raises(Exception, match="exceeds"):
        DATM(max_start_epoch=3, max_start_epoch_final=10, expert_epochs=1, experts={"epochs": 10})


def test_datm_inits_images_the_expert_gets_right_and_labels_from_its_logits(
    digits_train, cached_experts, caplog
):
    with caplog.at_level(logging.WARNING, logger="ddbench"):
        m, task, images, labels = _ready(DATM, digits_train, label_average=False)
    net, w = m.label_model(task)
    torch.testing.assert_close(w, m.trajectories[0][-1])
    with torch.no_grad():
        logits = net(w, images)
        right = [int((net(w, task.real_images(c)).argmax(1) == c).sum()) for c in range(10)]
    torch.testing.assert_close(m.label_logits.detach(), logits)
    # as many correctly classified images per class as the class has, up to ipc
    got = (logits.argmax(1) == labels).view(10, 2).sum(1).tolist()
    assert got == [min(r, 2) for r in right] and sum(got) > 10
    assert ("classifies only" in caplog.text) == (min(right) < 2)
    # an untrained label expert gets too few right: the init falls back and says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddbench"):
        _ready(DATM, digits_train, label_epoch=0)
    assert "classifies only" in caplog.text and "filling" in caplog.text


def test_datm_labels_start_from_the_mean_logits_of_the_experts_right_on_each_image(
    digits_train, cached_experts
):
    """DATM's samples_predicted_correctly: per image, the mean of the logits of the experts
    (all of them, at the label epoch) that classify it correctly; none right: all experts' mean."""
    m, task, images, labels = _ready(DATM, digits_train)
    net, _ = m.label_model(task)
    with torch.no_grad():
        outs = torch.stack([net(t[-1], images) for t in m.trajectories])
    right = outs.argmax(2) == labels
    # both kinds of image occur: ones both experts get right, ones only one does
    assert len(m.trajectories) == 2 and right.all(0).any() and not right.all(0).all()
    want = torch.stack([
        outs[right[:, i], i].mean(0) if right[:, i].any() else outs[:, i].mean(0)
        for i in range(len(labels))
    ])  # fmt: skip
    torch.testing.assert_close(m.label_logits.detach(), want)
    # only the images both experts get right differ from the label expert's own logits
    differs = (m.label_logits.detach() - outs[0]).abs().amax(1) > 1e-5
    assert torch.equal(differs, right.all(0) | ~right[0])


def test_datm_soft_labels_are_stored_loaded_and_evaluated_under_its_protocol(
    digits_train, cached_experts, tmp_path
):
    m = DATM(**CFGS[DATM])
    s = m.distill(make_task(digits_train, 2))
    assert s.soft_labels and s.labels.shape == (20, 10)
    classes = torch.arange(10).repeat_interleave(2)
    fixed, changed = class_consistent(m.label_logits.detach(), classes)
    torch.testing.assert_close(s.labels, F.softmax(fixed, 1))
    assert torch.equal(s.hard_labels, classes)  # each image keeps its class (the ipc budget)
    assert s.meta["distillation"]["labels_made_class_consistent"] == changed
    init = m.label_logits.detach().clone()
    m2, *_ = _ready(DATM, digits_train)
    assert not torch.allclose(m2.label_logits.detach(), init)  # the labels were learned
    back = ddbench.load(synset.save(s, tmp_path / "datm.safetensors"))
    assert back.meta["label_kind"] == "soft" and torch.equal(back.labels, s.labels)
    assert back.meta["protocol"] == "datm"  # learned_lr with batch 128
    llr = Protocol.from_config({**protocol_config("datm"), "epochs": 2, "seeds": [0]})
    r = evaluate(back, llr, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert r["labels"]["kind"] == "soft" and 0 <= r["accuracy"]["mean"] <= 100


def test_datm_threshold_skips_the_updates_of_a_distant_match(digits_train, cached_experts):
    m, task, images, labels = _ready(DATM, digits_train, threshold=0.0)
    m._opt = torch.optim.SGD([images], lr=m.lr_img, momentum=0.5)
    before = (images.detach().clone(), m.label_logits.detach().clone(), float(m.syn_lr.detach()))
    m.step(task, images, labels, 0)
    assert m._skipped == 1 and torch.equal(images.detach(), before[0])
    assert torch.equal(m.label_logits.detach(), before[1])
    assert float(m.syn_lr.detach()) == before[2]


def test_a_killed_datm_run_resumes_images_lr_and_labels(digits_train, cached_experts, tmp_path):
    counted = counting(DATM)
    reference = counted(**CFGS[DATM]).distill(make_task(digits_train, 2))
    killed = counted(kill_at=3, **CFGS[DATM])
    with pytest.raises(Killed):
        killed.distill(make_task(digits_train, 2, directory=tmp_path, key="a", every=2))
    _, tensors, state = Checkpointer(tmp_path, "a").load()
    assert "learned.labels.0" in tensors and set(state["optim"]) == {"images", "lr", "labels"}
    assert "optim.labels.state.0.momentum_buffer" in tensors  # the labels' optimiser state
    resumed = counted(**CFGS[DATM])
    s = resumed.distill(make_task(digits_train, 2, directory=tmp_path, key="a", every=2))
    assert resumed.calls == [2, 3] and s.meta["distillation"]["resumed_from"] == 2
    torch.testing.assert_close(s.images, reference.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.labels, reference.labels, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.lr, reference.lr)
    assert s.soft_labels and not torch.allclose(s.labels, killed.label_logits.softmax(1).detach())


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("cls", [FTD, DATM, AST], ids=lambda c: c.name)
def test_the_configs_build_the_methods_with_the_runs_model_and_their_experts(cls):
    m = build_method(packaged_config(cls.name, ["model.kwargs.net_width=16"]))
    assert type(m) is cls and m.iterations > 0
    assert m.protocol == ("datm" if cls is DATM else "learned_lr")
    assert m.experts.model_kwargs["net_width"] == 16 and not m.fyi
    e = m.experts
    if cls is AST:  # smooth experts (README.md:12's buffer.py command)
        assert e.step == "smooth" and e.step_kwargs["grad_penalty"] > 0
        assert e.step_kwargs["loss_decay"]
    else:  # FTD's GSAM buffers (DATM trains its experts with FTD's script)
        assert e.step == "gsam" and e.step_kwargs["sam_rho"] > 0
        assert e.step_kwargs["gsam_alpha"] > 0


@pytest.mark.parametrize("cls", [DATM, AST])
def test_a_start_given_by_init_from_is_the_start_of_datm_and_ast(
    cls, digits_train, cached_experts, tmp_path
):
    """init_from replaces DATM's correct-only draw (its labels then come from those images) and
    AST's representative start, as it replaces MTT's real draw."""
    kw = {"representative_init": "kmeans"} if cls is AST else {}
    m, task, images, labels = _ready(cls, digits_train, **kw)
    start = (images.detach() + 0.5).cpu()  # not what either start would draw
    path = synset.save(task.make_set(start, labels.cpu(), method=m), tmp_path / "s.safetensors")
    m2, task2, images2, labels2 = _ready(cls, digits_train, init_from=str(path), **kw)
    torch.testing.assert_close(images2.detach().cpu(), start)
    if cls is DATM:  # the labels start from the logits on the start images
        net, w = m2.label_model(task2)
        with torch.no_grad():
            want = m2.initial_logits(images2.detach(), labels2, net, w)
        torch.testing.assert_close(m2.label_logits.detach(), want)


def test_methods_whose_start_is_not_images_refuse_init_from():
    from ddbench.methods.infer import INFER

    with pytest.raises(DDBenchError, match="infer: init_from is not supported"):
        INFER(init_from="x.safetensors")

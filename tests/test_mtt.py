"""Expert trajectories (ddbench/experts.py) and MTT (methods/mtt.py), on the real digits data."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import Killed, check_resume, kill_training_after_epoch, make_task
from safetensors.torch import load_file

from ddbench import engine, experts, synset
from ddbench.distill import load_optimizer_state
from ddbench.fyi import flip_concat
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.mtt import MTT

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).parents[1] / "conf" / "method" / "mtt.yaml"
TINY = {"model_kwargs": {"net_width": 16}, "epochs": 3}
CFG = experts.ExpertConfig(**TINY)
MTT_CFG = dict(
    iterations=4, lr_img=100.0, syn_steps=4, expert_epochs=1, max_start_epoch=2,
    num_experts=2, experts=TINY, batch_syn=10,
)  # fmt: skip


def _no_training(*a, **k):
    raise AssertionError("a cached expert was trained again")


def test_expert_cache_miss_trains_and_a_hit_trains_nothing(digits_train, monkeypatch):
    trajs = experts.get_experts("digits", CFG, 2, "cpu", progress=False)
    net = experts.build_expert_model("digits", CFG)
    flat = experts.FlatModel(net)
    assert [t.shape for t in trajs] == [(4, flat.num_params)] * 2
    # row 0 is the initial net of seed i, the last row what the engine trains from that seed
    torch.manual_seed(1)
    init = flat.flatten(dict(experts.build_expert_model("digits", CFG).named_parameters()))
    assert torch.equal(trajs[1][0], init)
    recipe = engine.Recipe(epochs=3, momentum=0.0, weight_decay=0.0, schedule="constant",
                           augment=digits_train.spec.dsa_strategy)  # fmt: skip
    ref = engine.train(
        lambda: experts.build_expert_model("digits", CFG), [1],
        digits_train.normalize(digits_train.images), digits_train.labels, recipe, device="cpu",
    ).models[0]  # fmt: skip
    assert torch.equal(trajs[1][-1], flat.flatten(dict(ref.named_parameters())))
    assert all((t[1:] - t[:-1]).abs().amax(1).min() > 0 for t in trajs)  # moves every epoch
    assert not torch.equal(trajs[0][0], trajs[1][0])  # one seed per expert
    path = experts.expert_path("digits", CFG, 0)
    meta = synset.read_header(path)
    assert meta["kind"] == "expert" and meta["key"] == CFG.key("digits") and meta["seed"] == 0
    assert torch.equal(load_file(str(path))["trajectory"], trajs[0])
    # the flat vector calls the network: row -1 of expert 1 is the trained net
    x = digits_train.normalize(digits_train.images[:8])
    with torch.no_grad():
        torch.testing.assert_close(flat(trajs[1][-1], x), ref(x))

    monkeypatch.setattr(engine, "train", _no_training)
    again = experts.get_experts("digits", CFG, 2, "cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(trajs, again))
    with pytest.raises(AssertionError, match="trained again"):  # a 3rd expert is a miss
        experts.get_experts("digits", CFG, 3, "cpu", progress=False)
    other = experts.ExpertConfig(**{**TINY, "lr": 0.02})
    assert other.key("digits") != CFG.key("digits")
    assert experts.expert_path("digits", other, 0).parent != path.parent


def test_a_killed_expert_training_resumes_and_ends_as_an_unbroken_one(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "a"))
    real_train = kill_training_after_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        experts.get_experts("digits", CFG, 1, "cpu", progress=False)
    path = experts.expert_path("digits", CFG, 0)
    assert not path.exists() and path.with_suffix(".train_state.pt").exists()
    epochs_run = []

    def counting(*a, on_epoch=None, **k):
        return real_train(*a, on_epoch=lambda ep, loss: epochs_run.append(ep), **k)

    monkeypatch.setattr(engine, "train", counting)
    with caplog.at_level(logging.INFO, logger="ddbench"):
        resumed = experts.get_experts("digits", CFG, 1, "cpu", progress=False)[0]
    assert "resuming expert 0 from epoch 2" in caplog.text and epochs_run == [2]
    assert not path.with_suffix(".train_state.pt").exists()
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "b"))
    unbroken = experts.get_experts("digits", CFG, 1, "cpu", progress=False)[0]
    assert torch.equal(resumed, unbroken)


def test_parallel_callers_that_miss_together_train_each_expert_once(monkeypatch):
    real_train, calls = engine.train, []

    def slow(*a, **k):
        calls.append(a[1])
        return real_train(*a, **k)

    monkeypatch.setattr(engine, "train", slow)
    out = [None, None]

    def job(k):
        out[k] = experts.get_experts("digits", CFG, 1, "cpu", progress=False)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [[0]] and torch.equal(out[0][0], out[1][0])


def _ready(digits_train, **kw) -> tuple[MTT, object, torch.Tensor, torch.Tensor]:
    """An MTT with its experts, a task, the initial images (requires grad) and labels."""
    m = MTT(**{**MTT_CFG, **kw})
    task = make_task(digits_train, 2)
    m.prepare(task)
    images, labels = m.init_images(task)
    return m, task, images.requires_grad_(True), labels


def _fixed(m, task, images, labels, seed=7):
    task.generator.manual_seed(seed)
    e, s = m.sample_expert(task)
    return m.matching_loss(task, images, labels, e, s)


def test_mtt_iterations_on_fixed_draws_reduce_the_matching_loss(digits_train):
    m, task, images, labels = _ready(digits_train)
    before = float(_fixed(m, task, images, labels).detach())
    assert 0 < before < 10
    m._opt = torch.optim.SGD([images], lr=m.lr_img, momentum=0.5)
    lr0 = float(m.syn_lr.detach())
    for _ in range(5):
        task.generator.manual_seed(7)  # the same expert, start epoch, batches and DSA draws
        m.step(task, images, labels, 0)
    after = float(_fixed(m, task, images, labels).detach())
    assert after < 0.9 * before, (before, after)
    assert float(m.syn_lr.detach()) != lr0  # the lr is learned too


def test_the_learned_lr_stays_positive_and_is_stored_in_the_set(digits_train, tmp_path):
    s = MTT(**{**MTT_CFG, "iterations": 2}).distill(make_task(digits_train, 2))
    assert s.lr is not None and s.lr.shape == (1,)
    assert 0 < float(s.lr) != pytest.approx(0.01, rel=1e-6)  # learned, not the init
    assert s.meta["distillation"]["learned_lr"] == pytest.approx(float(s.lr))
    assert s.meta["protocol"] == "learned_lr" and s.meta["method"]["name"] == "mtt"
    back = synset.load(synset.save(s, tmp_path / "mtt.safetensors"))
    assert torch.equal(back.lr, s.lr) and back.meta["protocol"] == "learned_lr"
    # a loss that grows with the lr and a huge lr_lr: one step would make the lr negative
    m, task, images, labels = _ready(digits_train, lr_lr=10.0, lr_min=1e-4)
    m._opt = torch.optim.SGD([images], lr=m.lr_img, momentum=0.5)
    m.matching_loss = lambda task, images, labels, e, s: 1000 * m.syn_lr + 0 * images.sum()
    m.step(task, images, labels, 0)
    assert float(m.syn_lr.detach()) == pytest.approx(1e-4)


def test_checkpoint_unroll_gives_the_plain_unrolls_loss_and_gradients(digits_train):
    grads = []
    for ckpt in (False, True):
        m, task, images, labels = _ready(digits_train, checkpoint_unroll=ckpt)
        loss = _fixed(m, task, images, labels, seed=3)
        g_img, g_lr = torch.autograd.grad(loss, [images, m.syn_lr])
        grads.append((loss.detach(), g_img, g_lr))
    (l0, i0, r0), (l1, i1, r1) = grads
    assert i0.abs().max() > 0 and r0.abs() > 0
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(i1, i0, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=1e-7)


def test_bf16_unroll_runs_its_convolutions_in_bf16_and_follows_the_fp32_gradient(digits_train):
    """precision=bf16: a different loss than fp32 (bf16 convolutions), but close, with image
    gradients pointing the same way; the checkpointed unroll replays bf16 and matches it. The
    precision is the task's, applied around the step as the loop does (MTT has no code for it)."""
    out = {}
    for precision, ckpt in (("fp32", False), ("bf16", False), ("bf16", True)):
        m, task, images, labels = _ready(digits_train, checkpoint_unroll=ckpt)
        task.precision = precision
        with task.autocast():
            loss = _fixed(m, task, images, labels, seed=3)
        g_img, g_lr = torch.autograd.grad(loss, [images, m.syn_lr])
        out[precision, ckpt] = (loss.detach(), g_img, g_lr)
    (l32, g32, r32), (l16, g16, r16) = out["fp32", False], out["bf16", False]
    assert l16.dtype == torch.float32 and not torch.equal(l16, l32)
    assert abs(float(l16 / l32) - 1) < 0.05
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.95
    assert torch.sign(r16) == torch.sign(r32)
    lc, gc, rc = out["bf16", True]
    torch.testing.assert_close(lc, l16)
    torch.testing.assert_close(gc, g16, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(rc, r16, rtol=1e-3, atol=1e-7)


def test_fyi_trains_each_student_step_on_the_batch_and_its_mirrors(digits_train):
    """MTT with FYI on S is plain MTT on [S; flip(S)] (every image per step, no DSA, so the same
    batches), and S gets the gradient of both halves."""
    out = []
    for fyi in (True, False):
        m, task, images, labels = _ready(digits_train, fyi=fyi, batch_syn=None, dsa=False)
        if not fyi:
            images = flip_concat(images.detach()).requires_grad_(True)
            labels = torch.cat([labels, labels])
        loss = _fixed(m, task, images, labels, seed=5)
        out.append((loss.detach(), torch.autograd.grad(loss, images)[0]))
    (l_fyi, g_fyi), (l_plain, g_plain) = out
    torch.testing.assert_close(l_fyi, l_plain, rtol=1e-4, atol=1e-6)
    n = len(g_fyi)
    torch.testing.assert_close(g_fyi, g_plain[:n] + g_plain[n:].flip(-1), rtol=1e-3, atol=1e-7)
    assert float(g_plain[n:].abs().sum()) > 0


def test_a_killed_mtt_run_resumes_images_and_learned_lr(digits_train, tmp_path):
    check_resume(MTT, MTT_CFG, digits_train, tmp_path)
    # the lr and its optimiser's momentum are checkpointed too: restore the last one by hand
    a = MTT(**MTT_CFG)
    task = make_task(digits_train, 2, directory=tmp_path / "lr", key="k", every=2)
    s = a.distill(task)
    _, tensors, state = task.checkpointer.load()
    assert not a.state_tensors() and set(state["optim"]) == {"images", "lr"}
    assert set(a._learned()) == {"learned.lr.0"}  # the lr, checkpointed as its optimiser's tensor
    b = MTT(**MTT_CFG)
    b.prepare(make_task(digits_train, 2))
    with torch.no_grad():
        b.syn_lr.copy_(tensors["learned.lr.0"])
    b._lr_opt.load_state_dict(load_optimizer_state(state["optim"]["lr"], tensors))
    assert torch.equal(b.syn_lr.reshape(1), s.lr.to(b.syn_lr))
    momentum = a._lr_opt.state[a.syn_lr]["momentum_buffer"]
    assert float(momentum) != 0 and torch.equal(
        b._lr_opt.state[b.syn_lr]["momentum_buffer"], momentum
    )


def test_the_config_builds_mtt_with_the_runs_model():
    m = build_method(packaged_config("mtt", ["model.kwargs.net_width=16"]))
    assert isinstance(m, MTT) and m.protocol == "learned_lr"
    assert m.experts.model == "convnet" and m.experts.model_kwargs["net_width"] == 16
    assert (m.syn_steps, m.expert_epochs, m.max_start_epoch) == (30, 2, 20)
    with pytest.raises(Exception, match="exceeds"):
        MTT(**{**MTT_CFG, "max_start_epoch": 3})

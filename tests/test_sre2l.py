"""SRe2L, CDA and CV-DD on the real digits dataset with tiny BatchNorm teachers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import task_maker, with_teachers

import ddbench.methods.sre2l as sre2l_mod
from ddbench import engine
from ddbench import synset as synset_io
from ddbench.data import get_spec
from ddbench.errors import DDBenchError
from ddbench.method import Checkpointer, build_method
from ddbench.methods import packaged_config
from ddbench.methods.cda import CDA, cda_min_scale
from ddbench.methods.cvdd import CVDD, voting_weights
from ddbench.methods.sre2l import SRe2L
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.recover import (
    DEFAULT_TEACHER,
    Member,
    StudentCrop,
    flips,
    pixel_range,
    random_resized_crop,
)
from ddbench.relabel import class_consistent
from ddbench.teachers import TeacherConfig, get_teacher

CONF = Path(__file__).parents[1] / "conf" / "method"
IPC = 2
# Two tiny BatchNorm teachers (ConvNet-BN works on 8x8 digits): ~95 % and ~90 % on val.
TEACHER_A = {"model": "convnet_bn", "model_kwargs": {"net_width": 16}, "epochs": 10, "lr": 0.05}
TEACHER_B = {**TEACHER_A, "model_kwargs": {"net_width": 8}, "seed": 1}
# Small recoveries: crops no smaller than half an 8x8 image, a one-pixel jitter.
SMALL = dict(teacher=TEACHER_A, crop_scale=[0.5, 1.0], jitter=1)


cached_teachers = with_teachers(TEACHER_A, TEACHER_B)


def _teacher(cfg: dict) -> torch.nn.Module:
    return get_teacher("digits", TeacherConfig(**cfg), device="cpu", train=False)[0]


@pytest.fixture
def make_task(digits_train):
    return task_maker(digits_train, IPC)


def test_recovery_from_noise_lowers_the_bn_statistics_loss(make_task):
    # r_bn 0.1: on these tiny teachers the BN loss is ~6 against a CE of ~2 (the paper's 0.01
    # is for ResNet-18, whose BN loss sums over 20 layers of up to 512 channels)
    method, without_bn = (
        SRe2L(iterations=60, r_bn=0.1, **SMALL),
        SRe2L(iterations=60, r_bn=0.0, **SMALL),
    )
    s, s0 = method.distill(make_task()), without_bn.distill(make_task())
    # the same fixed measure (no augmentation) on the initial noise and on the recovered images
    task = make_task()
    initial, _ = method.init_images(task)  # the first draws of a fresh generator: the init
    method.load_members(task)
    before = method.bn_statistics_loss(task, initial)
    after = method.bn_statistics_loss(task, s.images)
    assert after < 0.6 * before, (before, after)
    assert after < 0.6 * method.bn_statistics_loss(task, s0.images)  # the BN term did it, not CE
    # the recovered images are classified as their class and stay in the valid pixel range
    assert s.meta["relabel"]["agreement"] == 1.0 and s.meta["protocol"] == "sre2l"
    lo, hi = pixel_range(task.spec, torch.device("cpu"))
    assert float(s.images.min()) >= float(lo) - 1e-6 and float(s.images.max()) <= float(hi) + 1e-6
    assert float(s.images.min()) < float(lo) + 0.05  # some pixels were clipped: noise init


def test_relabel_stores_the_teachers_logits_in_fp16_and_counts_their_bytes(make_task, tmp_path):
    s = SRe2L(iterations=20, init="real", **SMALL).distill(make_task())
    loaded = synset_io.load(synset_io.save(s, tmp_path / "sre2l.safetensors"))
    n, k = IPC * 10, 10
    assert loaded.labels.shape == (n, k) and loaded.labels.dtype == torch.float16
    with torch.no_grad():
        logits = _teacher(TEACHER_A)(loaded.images)
    assert loaded.meta["relabel"]["adjusted"] == 0  # converged: the labels are the logits
    assert torch.equal(loaded.labels, logits.half())
    assert loaded.meta["relabel"]["format"] == "logits"
    assert loaded.meta["relabel"]["teacher"]["key"] == TeacherConfig(**TEACHER_A).key("digits")
    assert loaded.nbytes()["labels"] == n * k * 2  # half of float32's
    # the stored logits are what a `labels: set, loss: kd` protocol trains on, bytes counted
    p = Protocol(
        name="kd_set", epochs=2, optimizer="adamw", lr=0.003, schedule="cosine", labels="set",
        loss="kd", temperature=4.0, seeds=[0],
    )  # fmt: skip
    r = evaluate(loaded, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert r["labels"]["kind"] == "soft" and r["cost"]["label_bytes"] == n * k * 2
    wide = SRe2L(iterations=20, init="real", label_dtype="float32", **SMALL).distill(make_task())
    assert wide.labels.dtype == torch.float32 and wide.nbytes()["labels"] == n * k * 4
    assert torch.equal(wide.labels.half(), s.labels)


def test_images_the_teacher_misclassifies_keep_their_class(make_task, tmp_path):
    """After 1 iteration from noise the teacher disagrees on many images: the set stays valid
    (its argmax is the recovered class) and each changed row is a swap of the teacher's logits;
    mismatch: error refuses it."""
    s = SRe2L(iterations=1, **SMALL).distill(make_task())
    loaded = synset_io.load(synset_io.save(s, tmp_path / "early.safetensors"))
    classes = torch.arange(10).repeat_interleave(IPC)
    assert torch.equal(loaded.hard_labels, classes)
    with torch.no_grad():
        logits = _teacher(TEACHER_A)(loaded.images).half()
    changed = (logits != loaded.labels).any(1)
    assert s.meta["relabel"]["adjusted"] == int(changed.sum()) > 0
    assert s.meta["relabel"]["agreement"] == pytest.approx(1 - int(changed.sum()) / len(classes))
    assert torch.equal(loaded.labels.sort(1).values, logits.sort(1).values)  # a permutation
    assert int(((logits != loaded.labels).sum(1))[changed].max()) == 2  # of two entries
    with pytest.raises(DDBenchError, match="argmax differs"):
        SRe2L(iterations=1, mismatch="error", **SMALL).distill(make_task())


def test_class_consistent_swaps_and_breaks_ties():
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 2.0, 0.0]], dtype=torch.float16)
    out, n = class_consistent(x, torch.tensor([2, 1, 1]))
    assert n == 2 and out.argmax(1).tolist() == [2, 1, 1]
    assert out[0].tolist() == [2.0, 1.0, 3.0] and out[1].tolist() == x[1].tolist()
    assert out[2, 1] > 2.0 and out[2, 0] == 2.0  # a tie: the class moves up by one ulp


def test_crop_flip_and_jitter_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    same = random_resized_crop(x, 3, (1.0, 1.0), g, flip=False, ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)  # a whole-image crop is the identity
    draws = [random_resized_crop(x, 6, (1.0, 1.0), g, True, (1.0, 1.0)) for _ in range(20)]
    mirrored = [f for f in draws if not torch.allclose(f, x, atol=1e-5)]
    assert mirrored and all(torch.allclose(f, x.flip(-1), atol=1e-5) for f in mirrored)
    crop = random_resized_crop(x, 3, (0.25, 0.5), g, flip=False)
    assert crop.shape == x.shape and not torch.allclose(crop[:3], x[:3])
    crop.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # flip where the dataset's DSA strategy flips: not on digits, yes on CIFAR-10
    assert SRe2L(**SMALL).flip == "auto"
    assert not flips(get_spec("digits"), "auto") and flips(get_spec("cifar10"), "auto")


def test_cda_schedule_goes_from_global_to_local():
    n = 100
    cos = [cda_min_scale(i, n) for i in range(n + 1)]
    assert cos[0] == 1.0 and cos[n] == 0.08 and all(a >= b for a, b in zip(cos, cos[1:]))
    assert math.isclose(cos[25], 0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert math.isclose(cda_min_scale(25, n, mode="linear"), 0.08 + 0.92 * 0.75)
    assert cda_min_scale(49, n, mode="step", milestone=0.5) == 1.0
    assert cda_min_scale(50, n, mode="step", milestone=0.5) == 0.08
    assert math.isclose(cda_min_scale(25, n, 0.2, 0.9, milestone=0.5), 0.2 + 0.7 * 0.5)
    with pytest.raises(DDBenchError, match="curriculum"):
        CDA(curriculum="exp")


@pytest.mark.parametrize("name", ["cda", "sre2l"])
def test_the_crop_scale_schedule_drives_the_recovery(name, make_task, monkeypatch):
    seen = []
    real = sre2l_mod.random_resized_crop

    def spy(x, group_size, scale, generator, flip=True, ratio=(3 / 4, 4 / 3)):
        seen.append(tuple(scale))
        return real(x, group_size, scale, generator, flip, ratio)

    monkeypatch.setattr(sre2l_mod, "random_resized_crop", spy)
    its = 12
    kw = dict(iterations=its, init="real", teacher=TEACHER_A, jitter=1, crop_scale=[0.3, 0.9],
              crop=True)  # fmt: skip
    if name == "cda":
        CDA(milestone=0.5, **kw).distill(make_task())
        expected = [(cda_min_scale(i, its, 0.3, 0.9, 0.5), 0.9) for i in range(its)]
        assert seen[0] == (0.9, 0.9) and seen[-1] == (0.3, 0.9)
    else:
        SRe2L(**kw).distill(make_task())
        expected = [(0.3, 0.9)] * its
    assert seen == expected


def test_cvdd_votes_with_prior_weights_and_combines_the_members_labels(make_task, monkeypatch):
    calls: dict[str, int] = {}
    real_losses = Member.losses

    def counting(self, x, *a, **k):
        calls[self.meta["key"]] = calls.get(self.meta["key"], 0) + 1
        return real_losses(self, x, *a, **k)

    monkeypatch.setattr(Member, "losses", counting)
    its = 10
    m = CVDD(committee=[TEACHER_A, TEACHER_B], members_per_step=None, iterations=its,
             init="real", crop_scale=[0.5, 1.0], jitter=1)  # fmt: skip
    s = m.distill(make_task())
    keys = [TeacherConfig(**c).key("digits") for c in (TEACHER_A, TEACHER_B)]
    assert calls == {keys[0]: its, keys[1]: its}  # every member votes at every step
    accs = [get_teacher("digits", TeacherConfig(**c), train=False)[1]["val_accuracy"]
            for c in (TEACHER_A, TEACHER_B)]  # fmt: skip
    # the relabel weighs ALL members by softmax(prior / 10) (the recovery's temperature is 5)
    w = torch.softmax(torch.tensor(accs, dtype=torch.float64) / 10.0, 0)
    assert accs[0] != accs[1] and not torch.allclose(w, torch.full((2,), 0.5, dtype=w.dtype))
    committee = s.meta["relabel"]["committee"]
    assert [c["key"] for c in committee] == keys and s.meta["relabel"]["bn"] == "batch"
    assert torch.allclose(torch.tensor([c["weight"] for c in committee], dtype=w.dtype), w)
    # each member normalises every recovery batch (the j-th image of each class) with the
    # batch's own statistics: train-mode BatchNorm on that batch
    batches = [torch.arange(10) * IPC + j for j in range(IPC)]
    combined = torch.zeros(len(s.images), 10)
    with torch.no_grad():
        for wi, c in zip(w.tolist(), (TEACHER_A, TEACHER_B)):
            net = _teacher(c).train()
            for rows in batches:
                combined[rows] += wi * net(s.images[rows])
        running = sum(
            wi * _teacher(c)(s.images) for wi, c in zip(w.tolist(), (TEACHER_A, TEACHER_B))
        )
    assert s.labels.dtype == torch.float16
    assert torch.allclose(s.labels.float(), combined, atol=1e-2, rtol=1e-3)
    assert not torch.allclose(s.labels.float(), running, atol=1e-2, rtol=1e-3)
    # relabel_bn: running normalises with the members' running statistics (eval mode)
    r = CVDD(
        committee=[TEACHER_A, TEACHER_B],
        members_per_step=None,
        iterations=its,
        init="real",
        crop_scale=[0.5, 1.0],
        jitter=1,
        relabel_bn="running",
    ).distill(make_task())
    assert torch.equal(r.images, s.images) and r.meta["relabel"]["bn"] == "running"
    assert torch.allclose(r.labels.float(), running, atol=1e-2, rtol=1e-3)


def test_cvdd_loss_is_the_weighted_sum_of_the_members_sre2l_losses(make_task):
    task = make_task()
    priors = [80.0, 70.0]
    m = CVDD(committee=[TEACHER_A, TEACHER_B], priors=priors, members_per_step=None, r_bn=0.5)
    singles = [SRe2L(teacher=c, r_bn=0.5) for c in (TEACHER_A, TEACHER_B)]
    for method in (m, *singles):
        method.load_members(task)
    m.voters = [[0, 1]] * IPC
    x = torch.randn(IPC * 10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10).repeat(IPC)
    loss, _ = m.recovery_loss(task, x, y, 10)
    w = voting_weights(priors, 5.0)
    assert torch.allclose(w, torch.softmax(torch.tensor([16.0, 14.0], dtype=w.dtype), 0))
    parts = [s.recovery_loss(task, x, y, 10)[0] for s in singles]
    assert torch.allclose(loss, w[0].float() * parts[0] + w[1].float() * parts[1], rtol=1e-5)
    # one voter per recovery batch: each batch's loss is its voter's alone (weight 1)
    m.voters = [[1], [0]]
    loss, _ = m.recovery_loss(task, x, y, 10)
    alone = [s.recovery_loss(task, x[i * 10 : (i + 1) * 10], y[:10], 10)[0] for i, s in
             ((0, singles[1]), (1, singles[0]))]  # fmt: skip
    assert torch.allclose(loss, alone[0] + alone[1], rtol=1e-5)
    m2 = CVDD(committee=[TEACHER_A, TEACHER_B], members_per_step=1)
    voters = m2.draw_voters(make_task(ipc=6))
    assert all(len(v) == 1 for v in voters) and {v[0] for v in voters} == {0, 1}


def test_a_resumed_recovery_ends_as_an_unbroken_one(make_task, tmp_path):
    its = 12

    def method():
        return SRe2L(iterations=its, init="real", **SMALL)

    unbroken = method().distill(make_task())

    ck = Checkpointer(tmp_path / "ck", key="k", every=4)
    broken = method()
    real_step = broken.step

    def step(task, images, labels, it):
        if it == 9:
            raise KeyboardInterrupt
        return real_step(task, images, labels, it)

    broken.step = step
    with pytest.raises(KeyboardInterrupt):
        broken.distill(make_task(checkpointer=ck))
    step, tensors, state = ck.load()
    assert step == 8 and set(state["optim"]) == {"images", "images_schedule"}  # Adam, cosine
    assert {"optim.images.state.0.exp_avg", "optim.images.state.0.step", "rng"} <= set(tensors)
    resumed = method().distill(make_task(checkpointer=ck))
    assert resumed.meta["distillation"]["resumed_from"] == 8
    assert torch.equal(resumed.images, unbroken.images)
    assert torch.equal(resumed.labels, unbroken.labels)
    # not trivially equal: the recovery moved the images away from their real initialisation
    init, _ = method().init_images(make_task())
    assert not torch.allclose(init, unbroken.images, atol=1e-3)


@pytest.mark.parametrize("name", ["sre2l", "cda", "cvdd"])
def test_configs_build_their_method(name):
    cfg = packaged_config(name)
    method = build_method(cfg)
    assert isinstance(method, SRe2L) and method.name == cfg["name"] == name
    assert method.protocol == "sre2l"
    assert method.config == cfg
    if name == "cvdd":  # members given in short: the default teacher recipe fills the rest
        short = [{"model": "convnet_bn", "seed": 0}, {"model": "convnet_bn", "seed": 9}]
        members = build_method({**cfg, "committee": short}).config["committee"]
        assert [{k: m[k] for k in c} for m, c in zip(members, short)] == short
        assert all(m["epochs"] == 5 and m["model"] == "convnet_bn" for m in members)
        assert len({TeacherConfig(**m).key("digits") for m in method.config["committee"]}) == 3


def test_a_set_whose_header_length_starts_with_0x80_loads(make_set, tmp_path):
    """A safetensors header length of 128 mod 256 starts the file with byte 0x80, a pickle's
    first byte: the file must still load (an SRe2L set hit this)."""
    s = make_set(ipc=1, soft=True)
    for pad in range(300):
        s.meta["pad"] = "x" * pad
        path = synset_io.save(s, tmp_path / "s.safetensors")
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length of 128 mod 256")
    assert synset_io.load(path).meta["pad"] == s.meta["pad"]


def test_a_teacher_without_batchnorm_is_refused(make_task):
    with pytest.raises(DDBenchError, match="BatchNorm"):
        SRe2L(teacher={**TEACHER_A, "model": "convnet", "epochs": 1}).distill(make_task())


def test_bn_hook_matches_a_direct_computation():
    net = _teacher(TEACHER_A)
    member = Member(net, {"config": TEACHER_A})
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(10).repeat(2)
    ce, bn = member.losses(x, y, 10, first_bn_multiplier=3.0)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs = []
    handles = [b.register_forward_hook(lambda mod, i, o: inputs.append(i[0])) for b in bns]
    with torch.no_grad():
        out = net(x)
    for h in handles:
        h.remove()
    member.remove()
    for g in range(2):
        expect = 0.0
        for layer, (b, inp) in enumerate(zip(bns, inputs)):
            a = inp[g * 10 : (g + 1) * 10]
            mean, var = a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=False)
            r = (var - b.running_var).norm() + (mean - b.running_mean).norm()
            expect += (3.0 if layer == 0 else 1.0) * float(r)
        assert math.isclose(float(bn[g]), expect, rel_tol=1e-5)
        ce_g = F.cross_entropy(out[g * 10 : (g + 1) * 10], y[g * 10 : (g + 1) * 10])
        assert math.isclose(float(ce[g]), float(ce_g), rel_tol=1e-5)


# ------------------------------------------------------------------ the `sre2l` protocol


def _papers_protocol(**kw) -> Protocol:
    """The shipped `sre2l` protocol cut to a few epochs and one seed, with TEACHER_B as the
    teacher of sets that name none."""
    cfg = {**protocol_config("sre2l"), "epochs": 2, "seeds": [0], "teacher": TEACHER_B, **kw}
    return Protocol.from_config(cfg)


def _online_teacher(monkeypatch) -> list:
    """Records the teacher and augmentation that evaluate hands to the engine."""
    seen: list = []
    real = engine.train

    def spy(*a, teacher=None, augment=None, **k):
        seen.append((teacher, augment))
        return real(*a, teacher=teacher, augment=augment, **k)

    monkeypatch.setattr(engine, "train", spy)
    return seen


def test_the_sre2l_protocol_relabels_with_the_recovery_teacher(make_task, make_set, monkeypatch):
    p = _papers_protocol()
    assert p.temperature == 20.0 and p.augment == "rrc" and p.cutmix == 1.0
    assert p.teacher_from_set and protocol_config("sre2l")["teacher"] == DEFAULT_TEACHER
    seen = _online_teacher(monkeypatch)
    kw = dict(model_kwargs={"net_width": 8}, device="cpu", progress=False)
    s = SRe2L(iterations=3, init="real", **SMALL).distill(make_task())
    r = evaluate(s, p, "convnet", **kw)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    teacher, augment = seen[-1]
    with torch.no_grad():
        assert torch.equal(teacher(x), _teacher(TEACHER_A)(x))  # the set's, not the protocol's
    assert r["labels"]["teacher"]["source"] == "set"
    assert r["labels"]["teacher"]["key"] == TeacherConfig(**TEACHER_A).key("digits")
    assert r["labels"]["temperature"] == 20.0
    # digits do not flip (their DSA strategy has no flip): the student's crops do not either
    assert isinstance(augment, StudentCrop) and not augment.flip and augment.scale == (0.08, 1.0)
    # a set recovered before sets stored their teacher's config: found in the cache by key
    del s.meta["relabel"]["teacher"]["config"]
    assert (
        evaluate(s, p, "convnet", **kw)["labels"]["teacher"]["key"] == r["labels"]["teacher"]["key"]
    )
    # a random subset names no recovery teacher: the protocol's teacher labels it
    r2 = evaluate(make_set(ipc=2), p, "convnet", **kw)
    with torch.no_grad():
        assert torch.equal(seen[-1][0](x), _teacher(TEACHER_B)(x))
    assert r2["labels"]["teacher"]["source"] == "protocol"
    assert r2["labels"]["teacher"]["key"] == TeacherConfig(**TEACHER_B).key("digits")
    # without teacher_from_set every set gets the protocol's teacher
    r3 = evaluate(s, _papers_protocol(teacher_from_set=False), "convnet", **kw)
    assert r3["labels"]["teacher"]["source"] == "protocol"
    assert _papers_protocol().hash != _papers_protocol(teacher_from_set=False).hash
    with pytest.raises(DDBenchError, match="teacher_from_set needs labels=teacher"):
        Protocol.from_config({**protocol_config("kd_set"), "teacher_from_set": True})


def test_the_sre2l_protocol_relabels_a_cvdd_set_with_its_committee(
    make_task, make_set, monkeypatch
):
    seen = _online_teacher(monkeypatch)
    s = CVDD(committee=[TEACHER_A, TEACHER_B], members_per_step=None, iterations=3,
             init="real", crop_scale=[0.5, 1.0], jitter=1).distill(make_task())  # fmt: skip
    r = evaluate(s, _papers_protocol(), "convnet", {"net_width": 8}, device="cpu", progress=False)
    w = [c["weight"] for c in s.meta["relabel"]["committee"]]
    assert [c["weight"] for c in r["labels"]["teacher"]["committee"]] == w
    assert r["labels"]["teacher"]["bn"] == "batch"
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the members in train-mode BatchNorm: the batch's own statistics
        expect = sum(wi * _teacher(c).train()(x) for wi, c in zip(w, (TEACHER_A, TEACHER_B)))
        assert torch.allclose(seen[-1][0](x), expect, atol=1e-5)
    bns = [m for m in seen[-1][0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(b.running_mean is None and not b.track_running_stats for b in bns)
    # a random subset is scored by the same committee when the protocol names it
    committee = {"committee": [TEACHER_A, TEACHER_B], "temperature": 10.0, "bn": "batch"}
    r2 = evaluate(make_set(ipc=2), _papers_protocol(teacher=committee), "convnet",
                  {"net_width": 8}, device="cpu", progress=False)  # fmt: skip
    assert r2["labels"]["teacher"]["source"] == "protocol"
    assert [c["weight"] for c in r2["labels"]["teacher"]["committee"]] == pytest.approx(w)
    with torch.no_grad():
        assert torch.allclose(seen[-1][0](x), expect, atol=1e-5)
    # explicit weights; missing member keys come from the node's own TeacherConfig keys
    given = {"committee": [{"weight": 0.25}, {**TEACHER_B, "weight": 0.75}], **TEACHER_A}
    evaluate(make_set(ipc=2), _papers_protocol(teacher=given), "convnet", {"net_width": 8},
             device="cpu", progress=False)  # fmt: skip
    with torch.no_grad():
        expect = 0.25 * _teacher(TEACHER_A).train()(x) + 0.75 * _teacher(TEACHER_B).train()(x)
        assert torch.allclose(seen[-1][0](x), expect, atol=1e-5)
    with pytest.raises(DDBenchError, match="every member or to none"):
        bad = {"committee": [{**TEACHER_A, "weight": 1.0}, TEACHER_B]}
        evaluate(make_set(ipc=2), _papers_protocol(teacher=bad), "convnet", device="cpu")


def test_student_crop_draws_one_crop_per_image():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(6, 1, 1, 1)
    out = StudentCrop((0.08, 1.0), flip=False)(x, torch.Generator().manual_seed(0))
    again = StudentCrop((0.08, 1.0), flip=False)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out, again)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 6  # a crop of its own each
    # a whole-image "crop" with flips mirrors some images and leaves the others as they are
    flipped = StudentCrop((1.0, 1.0), flip=True)(x, torch.Generator().manual_seed(0))
    mirrored = [torch.allclose(f, x[0].flip(-1), atol=1e-4) for f in flipped]
    kept = [torch.allclose(f, x[0], atol=1e-4) for f in flipped]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    with pytest.raises(DDBenchError, match="crop scale"):
        StudentCrop((0.0, 1.0))


def test_sre2l_crops_only_images_larger_than_32_pixels(make_task, monkeypatch):
    calls = []
    monkeypatch.setattr(sre2l_mod, "random_resized_crop", lambda x, *a, **k: calls.append(1) or x)
    task = make_task()
    x = torch.zeros(10, 1, 8, 8)
    SRe2L(**SMALL).augment_batch(task, x, 0)  # 8 px digits: the CIFAR script's roll only
    assert calls == []
    SRe2L(crop=True, **SMALL).augment_batch(task, x, 0)
    CVDD(crop_scale=[0.5, 1.0]).augment_batch(task, x, 0)  # CV-DD and CDA crop at any size
    CDA(**SMALL).augment_batch(task, x, 0)
    assert calls == [1, 1, 1]
    with pytest.raises(DDBenchError, match="crop must be"):
        SRe2L(crop="sometimes")

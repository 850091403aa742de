"""The training engine and the evaluation protocol, on the real (tiny) digits dataset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddbench import data
from ddbench.augment import DSA
from ddbench.engine import Recipe, accuracy, lr_at, train
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config


def _build():
    return create_model("convnet", 1, 10, (8, 8), net_width=32)


def _subset(split, per_class: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat(
        [
            split.indices_of(c)[torch.randperm(len(split.indices_of(c)), generator=g)[:per_class]]
            for c in range(10)
        ]
    )
    return split.normalize(split.images[idx]), split.labels[idx]


@pytest.fixture(scope="module")
def digits():
    return data.load_split("digits", "train"), data.load_split("digits", "test")


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_training_learns_far_above_chance(digits):
    train_split, test = digits
    x, y = _subset(train_split, 20)
    res = train(_build, [0], x, y, Recipe(epochs=60, lr=0.05), device="cpu", compile=False)
    acc = accuracy(res.models, test.images, test.labels, transform=train_split.normalize)[0]
    assert acc > 60, acc  # chance is 10 %
    assert res.losses[-1] < res.losses[0]


def test_without_a_terminal_training_logs_its_epochs(digits, caplog, monkeypatch):
    import ddbench.engine as engine

    x, y = _subset(digits[0], 2)
    monkeypatch.setattr(engine, "LOG_EVERY_S", 0.0)  # a line per epoch; pytest's stderr is no tty
    with caplog.at_level("INFO", logger="ddbench"):
        res = train(_build, [0, 1], x, y, Recipe(epochs=3), device="cpu", compile=False,
                    progress="teacher digits")  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert [ln.split(",")[0] for ln in lines] == [
        f"teacher digits: epoch {i}/6" for i in range(1, 7)
    ]
    last_losses = [float(lines[i].split("loss ")[1].split(",")[0]) for i in (2, 5)]  # each seed's
    assert abs(sum(last_losses) / 2 - res.losses[-1]) < 1e-4  # the logged losses are the real ones
    caplog.clear()
    monkeypatch.setattr(engine, "LOG_EVERY_S", 3600.0)  # throttled: only each model's last epoch
    with caplog.at_level("INFO", logger="ddbench"):
        train(_build, [0, 1], x, y, Recipe(epochs=3), device="cpu", compile=False, progress=True)
    assert [r.getMessage().split(",")[0] for r in caplog.records if "epoch" in r.getMessage()] == [
        "train: epoch 3/6", "train: epoch 6/6"]  # fmt: skip


def test_same_seed_same_model_and_other_seed_differs(digits):
    x, y = _subset(digits[0], 5)
    r = Recipe(epochs=5, augment="color_crop_cutout_scale_rotate")
    dsa = DSA(r.augment)
    a = train(_build, [3], x, y, r, device="cpu", augment=dsa, compile=False).models[0]
    b = train(_build, [3], x, y, r, device="cpu", augment=dsa, compile=False).models[0]
    c = train(_build, [4], x, y, r, device="cpu", augment=dsa, compile=False).models[0]
    assert torch.equal(_params(a), _params(b))
    assert not torch.allclose(_params(a), _params(c))


def test_models_trained_together_match_models_trained_alone(digits):
    """Stacked (vmapped) training is K independent trainings: per-model seeds and streams."""
    x, y = _subset(digits[0], 5)
    r = Recipe(epochs=4, batch_size=16, augment="color_crop_cutout_scale_rotate")
    dsa = DSA(r.augment)
    together = train(
        _build, [0, 1, 2], x, y, r, device="cpu", augment=dsa, parallel=True, compile=False
    )
    for k, seed in enumerate([0, 1, 2]):
        alone = train(
            _build, [seed], x, y, r, device="cpu", augment=dsa, parallel=False, compile=False
        )
        torch.testing.assert_close(
            _params(together.models[k]), _params(alone.models[0]), atol=2e-4, rtol=1e-3
        )


def test_soft_targets_and_weights_train(digits):
    x, y = _subset(digits[0], 5)
    soft = torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01
    hard = train(_build, [0], x, y, Recipe(epochs=3), device="cpu", compile=False).models[0]
    soft_m = train(_build, [0], x, soft, Recipe(epochs=3), device="cpu", compile=False).models[0]
    kd = train(
        _build,
        [0],
        x,
        soft,
        Recipe(epochs=3, loss="kd", temperature=4.0),
        device="cpu",
        compile=False,
    )
    assert not torch.allclose(_params(hard), _params(soft_m))
    assert all(torch.isfinite(torch.tensor(kd.losses)))


def test_learned_lr_overrides_recipe(digits):
    x, y = _subset(digits[0], 2)
    r = Recipe(epochs=2, lr=0.01)
    default = train(_build, [0], x, y, r, device="cpu", compile=False).models[0]
    overridden = train(_build, [0], x, y, r, device="cpu", lr=0.01, compile=False).models[0]
    other = train(_build, [0], x, y, r, device="cpu", lr=0.2, compile=False).models[0]
    assert torch.equal(_params(default), _params(overridden))
    assert not torch.allclose(_params(default), _params(other))
    with pytest.raises(DDBenchError, match="learning rate"):
        train(_build, [0], x, y, r, device="cpu", lr=float("nan"), compile=False)


def test_step_schedule_drops_at_half():
    r = Recipe(epochs=10, lr=1.0)
    assert [lr_at(r, e, 1.0) for e in (0, 4)] == [1.0, 1.0]
    assert lr_at(r, 5, 1.0) == pytest.approx(0.1) and lr_at(r, 9, 1.0) == pytest.approx(0.1)


def test_bad_recipe_is_rejected():
    with pytest.raises(DDBenchError, match="optimizer"):
        Recipe(epochs=1, optimizer="lbfgs")


# ----------------------------------------------------------------------------- protocol


def _standard(**over) -> Protocol:
    from omegaconf import OmegaConf

    from ddbench.cli import config_key  # noqa: F401  (import check: CLI module loads)

    cfg = OmegaConf.to_container(OmegaConf.load(_conf("protocol/standard.yaml")))
    cfg.update(over)
    return Protocol.from_config(cfg)


def _conf(rel: str) -> str:
    import importlib.resources

    return str(importlib.resources.files("ddbench.conf") / rel)


def test_protocol_hash_is_stable_and_tracks_the_recipe():
    a, b = _standard(), _standard()
    assert a.hash == b.hash
    assert _standard(epochs=999).hash != a.hash
    assert _standard(seeds=[0, 1]).hash != a.hash
    assert _standard(description="other words").hash == a.hash
    with pytest.raises(DDBenchError, match="unknown keys"):
        _standard(epochz=3)


def test_pinned_protocols_have_the_published_recipes():
    std, nodsa, llr = _standard(), None, None

    nodsa = Protocol.from_config(protocol_config("nodsa"))
    llr = Protocol.from_config(protocol_config("learned_lr"))
    assert (std.epochs, std.lr, std.momentum, std.weight_decay, std.batch_size) == (
        1000,
        0.01,
        0.9,
        5e-4,
        256,
    )
    assert std.augment == "dsa" and std.seeds == [0, 1, 2, 3, 4]
    assert nodsa.epochs == 300 and nodsa.augment == "none"
    assert (
        llr.lr_from_set
        and dataclasses.replace(llr, name="standard", lr_from_set=False, labels="hard").hash
        == std.hash
    )


def _digits_set(digits, ipc=3, soft=False, lr=None):
    from ddbench.synset import SyntheticSet

    x, y = _subset(digits[0], ipc)
    spec = data.get_spec("digits")
    labels = torch.nn.functional.one_hot(y, 10).float() if soft else y
    meta = {"dataset": "digits", "num_classes": 10, "ipc": ipc, "method": {"name": "random", "config": {}},
            "space": {"normalized": True, "mean": list(spec.mean), "std": list(spec.std), "zca": False}}  # fmt: skip
    return SyntheticSet(x, labels, meta, None if lr is None else torch.tensor([lr]))


def test_evaluate_reports_final_epoch_accuracy_of_each_seed(digits):
    """No selection on test: the reported numbers are those of the final models."""
    p = _standard(epochs=15, seeds=[0, 1], augment="none")
    s = _digits_set(digits)
    r = evaluate(s, p, "convnet", {"net_width": 32}, device="cpu", progress=False)
    trained = train(_build, [0, 1], s.images, s.labels, p.recipe(None), device="cpu", compile=False)
    direct = accuracy(
        trained.models, digits[1].images, digits[1].labels, transform=digits[0].normalize
    )
    got = [e["accuracy"] for e in r["accuracy"]["per_seed"]]
    assert got == pytest.approx(direct, abs=1e-4)
    assert r["accuracy"]["mean"] == pytest.approx(sum(direct) / 2, abs=1e-4)
    assert r["protocol"] == {"name": "standard", "hash": p.hash, "comparable": True}
    assert set(r["cost"]) >= {
        "distill_seconds",
        "eval_seconds",
        "peak_memory_bytes",
        "synset_bytes",
    }


def test_a_set_scored_under_another_protocol_than_it_declares_says_so(digits, caplog):
    """Cross-protocol scoring is allowed, never silent: a warning and result.json say so."""
    s = _digits_set(digits)
    s.meta["protocol"] = "nodsa"
    p = _standard(epochs=1, seeds=[0], augment="none")
    with caplog.at_level("WARNING", logger="ddbench"):
        r = evaluate(s, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert r["protocol"]["set_declares"] == "nodsa" and r["protocol"]["cross_protocol"] is True
    assert "declares protocol 'nodsa' and is scored under 'standard'" in caplog.text
    s.meta["protocol"] = "standard"
    caplog.clear()
    with caplog.at_level("WARNING", logger="ddbench"):
        own = evaluate(s, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert "cross_protocol" not in own["protocol"] and "cross-protocol" not in caplog.text


def test_a_per_dataset_recipe_trains_with_dcs_augmentation(digits, monkeypatch):
    """A protocol's per-dataset entry is what evaluation trains with (here DC's augmentation on
    digits); the result carries the protocol's own hash."""
    from ddbench import augment

    calls = []
    real_call = augment.DCAugment.__call__

    def counted(self, x, generator=None):
        calls.append(len(x))
        return real_call(self, x, generator)

    monkeypatch.setattr(augment.DCAugment, "__call__", counted)
    p = _standard(epochs=5, seeds=[0], augment="none")
    p = dataclasses.replace(
        p, per_dataset={"digits": {"epochs": 1, "augment": "dc:crop_scale_rotate"}}
    )
    s = _digits_set(digits)
    r = evaluate(s, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert calls == [len(s)] and r["protocol"]["hash"] == p.hash  # 1 epoch: one batch of the set


def test_evaluate_refuses_mismatched_labels_and_missing_lr(digits):
    with pytest.raises(DDBenchError, match="soft labels"):
        evaluate(_digits_set(digits, soft=True), _standard(epochs=1), device="cpu", progress=False)
    llr = _standard(epochs=1, lr_from_set=True, labels="set")
    with pytest.raises(DDBenchError, match="learned lr"):
        evaluate(_digits_set(digits), llr, device="cpu", progress=False)
    r = evaluate(_digits_set(digits, soft=True, lr=0.02), dataclasses.replace(llr, seeds=[0]), "convnet",
                 {"net_width": 16}, device="cpu", progress=False)  # fmt: skip
    assert r["labels"]["kind"] == "soft"


def test_zca_space_is_reproduced_for_the_test_split(digits):
    """A ZCA set says so in its metadata; evaluation whitens the test images the same way."""
    from ddbench.augment import ZCA
    from ddbench.protocol import set_space_transform

    train_split, test = digits
    zca = ZCA.fit(train_split.normalize(train_split.images), eps=0.1)
    s = _digits_set(digits)
    s.images = zca(s.images)
    s.meta["space"].update(zca=True, zca_eps=0.1)
    transform = set_space_transform(s.meta, train_split)
    torch.testing.assert_close(
        transform(test.images[:50]), zca(train_split.normalize(test.images[:50]))
    )
    plain = set_space_transform({"space": {"normalized": True, "zca": False}}, train_split)
    assert not torch.allclose(transform(test.images[:50]), plain(test.images[:50]))
    r = evaluate(
        s,
        _standard(epochs=3, seeds=[0], augment="none"),
        "convnet",
        {"net_width": 16},
        device="cpu",
        progress=False,
    )
    assert 0 <= r["accuracy"]["mean"] <= 100


def test_checkpointer_resumes_only_its_own_config(tmp_path):
    from ddbench.method import Checkpointer

    ck = Checkpointer(tmp_path, key="abc", every=2)
    assert ck.load() is None and ck.due(2) and not ck.due(3)
    ck.save(4, {"images": torch.arange(6.0).view(2, 3)}, {"note": "x"})
    step, tensors, state = ck.load()
    assert (
        step == 4
        and torch.equal(tensors["images"], torch.arange(6.0).view(2, 3))
        and state == {"note": "x"}
    )
    assert Checkpointer(tmp_path, key="other").load() is None
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    assert ck.load() is None  # a damaged checkpoint never blocks a fresh start


class _Killed(Exception):
    pass


def test_interrupted_evaluation_resumes_from_finished_seeds(digits, tmp_path, monkeypatch):
    p = _standard(epochs=2, seeds=[0, 1, 2], augment="none")
    s = _digits_set(digits)
    partial = tmp_path / "partial.json"
    calls = []

    import ddbench.engine as engine

    def counting_train(build, seeds, *a, **kw):
        calls.append(list(seeds))
        if calls == [[0], [1]]:
            raise _Killed  # killed while training the second seed
        return real_engine_train(build, seeds, *a, **kw)

    real_engine_train = engine.train
    monkeypatch.setattr(engine, "train", counting_train)
    with pytest.raises(_Killed):
        evaluate(s, p, "convnet", {"net_width": 16}, device="cpu", progress=False, partial=partial)
    assert calls == [[0], [1]] and partial.exists()
    calls.clear()
    r = evaluate(s, p, "convnet", {"net_width": 16}, device="cpu", progress=False, partial=partial)
    assert calls == [[1], [2]]  # seed 0 was not trained again
    assert [e["seed"] for e in r["accuracy"]["per_seed"]] == [0, 1, 2]
    calls.clear()
    evaluate(s, _standard(epochs=1, seeds=[0], augment="none"), "convnet", {"net_width": 16}, device="cpu",
             progress=False, partial=partial)  # fmt: skip
    assert calls == [[0]]  # a partial of another evaluation is not reused


def test_evaluation_reuses_the_seeds_of_an_earlier_result_of_the_same_recipe(digits, tmp_path):
    """``reuse``: an earlier evaluation's seeds are taken, not trained again; the others train
    as in a fresh evaluation of all the seeds (on the CPU each seed trains alone)."""
    from ddbench import synset

    synset.save(_digits_set(digits), tmp_path / "s.safetensors")
    s = synset.load(tmp_path / "s.safetensors")
    kw = dict(device="cpu", progress=False)
    fresh = evaluate(s, _standard(epochs=2, seeds=[0, 1, 2], augment="none"), "convnet",
                     {"net_width": 16}, **kw)  # fmt: skip
    early = evaluate(s, _standard(epochs=2, seeds=[2, 0], augment="none"), "convnet",
                     {"net_width": 16}, **kw)  # fmt: skip
    p = _standard(epochs=2, seeds=[0, 1, 2], augment="none")
    r = evaluate(s, p, "convnet", {"net_width": 16}, reuse={"early.json": early}, **kw)
    assert r["accuracy"]["per_seed"] == fresh["accuracy"]["per_seed"]
    assert r["protocol"]["hash"] == fresh["protocol"]["hash"]
    assert r["reused"][0]["from"] == "early.json" and r["reused"][0]["seeds"] == [0, 2]
    # the reused seeds' accuracies are the earlier result's, read from it
    early["accuracy"]["per_seed"][0]["accuracy"] = 12.5  # seed 2's
    r = evaluate(s, p, "convnet", {"net_width": 16}, reuse={"early.json": early}, **kw)
    assert [e["accuracy"] for e in r["accuracy"]["per_seed"]][2] == 12.5


def test_evaluation_refuses_to_reuse_another_evaluation(digits, tmp_path):
    from ddbench import synset
    from ddbench.protocol import reusable_seeds

    synset.save(_digits_set(digits), tmp_path / "s.safetensors")
    s = synset.load(tmp_path / "s.safetensors")
    early = evaluate(s, _standard(epochs=1, seeds=[0], augment="none"), "convnet",
                     {"net_width": 16}, device="cpu", progress=False)  # fmt: skip
    p = _standard(epochs=1, seeds=[0, 1], augment="none")
    args = ("convnet", {"net_width": 16}, "fp32", "test", torch.device("cpu"))
    assert reusable_seeds(early, s, p, *args) == {0: early["accuracy"]["per_seed"][0]["accuracy"]}
    for what, p2, args2 in (
        ("recipe", _standard(epochs=2, seeds=[0, 1], augment="none"), args),
        ("model settings", p, ("convnet", {"net_width": 32}, *args[2:])),
        ("precision", p, (*args[:2], "bf16", *args[3:])),
        ("split", p, (*args[:3], "val", args[4])),
    ):
        with pytest.raises(DDBenchError, match=f"another {what}"):
            reusable_seeds(early, s, p2, *args2)
    other = _digits_set(digits, ipc=2)
    synset.save(other, tmp_path / "o.safetensors")
    with pytest.raises(DDBenchError, match=r"another set \(sha256\)"):
        reusable_seeds(early, synset.load(tmp_path / "o.safetensors"), p, *args)
    with pytest.raises(DDBenchError, match="not a readable evaluation result"):
        reusable_seeds({"accuracy": {}}, s, p, *args)
    with pytest.raises(DDBenchError, match="no sha256"):
        reusable_seeds(early, _digits_set(digits), p, *args)


@pytest.mark.parametrize("parallel", [False, True])
def test_training_resumed_from_a_checkpoint_ends_exactly_where_an_unbroken_run_does(
    digits, parallel
):
    x, y = _subset(digits[0], 5)
    r = Recipe(epochs=4, batch_size=16, augment="color_crop_cutout_scale_rotate", mixup=0.5)
    states = []
    kw = dict(device="cpu", compile=False, parallel=parallel)
    full = train(_build, [0, 1], x, y, r, checkpoint=states.append, checkpoint_every=1, **kw)
    # one model at a time: 2 groups x 4 epochs; together: 1 group x 4 epochs
    assert len(states) == (4 if parallel else 8)
    mid = states[len(states) // 2 + 1]  # inside the second model when trained one at a time
    resumed = train(_build, [0, 1], x, y, r, resume=mid, **kw)
    for a, b in zip(full.models, resumed.models):
        assert torch.equal(_params(a), _params(b))
    assert full.losses == resumed.losses
    with pytest.raises(DDBenchError, match="other seeds"):
        train(_build, [5, 6], x, y, r, resume=mid, **kw)


def test_kd_student_follows_its_teacher_not_the_true_labels(digits):
    train_split, _ = digits
    x, y = _subset(train_split, 10)
    torch.manual_seed(123)
    teacher = _build().eval()  # an untrained network: its labels disagree with the true ones
    with torch.no_grad():
        last = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(30)  # confident logits, so that its argmax carries the KL's signal
        last.bias.mul_(30)
        teacher_labels = teacher(x).argmax(1)
    assert (teacher_labels == y).float().mean() < 0.5
    r = Recipe(epochs=80, optimizer="adamw", lr=0.01, weight_decay=0.0, loss="kd", temperature=1)
    student = train(_build, [0], x, y, r, device="cpu", compile=False, teacher=teacher).models[0]
    with torch.no_grad():
        pred = student(x).argmax(1)
    follows = (pred == teacher_labels).float().mean()
    assert follows > 0.7 and follows > (pred == y).float().mean() + 0.2
    ce = Recipe(epochs=80, optimizer="adamw", lr=0.01, weight_decay=0.0)
    hard_student = train(_build, [0], x, y, ce, device="cpu", compile=False).models[0]
    with torch.no_grad():
        assert (hard_student(x).argmax(1) == teacher_labels).float().mean() < follows - 0.2
    hard = Recipe(epochs=80, optimizer="adamw", lr=0.01, weight_decay=0.0, loss="kd", hard_weight=1)
    with pytest.raises(DDBenchError, match="soft targets"):
        train(_build, [0], x, y, hard, device="cpu", compile=False)


def test_kd_loss_is_zero_for_the_teacher_itself_and_ce_at_full_hard_weight():
    from ddbench.engine import _loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 10, generator=g)
    y = torch.randint(10, (2, 8), generator=g)
    kd = Recipe(epochs=1, loss="kd", temperature=3.0)
    assert _loss(logits, y, kd, None, soft=logits).abs() < 1e-5
    assert _loss(logits, y, kd, None, soft=torch.randn(2, 8, 10, generator=g)) > 0.01
    ce = torch.nn.functional.cross_entropy(logits.reshape(16, 10), y.reshape(16), reduction="none")
    full_hard = dataclasses.replace(kd, hard_weight=1.0)
    assert torch.allclose(
        _loss(logits, y, full_hard, None, soft=logits), ce.view(2, 8).mean(1).sum()
    )


def test_mixup_and_cutmix_mix_images_and_targets_consistently():
    from ddbench.engine import _mix

    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(6)])[None]  # [1, 6, 1, 8, 8]
    y = torch.arange(6)[None]
    for alpha in ("mixup", "cutmix"):
        r = Recipe(epochs=1, **{alpha: 1.0})
        xm, tm, (y_b, lam) = _mix(x, y, r, [torch.Generator().manual_seed(1)])
        assert torch.equal(tm, y) and 0 <= float(lam) <= 1
        for i in range(6):  # every mixed image is lam * own + (1 - lam) * partner, on average
            expected = float(lam) * i + (1 - float(lam)) * int(y_b[0, i])
            assert abs(float(xm[0, i].mean()) - expected) < 1e-5
    soft = torch.nn.functional.one_hot(torch.arange(6), 6).float()[None]
    _, ts, mixed = _mix(x, soft, Recipe(epochs=1, mixup=1.0), [torch.Generator().manual_seed(2)])
    assert mixed is None and torch.allclose(ts.sum(-1), torch.ones(1, 6))


# ----------------------------------------------------------------------------- one training path


def _reference_steps(net, opt, x, y, steps, batch_size, g):
    """A hand-written loop: shuffled epochs from ``g``, batches of ``batch_size`` (the last one
    partial), cross entropy, one optimiser step per batch, ``steps`` steps in all."""
    done, n = 0, len(x)
    while done < steps:
        order = torch.randperm(n, generator=g)
        for b0 in range(0, n, batch_size):
            if done == steps:
                break
            idx = order[b0 : b0 + batch_size]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1


@pytest.mark.parametrize("steps", [7, 8])  # 7: the last epoch cut short after 3 of 4 batches
def test_given_models_and_optimisers_continue_as_a_plain_loop(digits, steps):
    """models=/optimizers=/generators=/steps= continue a network in place (DC's inner loop):
    the same batches, steps and optimiser state as a hand-written loop, twice in a row."""
    x, y = _subset(digits[0], 3)  # 30 images: batches of 8, 8, 8, 6
    runs = []
    for engine_loop in (True, False):
        torch.manual_seed(0)
        net = _build()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        for _ in range(2):  # the second call continues the net, optimiser and generator
            if engine_loop:
                res = train(
                    None, None, x, y, Recipe(epochs=0, batch_size=8), device="cpu",
                    compile=False, models=[net], optimizers=[opt], generators=[g], steps=steps,
                )  # fmt: skip
                assert res.models[0] is net and net.training  # in place, left in train mode
            else:
                _reference_steps(net, opt, x, y, steps, 8, g)
        runs.append((_params(net), g.get_state()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])  # the same number of shuffles drawn


def test_continuing_refuses_inconsistent_arguments(digits):
    x, y = _subset(digits[0], 1)
    net = _build()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    r = Recipe(epochs=1)
    with pytest.raises(DDBenchError, match="build and seeds"):
        train(None, None, x, y, r, device="cpu")
    with pytest.raises(DDBenchError, match="one optimiser per model"):
        train(None, None, x, y, r, device="cpu", models=[net, _build()], optimizers=[opt])
    with pytest.raises(DDBenchError, match="keeps its own lr"):
        train(None, None, x, y, r, device="cpu", models=[net], optimizers=[opt], lr=0.5)
    with pytest.raises(DDBenchError, match="parallel=False"):
        two = [_build(), _build()]
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in two]
        train(None, None, x, y, r, device="cpu", models=two, optimizers=opts, parallel=True)


@pytest.mark.parametrize("model, epochs", [("convnet_bn", 2), ("resnet18_bn", 1)])
def test_batchnorm_models_trained_stacked_match_models_trained_alone(digits, model, epochs):
    """parallel=True stacks BatchNorm models too (vmap with per-model running statistics): the
    same parameters, running statistics and outputs as one-by-one training, within float
    rounding. (ResNet-18-BN on 40 images in batches of 16 is chaotic after its first epoch:
    there two one-by-one runs with 1 and 2 threads already differ by ~4 %.) ``auto`` never
    stacks BatchNorm models (:func:`ddbench.engine.stacks`)."""
    from ddbench.engine import predict, stacks

    x, y = _subset(digits[0], 4)

    def build():
        return create_model(model, 1, 10, (8, 8))

    r = Recipe(epochs=epochs, batch_size=16)
    together = train(build, [0, 1], x, y, r, device="cpu", parallel=True, compile=False)
    test_x = digits[1].normalize(digits[1].images[:100])
    for k, seed in enumerate([0, 1]):
        alone = train(build, [seed], x, y, r, device="cpu", parallel=False, compile=False)
        a, b = together.models[k].state_dict(), alone.models[0].state_dict()
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=name)
        torch.testing.assert_close(
            predict([together.models[k]], test_x), predict(alone.models, test_x),
            atol=1e-4, rtol=1e-3,
        )  # fmt: skip
    assert not torch.equal(_params(together.models[0]), _params(together.models[1]))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not stacks("auto", cuda, build()) and stacks(True, cpu, build())
    assert stacks("auto", cuda, _build()) and not stacks("auto", cpu, _build())


def test_predict_batches_is_the_one_prediction_loop(digits):
    """Outputs of any form (``output=``), on a subset (``index=``), under no_grad and in eval
    mode, batch by batch, equal to the models called directly."""
    from ddbench.engine import predict, predict_batches

    split = digits[1]
    models = [_build().train(), _build()]
    idx = torch.arange(3, 250, 2)
    seen = []
    for rows, (emb, none) in predict_batches(
        models, split.images, index=idx, transform=split.normalize, batch_size=40,
        output=lambda m, x: (m.embed(x), None),
    ):  # fmt: skip
        assert (
            none is None and not emb.requires_grad and emb.shape[:2] == (2, rows.stop - rows.start)
        )
        seen.append(emb)
    assert not models[0].training and len(seen) == 4
    x = split.normalize(split.images[idx])
    with torch.no_grad():
        direct = torch.stack([m.embed(x) for m in models])
        logits = torch.stack([m(x) for m in models])
    torch.testing.assert_close(torch.cat(seen, 1), direct)
    torch.testing.assert_close(
        predict(models, split.images[idx], transform=split.normalize), logits
    )

"""Selection baselines (herding, k-center, forgetting, EL2N, GraNd) on the real digits dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddbench import coreset, engine
from ddbench.augment import DSA
from ddbench.coreset import (
    Selection,
    draw_seeds,
    herding_select,
    kcenter_select,
    select_top,
    train_models,
)
from ddbench.errors import DDBenchError
from ddbench.method import Checkpointer, Task, build_method
from ddbench.methods import packaged_config
from ddbench.methods.el2n import EL2N, GraNd
from ddbench.methods.forgetting import Forgetting
from ddbench.methods.herding import Herding, KCenter
from ddbench.models import create_model

CONF = Path(__file__).parents[1] / "conf" / "method"
IPC = 5


def _factory(model: str = "convnet"):
    return lambda: create_model(model, 1, 10, (8, 8), net_width=16)


@pytest.fixture
def make_task(digits_train):
    def build(
        seed: int = 0,
        ipc: int = IPC,
        checkpointer: Checkpointer | None = None,
        model: str = "convnet",
    ) -> Task:
        return Task(
            train=digits_train,
            ipc=ipc,
            model_factory=_factory(model),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            device=torch.device("cpu"),
            checkpointer=checkpointer or Checkpointer(None),
        )

    return build


# Small, fast configurations of every method (the digits train split has ~130 images a class).
METHODS = {
    "herding": lambda: Herding(features="trained", feature_epochs=2, lr=0.1),
    "kcenter": lambda: KCenter(features="trained", feature_epochs=2, lr=0.1),
    "kcenter_random_init": lambda: KCenter(features="random", init="random"),
    "kcenter_pixels": lambda: KCenter(features="pixels", init="random"),
    "forgetting": lambda: Forgetting(epochs=3, lr=0.1),
    "el2n": lambda: EL2N(models=1, epochs=2, lr=0.1),
    "grand": lambda: GraNd(models=1, epochs=2, lr=0.1),
    "grand_at_init": lambda: GraNd(models=2, epochs=0),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_selects_ipc_distinct_real_images_per_class_deterministically(
    name, make_task, tmp_path, monkeypatch
):
    method = METHODS[name]()
    task = make_task(seed=0)
    s = method.distill(task)
    idx = torch.tensor(s.meta["indices"])
    train = task.train
    assert len(s) == IPC * train.num_classes
    assert len(idx.unique()) == len(idx)
    assert torch.equal(s.labels, train.labels[idx])
    assert torch.bincount(s.labels, minlength=10).tolist() == [IPC] * 10
    assert torch.equal(s.images, train.normalize(train.images[idx]))
    assert s.meta["method"]["name"] == method.name and s.meta["ipc"] == IPC
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path))  # no cached scores: recomputed
    again = METHODS[name]().distill(make_task(seed=0))
    assert again.meta["indices"] == s.meta["indices"]
    other = METHODS[name]().distill(make_task(seed=1))
    assert other.meta["indices"] != s.meta["indices"]


def _class_feats(method, make_task):
    """Features of every class under the feature network the method uses with seed 0."""
    task = make_task(seed=0)
    model = method.feature_model(task)
    return [method.features_of(task, model, c) for c in range(task.num_classes)]


def _positions(make_task, s):
    """For each class, the selected rows within that class's index list."""
    train = make_task().train
    idx = torch.tensor(s.meta["indices"])
    out = []
    for c in range(train.num_classes):
        members = train.indices_of(c)
        chosen = idx[train.labels[idx] == c]
        out.append(torch.tensor([int((members == i).nonzero()) for i in chosen]))
    return out


TINY_TEACHER = {"model_kwargs": {"net_width": 16}, "epochs": 3, "lr": 0.05}


@pytest.mark.parametrize("features", ["teacher", "trained", "random", "pixels"])
def test_herding_mean_is_closer_to_the_class_mean_than_random_subsets(
    features, make_task, tmp_path, monkeypatch
):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path))
    method = Herding(features=features, feature_epochs=2, lr=0.1, teacher=TINY_TEACHER)
    s = method.distill(make_task(seed=0))
    if features == "teacher":  # the embedding is the cached teacher's, trained once
        from ddbench.teachers import TeacherConfig, get_teacher

        teacher, _ = get_teacher("digits", TeacherConfig(**TINY_TEACHER), train=False)
        f0 = method.features_of(make_task(seed=0), teacher, 0)
        assert torch.equal(f0, _class_feats(method, make_task)[0])
    feats = _class_feats(method, make_task)
    g = torch.Generator().manual_seed(123)
    herd, rand = [], []
    for f, rows in zip(feats, _positions(make_task, s)):
        mean = f.mean(0)
        herd.append(float((f[rows].mean(0) - mean).norm()))
        trials = [f[torch.randperm(len(f), generator=g)[:IPC]].mean(0) for _ in range(20)]
        rand.append(float(torch.stack([(t - mean).norm() for t in trials]).mean()))
    assert all(h < r for h, r in zip(herd, rand)), (herd, rand)


def _radius(f: torch.Tensor, rows: torch.Tensor) -> float:
    return float(torch.cdist(f, f[rows]).min(1).values.max())


def test_kcenter_covering_radius_is_at_most_random_subsets(make_task):
    method = KCenter(features="trained", feature_epochs=2, lr=0.1)
    s = method.distill(make_task(seed=0))
    feats = _class_feats(method, make_task)
    g = torch.Generator().manual_seed(123)
    for f, rows in zip(feats, _positions(make_task, s)):
        ours = _radius(f, rows)
        random_radii = [_radius(f, torch.randperm(len(f), generator=g)[:IPC]) for _ in range(20)]
        assert ours <= sum(random_radii) / len(random_radii), (ours, random_radii)


def test_chunked_herding_and_kcenter_match_a_naive_implementation():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 24, generator=g) + torch.randn(1, 24, generator=g)
    k = 12
    # herding, naive: the full candidate means at every step
    mean, picked = f.mean(0), []
    for _ in range(k):
        base = f[picked].sum(0) if picked else torch.zeros(24)
        d = ((base + f) / (len(picked) + 1) - mean).norm(dim=1)
        d[picked] = float("inf")
        picked.append(int(d.argmin()))
    assert herding_select(f, k, chunk=7).tolist() == picked
    # k-center, naive: the full distance matrix
    full = torch.cdist(f, f)
    picked = [int((f - f.mean(0)).norm(dim=1).argmin())]
    for _ in range(k - 1):
        d = full[:, picked].min(1).values
        d[picked] = -1
        picked.append(int(d.argmax()))
    assert kcenter_select(f, k, chunk=7).tolist() == picked


def test_kcenter_never_duplicates_identical_points():
    f = torch.zeros(6, 3)
    f[3:] = 1.0  # two distinct points, three copies each
    rows = kcenter_select(f, 5)
    assert len(rows.unique()) == 5


def test_select_top_breaks_ties_with_the_task_generator(make_task):
    flat = torch.zeros(len(make_task().train))
    a, b = select_top(make_task(seed=0), flat), select_top(make_task(seed=0), flat)
    c = select_top(make_task(seed=1), flat)
    assert torch.equal(a, b) and not torch.equal(a, c)
    first = torch.cat([make_task().train.indices_of(k)[:IPC] for k in range(10)])
    assert not torch.equal(a, first)  # not simply the first images of each class


def _assert_top_per_class(task, scores, idx, hardest=True):
    for c in range(task.num_classes):
        members = task.train.indices_of(c)
        chosen = torch.zeros(len(task.train), dtype=torch.bool)
        chosen[idx] = True
        inside, outside = scores[members[chosen[members]]], scores[members[~chosen[members]]]
        if hardest:
            assert inside.min() >= outside.max(), (c, inside, outside.max())
        else:
            assert inside.max() <= outside.min(), (c, inside, outside.min())


@pytest.mark.parametrize("keep, count", [("hardest", "batch"), ("easiest", "epoch")])
def test_forgetting_counts_events_and_selects_the_top_counts(keep, count, make_task):
    # one presentation (or evaluation) of each image per epoch: at most epochs // 2 events
    cfg = dict(epochs=4, lr=0.1, keep=keep, count=count, never_learned="hardest")
    out = Forgetting(**cfg).score(make_task(seed=0))
    count, learned = out["count"], out["learned"]
    assert (count >= 0).all() and (count <= cfg["epochs"] // 2).all()
    assert int(count.sum()) > 0  # a few forgetting events do happen on this run
    assert not learned[count > 0].logical_not().any()  # forgotten => was learned
    assert torch.isinf(out["score"][~learned]).all()
    s = Forgetting(**cfg).distill(make_task(seed=0))
    _assert_top_per_class(
        make_task(), out["score"], torch.tensor(s.meta["indices"]), keep == "hardest"
    )


def test_forgetting_counts_match_an_independent_recount(make_task):
    """Training e epochs at a constant lr is a prefix of training E epochs (same seed), so
    the correctness after each epoch can be recomputed with separate runs and the forgetting
    events (correct -> wrong) recounted. A BatchNorm model also checks that the per-epoch
    evaluation leaves the model training as it would have without it. ``count: epoch`` with a
    constant lr and no augmentation is the cheaper variant, which ``bench/same_sets.py`` pins."""
    epochs = 4
    cheap = dict(count="epoch", schedule="constant", augment="none")
    out = Forgetting(epochs=epochs, lr=0.1, **cheap).score(make_task(model="convnet_bn"))
    task = make_task(model="convnet_bn")
    seed = draw_seeds(task, 1)
    x, y = task.train.normalize(task.train.images), task.train.labels
    before = torch.zeros(len(y), dtype=torch.bool)
    count, learned = torch.zeros(len(y), dtype=torch.long), before.clone()
    for e in range(1, epochs + 1):
        (model,) = train_models(task, seed, e, lr=0.1, batch_size=256, desc="")
        with torch.no_grad():
            now = model.eval()(x).argmax(1) == y
        count += before & ~now
        learned |= now
        before = now
    assert int(count.sum()) > 0
    assert torch.equal(out["count"], count)
    assert torch.equal(out["learned"], learned) and torch.equal(out["correct"], before)


def test_forgetting_never_learned_count_ranks_by_plain_count(make_task):
    cfg = dict(epochs=2, lr=0.01, never_learned="count")
    out = Forgetting(**cfg).score(make_task(seed=0))
    assert (~out["learned"]).any()  # two slow epochs leave some images never learned
    assert torch.equal(out["score"], out["count"].float())


@pytest.mark.parametrize("cls", [EL2N, GraNd])
def test_scores_pick_the_misclassified_images_as_hardest(cls, make_task):
    cfg = dict(models=2, epochs=2, lr=0.1)
    out = cls(**cfg).score(make_task(seed=0))
    hard = torch.tensor(cls(**cfg).distill(make_task(seed=0)).meta["indices"])
    easy = torch.tensor(cls(**cfg, keep="easiest").distill(make_task(seed=0)).meta["indices"])
    task = make_task()
    _assert_top_per_class(task, out["score"], hard, hardest=True)
    _assert_top_per_class(task, out["score"], easy, hardest=False)
    # the hardest images are the ones the scoring models get wrong more often
    assert out["correct"][hard].mean() < out["correct"][easy].mean()
    assert out["correct"][hard].mean() < out["correct"].mean()


@pytest.mark.parametrize("epochs", [0, 2])
def test_el2n_and_grand_last_layer_match_their_definitions(epochs, make_task):
    """EL2N = ||softmax - onehot||; GraNd's ``gradient: last_layer`` = norm of the autograd
    gradient of the loss wrt the last linear layer (weight and bias), for one model trained
    without augmentation (the cheaper variants, which ``bench/same_sets.py`` pins)."""
    el2n = EL2N(models=1, epochs=epochs, augment="none").score(make_task())["score"]
    grand = GraNd(models=1, epochs=epochs, augment="none", gradient="last_layer")
    grand = grand.score(make_task())["score"]
    task = make_task()
    seeds = draw_seeds(task, 1)
    (model,) = train_models(task, seeds, epochs, lr=0.01, batch_size=256, desc="")
    x = task.train.normalize(task.train.images[:25])
    y = task.train.labels[:25]
    for i in range(len(x)):
        model.zero_grad()
        logits = model(x[i : i + 1])
        torch.nn.functional.cross_entropy(logits, y[i : i + 1]).backward()
        w, b = model.classifier.weight.grad, model.classifier.bias.grad
        expected = (w.pow(2).sum() + b.pow(2).sum()).sqrt()
        assert torch.allclose(grand[i], expected, rtol=1e-4), (i, grand[i], expected)
        err = logits.softmax(1)[0] - torch.nn.functional.one_hot(y[i], 10)
        assert torch.allclose(el2n[i], err.norm(), rtol=1e-4)


def test_forgetting_per_presentation_matches_a_reference_loop(make_task):
    """``count: batch`` counts, at every mini-batch presentation, the images right at their
    previous presentation and wrong at this one, from the training forward pass before the
    update (augmented, train mode). A plain loop replays the engine's batches (its order and
    DSA draws come from a generator seeded with the model seed + 7919), its SGD and step
    schedule (lr x0.2 at 30/60/80 % of the epochs), and recounts the events."""
    epochs, lr, bs = 5, 0.1, 64
    cfg = dict(count="batch", epochs=epochs, lr=lr, batch_size=bs, augment="auto")
    out = Forgetting(**cfg, schedule="step").score(make_task(seed=3))
    task = make_task(seed=3)
    (seed,) = draw_seeds(task, 1)
    x, y = task.train.normalize(task.train.images), task.train.labels
    n = len(y)
    torch.manual_seed(seed)
    model = task.model_factory().train()
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4, fused=True)
    g = torch.Generator().manual_seed(seed + 7919)
    dsa = DSA(task.spec.dsa_strategy)
    before = torch.zeros(n, dtype=torch.bool)
    count, learned = torch.zeros(n, dtype=torch.long), before.clone()
    for ep in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * 0.2 ** sum(ep >= int(epochs * m) for m in (0.3, 0.6, 0.8))
        order = torch.randperm(n, generator=g)
        for b0 in range(0, n, bs):
            idx = order[b0 : b0 + bs]
            logits = model(dsa(x[idx], g))
            now = logits.argmax(1) == y[idx]
            count[idx] += before[idx] & ~now
            learned[idx] |= now
            before[idx] = now
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits, y[idx]).backward()
            opt.step()
    assert int(count.max()) >= 2  # images forgotten more than once
    assert torch.equal(out["count"], count)
    assert torch.equal(out["learned"], learned) and torch.equal(out["correct"], before)
    # the cheaper per-epoch count of the same recipe is a different ranking
    epoch_count = Forgetting(**{**cfg, "count": "epoch"}, schedule="step").score(make_task(seed=3))
    assert not torch.equal(epoch_count["count"], count)


def test_engine_on_batch_sees_every_row_once_per_epoch_with_its_logits(make_task):
    task = make_task()
    x, y = task.train.normalize(task.train.images), task.train.labels
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    recipe = engine.Recipe(epochs=2, batch_size=100, lr=0.05)
    engine.train(
        task.model_factory, [0], x, y, recipe, device="cpu",
        on_batch=lambda rows, logits: seen.append((rows.clone(), logits)),
    )  # fmt: skip
    per_epoch = -(-len(y) // 100)
    assert len(seen) == 2 * per_epoch
    for e in range(2):
        rows = torch.cat([r[0] for r, _ in seen[e * per_epoch : (e + 1) * per_epoch]])
        assert torch.equal(rows.sort().values, torch.arange(len(y)))
    # the logits are the model's on the batch before that step's update
    torch.manual_seed(0)
    model = task.model_factory().train()
    rows, logits = seen[0]
    assert logits.shape == (1, len(rows[0]), 10) and not logits.requires_grad
    assert torch.allclose(logits[0], model(x[rows[0]]), atol=1e-5)
    with pytest.raises(DDBenchError, match="on_batch"):
        engine.train(
            task.model_factory, [0], x, y, recipe, device="cpu",
            on_batch=lambda r, lg: None, batch_transform=lambda a, b: (a, b),
        )  # fmt: skip


@pytest.mark.parametrize("model", ["convnet", "convnet_bn"])
def test_grand_full_is_the_per_sample_gradient_norm_at_init(model, make_task):
    """GraNd's default: the norm of the gradient of each image's loss wrt every parameter, in
    eval mode, averaged over the networks at initialisation, as ``torch.autograd.grad``
    computes it one image at a time; it bounds the last-layer norm (a part of it) from above."""
    out = GraNd(models=2).score(make_task(model=model))
    last = GraNd(models=2, gradient="last_layer").score(make_task(model=model))["score"]
    task = make_task(model=model)
    x, y = task.train.normalize(task.train.images[:6]), task.train.labels[:6]
    expected = torch.zeros(6)
    for seed in draw_seeds(task, 2):
        torch.manual_seed(seed)
        net = task.model_factory().eval()
        for i in range(6):
            loss = torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, list(net.parameters()))
            expected[i] += torch.cat([g.flatten() for g in grads]).norm() / 2
    assert torch.allclose(out["score"][:6], expected, rtol=1e-4), (out["score"][:6], expected)
    assert (out["score"] >= last * (1 - 1e-5)).all() and (out["score"] > last * 1.01).any()


def test_el2n_with_augmentation_differs_from_without(make_task):
    cfg = dict(models=1, epochs=2, lr=0.1)
    aug = EL2N(**cfg).score(make_task())["score"]  # default augment: auto (DSA)
    plain = EL2N(**cfg, augment="none").score(make_task())["score"]
    assert aug.shape == plain.shape and not torch.allclose(aug, plain, atol=1e-3)
    # a named strategy is the same as auto when auto resolves to it
    named = EL2N(**cfg, augment=make_task().spec.dsa_strategy).score(make_task())["score"]
    assert torch.equal(named, aug)


def test_defaults_are_the_papers_definitions():
    f, e, g = Forgetting(), EL2N(), GraNd()
    assert (f.count, f.epochs, f.schedule, f.augment) == ("batch", 200, "step", "auto")
    assert (e.models, e.epochs, e.augment) == (10, 20, "auto")
    assert (g.models, g.epochs, g.gradient) == (10, 0, "full")


def test_scores_are_saved_and_resumed_without_retraining(make_task, tmp_path, monkeypatch):
    method = lambda: EL2N(models=1, epochs=1)  # noqa: E731
    first = method().distill(make_task(checkpointer=Checkpointer(tmp_path, key="k")))
    assert (tmp_path / "checkpoint.safetensors").exists()

    def no_training(*a, **k):
        raise AssertionError("resumed run retrained")

    monkeypatch.setattr(coreset, "train", no_training)
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "empty"))  # only the checkpoint has them
    again = method().distill(make_task(checkpointer=Checkpointer(tmp_path, key="k")))
    assert again.meta["indices"] == first.meta["indices"]
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "empty2"))
    with pytest.raises(AssertionError, match="retrained"):  # another config does not resume
        method().distill(make_task(checkpointer=Checkpointer(tmp_path, key="other")))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Herding(features="imagenet"), "features="),
        (lambda: KCenter(init="corner"), "init="),
        (lambda: EL2N(keep="middle"), "keep="),
        (lambda: GraNd(models=0), "models must be"),
        (lambda: Forgetting(never_learned="skip"), "never_learned="),
        (lambda: Forgetting(epochs=0), "epochs must be"),
        (lambda: Forgetting(count="sample"), "count="),
        (lambda: Forgetting(schedule="linear"), "schedule="),
        (lambda: EL2N(augment="blur"), "unknown DSA op"),
        (lambda: GraNd(gradient="first_layer"), "gradient="),
    ],
)
def test_bad_options_fail_clearly(build, message):
    with pytest.raises(DDBenchError, match=message):
        build()


def test_ipc_larger_than_a_class_fails_clearly(make_task):
    with pytest.raises(DDBenchError, match="cannot pick an image twice"):
        KCenter(features="random").distill(make_task(ipc=200))


@pytest.mark.parametrize("name", ["herding", "kcenter", "forgetting", "el2n", "grand"])
def test_configs_build_their_method(name):
    cfg = packaged_config(name)
    method = build_method(cfg)
    assert isinstance(method, Selection) and method.name == cfg["name"] == name
    assert method.config == cfg


def test_scores_are_computed_once_and_shared_across_ipc(make_task, monkeypatch):
    small = EL2N(models=1, epochs=2, lr=0.1).distill(make_task(seed=0, ipc=2))

    def no_training(*a, **k):
        raise AssertionError("scores were recomputed")

    monkeypatch.setattr(coreset, "train", no_training)
    large = EL2N(models=1, epochs=2, lr=0.1).distill(make_task(seed=0, ipc=4))
    assert set(small.meta["indices"]) < set(large.meta["indices"])  # same scores, top-2 in top-4
    easiest = EL2N(models=1, epochs=2, lr=0.1, keep="easiest").distill(make_task(seed=0, ipc=2))
    assert not set(easiest.meta["indices"]) & set(small.meta["indices"])
    with pytest.raises(AssertionError, match="recomputed"):
        EL2N(models=1, epochs=3, lr=0.1).distill(make_task(seed=0, ipc=2))

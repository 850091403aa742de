"""Selection baselines (herding, k-center, forgetting, EL2N, GraNd) on the real digits dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddbench import coreset
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


@pytest.mark.parametrize("keep", ["hardest", "easiest"])
def test_forgetting_counts_events_and_selects_the_top_counts(keep, make_task):
    cfg = dict(epochs=4, lr=0.1, keep=keep, never_learned="hardest")
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
    evaluation leaves the model training as it would have without it."""
    epochs = 4
    out = Forgetting(epochs=epochs, lr=0.1).score(make_task(model="convnet_bn"))
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
def test_el2n_and_grand_match_their_definitions(epochs, make_task):
    """EL2N = ||softmax - onehot||; GraNd = norm of the autograd gradient of the loss wrt the
    last linear layer (weight and bias), for one model."""
    el2n = EL2N(models=1, epochs=epochs).score(make_task())["score"]
    grand = GraNd(models=1, epochs=epochs).score(make_task())["score"]
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

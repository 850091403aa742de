"""ZCA whitening as an option of the image space (ddbench/data.py, synset.py, protocol.py), on the
real digits data: the fit, the splits, sets that carry their whitening, evaluation, MTT experts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from conftest import make_task

from ddbench import augment, data, engine, experts, protocol, synset
from ddbench.errors import DDBenchError
from ddbench.methods.mtt import MTT
from ddbench.methods.subset import Random


@pytest.fixture(scope="module")
def zca_train(ddbench_data_root) -> data.RealDataset:
    return data.load_split("digits", "train", zca=True)


@pytest.fixture
def private_data_root(tmp_path, monkeypatch, ddbench_data_root) -> Path:
    """A data root of its own holding a copy of the prepared digits (no cached ZCA yet)."""
    (tmp_path / "digits").mkdir()
    shutil.copy(data.prepared_path("digits"), tmp_path / "digits" / "data.safetensors")
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    return tmp_path


def _cov(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    return x.T @ x / (len(x) - 1)


def _offdiag(c: torch.Tensor) -> float:
    """Mean absolute off-diagonal correlation."""
    d = c.diagonal().clamp_min(1e-12).sqrt()
    r = c / d[:, None] / d[None, :]
    return float((r - torch.diag(r.diagonal())).abs().sum() / (r.numel() - len(r)))


def test_the_fitted_zca_whitens_the_train_split(zca_train):
    x = zca_train.standardize(zca_train.images)
    w = zca_train.normalize(zca_train.images)
    assert w.shape == x.shape and not torch.allclose(w, x)
    before, after = _cov(x), _cov(w)
    assert _offdiag(after) < 0.5 * _offdiag(before)  # decorrelated
    # regularised ZCA: the whitened covariance has eigenvalues s / (s + eps), s those of before
    s = torch.linalg.eigvalsh(before)
    expected = s / (s + zca_train.zca.eps)
    torch.testing.assert_close(torch.linalg.eigvalsh(after), expected, atol=2e-3, rtol=1e-2)
    assert abs(zca_train.zca.eps - data.ZCA_EPS) < 1e-12
    # the mean of the whitened train split is zero; the split maps back to its pixels
    assert w.flatten(1).mean(0).abs().max() < 1e-3
    torch.testing.assert_close(
        zca_train.denormalize(w[:20]), zca_train.images[:20].float() / 255, atol=1e-3, rtol=0
    )


def test_every_split_shares_the_train_fit_which_is_cached(private_data_root, monkeypatch):
    first = data.fit_zca("digits")
    assert data.zca_path("digits", data.ZCA_EPS).exists()
    monkeypatch.setattr(augment.ZCA, "fit", classmethod(lambda *a, **k: pytest.fail("refitted")))
    again = data.fit_zca("digits")
    assert torch.equal(again.transform, first.transform) and torch.equal(again.mean, first.mean)
    val = data.load_split("digits", "val", zca=True)
    test = data.load_split("digits", "test", zca=True)
    for split in (val, test):
        assert torch.equal(split.zca.transform, first.transform)
        torch.testing.assert_close(
            split.normalize(split.images[:10]), first(split.standardize(split.images[:10]))
        )
    with pytest.raises(DDBenchError, match="zca_eps"):
        data.fit_zca("digits", eps=0.0)


def test_the_cached_fit_is_redone_when_the_prepared_data_changes(private_data_root):
    from safetensors.torch import load_file, save_file

    first = data.fit_zca("digits")
    path = data.prepared_path("digits")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()  # the same recipe (data.stale), other data
    t = load_file(str(path))
    t["train_x"] = t["train_x"].flip(-1).contiguous()  # other data, same shapes
    save_file(t, str(path), metadata=meta)
    second = data.fit_zca("digits")
    assert not torch.allclose(second.transform, first.transform)


def test_a_set_without_zca_is_unchanged(make_set, tmp_path, split_cache):
    train = split_cache("digits", "train")
    assert train.zca is None
    torch.testing.assert_close(
        train.normalize(train.images[:5]), train.standardize(train.images[:5])
    )
    s = make_set()
    assert s.meta["space"] == {"normalized": True, "mean": list(train.spec.mean),
                               "std": list(train.spec.std), "zca": False}  # fmt: skip
    assert s.zca is None and set(s.tensors()) == {"images", "labels"}
    back = synset.load(synset.save(s, tmp_path / "plain.safetensors"))
    assert back.zca is None and torch.equal(back.unwhitened(), back.images)


def test_a_zca_set_round_trips_with_its_transform(zca_train, tmp_path):
    task = make_task(zca_train, 3)
    s = Random().distill(task)
    space = s.meta["space"]
    assert space["zca"] is True and space["zca_eps"] == zca_train.zca.eps
    assert s.zca is zca_train.zca
    path = synset.save(s, tmp_path / "zca.safetensors")
    back = synset.load(path)
    assert torch.equal(back.images, s.images)
    assert torch.equal(back.zca.mean, zca_train.zca.mean.float())
    assert torch.equal(back.zca.transform, zca_train.zca.transform.float())
    torch.testing.assert_close(back.zca.transform_inv, zca_train.zca.transform_inv, atol=1e-4, rtol=1e-4)  # fmt: skip
    # un-whitening the chosen real images gives their normalised, then their pixel, values back
    idx = torch.tensor(s.meta["indices"])
    torch.testing.assert_close(back.unwhitened(), zca_train.standardize(zca_train.images[idx]), atol=1e-3, rtol=0)  # fmt: skip
    torch.testing.assert_close(back.pixels(), zca_train.images[idx].float() / 255, atol=1e-3, rtol=0)  # fmt: skip
    assert back.nbytes()["images"] == s.images.numel() * 4  # the transform is not set storage


def test_a_set_file_with_a_broken_zca_is_refused(zca_train, tmp_path):
    from safetensors.torch import load_file, save_file

    s = Random().distill(make_task(zca_train, 1))
    path = synset.save(s, tmp_path / "z.safetensors")
    header = {"ddbench": json.dumps(synset.read_header(path))}
    t = load_file(str(path))
    t["zca_transform"] = t["zca_transform"][:10, :10].contiguous()
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(DDBenchError, match="ZCA"):
        synset.load(tmp_path / "bad.safetensors", verify=False)
    plain = dict(s.meta, space=dict(s.meta["space"], zca=False))
    with pytest.raises(DDBenchError, match="not in ZCA space"):
        synset.save(synset.SyntheticSet(s.images, s.labels, plain, zca=s.zca), tmp_path / "x.st")


def test_evaluation_maps_test_images_with_the_sets_stored_transform(
    zca_train, tmp_path, monkeypatch
):
    # a set whose stored whitening differs from the dataset's cached fit: evaluation must use it
    own = augment.ZCA.fit(zca_train.standardize(zca_train.images[:600]), eps=0.3)
    train = data.RealDataset(zca_train.spec, "train", zca_train.images, zca_train.labels, own)
    s = synset.load(
        synset.save(Random().distill(make_task(train, 2)), tmp_path / "own.safetensors")
    )
    assert s.meta["space"]["zca_eps"] == pytest.approx(0.3)
    seen = {}
    real_accuracy = engine.accuracy

    def spy(models, images, labels, transform=None, **kw):
        seen["transform"], seen["images"] = transform, images
        return real_accuracy(models, images, labels, transform=transform, **kw)

    monkeypatch.setattr(engine, "accuracy", spy)
    recipe = protocol.Protocol(name="t", epochs=1, seeds=[0], augment="none", comparable=False)
    r = protocol.evaluate(s, recipe, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert 0 <= r["accuracy"]["mean"] <= 100
    test = seen["images"][:40]
    mapped = seen["transform"](test)
    torch.testing.assert_close(mapped, own(zca_train.standardize(test)))
    assert not torch.allclose(mapped, zca_train.zca(zca_train.standardize(test)), atol=1e-3)


def test_a_zca_set_under_a_teacher_protocol_is_refused(zca_train):
    s = Random().distill(make_task(zca_train, 1))
    kd = protocol.Protocol(name="kd", epochs=1, labels="teacher", loss="kd", seeds=[0],
                           teacher={"epochs": 1})  # fmt: skip
    with pytest.raises(DDBenchError, match="ZCA space"):
        protocol.evaluate(s, kd, device="cpu", progress=False)


def test_experts_train_in_the_tasks_space_and_mtt_refuses_a_mismatch(zca_train, split_cache):
    cfg = experts.ExpertConfig(zca=True, epochs=1)
    x, y = experts._images("digits", cfg)
    torch.testing.assert_close(x, zca_train.normalize(zca_train.images))
    plain_x, _ = experts._images("digits", experts.ExpertConfig(epochs=1))
    torch.testing.assert_close(plain_x, zca_train.standardize(zca_train.images))
    small = {"model_kwargs": {"net_width": 16}, "epochs": 2}
    mtt = dict(iterations=1, syn_steps=2, expert_epochs=1, max_start_epoch=1, num_experts=1)
    with pytest.raises(DDBenchError, match="experts are trained with no ZCA"):
        MTT(**mtt, experts=small).prepare(make_task(zca_train, 1))
    with pytest.raises(DDBenchError, match="task's images have no ZCA"):
        MTT(**mtt, experts={**small, "zca": True}).prepare(make_task(split_cache("digits", "train"), 1))  # fmt: skip
    s = MTT(**mtt, experts={**small, "zca": True}).distill(make_task(zca_train, 1))
    assert s.meta["space"]["zca"] and s.zca is zca_train.zca


def test_cli_run_with_dataset_zca_makes_and_scores_a_zca_set(tmp_path):
    from ddbench.cli import config_key

    out = tmp_path / "z"
    p = run_cli("run", "dataset=digits", "dataset.zca=true", "ipc=2", "protocol=quick",
                "protocol.epochs=2", "model.kwargs.net_width=16", "progress=false",
                f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = synset.load(out / "synset.safetensors")
    assert s.meta["space"]["zca"] and s.zca is not None
    torch.testing.assert_close(s.zca.transform, data.fit_zca("digits").transform)
    assert json.loads((out / "result.json").read_text())["accuracy"]["mean"] >= 0
    # the run keys of sets without ZCA are what they were before the option existed
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"dataset": {"name": "digits", "zca": False, "zca_eps": 0.1}, "ipc": 1})
    old = OmegaConf.create({"dataset": {"name": "digits"}, "ipc": 1})
    assert config_key(cfg, ("dataset", "ipc")) == config_key(old, ("dataset", "ipc"))
    cfg.dataset.zca = True
    assert config_key(cfg, ("dataset", "ipc")) != config_key(old, ("dataset", "ipc"))

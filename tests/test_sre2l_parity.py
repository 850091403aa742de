"""The parity harness of SRe2L, CDA and CV-DD against their authors' recovery scripts (issue 27),
on the real digits data: the shared teacher exported by ddbench and rebuilt by the local parity
shim (bench/parity/sre2l_shim.py), their per-batch tensors turned into a set exactly, CV-DD's
shared start, and the teacher check of bench/parity/parity.py. With PARITY_SRE2L_CHECKOUT
(VILA-Lab/SRe2L) and PARITY_CVDD_CHECKOUT (Jiacheng8/CV-DD) set to unpatched checkouts, their
scripts themselves are patched in a copy and run for two iterations."""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import with_teachers

from ddbench import synset
from ddbench.data import get_spec
from ddbench.recover import by_slot, pixel_range
from ddbench.teachers import TeacherConfig, get_teacher

PARITY = Path(__file__).parents[1] / "bench" / "parity"
TEACHER = {"model": "convnet_bn", "model_kwargs": {"net_width": 16}, "epochs": 10, "lr": 0.05}
MEMBER = {**TEACHER, "model_kwargs": {"net_width": 8}, "seed": 1}

pytestmark = pytest.mark.usefixtures("one_thread")
cached_teachers = with_teachers(TEACHER, MEMBER)


@pytest.fixture
def shim(monkeypatch):
    """A fresh copy of the shim module (its state is per process in their scripts)."""
    monkeypatch.syspath_prepend(str(PARITY))
    import sre2l_shim

    return importlib.reload(sre2l_shim)


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": -1, "arch_path": "", "model_pool_dir": "", **kw})


def test_the_exported_teacher_rebuilt_by_the_shim_is_ddbench_s_teacher(
    shim, tmp_path, digits_train
):
    info = shim.export_teacher("digits", TEACHER, tmp_path, "teacher")
    ours, meta = get_teacher("digits", TeacherConfig(**TEACHER), device="cpu", train=False)
    assert info["key"] == meta["key"] and info["val_accuracy"] == meta["val_accuracy"]
    shim.setup(_args(seed=3, arch_path=str(tmp_path / "teacher.pth")))
    spec = get_spec("digits")
    assert (shim.SHAPE, shim.NUM_CLASSES) == ((1, 8, 8), 10)
    assert (shim.MEAN, shim.STD) == (list(spec.mean), list(spec.std))
    # --seed seeds all three generators their scripts draw from
    drawn = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    assert torch.equal(drawn[0], torch.rand(2)) and drawn[1:] == (np.random.rand(), random.random())

    theirs = shim.teacher(str(tmp_path / "teacher.pth"))
    assert not theirs.training
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = digits_train.normalize(digits_train.images[:64])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours.eval()(x), atol=1e-5, rtol=1e-5)

    # CV-DD: every exported member of the pool, its val accuracy as its prior
    pool = tmp_path / "pool"
    infos = [
        shim.export_teacher("digits", c, pool, f"m{i}") for i, c in enumerate((TEACHER, MEMBER))
    ]
    shim.setup(_args(model_pool_dir=str(pool)))
    assert shim.priors() == {"m0": infos[0]["val_accuracy"], "m1": infos[1]["val_accuracy"]}
    assert shim.is_member("m1") and not shim.is_member("ResNet18")
    net = shim.member("m1")  # their load_model: the architecture; they load m1.pth into it
    net.load_state_dict(torch.load(pool / "m1.pth", weights_only=True))
    member = get_teacher("digits", TeacherConfig(**MEMBER), device="cpu", train=False)[0]
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), member.eval()(x), atol=1e-5, rtol=1e-5)


def test_their_batches_become_the_imported_set_exactly_in_ddbench_s_order(shim, tmp_path):
    k, ipc = 10, 3
    batches = [torch.randn(k, 1, 8, 8) for _ in range(ipc)]
    for j, x in enumerate(batches):
        shim.save_slot(str(tmp_path), x, torch.arange(k), j)
    images, labels = shim.collect(tmp_path, ipc, k)
    torch.save(images, tmp_path / "images_parity.pt")
    torch.save(labels, tmp_path / "labels_parity.pt")
    s = synset.import_mtt(tmp_path / "images_parity.pt", "digits")
    assert s.ipc == ipc and torch.equal(s.hard_labels, torch.arange(k).repeat_interleave(ipc))
    for j, x in enumerate(batches):  # batch j holds the j-th image of every class
        assert torch.equal(by_slot(s.images, ipc)[j * k : (j + 1) * k], x)
    with pytest.raises(SystemExit, match="missing"):
        shim.collect(tmp_path, ipc + 1, k)
    shim.save_slot(str(tmp_path), batches[0], torch.arange(k).flip(0), 1)
    with pytest.raises(SystemExit, match="not classes"):
        shim.collect(tmp_path, ipc, k)


def test_the_shared_start_gives_their_batch_j_ddbench_s_batch_j(shim, tmp_path):
    k, ipc = 10, 4
    start = torch.randn(k * ipc, 1, 8, 8)  # ordered by class, as ddbench's init_from reads it
    torch.save(start, tmp_path / "start.pt")
    shim.NUM_CLASSES = k
    for j in range(ipc):
        x = shim.init_slot(str(tmp_path / "start.pt"), 0, k, j)
        assert x.is_leaf and x.requires_grad
        assert torch.equal(x.detach(), by_slot(start, ipc)[j * k : (j + 1) * k])
    part = shim.init_slot(str(tmp_path / "start.pt"), 2, 5, 1)  # classes 2..4 of batch 1
    assert torch.equal(part.detach(), start[[2 * ipc + 1, 3 * ipc + 1, 4 * ipc + 1]])


def test_the_teacher_check_ignores_only_where_the_teacher_came_from(monkeypatch):
    monkeypatch.syspath_prepend(str(PARITY))
    from parity import teacher_of

    one = {"key": "a", "model": "convnet_bn", "val_accuracy": 90.0}
    assert teacher_of({"labels": {"teacher": {**one, "source": "set"}}}) == teacher_of(
        {"labels": {"teacher": {**one, "source": "protocol"}}}
    )
    assert teacher_of({"labels": {"teacher": {**one, "key": "b"}}}) != teacher_of(
        {"labels": {"teacher": one}}
    )
    committee = {"committee": [{**one, "weight": 0.6}, {**one, "key": "b", "weight": 0.4}],
                 "bn": "batch"}  # fmt: skip
    other = {**committee, "committee": [{**one, "weight": 0.4}, {**one, "key": "b", "weight": 0.6}]}
    assert teacher_of({"labels": {"teacher": committee}}) != teacher_of(
        {"labels": {"teacher": other}}
    )


# ------------------------------------------------------------------ their scripts (optional)

SCRIPTS = {  # method: (checkout variable, script folder, script)
    "sre2l": ("PARITY_SRE2L_CHECKOUT", "SRe2L/*small_dataset", "recover_cifar.py"),
    "cda": ("PARITY_SRE2L_CHECKOUT", "CDA", "recover_cda_tiny.py"),
    "cvdd": ("PARITY_CVDD_CHECKOUT", "recover", "recover.py"),
}


@pytest.mark.parametrize("method", sorted(SCRIPTS))
def test_their_patched_script_recovers_on_the_shared_teacher(method, shim, tmp_path):
    var, folder, script = SCRIPTS[method]
    if not os.environ.get(var):
        pytest.skip(f"{var} names no checkout of the authors' code")
    off = tmp_path / "checkout"
    shutil.copytree(os.environ[var], off)
    setup = [str(PARITY / "official_sre2l_setup.sh"), str(off)]
    subprocess.run(["bash", *setup], check=True, capture_output=True)
    patched = (off / folder / script).read_text()
    assert "ddbench-parity S1" in patched and "ddbench-parity S6" in patched
    subprocess.run(["bash", *setup], check=True, capture_output=True)  # idempotent
    assert (off / folder / script).read_text() == patched

    k, ipc, save = 10, 2, tmp_path / "out"
    common = ["--exp-name", "t", "--syn-data-path", str(tmp_path / "syn"), "--batch-size",
              str(k), "--iteration", "2", "--lr", "0.25", "--r-bn", "0.01", "--ipc-start", "0",
              "--ipc-end", str(ipc), "--seed", "0", "--parity-save", str(save)]  # fmt: skip
    if method == "cvdd":
        for i, c in enumerate((TEACHER, MEMBER)):
            shim.export_teacher("digits", c, tmp_path / "pool", f"m{i}")
        start = torch.randn(k * ipc, 1, 8, 8)
        torch.save(start, tmp_path / "start.pt")
        cmd = ["--dataset-name", "ddbench", "--apply-data-augmentation", "--pretrained-model-type",
               "offline", "--model-pool-dir", str(tmp_path / "pool"), "--model-setting", "8",
               "--voter-type", "prior", "--selected-size", "2", "--initialisation-method",
               "Patches", "--parity-init", str(tmp_path / "start.pt")]  # fmt: skip
    else:
        shim.export_teacher("digits", TEACHER, tmp_path, "teacher")
        cmd = ["--arch-path", str(tmp_path / "teacher.pth")]
        cmd += ["--easy2hard-mode", "cosine", "--milestone", "1"] if method == "cda" else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, script, *cmd, *common], cwd=off / folder, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    images, labels = shim.collect(save, ipc, k)
    lo, hi = pixel_range(get_spec("digits"), torch.device("cpu"))
    assert images.shape == (k * ipc, 1, 8, 8) and torch.isfinite(images).all()
    assert (images >= lo - 1e-6).all() and (images <= hi + 1e-6).all()  # their clip, our constants
    if method == "cvdd":  # recovered from the shared start, which it moved
        moved = (images - start).abs().amax()
        assert 0 < moved < 10
    assert not list((tmp_path / "syn").rglob("*.jpg"))  # no --store-best-images: no JPEGs

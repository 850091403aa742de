"""The parity harness of INFER against its authors' generation (zhangxin-xd/UFC, issue 30), on
the real digits data: the compensators their patched script saves per slot, gathered in ddbench's
order and imported over the shared real images with static labels from the same teachers
(bench/parity/infer_parity.py). With PARITY_INFER_CHECKOUT set to an unpatched checkout, their
script is patched in a copy and run; without jitter (the only random draw of either loop) its
compensators are ddbench's."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import task_maker, with_teachers

from ddbench import synset
from ddbench.method import run_distill
from ddbench.methods.infer import INFER

PARITY = Path(__file__).parents[1] / "bench" / "parity"
TEACHER_A = {"model": "convnet_bn", "model_kwargs": {"net_width": 16}, "epochs": 10, "lr": 0.05}
TEACHER_B = {**TEACHER_A, "model_kwargs": {"net_width": 8}, "seed": 1}
IPC = 3  # two teachers, ten classes: B = int(3 / 1.2) = 2 real images per class, 4 compensators

pytestmark = pytest.mark.usefixtures("one_thread")
cached_teachers = with_teachers(TEACHER_A, TEACHER_B)


@pytest.fixture
def infer_parity(monkeypatch):
    monkeypatch.syspath_prepend(str(PARITY))
    monkeypatch.setenv("PARITY_INFER_TEACHERS", json.dumps([TEACHER_A, TEACHER_B]))
    import infer_parity

    return importlib.reload(infer_parity)


@pytest.fixture
def made(digits_train):
    def make(**kw) -> synset.SyntheticSet:
        method = INFER(teachers=[TEACHER_A, TEACHER_B], r_bn=0.1, **kw)
        return run_distill(method, task_maker(digits_train, IPC)())

    return make


def _their_slots(s: synset.SyntheticSet, save: Path) -> None:
    """``s`` written as their patched script writes its slots (setup U7): slot ``i`` starts from
    batch ``i mod B``; the first ``B`` hold no compensator, slot ``B + m B + b`` teacher ``m``'s."""
    k, comp = 10, s.extras["compensators"]
    b = len(s.images) // k
    save.mkdir(parents=True)
    for i in range(b + len(comp)):
        u = torch.zeros_like(comp[:1]) if i < b else comp[i - b : i - b + 1]
        torch.save({"real": s.images[i % b * k : (i % b + 1) * k], "compensator": u,
                    "teacher": -1 if i < b else (i - b) // b}, save / f"slot_{i:05d}.pt")  # fmt: skip


def test_their_slots_import_as_the_set_they_describe(infer_parity, made, tmp_path):
    s = made(iterations=3, jitter=1)
    d = tmp_path / "seed0"
    synset.save(s, d / "start" / "synset.safetensors")  # the shared start: its real images
    _their_slots(s, d / "official")
    res = d / "official" / "compensators_parity.pt"
    infer_parity.collect(d / "official", res, "digits", IPC)
    out = tmp_path / "theirs.safetensors"
    infer_parity.import_set(res, d, "digits", out, "zhangxin-xd/UFC@83d19f8")
    back = synset.load(out)
    assert back.meta["method"] == {"name": "imported:infer",
                                   "config": {"code": "zhangxin-xd/UFC@83d19f8"}}  # fmt: skip
    assert back.meta["protocol"] == "infer" and back.meta["view"] == "compensated"
    assert torch.equal(back.images, s.images)
    assert torch.equal(back.extras["compensators"], s.extras["compensators"].float())
    assert torch.equal(back.labels, s.labels)  # the same teachers' static labels
    assert torch.equal(back.view_images(), s.view_images())


def test_a_slot_out_of_order_or_missing_or_from_other_images_is_refused(
    infer_parity, made, tmp_path
):
    s = made(iterations=1, jitter=1)
    save, res = tmp_path / "official", tmp_path / "official" / "compensators_parity.pt"
    _their_slots(s, save)
    infer_parity.collect(save, res, "digits", IPC)
    d = tmp_path / "seed0"  # a start whose real images are not the ones their run started from
    synset.save(
        replace(s, images=s.images.flip(0).contiguous()), d / "start" / "synset.safetensors"
    )
    with pytest.raises(SystemExit, match="not the shared start's"):
        infer_parity.import_set(res, d, "digits", tmp_path / "x.safetensors", "c")
    assert not (tmp_path / "x.safetensors").exists()
    slot = torch.load(save / "slot_00003.pt")  # B + 1: teacher 0's compensator of batch 1
    torch.save({**slot, "teacher": 1}, save / "slot_00003.pt")
    with pytest.raises(SystemExit, match=r"slot 3: teacher 1 \(expected 0\)"):
        infer_parity.collect(save, res, "digits", IPC)
    (save / "slot_00005.pt").unlink()
    with pytest.raises(SystemExit, match="slot_00005.pt: missing"):
        infer_parity.collect(save, res, "digits", IPC)


def test_their_generation_without_jitter_gives_ddbench_s_compensators(infer_parity, made, tmp_path):
    if not os.environ.get("PARITY_INFER_CHECKOUT"):
        pytest.skip("PARITY_INFER_CHECKOUT names no checkout of zhangxin-xd/UFC")
    off = tmp_path / "checkout"
    shutil.copytree(os.environ["PARITY_INFER_CHECKOUT"], off)
    setup = ["bash", str(PARITY / "official_infer_setup.sh"), str(off)]
    subprocess.run(setup, check=True, capture_output=True)
    patched = (off / "ufc_generation" / "ufc_cifar.py").read_text()
    assert "ddbench-parity U3:" in patched and "ddbench-parity U7:" in patched
    subprocess.run(setup, check=True, capture_output=True)  # idempotent
    assert (off / "ufc_generation" / "ufc_cifar.py").read_text() == patched

    its = 4
    s = made(iterations=its, jitter=0)
    work = tmp_path / "work" / "row"
    infer_parity.prepare(off, "digits", work)  # the same two teachers, exported
    init = tmp_path / "init"
    init.mkdir()
    for b in range(len(s.images) // 10):
        torch.save(s.images[b * 10 : (b + 1) * 10].clone(), init / f"tensor_{b}.pt")
    save, syn = tmp_path / "official", tmp_path / "syn"
    cmd = [sys.executable, "ufc_generation/ufc_cifar.py", "--dataset", "ddbench", "--M", "2",
           "--ipc", str(IPC), "--iteration", str(its), "--lr", "0.25", "--r-bn", "0.1",
           "--jitter", "0", "--first-bn-multiplier", "10.0", "--batch-size", "10",
           "--exp-name", "t", "--wandb-name", "t", "--syn-data-path", str(syn),
           "--init_path", str(init), "--seed", "0", "--parity-save", str(save),
           "--model-pool-dir", str(work.parent / "teachers" / "digits" / "infer")]  # fmt: skip
    p = subprocess.run(cmd, cwd=off, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = save / "compensators_parity.pt"
    infer_parity.collect(save, res, "digits", IPC)
    theirs, ours = torch.load(res), s.extras["compensators"]
    assert ours.abs().amax() > 0.05  # the compensators moved
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().amax()
    assert not list(syn.rglob("*.jpg"))  # no --store-best-images: no JPEGs

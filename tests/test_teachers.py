"""Teacher cache and the ``kd`` protocol, on real digits (KD on pruned data: test_kd_pruning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import TESTS
from safetensors.torch import load_file

from ddbench import engine, teachers
from ddbench.protocol import Protocol, evaluate
from ddbench.synset import read_header

TINY_TEACHER = teachers.TeacherConfig(model_kwargs={"net_width": 16}, epochs=3, lr=0.05)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_cache_hit_costs_no_training(cache, monkeypatch):
    net, meta = teachers.get_teacher("digits", TINY_TEACHER, device="cpu", progress=False)
    path = teachers.teacher_path("digits", TINY_TEACHER)
    assert path.exists() and path.is_relative_to(cache)
    assert meta["val_accuracy"] > 30 and meta["key"] == TINY_TEACHER.key("digits")

    def no_training(*a, **k):
        raise AssertionError("a cached teacher was trained again")

    monkeypatch.setattr(engine, "train", no_training)
    again, meta2 = teachers.get_teacher("digits", TINY_TEACHER, device="cpu", progress=False)
    assert meta2 == meta
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert [t["path"] for t in teachers.list_teachers()] == [str(path)]
    other = teachers.TeacherConfig(model_kwargs={"net_width": 16}, epochs=3, lr=0.05, seed=1)
    assert other.key("digits") != TINY_TEACHER.key("digits")
    with pytest.raises(Exception, match="no cached teacher"):
        teachers.get_teacher("digits", other, device="cpu", train=False)


def _teacher_cli(cache: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, DDBENCH_CACHE=str(cache), DDBENCH_ALLOCATOR="system")
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    cmd = [sys.executable, "-m", "ddbench.cli", "teacher", "train", "digits", *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_killed_teacher_training_resumes_and_ends_as_an_unbroken_one(tmp_path):
    args = ("--epochs", "5")
    killed = _teacher_cli(tmp_path / "a", *args)
    states = list((tmp_path / "a").glob("teachers/digits/*.train_state.pt"))
    deadline = time.time() + 120
    while not states and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        states = list((tmp_path / "a").glob("teachers/digits/*.train_state.pt"))
    assert states, "no checkpoint was written"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list((tmp_path / "a").glob("teachers/digits/*.safetensors"))  # nothing half-made
    resumed = _teacher_cli(tmp_path / "a", *args)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resuming teacher training from epoch" in out
    unbroken = _teacher_cli(tmp_path / "b", *args)
    assert unbroken.wait(timeout=300) == 0
    (fa,) = (tmp_path / "a").glob("teachers/digits/*.safetensors")
    (fb,) = (tmp_path / "b").glob("teachers/digits/*.safetensors")
    wa, wb = load_file(str(fa)), load_file(str(fb))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_header(fa)["val_history"] == read_header(fb)["val_history"]  # one per epoch
    assert len(read_header(fa)["val_history"]) == 5
    assert not list((tmp_path / "a").glob("teachers/digits/*.train_state.pt"))


def test_kd_protocol_trains_on_teacher_labels_and_says_so(cache, make_set):
    s = make_set(ipc=2)
    kd = Protocol(
        name="kd", epochs=30, optimizer="adamw", lr=0.003, weight_decay=0.0, schedule="cosine",
        labels="teacher", loss="kd", temperature=4.0, seeds=[0],
        teacher={"model_kwargs": {"net_width": 16}, "epochs": 3, "lr": 0.05},
    )  # fmt: skip
    kw = dict(model_kwargs={"net_width": 16}, device="cpu", progress=False)
    r = evaluate(s, kd, "convnet", **kw)
    assert r["labels"]["kind"] == "teacher"
    assert r["labels"]["teacher"]["key"] == TINY_TEACHER.key("digits")
    assert r["labels"]["temperature"] == 4.0 and r["accuracy"]["mean"] > 20
    hard = Protocol(**{**kd.__dict__, "labels": "hard", "loss": "ce", "teacher": None})
    assert evaluate(s, hard, "convnet", **kw)["labels"]["kind"] == "hard"
    assert kd.hash != hard.hash
    with pytest.raises(Exception, match="needs loss=kd"):
        Protocol.from_config({**kd.__dict__, "loss": "ce"})


def test_parallel_jobs_that_miss_together_train_the_teacher_once(tmp_path):
    first = _teacher_cli(tmp_path, "--epochs", "3")
    time.sleep(1.0)  # the second starts while the first trains (it holds the lock)
    second = _teacher_cli(tmp_path, "--epochs", "3")
    out1, out2 = first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, (out1, out2)
    trained = [o for o in (out1, out2) if "val accuracy" in o and "teacher digits:" in o]
    assert len(trained) == 1, (out1, out2)
    assert "teacher cache hit" in (out2 if trained[0] == out1 else out1)
    assert len(list(tmp_path.glob("teachers/digits/*.safetensors"))) == 1

"""KD on pruned data ("Distilling the Knowledge in Data Pruning"): the kd_pruning protocol's
teacher (DSA, val history, convergence check on val) and the KD weight alpha = 1 - hard_weight,
on real digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from ddbench import cli, data, engine, teachers
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
SMALL = {"model_kwargs": {"net_width": 16}}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_kd_pruning_teacher_trains_with_dsa_and_records_val_per_epoch(cache, monkeypatch):
    cfg = teachers.TeacherConfig.from_config(
        {**protocol_config("kd_pruning")["teacher"], **SMALL, "epochs": 3}
    )
    seen = []
    real_train = engine.train

    def spy(*args, **kw):
        seen.append(args[4].augment)  # the Recipe
        return real_train(*args, **kw)

    monkeypatch.setattr(engine, "train", spy)
    net, meta = teachers.get_teacher("digits", cfg, device="cpu", progress=False)
    assert seen == [data.get_spec("digits").dsa_strategy] and seen[0]
    assert meta["config"]["augment"] == "dsa"
    history = meta["val_history"]
    assert len(history) == 3 and all(0 <= a <= 100 for a in history)
    assert history[-1] == meta["val_accuracy"]  # the last entry is the stored network's
    # the teacher kd uses (5 epochs, no augmentation) keeps the cache key it had
    kd = teachers.TeacherConfig.from_config(protocol_config("kd")["teacher"])
    assert kd.augment == "none" and kd.key("fashion_mnist") == "df7e6863995d5c30"
    assert cfg.key("digits") != replace(cfg, augment="none").key("digits")


def test_the_convergence_check_fires_on_a_still_improving_teacher_only(cache, capsys, caplog):
    improving = teachers.TeacherConfig(**SMALL, epochs=8, lr=0.01)  # stopped while climbing
    plateaued = teachers.TeacherConfig(**SMALL, epochs=40, lr=0.05)  # flat for its last epochs
    with caplog.at_level("WARNING", logger="ddbench"):
        _, m1 = teachers.get_teacher("digits", improving, device="cpu", progress=False)
    assert "teacher not converged on val" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ddbench"):
        _, m2 = teachers.get_teacher("digits", plateaued, device="cpu", progress=False)
    assert "not converged" not in caplog.text
    assert teachers.not_converged(m1["val_history"]) is not None
    assert teachers.not_converged(m2["val_history"]) is None
    assert teachers.convergence(m2) == "converged"
    # a cache hit says it again, and `ddbench teacher list` reports each
    with caplog.at_level("WARNING", logger="ddbench"):
        teachers.get_teacher("digits", improving, device="cpu", train=False)
    assert "teacher not converged on val" in caplog.text
    cli.cmd_teacher(["list"])
    out = capsys.readouterr().out
    assert out.count("val: not converged: best val accuracy rose") == 1
    assert out.count("val: converged") == 1
    assert teachers.convergence({"val_accuracy": 90.0}).startswith("unknown")
    cut = {**m1, "val_history": m1["val_history"][2:]}  # resumed from a checkpoint without one
    assert teachers.convergence(cut) == "unknown (val history covers 6 of 8 epochs)"


def test_not_converged_judges_the_last_epochs_against_the_earlier_ones():
    assert teachers.not_converged([50.0, 60.0, 70.0, 80.0, 90.0]) is not None
    assert teachers.not_converged([50.0, 90.0, 90.2, 89.0, 90.1]) is None  # within tol
    assert "too few" in teachers.not_converged([90.0])
    with pytest.raises(Exception, match="0 < last < 1"):
        teachers.not_converged([1.0, 2.0], last=1.0)


def _train(recipe, images, labels, teacher=None):
    spec = data.get_spec("digits")

    def build():
        return create_model("convnet", spec.channels, spec.num_classes, spec.im_size, net_width=16)

    out = engine.train(
        build, [0], images, labels, recipe, device="cpu", teacher=teacher, parallel=False
    )
    return out.models[0].state_dict(), out.losses


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_kd_weight_reaches_the_loss(cache, make_set):
    s = make_set(ipc=3)
    teacher, _ = teachers.get_teacher(
        "digits", teachers.TeacherConfig(**SMALL, epochs=3, lr=0.05), device="cpu", progress=False
    )
    tiny = {**SMALL, "epochs": 3, "lr": 0.05}
    base = Protocol.from_config(
        {**protocol_config("kd_pruning"), "epochs": 4, "seeds": [0], "teacher": tiny}
    )
    hard = replace(base, labels="hard", loss="ce", temperature=1.0, hard_weight=0.0, teacher=None)
    strategy = data.get_spec("digits").dsa_strategy
    x, y = s.images, s.hard_labels
    wrong = (y + 1) % 10  # every hard label wrong
    ce, ce_loss = _train(hard.recipe(strategy), x, y)

    def kd(alpha: float, labels: torch.Tensor):
        return _train(replace(base, hard_weight=1.0 - alpha).recipe(strategy), x, labels, teacher)

    # alpha 0: the hard-label CE run, bit for bit, although the teacher labels every batch
    a0, a0_loss = kd(0.0, y)
    assert _same(a0, ce) and a0_loss == ce_loss
    # alpha 1: pure KD, blind to the hard labels
    a1, a1_loss = kd(1.0, y)
    a1_wrong, a1_wrong_loss = kd(1.0, wrong)
    assert _same(a1, a1_wrong) and a1_loss == a1_wrong_loss and not _same(a1, ce)
    # in between both terms count
    half, _ = kd(0.5, y)
    half_wrong, _ = kd(0.5, wrong)
    assert not _same(half, half_wrong) and not _same(half, a1) and not _same(half, ce)
    # through evaluate: alpha 0 under kd_pruning scores as the hard-label recipe, and says alpha
    kw = dict(model_kwargs={"net_width": 16}, device="cpu", progress=False, split="val")
    r0 = evaluate(s, replace(base, hard_weight=1.0), "convnet", **kw)
    rh = evaluate(s, hard, "convnet", **kw)
    assert r0["accuracy"]["per_seed"] == rh["accuracy"]["per_seed"]
    assert r0["train_loss_final"] == rh["train_loss_final"]
    assert r0["labels"]["kind"] == "teacher" and r0["labels"]["hard_weight"] == 1.0


def test_the_sweep_picks_alpha_on_val_and_scores_only_it_on_test(tmp_path):
    """bench/kd_pruning.sh at a tiny budget: 5 alphas on val, the best one on test, a table."""
    env = dict(os.environ, DDBENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.update(DATASET="digits", IPCS="2", EPOCHS="2", SEEDS="[0]", TEACHER_EPOCHS="2")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    p = subprocess.run(
        ["bash", str(BENCH / "kd_pruning.sh"), str(tmp_path / "out"), "model.kwargs.net_width=16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    val = [json.loads(f.read_text()) for f in (tmp_path / "out/val").rglob("result.json")]
    test = [json.loads(f.read_text()) for f in (tmp_path / "out/test").rglob("result.json")]
    assert sorted(r["labels"]["hard_weight"] for r in val) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {r["split"] for r in val} == {"val"} and {r["protocol"]["name"] for r in val} == {
        "kd_pruning"
    }
    (t,) = test
    best = max(val, key=lambda r: (r["accuracy"]["mean"], r["labels"]["hard_weight"]))
    assert t["split"] == "test" and t["labels"]["hard_weight"] == best["labels"]["hard_weight"]
    row = p.stdout.strip().splitlines()[-1].split()
    assert row[:2] == ["random", "2"] and float(row[-5]) == 1.0 - best["labels"]["hard_weight"]
    assert f"{t['accuracy']['mean']:.2f}" in p.stdout.splitlines()[-1]


def test_kd_pruning_experiment_sweeps_the_kd_weight_on_val(tmp_path):
    env_cache = tmp_path / "cache"
    os.environ["DDBENCH_CACHE"] = str(env_cache)
    try:
        p = run_cli(
            "-m", "run", "+experiment=kd_pruning", "dataset=digits", "method=random", "ipc=2",
            "protocol.epochs=2", "protocol.seeds=[0]", "protocol.teacher.epochs=2",
            "model.kwargs.net_width=16", "progress=false", f"hydra.sweep.dir={tmp_path / 'm'}",
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        del os.environ["DDBENCH_CACHE"]
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in (tmp_path / "m").rglob("result.json")]
    assert sorted(1 - r["labels"]["hard_weight"] for r in results) == [0, 0.25, 0.5, 0.75, 1]
    assert {r["split"] for r in results} == {"val"}
    assert {r["labels"]["teacher"]["key"] for r in results} == {
        teachers.TeacherConfig.from_config(
            {**protocol_config("kd_pruning")["teacher"], "epochs": 2}
        ).key("digits")
    }

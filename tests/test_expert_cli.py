"""``ddbench expert train|list`` end to end, as a user runs it, on the real digits data."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from conftest import Killed, kill_training_after_epoch

from ddbench import engine, experts
from ddbench.cli import expert_config, list_experts
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.mtt import MTT

CONF = Path(__file__).parents[1] / "conf"
TRAIN = ["expert", "train", "digits", "--epochs", "2", "--model-kwarg", "net_width=16"]


def ddbench(*args: str, cwd: Path, ok: bool = True):
    p = run_cli(*args, cwd=cwd)
    if ok and p.returncode != 0:
        raise AssertionError(f"ddbench {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def test_train_caches_the_experts_a_run_of_the_method_looks_up_then_lists_them(tmp_path):
    p = ddbench(*TRAIN, "--num", "2", cwd=tmp_path)
    assert "expert 0 digits/convnet" in p.stdout and "expert 1 digits/convnet" in p.stdout
    assert "s/epoch" in p.stdout
    # the config is the one `ddbench run method=mtt model.kwargs.net_width=16` builds
    node = packaged_config(
        "mtt", ["model.kwargs.net_width=16", "method.experts.epochs=2",
                "method.max_start_epoch=1", "method.expert_epochs=1"],
    )  # fmt: skip
    m = build_method(node)
    assert isinstance(m, MTT)
    cfg, num = expert_config("digits", epochs=2, model_kwargs={"net_width": 16})
    assert cfg == m.experts and num == m.num_experts
    trajs = experts.get_experts("digits", cfg, 2, "cpu", train=False, progress=False)
    assert [t.shape[0] for t in trajs] == [3, 3]
    files = sorted(experts.expert_dir("digits", cfg).glob("expert_*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = ddbench(*TRAIN, "--num", "2", cwd=tmp_path)  # a cache hit trains nothing
    assert [f.stat().st_mtime_ns for f in files] == stamps and "expert 1" in again.stdout
    ddbench(*TRAIN, "--num", "1", "--zca", cwd=tmp_path)  # another space, another entry
    (plain, zca) = sorted(list_experts("digits"), key=lambda e: e["config"]["zca"])
    assert plain["experts"] == [0, 1] and zca["experts"] == [0] and zca["config"]["zca"] is True
    assert plain["seconds_per_epoch"] > 0 and plain["training"] == 0
    listing = ddbench("expert", "list", cwd=tmp_path).stdout
    assert "experts 2" in listing and "experts 1" in listing and "zca 0.1" in listing
    assert "s/epoch" in listing and str(experts.expert_dir("digits", cfg)) in listing
    assert list_experts("mnist") == []


@pytest.mark.parametrize("method, step", [("ftd", "gsam"), ("ast", "smooth")])
def test_train_makes_the_experts_of_a_method_with_its_own_expert_step(tmp_path, method, step):
    """FTD's and AST's step variants live in their method files: the CLI finds them through
    the trainer's hook and caches the experts where a run of the method looks them up."""
    args = ("expert", "train", "digits", "--method", method, "--epochs", "1", "--num", "1",
            "--model-kwarg", "net_width=8")  # fmt: skip
    p = ddbench(*args, cwd=tmp_path)
    assert "expert 0 digits/convnet" in p.stdout
    cfg, _ = expert_config("digits", method=method, epochs=1, model_kwargs={"net_width": 8})
    assert cfg.step == step and cfg.step_kwargs
    (traj,) = experts.get_experts("digits", cfg, 1, "cpu", train=False, progress=False)
    plain, _ = expert_config("digits", epochs=1, model_kwargs={"net_width": 8})
    assert experts.expert_dir("digits", cfg) != experts.expert_dir("digits", plain)
    assert traj.shape[0] == 2 and torch.isfinite(traj).all()
    (entry,) = list_experts("digits")
    assert entry["non_default"]["step"] == step
    assert f"step={step}" in ddbench("expert", "list", cwd=tmp_path).stdout


def test_a_killed_training_is_listed_and_resumed_by_the_next_train(tmp_path, monkeypatch):
    cfg, _ = expert_config("digits", epochs=2, model_kwargs={"net_width": 16})
    real_train = kill_training_after_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        experts.get_experts("digits", cfg, 1, "cpu", progress=False)
    (entry,) = list_experts("digits")
    assert entry["training"] == 1 and entry["experts"] == []
    assert entry["config"] == asdict(cfg)  # an unfinished training is listed with its config
    listed = ddbench("expert", "list", cwd=tmp_path).stdout
    assert "(+1 training)" in listed and "net_width=16" in listed and " 2 ep " in listed
    p = ddbench(*TRAIN, "--num", "1", cwd=tmp_path)
    assert "resuming expert 0 from epoch 1" in p.stderr
    monkeypatch.setattr(engine, "train", real_train)
    resumed = experts.get_experts("digits", cfg, 1, "cpu", train=False)[0]
    assert resumed.shape[0] == 3 and torch.isfinite(resumed).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "dm"], "trains no experts"),
        (["--method", "nosuch"], "unknown method"),
        (["--model", "nosuch"], "unknown model"),
        (["--num", "0"], "--num must be >= 1"),
        (["--model-kwarg", "width"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_fail_with_one_clear_message(tmp_path, args, message):
    p = ddbench(*TRAIN, *args, cwd=tmp_path, ok=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
    assert not (Path(experts.cache_root()) / "experts").exists()

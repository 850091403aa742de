"""One source of truth for method settings: ``MyMethod()`` from Python and ``method=my_method``
from the command line are the same method, and the published recipes per (dataset, IPC) are
selected automatically, overridable, and recorded in the set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from ddbench.errors import DDBenchError
from ddbench.method import build_method, load_recipes, run_distill
from ddbench.methods import builtin_methods, register_schemas
from ddbench.methods.gradient_matching import DC
from ddbench.methods.mtt import MTT

CONF = Path(__file__).parent.parent / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def composed_method(*overrides: str) -> dict:
    """The ``method`` node of ``ddbench run`` composed as the CLI composes it."""
    register_schemas()
    with initialize_config_module("ddbench.conf", version_base="1.3"):
        cfg = compose("run", overrides=list(overrides))
    return OmegaConf.to_container(cfg.method, resolve=True)


def test_every_packaged_config_is_a_builtin_method():
    assert set(METHODS) == set(builtin_methods())


# the experts of trajectory matching follow the run's model and image space
# (conf/method/experts/task_space.yaml): the only keys the command line sets from elsewhere
FOLLOW_THE_RUN = set(OmegaConf.load(CONF / "method" / "experts" / "task_space.yaml"))


def _without_run_keys(config: dict) -> dict:
    out = dict(config)
    if isinstance(out.get("experts"), dict):
        out["experts"] = {k: v for k, v in out["experts"].items() if k not in FOLLOW_THE_RUN}
    return out


@pytest.mark.parametrize("name", METHODS)
def test_python_defaults_and_packaged_config_are_the_same_method(name):
    node = composed_method(f"method={name}", "model=convnet_bn")
    from_cli = build_method(node)
    from_python = builtin_methods()[name]()
    assert type(from_cli) is type(from_python)
    assert _without_run_keys(from_cli.config) == _without_run_keys(from_python.config)
    if "experts" in node:  # ... and those follow the run
        assert node["experts"]["model"] == "convnet_bn"
    # a changed setting reaches the method through both ways
    numbers = [(k, v) for k, v in from_python.config.items() if isinstance(v, int | float)]
    if not numbers:  # random, full: no settings
        assert set(from_python.config) == {"_target_", "name"}
        return
    cls = builtin_methods()[name]

    def valid(key, new):
        try:
            return cls(**{key: new}).config[key]
        except DDBenchError:  # a value the method's own checks refuse (e.g. an epoch range)
            return None

    changes = [(k, v, not v if isinstance(v, bool) else v * 2 + 1) for k, v in numbers]
    key, value, new = next((k, v, n) for k, v, n in changes if valid(k, n) is not None)
    changed = build_method(composed_method(f"method={name}", f"method.{key}={new}"))
    assert getattr(changed, key) == type(value)(new) == valid(key, new) != value


def test_unknown_and_mistyped_settings_are_refused():
    with pytest.raises(DDBenchError, match="syn_stepz"):
        MTT(syn_stepz=3)
    with pytest.raises(DDBenchError, match="syn_steps"):
        MTT(syn_steps="many")
    with pytest.raises(DDBenchError, match="max_start_epoch"):
        MTT(max_start_epoch=60)  # + expert_epochs exceeds the experts' 50 epochs
    with pytest.raises(Exception, match="method.syn_stepz"):
        composed_method("method=mtt", "method.syn_stepz=3")


def test_recipe_is_selected_by_dataset_and_ipc_and_command_line_wins():
    table = load_recipes("mtt")
    ipc1 = table["cifar10"][1]
    m = MTT.for_setting("cifar10", 1)
    for key in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_lr"):
        assert getattr(m, key) == ipc1[key]
    assert m.recipe["setting"] == "cifar10/ipc1" and m.recipe["source"]
    m10 = MTT.for_setting("cifar10", 10)
    assert m10.syn_steps == table["cifar10"][10]["syn_steps"]
    assert (m.syn_steps, m.max_start_epoch) != (m10.syn_steps, m10.max_start_epoch)
    # an explicit setting wins over the recipe and is reported as kept
    kept = MTT.for_setting("cifar10", 1, syn_steps=7)
    assert kept.syn_steps == 7 and kept.recipe["kept"] == {"syn_steps": 7}
    assert kept.max_start_epoch == ipc1["max_start_epoch"]


def test_no_published_recipe_falls_back_to_the_defaults_and_says_so(caplog):
    with caplog.at_level("INFO", logger="ddbench"):
        m = MTT.for_setting("digits", 3)
    assert m.recipe["setting"] is None and "no published recipe" in m.recipe["note"]
    assert "no published recipe for digits/ipc3" in caplog.text
    assert m.config == MTT().config


def test_dc_loops_come_from_the_recipe_table_and_other_ipcs_need_them(digits_train):
    from conftest import make_task

    task = make_task(digits_train, 1)
    dc = DC(iterations=1, batch_real=8)
    s = run_distill(dc, task)
    assert (dc.outer_loop, dc.inner_loop) == (1, 1)
    assert s.meta["method"]["recipe"]["applied"] == {"outer_loop": 1, "inner_loop": 1}
    assert s.meta["method"]["config"]["outer_loop"] == 1
    with pytest.raises(DDBenchError, match="outer_loop"):
        DC(iterations=1, batch_real=8).distill(make_task(digits_train, 2))


def test_cli_applies_and_records_the_recipe(tmp_path):
    from cli_runner import run_cli

    out = tmp_path / "run"
    r = run_cli(
        "distill", "method=dc", "dataset=digits", "ipc=1", "method.iterations=1",
        "method.batch_real=4", "method.inner_loop=2", "precision=fp32",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    from ddbench.synset import load

    s = load(out / "synset.safetensors")
    recipe = s.meta["method"]["recipe"]
    assert recipe["setting"] == "digits/ipc1"
    assert recipe["applied"] == {"outer_loop": 1} and recipe["kept"] == {"inner_loop": 2}
    assert s.meta["method"]["config"]["inner_loop"] == 2
    assert "outer_loop: 1" in (r.stdout + r.stderr) or "outer_loop: 1" in (
        (out / "distill.log").read_text() if (out / "distill.log").exists() else ""
    )
    assert torch.isfinite(s.images).all()


def test_the_command_line_gets_the_papers_ipc1_settings_for_cifar10(tmp_path, monkeypatch):
    """`ddbench distill method=mtt dataset=cifar10 ipc=1` prints MTT's published CIFAR-10 IPC 1
    settings before it needs the data (CIFAR-10 is not on this machine: the run then stops with
    the data error, having made nothing)."""
    from cli_runner import run_cli

    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path / "no-data"))
    r = run_cli(
        "distill", "method=mtt", "dataset=cifar10", "ipc=1", "method.lr_lr=2e-7",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    out = r.stdout + r.stderr
    ipc1 = load_recipes("mtt")["cifar10"][1]
    assert "published recipe for cifar10/ipc1" in out
    for key in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img"):
        assert f"\n{key}: {ipc1[key]}\n" in out, key
    assert "\nlr_lr: 2.0e-07\n" in out and "kept as set: {'lr_lr'" in out  # the command line wins
    assert r.returncode != 0 and "CIFAR-10 not found" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "synset.safetensors").exists()

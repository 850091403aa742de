"""``precision=auto``: distillation in bf16 where the device computes it natively, else fp32;
evaluation in fp32; the set records the precision it was made in."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run_cli

from ddbench import engine, synset
from ddbench.errors import DDBenchError


def test_resolve_precision_passes_fp32_and_bf16_through_and_reads_the_hardware_for_auto(
    monkeypatch,
):
    for flags in (set(), {"avx512f", "avx512_bf16", "amx_bf16"}):
        monkeypatch.setattr(engine, "cpu_flags", lambda flags=flags: flags)
        for given in ("fp32", "bf16"):
            assert engine.resolve_precision(given, "cpu") == given
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx2", "avx512f", "fma"})
    assert engine.resolve_precision("auto", "cpu") == "fp32"
    for flag in engine.NATIVE_BF16_CPU_FLAGS:
        monkeypatch.setattr(engine, "cpu_flags", lambda flag=flag: {"avx512f", flag})
        assert engine.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(engine, "cpu_flags", lambda: set())
    for native in (True, False):  # a GPU: its own bf16 support, not the CPU's flags
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n
        )
        assert engine.resolve_precision("auto", "cuda") == ("bf16" if native else "fp32")
    assert engine.resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(DDBenchError, match="precision must be auto, fp32 or bf16, not 'fp16'"):
        engine.resolve_precision("fp16", "cpu")


def test_cpu_flags_are_this_machines():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert engine.cpu_flags() == set()
        return
    flags = engine.cpu_flags()
    assert all(f" {f}" in text for f in flags)
    assert bool(flags) == any(line.startswith("flags") for line in text.splitlines())


def test_distill_records_the_resolved_precision_and_run_evaluates_in_fp32(tmp_path):
    here = engine.resolve_precision("auto", "cpu")
    d = tmp_path / "d"
    p = run_cli("distill", "dataset=digits", "ipc=1", "device=cpu", "progress=false",
                f"hydra.run.dir={d}", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert synset.load(d / "synset.safetensors").meta["cost"]["precision"] == here
    assert f"distilling in {here} (precision=auto)" in (d / "distill.log").read_text()
    # explicit precisions are used as given
    f = tmp_path / "f"
    p = run_cli("distill", "dataset=digits", "ipc=1", "device=cpu", "progress=false",
                "precision=fp32", f"hydra.run.dir={f}", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert synset.load(f / "synset.safetensors").meta["cost"]["precision"] == "fp32"
    # `run`: the set in the resolved precision, the evaluation in fp32
    r = tmp_path / "r"
    p = run_cli("run", "dataset=digits", "ipc=1", "device=cpu", "progress=false",
                "protocol=quick", "protocol.epochs=1", "model.kwargs.net_width=16",
                f"hydra.run.dir={r}", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert synset.load(r / "synset.safetensors").meta["cost"]["precision"] == here
    assert json.loads((r / "result.json").read_text())["precision"] == "fp32"


def test_run_keys_tell_the_precisions_apart(monkeypatch):
    from omegaconf import OmegaConf

    from ddbench import cli

    def keys(precision: str) -> tuple[str, str]:
        cfg = OmegaConf.create({"dataset": {"name": "digits"}, "method": {"name": "random"},
                                "ipc": 1, "seed": 0, "model": {"name": "convnet"},
                                "protocol": {"name": "quick"}, "device": "cpu",
                                "eval_split": "test", "precision": precision})  # fmt: skip
        distill = cli.config_key(cfg, cli._DISTILL_KEYS, precision=cli._precisions(cfg)[0])
        return distill, cli._run_key(cfg)

    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx2"})
    assert keys("auto") == keys("fp32") != keys("bf16")  # fp32 here: the fp32 run's keys
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx512_bf16"})
    (auto_set, auto_run), (bf16_set, bf16_run) = keys("auto"), keys("bf16")
    assert auto_set == bf16_set  # the same set (made in bf16) ...
    assert auto_run != bf16_run and auto_run != keys("fp32")[1]  # ... evaluated in fp32

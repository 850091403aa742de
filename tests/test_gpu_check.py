"""``bench/gpu_check.sh``, the check of every CUDA path, as it runs without a GPU: each path is
reported as skipped and nothing is installed or trained; its verdicts and exit code; and two of
its paths run for real on the CPU at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
LINE = re.compile(r"^(\S+) +\d+\.\d s  (ok|failed|skipped)(?:: (.*))?$")


def load_gpu_check():
    """A fresh import of bench/gpu_check.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["gpu_check"]
    return module


def path_lines(stdout: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(LINE.match, stdout.splitlines()) if m]


def test_the_check_covers_every_cuda_path_of_the_issue():
    assert set(load_gpu_check().PATHS) == {
        "standard_convnet", "standard_convnet_bn", "dm_batched", "dc_iteration", "mtt_bf16",
        "compile", "torchrun_nccl",
    }  # fmt: skip


def test_without_cuda_every_path_is_skipped_and_nothing_is_installed(tmp_path):
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        CUDA_VISIBLE_DEVICES="",  # no GPU, even on a machine that has one
        GPU_CHECK_SITE=str(tmp_path / "site"),
        GPU_CHECK_PKG=str(tmp_path / "pkg"),
    )
    out = tmp_path / "result.json"
    p = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    lines = path_lines(p.stdout)
    assert [name for name, _, _ in lines] == list(load_gpu_check().PATHS)
    assert all(status == "skipped" and why == "no CUDA" for _, status, why in lines), p.stdout
    assert "0 ok, 0 failed, 7 skipped" in p.stdout
    # the imports already work here: no wheel installed, no package staged
    assert not (tmp_path / "site").exists() and not (tmp_path / "pkg").exists()
    assert "installing" not in p.stdout and "staged" not in p.stdout
    assert [r["status"] for r in json.loads(out.read_text())] == ["skipped"] * 7


def test_a_failing_path_makes_the_exit_code_1(monkeypatch, capsys):
    gc = load_gpu_check()
    monkeypatch.setattr(gc, "Check", lambda device, sizes, workdir: "a check")

    def broken(check):
        raise AssertionError("stacked vs one by one: model 2 differs")

    def needs_two(check):
        raise gc.Skip("1 GPU visible")

    runners = {p: (lambda check: (f"ran on {check}", {})) for p in gc.PATHS}
    monkeypatch.setattr(gc, "RUNNERS", {**runners, "torchrun_nccl": needs_two})
    data_before = os.environ.get("DDBENCH_DATA")
    assert gc.main(["--device", "cpu"]) == 0
    assert os.environ.get("DDBENCH_DATA") == data_before  # the workdir's setting is undone
    lines = path_lines(capsys.readouterr().out)
    assert lines[-1] == ("torchrun_nccl", "skipped", "1 GPU visible")
    assert all(line[1:] == ("ok", "ran on a check") for line in lines[:-1])

    monkeypatch.setitem(gc.RUNNERS, "dm_batched", broken)
    assert gc.main(["--device", "cpu", "--only", "dm_batched,dc_iteration"]) == 1
    lines = dict((name, (status, why)) for name, status, why in path_lines(capsys.readouterr().out))
    assert lines["dm_batched"] == (
        "failed", "AssertionError: stacked vs one by one: model 2 differs"
    )  # fmt: skip
    assert lines["dc_iteration"][0] == "ok"
    assert lines["mtt_bf16"] == ("skipped", "not selected (--only)")


def test_dm_and_dc_paths_run_on_the_cpu_at_tiny_sizes(tmp_path):
    """The real DM (batched vs per-class loop) and DC paths, on the synthetic dataset."""
    out = tmp_path / "result.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--only",
         "dm_batched,dc_iteration", "--json", str(out)],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    results = {r["path"]: r for r in json.loads(out.read_text())}
    assert results["dm_batched"]["status"] == "ok", results["dm_batched"]
    assert results["dm_batched"]["metrics"]["max_image_diff"] <= 1e-4
    assert results["dc_iteration"]["status"] == "ok", results["dc_iteration"]
    assert results["dc_iteration"]["metrics"]["loss"] > 0
    assert {r["status"] for p, r in results.items() if p not in ("dm_batched", "dc_iteration")} == {
        "skipped"
    }

"""bench/parity/spread.py: a parity row's ddbench distillation rerun with other seeds, the rest
of its recorded command (the start included) kept, each set scored under the row's protocol."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddbench import synset

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "parity" / "spread.py"


def _module():
    spec = importlib.util.spec_from_file_location("ddbench_parity_spread", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_rerun_changes_only_the_seed_and_the_run_directory(tmp_path):
    spread = _module()
    cmd = ("/some/python -m ddbench.cli distill method=ast dataset=fashion_mnist seed=0 "
           "hydra.run.dir=/old/dir method.init_from=/x/start_seed0.safetensors 'a.b=[0, 1]'")  # fmt: skip
    got = spread.rerun_args(cmd, 3, tmp_path / "s3")
    assert got == ["distill", "method=ast", "dataset=fashion_mnist", "seed=3",
                   f"hydra.run.dir={tmp_path / 's3'}",
                   "method.init_from=/x/start_seed0.safetensors", "a.b=[0, 1]"]  # fmt: skip
    with pytest.raises(SystemExit, match="no seed="):
        spread.rerun_args("python -m ddbench.cli distill method=dm hydra.run.dir=x", 1, tmp_path)


def test_spread_reruns_a_recorded_row_with_another_seed_and_scores_it(tmp_path, monkeypatch):
    """A recorded DM row on digits (one iteration, a narrow network): seed 1 is distilled with
    the row's overrides, scored under the row's protocol, and reported beside seed 0's mean."""
    recorded = ["python", "-m", "ddbench.cli", "distill", "method=dm", "dataset=digits", "ipc=1",
                "method.iterations=1", "seed=0", "precision=fp32", "device=cpu",
                "progress=false", "hydra.run.dir=/gone", "model.kwargs.net_width=8"]  # fmt: skip
    row = {"method": "dm", "dataset": "digits", "ipc": 1, "iterations": 1, "protocol": "quick",
           "eval_seeds": "0", "official": {"mean": 50.0},
           "per_seed": [{"seed": 0, "ddbench": {"mean": 40.0}}],
           "commands": {"ddbench_seed0": shlex.join(recorded)}}  # fmt: skip
    (tmp_path / "row.json").write_text(json.dumps(row))
    monkeypatch.setenv("DDBENCH_ALLOCATOR", "system")
    out = tmp_path / "spread"
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "row.json"), "1", str(out)],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr + (out / "seed1.log").read_text()
    made = synset.load(out / "seed1" / "synset.safetensors")
    assert made.meta["seed"] == 1 and made.meta["method"]["config"]["iterations"] == 1
    scored = json.loads((out / "seed1" / "eval" / "result.json").read_text())
    assert scored["protocol"]["name"] == "quick"
    result = json.loads((out / "spread.json").read_text())
    assert result["ddbench_set_means"] == {"0": 40.0, "1": scored["accuracy"]["mean"]}
    assert result["range"] == pytest.approx(abs(scored["accuracy"]["mean"] - 40.0))
    # a second call finds every output and reruns nothing
    log = (out / "seed1.log").read_text()
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "row.json"), "1", str(out)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    assert (out / "seed1.log").read_text() == log

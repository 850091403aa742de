"""Sweeps (joblib, submitit_local, Optuna on val), resuming a killed sweep, and aggregation."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from cli_runner import run_cli

from ddbench.cli import main

TINY = [
    "method=random",
    "dataset=digits",
    "protocol=quick",
    "protocol.epochs=3",
    "model.kwargs.net_width=16",
    "progress=false",
]


def ddbench(*args: str, cwd: Path):
    p = run_cli(*args, cwd=cwd)
    if p.returncode != 0:
        raise AssertionError(f"ddbench {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def _mtimes(sweep: Path) -> dict[str, int]:
    return {
        str(f.relative_to(sweep)): f.stat().st_mtime_ns
        for pattern in ("result.json", "synset.safetensors")
        for f in sweep.rglob(pattern)
    }


@pytest.mark.parametrize("launcher, kill", [("joblib", True), ("submitit_local", False)])
def test_sweep_with_launcher_aggregates_and_a_rerun_redoes_only_unfinished_jobs(
    tmp_path, capsys, launcher, kill
):
    """The rerun after a kill is tested under joblib only, for time: skipping finished jobs
    happens inside the job (``_done``), the same under every launcher. submitit_local uses the
    default sweep dir (``multirun/run`` under the working directory)."""
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    cmd = ["-m", "run", *TINY, "ipc=1,2", f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        sweep = tmp_path / "sweep"
        cmd += ["hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    else:
        sweep = tmp_path / "multirun" / "run"
    ddbench(*cmd, cwd=tmp_path)
    results = {json.loads(f.read_text())["ipc"]: f for f in sweep.rglob("result.json")}
    assert sorted(results) == [1, 2]

    # The table: one row per ipc, the mean of each result, n = 1, both marks of this protocol.
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    main(["aggregate", str(sweep), "--out", str(md), "--csv", str(table_csv)])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| random |")]
    assert len(rows) == 2 and md.read_text().startswith("| method | dataset | IPC")
    for ipc, f in results.items():
        r = json.loads(f.read_text())
        row = next(ln for ln in rows if f"| digits | {ipc} |" in ln)
        assert f"{r['accuracy']['mean']:.2f} ± " in row and "| 1 (1 models) |" in row
        assert "quick † ‡" in row and r["protocol"]["hash"] in row
    by_ipc = {int(r["ipc"]): r for r in csv.DictReader(table_csv.open())}
    for ipc, f in results.items():
        r = json.loads(f.read_text())
        assert float(by_ipc[ipc]["mean"]) == pytest.approx(r["accuracy"]["mean"], abs=1e-3)
        assert by_ipc[ipc]["n_results"] == "1" and by_ipc[ipc]["split"] == "test"
    if not kill:
        return

    # A sweep killed before ipc=1 finished: its result.json is missing. The rerun redoes only
    # that job (reusing its saved set); the finished job and both sets are left untouched.
    before = _mtimes(sweep)
    unfinished = results[1]
    unfinished.unlink()
    ddbench(*cmd, cwd=tmp_path)
    after = _mtimes(sweep)
    assert after.keys() == before.keys()
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {str(unfinished.relative_to(sweep))}, changed
    assert json.loads(unfinished.read_text())["config_key"]


def test_optuna_tunes_on_val_and_minimises_the_val_error(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "tune"
    p = ddbench("-m", "run", "+experiment=tune_example", "dataset=digits", "ipc=1",
                "method.iterations=2", "protocol.epochs=3", "model.kwargs.net_width=16",
                "progress=false", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                cwd=tmp_path)  # fmt: skip
    results = [json.loads(f.read_text()) for f in sweep.rglob("result.json")]
    assert len(results) == 2 and all(r["method"] == "dm" for r in results)
    assert all(r["split"] == "val" for r in results)
    assert len(re.findall(r"^VAL dm digits", p.stdout, re.M)) == 2
    best = (sweep / "optimization_results.yaml").read_text()
    best_value = float(re.search(r"best_value: ([0-9.eE+-]+)", best).group(1))
    assert best_value == pytest.approx(100 - max(r["accuracy"]["mean"] for r in results))
    table = ddbench("aggregate", str(sweep), "--by-hash", cwd=tmp_path).stdout
    assert "**VAL**" in table and "not test results" in table


def test_evaluate_loads_the_requested_split_only(make_set, monkeypatch):
    from ddbench import data
    from ddbench.protocol import Protocol, evaluate

    loaded = []
    real = data.load_split
    monkeypatch.setattr(
        data, "load_split", lambda ds, split: loaded.append(split) or real(ds, split)
    )
    proto = Protocol(name="t", epochs=1, seeds=[0], augment="none")
    r = evaluate(make_set(ipc=1), proto, "convnet", {"net_width": 8}, device="cpu",
                 progress=False, split="val")  # fmt: skip
    assert r["split"] == "val" and "val" in loaded and "test" not in loaded
    loaded.clear()
    assert evaluate(make_set(ipc=1), proto, "convnet", {"net_width": 8}, device="cpu",
                    progress=False)["split"] == "test"  # fmt: skip
    assert "test" in loaded and "val" not in loaded


def _result(tmp: Path, name: str, proto_hash: str, accs: list[float], **extra) -> Path:
    mean = sum(accs) / len(accs)
    r = {
        "method": "random", "dataset": "digits", "ipc": 1, "model": "convnet",
        "protocol": {"name": "quick", "hash": proto_hash, "comparable": False},
        "accuracy": {"mean": mean, "std": 0.0,
                     "per_seed": [{"seed": i, "accuracy": a} for i, a in enumerate(accs)]},
        **extra,
    }  # fmt: skip
    f = tmp / name / "result.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(r))
    return f


def test_aggregate_pools_one_hash_and_refuses_two_hashes_of_one_protocol(tmp_path, capsys):
    from ddbench.protocol import pinned_protocol_hash

    pinned = pinned_protocol_hash("quick")
    _result(tmp_path, "a", pinned, [50.0, 60.0])
    _result(tmp_path, "b", pinned, [70.0])
    _result(tmp_path, "v", pinned, [10.0], split="val")
    main(["aggregate", str(tmp_path)])
    out = capsys.readouterr().out
    test_row = next(ln for ln in out.splitlines() if "| test |" in ln)
    assert "60.00 ± 8.16" in test_row and "| 2 (3 models) |" in test_row  # pooled over 3 models
    assert "quick †" in test_row and "‡" not in test_row  # pinned hash: no ‡
    assert "10.00 ± 0.00" in next(ln for ln in out.splitlines() if "**VAL**" in ln)

    _result(tmp_path, "c", "0123456789abcdef", [20.0])
    with pytest.raises(SystemExit) as e:
        main(["aggregate", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "refusing to pool results of protocol 'quick'" in err
    assert "0123456789abcdef" in err and pinned in err
    main(["aggregate", str(tmp_path), "--by-hash"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if "| test |" in ln]
    assert len(rows) == 2 and any("quick † ‡" in r and "20.00" in r for r in rows)


def test_aggregate_fails_clearly_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["aggregate", str(tmp_path)])
    assert "no result.json under" in capsys.readouterr().err

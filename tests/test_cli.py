"""The ``ddbench`` command end to end, as a user runs it, on the real digits dataset."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli

TESTS = Path(__file__).parent
TINY = [
    "dataset=digits",
    "protocol=quick",
    "protocol.epochs=3",
    "model.kwargs.net_width=16",
    "progress=false",
]


def ddbench(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = run_cli(*args, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"ddbench {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def test_run_writes_set_result_and_log_then_skips_when_done(tmp_path):
    out = tmp_path / "r"
    p = ddbench("run", *TINY, "ipc=2", "precision=fp32", f"hydra.run.dir={out}", cwd=tmp_path)
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "random" and result["dataset"] == "digits" and result["ipc"] == 2
    assert result["protocol"]["name"] == "quick" and result["protocol"]["comparable"] is False
    assert 0 <= result["accuracy"]["mean"] <= 100 and len(result["accuracy"]["per_seed"]) == 1
    assert result["synset"]["sha256"] and (out / "synset.safetensors").exists()
    assert any(out.glob("*.log")) and (out / ".hydra" / "config.yaml").exists()
    assert "not comparable" in p.stdout
    again = ddbench("run", *TINY, "ipc=2", "precision=fp32", f"hydra.run.dir={out}", cwd=tmp_path)
    assert "already done" in again.stdout
    from ddbench import synset

    assert synset.load(out / "synset.safetensors").meta["cost"]["precision"] == "fp32"
    # bf16 changes the numbers: neither the set nor the result of the fp32 run is reused
    bf16 = ddbench("run", *TINY, "ipc=2", "precision=bf16", f"hydra.run.dir={out}", cwd=tmp_path)
    assert "already done" not in bf16.stdout and "reusing" not in bf16.stdout + bf16.stderr
    assert synset.load(out / "synset.safetensors").meta["cost"]["precision"] == "bf16"
    assert json.loads((out / "result.json").read_text())["config_key"] != result["config_key"]


def test_multirun_sweeps_each_combination(tmp_path):
    ddbench(
        "-m",
        "run",
        *TINY,
        "ipc=1,2",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    results = [json.loads(f.read_text()) for f in (tmp_path / "sweep").rglob("result.json")]
    assert sorted((r["ipc"], r["config_key"]) for r in results)[0][0] == 1
    assert len({r["config_key"] for r in results}) == 4


def test_distill_then_evaluate_then_show(tmp_path):
    d = tmp_path / "d"
    ddbench(
        "distill", "dataset=digits", "ipc=3", "progress=false", f"hydra.run.dir={d}", cwd=tmp_path
    )
    synset = d / "synset.safetensors"
    e = tmp_path / "e"
    ddbench("evaluate", f"synset={synset}", "protocol=quick", "protocol.epochs=2", "model=mlp", "progress=false",
            f"hydra.run.dir={e}", cwd=tmp_path)  # fmt: skip
    r = json.loads((e / "result.json").read_text())
    assert r["model"] == "mlp" and r["ipc"] == 3
    # the same evaluation again is skipped; another set into the same run dir is scored
    again = ddbench("evaluate", f"synset={synset}", "protocol=quick", "protocol.epochs=2", "model=mlp",
                    "progress=false", f"hydra.run.dir={e}", cwd=tmp_path)  # fmt: skip
    assert "already done" in again.stdout
    other = tmp_path / "d2"
    ddbench("distill", "dataset=digits", "ipc=3", "seed=1", "progress=false", f"hydra.run.dir={other}",
            cwd=tmp_path)  # fmt: skip
    p = ddbench("evaluate", f"synset={other / 'synset.safetensors'}", "protocol=quick", "protocol.epochs=2",
                "model=mlp", "progress=false", f"hydra.run.dir={e}", cwd=tmp_path)  # fmt: skip
    assert "already done" not in p.stdout
    r2 = json.loads((e / "result.json").read_text())
    assert r2["synset"]["sha256"] != r["synset"]["sha256"] and r2["config_key"] == r["config_key"]
    # without hydra.run.dir: the run dir names the set's dataset, method, ipc and checksum
    ddbench("evaluate", f"synset={synset}", "protocol=quick", "protocol.epochs=1", "model=mlp",
            "progress=false", cwd=tmp_path)  # fmt: skip
    (found,) = (tmp_path / "outputs" / "evaluate").rglob("result.json")
    parts = found.relative_to(tmp_path / "outputs" / "evaluate").parts
    assert parts[:4] == ("digits", "random", "ipc3", f"set-{r['synset']['sha256'][:12]}")
    png = tmp_path / "grid.png"
    ddbench("show", str(synset), "--out", str(png), cwd=tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reuses_an_earlier_result_s_seeds_and_refuses_another_recipe_s(tmp_path):
    """`ddbench evaluate reuse=[RESULT]` trains only the seeds RESULT lacks (result.json lists the
    reused ones); a result of another recipe is refused with a clear error."""
    d = tmp_path / "d"
    ddbench(
        "distill", "dataset=digits", "ipc=2", "progress=false", f"hydra.run.dir={d}", cwd=tmp_path
    )
    synset = d / "synset.safetensors"
    common = (
        f"synset={synset}",
        "protocol=quick",
        "protocol.epochs=2",
        "model=mlp",
        "progress=false",
    )

    def evaluate(out, *extra, check=True):
        return ddbench("evaluate", *common, *extra, f"hydra.run.dir={tmp_path / out}", cwd=tmp_path,
                       check=check)  # fmt: skip

    evaluate("one", "protocol.seeds=[1]")
    evaluate("both", "protocol.seeds=[0,1]", f"reuse=[{tmp_path / 'one' / 'result.json'}]")
    one, both = (json.loads((tmp_path / x / "result.json").read_text()) for x in ("one", "both"))
    assert both["reused"][0]["seeds"] == [1] and [
        p["seed"] for p in both["accuracy"]["per_seed"]
    ] == [0, 1]
    assert both["accuracy"]["per_seed"][1] == one["accuracy"]["per_seed"][0]
    # the earlier result is named by its file's checksum (a board entry holds no local path)
    sha = hashlib.sha256((tmp_path / "one" / "result.json").read_bytes()).hexdigest()
    assert both["reused"][0]["from"] == f"sha256:{sha}"
    p = evaluate("other", "protocol.seeds=[0,1]", "protocol.epochs=3",
                 f"reuse=[{tmp_path / 'one' / 'result.json'}]", check=False)  # fmt: skip
    assert p.returncode != 0 and "another recipe" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "other" / "result.json").exists()


def test_method_from_another_package_plugs_in(tmp_path):
    """`method._target_` may name any importable Method subclass (here: tests/plugin_method.py)."""
    out = tmp_path / "p"
    ddbench("run", *TINY, "ipc=2", "+method.brightness=0.25", "method._target_=plugin_method.MeanShifted",
            "method.name=mean_shifted", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    r = json.loads((out / "result.json").read_text())
    assert r["method"] == "mean_shifted"
    from ddbench import load

    s = load(out / "synset.safetensors")
    assert s.meta["method"]["config"]["brightness"] == 0.25
    assert s.meta["method"]["config"]["_target_"] == "plugin_method.MeanShifted"


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset=imagenet_9000", "dataset/imagenet_9000"),
        ("method=no_such_method", "method/no_such_method"),
        ("protocol=bestontest", "protocol/bestontest"),
        ("model.name=transformer9", "unknown model"),
        ("ipc=0", "ipc must be"),
        ("method._target_=os.getcwd", "not a ddbench.method.Method"),
    ],
)
def test_bad_names_fail_with_one_clear_message(tmp_path, override, message):
    p = ddbench(
        "run", *TINY, override, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, check=False
    )
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not list((tmp_path / "x").glob("*.safetensors"))


def test_evaluate_rejects_a_pickle_without_traceback(tmp_path):
    import pickle

    bad = tmp_path / "set.safetensors"
    bad.write_bytes(pickle.dumps({"images": [1, 2, 3]}))
    p = ddbench(
        "evaluate", f"synset={bad}", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path, check=False
    )
    assert p.returncode != 0 and "pickle" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "e" / "result.json").exists()


def test_wandb_logger_works_offline_without_an_account(tmp_path):
    out = tmp_path / "w"
    env_key = os.environ.pop("WANDB_API_KEY", None)
    try:
        ddbench("run", *TINY, "ipc=1", "logger=wandb", f"hydra.run.dir={out}", cwd=tmp_path)
    finally:
        if env_key:
            os.environ["WANDB_API_KEY"] = env_key
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert (out / "synset.png").exists()


def test_data_list_names_the_catalogue(tmp_path):
    p = ddbench("data", "list", cwd=tmp_path)
    for name in ("mnist", "fashion_mnist", "digits", "cifar10", "cifar100", "svhn", "imagefolder"):
        assert name in p.stdout


def test_full_method_is_the_whole_train_split(tmp_path):
    out = tmp_path / "f"
    ddbench(
        "distill",
        "dataset=digits",
        "method=full",
        "progress=false",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    from ddbench import data, load

    s = load(out / "synset.safetensors")
    assert len(s) == len(data.load_split("digits", "train"))


def test_evaluate_scores_published_dc_and_mtt_files(tmp_path):
    """Files as the official DC and MTT code write them (torch.save of tensors)."""
    import torch

    from ddbench import data

    train = data.load_split("digits", "train")
    idx = torch.cat([train.indices_of(c)[:2] for c in range(10)])
    x, y = train.normalize(train.images[idx]), train.labels[idx]
    dc = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[x, y]], "accs_all_exps": {"ConvNet": [0.5]}}, dc)
    torch.save(x, tmp_path / "images_best.pt")
    torch.save(torch.nn.functional.one_hot(y, 10).float(), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.02), tmp_path / "lr_best.pt")
    tiny = [
        "protocol.epochs=2",
        "model.kwargs.net_width=16",
        "progress=false",
        "source_dataset=digits",
    ]
    ddbench(
        "evaluate",
        f"synset={dc}",
        "protocol=quick",
        *tiny,
        f"hydra.run.dir={tmp_path / 'dc'}",
        cwd=tmp_path,
    )
    r = json.loads((tmp_path / "dc" / "result.json").read_text())
    assert r["method"] == "imported:dc" and r["ipc"] == 2 and r["labels"]["kind"] == "hard"
    mtt = tmp_path / "images_best.pt"
    ddbench("evaluate", f"synset={mtt}", "protocol=learned_lr", "protocol.seeds=[0]", *tiny,
            f"hydra.run.dir={tmp_path / 'mtt'}", cwd=tmp_path)  # fmt: skip
    r = json.loads((tmp_path / "mtt" / "result.json").read_text())
    assert r["method"] == "imported:mtt" and r["labels"]["kind"] == "soft"
    assert r["protocol"]["name"] == "learned_lr"


def test_overriding_a_pinned_protocol_marks_results_not_comparable(tmp_path):
    out = tmp_path / "o"
    ddbench("run", "dataset=digits", "ipc=1", "protocol=standard", "protocol.epochs=2", "protocol.seeds=[0]",
            "model.kwargs.net_width=16", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    r = json.loads((out / "result.json").read_text())
    assert r["protocol"]["name"] == "standard" and r["protocol"]["comparable"] is False

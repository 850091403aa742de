"""bench/parity tools: spread.py (a parity row's ddbench distillation rerun with other seeds, the
rest of its recorded command, the start included, kept; each set scored under the row's
protocol) and the DC-family setup's start file (official_dc_setup.sh E9)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

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


def test_the_dc_setup_gives_their_scripts_a_start_file(tmp_path):
    """official_dc_setup.sh on a stand-in of DC's files (the lines it patches, as at 53f63a6):
    E9 adds --parity_init to main.py and main_DM.py and sets the images from it after their
    own draw; a second run changes nothing."""
    off = tmp_path / "DC"
    off.mkdir()
    (off / "utils.py").write_text(
        "def get_dataset(dataset, data_path):\n    pass\n\n\n"
        "def rand_scale(x, param):\n    if param.Siamese:\n        x[:] = x[0]\n"
    )
    training = "        ''' training '''\n"
    main = (
        "def main():\n    args = parser.parse_args()\n"
        "    print('eval_it_pool: ', eval_it_pool)\n"
        "    for exp in range(args.num_exp):\n"
        "        image_syn = torch.randn(2, 1, 3, 3)\n" + training +
        "        for it in range(args.Iteration + 1):\n"
        "            seed = int(time.time() * 1000) % 100000\n"
    )  # fmt: skip
    for name in ("main.py", "main_DM.py"):
        (off / name).write_text(main)
    (off / "networks.py").write_text(
        "class ConvNet(nn.Module):\n    def forward(self, x):\n"
        "        out = out.view(out.size(0), -1)\n        return out\n\nclass Other:\n    pass\n"
    )
    (off / "data").mkdir()
    for name in ("MNIST", "FashionMNIST"):  # the data files exist: no export
        (off / "data" / f"parity_{name}.pt").write_bytes(b"")
    script = ROOT / "bench" / "parity" / "official_dc_setup.sh"
    out = subprocess.run(["bash", str(script), str(off)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    once = {f.name: f.read_text() for f in off.glob("*.py")}
    torch.save(torch.full((2, 1, 3, 3), 3.0), tmp_path / "start.pt")
    for name in ("main.py", "main_DM.py"):
        text = once[name]
        assert text.count("ddbench-parity E9 arg") == text.count("ddbench-parity E9 start") == 1
        assert "'--parity_init'" in text
        block = text[text.index("        if args.parity_init:") :].split(training, 1)[0]
        ns = {"torch": torch, "image_syn": torch.zeros(2, 1, 3, 3),
              "args": type("A", (), {"parity_init": str(tmp_path / "start.pt")})}  # fmt: skip
        exec(textwrap.dedent(block), ns)
        assert torch.equal(ns["image_syn"], torch.full((2, 1, 3, 3), 3.0))
    subprocess.run(["bash", str(script), str(off)], check=True, capture_output=True)
    assert {f.name: f.read_text() for f in off.glob("*.py")} == once


def test_the_authors_start_file_holds_the_sets_images(make_set, tmp_path, monkeypatch):
    """PARITY_OFFICIAL_INIT: the set's images as the tensor their --parity_init loads, per
    distillation seed; a code without the edit is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "parity_s", ROOT / "bench" / "parity" / "parity.py"
    )
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    assert parity.official_start("dsa", tmp_path, 0) == []  # not asked for
    s = make_set(ipc=1)
    synset.save(s, tmp_path / "start_seed3.safetensors")
    monkeypatch.setenv("PARITY_OFFICIAL_INIT", str(tmp_path / "start_seed{seed}.safetensors"))
    flags = parity.official_start("ast", tmp_path, 3)
    assert flags == ["--parity_init", str(tmp_path / "official_start.pt")]
    assert torch.equal(torch.load(flags[1], weights_only=True), s.images.float())
    with pytest.raises(SystemExit, match="datadam code takes no start file"):
        parity.official_start("datadam", tmp_path, 3)


FAKE_DC_MAIN = """
import argparse, json, torch
p = argparse.ArgumentParser()
for a in ("--dataset", "--model", "--ipc", "--num_exp", "--num_eval", "--eval_mode", "--Iteration",
          "--seed", "--save_path", "--parity_eval", "--method", "--init", "--dsa_strategy"):
    p.add_argument(a)
a = p.parse_args()
json.dump({"Iteration": int(a.Iteration)}, open(a.save_path + "/argv.json", "w"))
g = torch.Generator().manual_seed(0)
ipc = int(a.ipc)
imgs = torch.randn(10 * ipc, 1, 28, 28, generator=g)
labels = torch.arange(10).repeat_interleave(ipc)
torch.save({"data": [[imgs, labels]], "accs_all_exps": {"ConvNet": []}},
           f"{a.save_path}/res_{a.method}_{a.dataset}_ConvNet_{ipc}ipc.pt")
"""


@pytest.mark.parametrize("official_iterations", [None, 4])
def test_the_authors_iteration_argument_can_differ_from_ddbenchs(
    make_set, tmp_path, official_iterations
):
    """PARITY_OFFICIAL_ITERATIONS: the authors' script gets that --Iteration (DC's family updates
    N + 1 times for N), the row's work folder and JSON say so; without it both get ITERATIONS.
    The authors' script here is a stand-in that writes a DC result file; ddbench's set and both
    scores are already in place, so the row is assembled without training."""
    off, out = tmp_path / "official", tmp_path / "out"
    off.mkdir()
    (off / "main.py").write_text(FAKE_DC_MAIN)
    (off / "COMMIT").write_text("0" * 40)
    row = "dsa_fashion_mnist_ipc1_it5" + ("_official_it4" if official_iterations else "")
    seed_dir = out / "work" / row / "seed0"
    synset.save(make_set(ipc=1), seed_dir / "ddbench" / "synset.safetensors")
    for side, acc in (("official", 60.0), ("ddbench", 61.0)):
        (seed_dir / f"eval_{side}").mkdir(parents=True)
        per = [{"seed": 0, "accuracy": acc}]
        (seed_dir / f"eval_{side}" / "result.json").write_text(
            json.dumps({"accuracy": {"mean": acc, "std": 0.0, "per_seed": per}})
        )
    (seed_dir / "official").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PARITY_OFFICIAL_ITERATIONS"}
    if official_iterations is not None:
        env["PARITY_OFFICIAL_ITERATIONS"] = str(official_iterations)
    script = ROOT / "bench" / "parity" / "parity.py"
    args = ["dsa", str(off), str(out), "fashion_mnist", "1", "5", "0"]
    subprocess.run([sys.executable, str(script), *args], check=True, env=env, cwd=ROOT)
    got = json.loads((seed_dir / "official" / "argv.json").read_text())
    assert got["Iteration"] == (official_iterations or 5)
    result = json.loads((out / "dsa_fashion_mnist_ipc1.json").read_text())
    assert result["iterations"] == 5
    assert result.get("official_iterations") == official_iterations
    assert "--Iteration " + str(official_iterations or 5) in result["commands"]["official_seed0"]
    assert "method.iterations=5" in result["commands"]["ddbench_seed0"]
    assert (seed_dir / "official.safetensors").exists()  # their output was imported


def test_moves_measures_each_sets_change_from_the_start_and_their_agreement(make_set, tmp_path):
    """bench/parity/moves.py: the rms change of each set from the start, its pixel std and learned
    lr, and the cosine between two sets' changes (opposite moves: -1; the same direction at two
    sizes: 1); a set of other labels is refused."""
    import dataclasses

    start = make_set(ipc=2)
    g = torch.Generator().manual_seed(1)
    d = torch.randn(start.images.shape, generator=g) * 0.1
    paths = {"start": tmp_path / "start.safetensors"}
    synset.save(start, paths["start"])
    for name, images in (("up", start.images + d), ("down", start.images - d),
                         ("twice", start.images + 2 * d)):  # fmt: skip
        paths[name] = tmp_path / f"{name}.safetensors"
        lr = torch.tensor([0.002]) if name == "twice" else None  # a learned lr, shown as stored
        synset.save(dataclasses.replace(start, images=images, lr=lr), paths[name])
    script = ROOT / "bench" / "parity" / "moves.py"
    cmd = [sys.executable, str(script), str(paths["start"])]
    out = subprocess.run(
        [*cmd, *(f"{n}={paths[n]}" for n in ("up", "down", "twice"))],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in out.splitlines() if line.startswith("| ") and not line.startswith("| set")}  # fmt: skip
    rows = {name: c[0] for name, c in cells.items()}
    assert float(cells["down"][2]) == pytest.approx((start.images - d).std().item(), abs=1e-3)
    assert (cells["up"][3], float(cells["twice"][3])) == ("-", 0.002)  # pixel std, learned lr
    assert float(rows["up"]) == pytest.approx(d.pow(2).mean().sqrt().item(), abs=1e-4)
    assert float(rows["twice"]) == pytest.approx(2 * float(rows["up"]), abs=2e-4)
    assert float(rows["up / down"]) == pytest.approx(-1.0, abs=1e-3)
    assert float(rows["up / twice"]) == pytest.approx(1.0, abs=1e-3)
    other = dataclasses.replace(start, labels=start.labels.roll(1))
    synset.save(other, tmp_path / "other.safetensors")
    bad = subprocess.run([*cmd, f"x={tmp_path / 'other.safetensors'}"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode != 0 and "not the start's shape and labels" in bad.stderr

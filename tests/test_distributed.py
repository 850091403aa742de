"""Large-scale paths of the engine on the real digits dataset: ``torchrun`` data parallelism
(2 gloo processes on the CPU train as one process does) and ``channels_last``.

The torchrun runs launch ``python -m torch.distributed.run --standalone --nproc_per_node=2``
on this module's :func:`work` (and on ``ddbench evaluate``), one thread per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddbench import synset as synset_io
from ddbench.data import load_split
from ddbench.engine import Recipe, accuracy, train, world_info
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate

TESTS = Path(__file__).parent


def _build() -> torch.nn.Module:
    return create_model("convnet", 1, 10, (8, 8), net_width=16)


def _params(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def _subset(split, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.cat([split.indices_of(c)[:per_class] for c in range(split.num_classes)])
    return split.normalize(split.images[idx]), split.labels[idx]


def work(out: str) -> None:
    """Train on 100 digits and save this rank's weights, accuracies and losses to
    ``out/rank<r>.pt``: one model alone (DSA + mixup) and two stacked (vmapped) models.

    Batches of 33 over 100 images: the last global batch holds one image, so under two
    processes rank 0's share of it is empty."""
    torch.set_num_threads(1)
    tr, te = load_split("digits", "train"), load_split("digits", "test")
    x, y = _subset(tr, 10)
    recipe = Recipe(epochs=3, batch_size=33, lr=0.05, augment=tr.spec.dsa_strategy, mixup=0.5)
    alone = train(_build, [0], x, y, recipe, device="cpu", compile=False)
    stacked = train(
        _build, [1, 2], x, y, Recipe(epochs=2, batch_size=33, lr=0.05, augment="flip_scale"),
        device="cpu", parallel=True, compile=False,
    )  # fmt: skip
    models = alone.models + stacked.models
    accs = accuracy(models, te.images, te.labels, transform=tr.normalize)
    rank, world = world_info()
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(
        {"params": [_params(m) for m in models], "acc": accs, "losses": alone.losses,
         "world": [rank, world]},
        Path(out) / f"rank{rank}.pt",
    )  # fmt: skip


def teacher_work(out: str) -> None:
    """Ask for a teacher that is not cached yet (every rank at once); save what this rank got."""
    from ddbench import teachers

    torch.set_num_threads(1)
    cfg = teachers.TeacherConfig(model_kwargs={"net_width": 16}, epochs=1)
    net, meta = teachers.get_teacher("digits", cfg, device="cpu", progress=False)
    rank, _ = world_info()
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"params": _params(net), "key": meta["key"]}, Path(out) / f"rank{rank}.pt")


def _torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DDBENCH_ALLOCATOR="system", HYDRA_FULL_ERROR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    p = subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if p.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed:\n{p.stdout}\n{p.stderr[-4000:]}")
    return p


def test_two_gloo_processes_train_as_one_process(tmp_path, one_thread):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nfrom test_distributed import work\nwork(sys.argv[1])\n")
    _torchrun(str(script), str(tmp_path / "two"), cwd=tmp_path)
    work(str(tmp_path / "one"))  # the same training in this process: WORLD_SIZE unset
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt")
    assert r0["world"] == [0, 2] and r1["world"] == [1, 2] and one["world"] == [0, 1]
    # the two ranks hold the same models (gradients summed, rank 0's start)
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert r0["acc"] == r1["acc"]
    # and they are the one-process models, up to the order of float sums
    for a, b in zip(r0["params"], one["params"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert all(abs(a - b) <= 1.0 for a, b in zip(r0["acc"], one["acc"])), (r0["acc"], one["acc"])
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]))
    assert one["losses"][-1] < one["losses"][0]  # it trained
    # not equal by accident: another seed's model is far from seed 0's
    assert not torch.allclose(one["params"][0], one["params"][1], atol=1e-2)


def test_a_teacher_missing_under_torchrun_is_trained_once_and_shared(tmp_path, one_thread):
    """The rank holding the cache lock trains the teacher alone (no collective that the waiting
    rank could never join: that deadlocked), the other rank then loads the same entry."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\nfrom test_distributed import teacher_work\nteacher_work(sys.argv[1])\n"
    )
    _torchrun(str(script), str(tmp_path / "t"), cwd=tmp_path, timeout=180)
    r0, r1 = (torch.load(tmp_path / "t" / f"rank{r}.pt") for r in (0, 1))
    assert r0["key"] == r1["key"] and torch.equal(r0["params"], r1["params"])
    from ddbench.cache import cache_root

    assert len(list((cache_root() / "teachers" / "digits").glob("*.safetensors"))) == 1


def test_evaluate_under_torchrun_writes_one_result_equal_to_one_process(
    tmp_path, make_set, one_thread
):
    path = synset_io.save(make_set(ipc=3), tmp_path / "s.safetensors")
    out = tmp_path / "e"
    _torchrun(
        "-m", "ddbench.cli", "evaluate", f"synset={path}", "protocol=quick", "protocol.epochs=6",
        "protocol.seeds=[0,1]", "model.kwargs.net_width=16", "device=cpu", "progress=false",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    assert not (out / "result.partial.json").exists()
    p = Protocol(name="quick", epochs=6, seeds=[0, 1], comparable=False)
    alone = evaluate(synset_io.load(path), p, "convnet", result["model_kwargs"], device="cpu",
                     progress=False)  # fmt: skip
    assert result["protocol"]["hash"] == alone["protocol"]["hash"]
    for a, b in zip(result["accuracy"]["per_seed"], alone["accuracy"]["per_seed"]):
        assert a["seed"] == b["seed"] and abs(a["accuracy"] - b["accuracy"]) <= 1.0, (a, b)
    assert result["train_loss_final"] == pytest.approx(alone["train_loss_final"], rel=1e-3)


def test_channels_last_trains_as_the_default_layout(one_thread):
    tr = load_split("digits", "train")
    x, y = _subset(tr, 5)
    r = Recipe(epochs=3, batch_size=16, lr=0.05, augment=tr.spec.dsa_strategy)
    default = train(_build, [0], x, y, r, device="cpu", compile=False).models[0]
    r.channels_last = True
    cl = train(_build, [0], x, y, r, device="cpu", compile=False).models[0]
    conv = [m for m in cl.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 16 in-channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    torch.testing.assert_close(_params(cl), _params(default), atol=1e-4, rtol=1e-3)
    assert not torch.allclose(_params(default), _params(_build()), atol=1e-3)  # it trained

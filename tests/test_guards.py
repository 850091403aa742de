"""Guarded runs on the real digits dataset: settings that make no sense are refused before any
work, one process per run directory, a killed joblib sweep takes its workers with it, and a
killed evaluation resumes mid-seed to the accuracies of an uninterrupted one."""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import TESTS, run_cli
from conftest import Killed, make_task

from ddbench import guard, protocol
from ddbench.errors import DDBenchError
from ddbench.method import check_ipc, run_distill
from ddbench.protocol import Protocol, evaluate, protocol_config

TINY = ["dataset=digits", "protocol=quick", "protocol.epochs=2", "model.kwargs.net_width=16"]


def _smallest_class(train) -> int:
    return int(torch.bincount(train.labels).min())


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("ipc", [1.5, 0, -3, "abc", "10", True, 2.0])
def test_ipc_must_be_a_whole_number_of_at_least_one(ipc):
    with pytest.raises(DDBenchError, match="ipc must be a whole number >= 1"):
        check_ipc(ipc)
    assert check_ipc(3) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
        ({"per_dataset": {"digits": {"epochs": 0}}}, "'standard' (digits): epochs must be"),
    ],
)
def test_a_protocol_that_cannot_train_is_refused(change, message):
    cfg = {**protocol_config("standard"), **change}
    with pytest.raises(DDBenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Protocol.from_config(cfg)


def test_every_shipped_protocol_passes_the_checks():
    folder = importlib.resources.files("ddbench.conf") / "protocol"
    names = sorted(
        f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")
    )
    assert len(names) > 5
    for name in names:
        Protocol.from_config(protocol_config(name))


def test_random_refuses_an_ipc_above_the_smallest_class(digits_train):
    from ddbench.methods.subset import Random

    smallest = _smallest_class(digits_train)
    with pytest.raises(DDBenchError, match=f"has {smallest} train images.*ipc <= {smallest}"):
        run_distill(Random(), make_task(digits_train, smallest + 1))
    s = run_distill(Random(), make_task(digits_train, smallest))  # the whole smallest class
    assert torch.bincount(s.labels).tolist() == [smallest] * 10


def test_a_method_that_synthesises_images_is_not_limited_by_class_sizes(digits_train, one_thread):
    from ddbench.methods.dm import DM

    ipc = _smallest_class(digits_train) + 5
    s = run_distill(DM(iterations=1, init="noise", batch_real=8), make_task(digits_train, ipc))
    assert len(s) == 10 * ipc and s.meta["ipc"] == ipc


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ipc=1.5"], "ipc must be a whole number >= 1 (images per class), got 1.5"),
        (["ipc=abc"], "ipc must be a whole number >= 1 (images per class), got 'abc'"),
        (["ipc=2", "protocol.epochs=0"], "protocol 'quick': epochs must be a whole number >= 1"),
        (["ipc=2", "precision=fp16"], "precision must be auto, fp32 or bf16, not 'fp16'"),
        (["ipc=500"], "has {smallest} train images, and random picks distinct real images"),
        (["ipc=2", "eval_checkpoint_every=-1"], "eval_checkpoint_every must be a whole number"),
    ],
)
def test_the_command_refuses_nonsense_settings_before_any_work(
    tmp_path, digits_train, overrides, message
):
    out = tmp_path / "r"
    p = run_cli("run", *TINY, *overrides, f"hydra.run.dir={out}", cwd=tmp_path)
    assert p.returncode != 0
    message = message.format(smallest=_smallest_class(digits_train))
    assert p.stderr.startswith("ddbench: error: ") or "\nddbench: error: " in p.stderr, p.stderr
    assert message in p.stderr.rsplit("ddbench: error: ", 1)[1], p.stderr
    assert "Traceback" not in p.stderr
    assert not (out / "synset.safetensors").exists() and not (out / "result.json").exists()


# ------------------------------------------------------------------------------ the lock

_HOLD = (
    "import sys, time; from ddbench.guard import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n"
    "    print('held', flush=True); time.sleep(120)\n"
)


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir`` (returns once it holds it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_cannot_use_a_held_run_directory(tmp_path):
    run_dir = tmp_path / "r"
    holder = _holder(run_dir)
    try:
        with pytest.raises(
            DDBenchError, match=f"run directory {run_dir} is in use by pid {holder.pid}"
        ):
            with guard.run_dir_lock(run_dir):
                pass
        # the command fails the same way and writes nothing
        p = run_cli("run", *TINY, "ipc=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert f"is in use by pid {holder.pid}" in p.stderr, p.stderr
        assert not (run_dir / "synset.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (SIGKILL): its lock does not block, though its file is still there
    assert (run_dir / guard.LOCK_NAME).read_text().strip() == str(holder.pid)
    with guard.run_dir_lock(run_dir) as path:
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()  # removed on release


def test_the_lock_is_released_when_the_job_ends(tmp_path):
    run_dir = tmp_path / "r"
    p = run_cli("run", *TINY, "ipc=2", "progress=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (run_dir / "result.json").exists() and not (run_dir / guard.LOCK_NAME).exists()
    with guard.run_dir_lock(run_dir):
        pass


# ------------------------------------------------------------------------------ sweeps


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("sigint", [signal.default_int_handler, signal.SIG_IGN])
def test_the_signal_handlers_are_restored_after_the_app(sigint):
    """SIGINT as an interactive run has it, and ignored (a job started in the background with
    `&` or nohup), whatever the launching shell gave this process."""
    launched = signal.signal(signal.SIGINT, sigint)
    try:
        before = signal.getsignal(signal.SIGTERM)
        with guard.stop_workers_on_signal():
            assert signal.getsignal(signal.SIGTERM) is guard._on_signal
            # a signal set to be ignored stays ignored
            want = signal.SIG_IGN if sigint is signal.SIG_IGN else guard._on_signal
            assert signal.getsignal(signal.SIGINT) is want
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGINT, launched)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_joblib_sweep_leaves_no_workers(tmp_path, sig):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", "run", "dataset=digits", "protocol=quick", "protocol.epochs=100000",
            "model.kwargs.net_width=8", "progress=false", "ipc=1,2", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = dict(os.environ, DDBENCH_ALLOCATOR="system", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    parent = subprocess.Popen(
        [sys.executable, "-m", "ddbench.cli", *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 300  # a loaded machine starts workers slowly
        while len(workers) < 2 and time.monotonic() < deadline:  # both jobs hold their run dir
            time.sleep(0.2)
            for f in sweep.rglob(guard.LOCK_NAME):
                text = f.read_text().strip()
                if text.isdigit():
                    workers.add(int(text))
        assert len(workers) == 2, "the sweep's jobs did not start"
        assert all(_alive(w) and w != parent.pid for w in workers)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), f"workers {workers} outlived the sweep"
        assert parent.returncode == -sig
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for w in workers:  # only if the check above failed
            if _alive(w):
                os.kill(w, signal.SIGKILL)


# ------------------------------------------------------------------------------ evaluation resume


def _standard(**change) -> Protocol:
    return Protocol.from_config({**protocol_config("standard"), **change})


def _eval(s, p, tmp_path, parallel=False, **kw):
    return evaluate(
        s, p, "convnet", {"net_width": 16}, device="cpu", parallel=parallel, progress=False,
        partial=tmp_path / "result.partial.json", checkpoint=tmp_path / "eval_checkpoint.pt",
        checkpoint_every=1, checkpoint_seconds=0, **kw,
    )  # fmt: skip


def _kill_at(monkeypatch, seeds: list[int], epoch: int) -> None:
    """Make the evaluation 'die' right after it checkpoints ``seeds`` at ``epoch``."""
    real = protocol._save_checkpoint

    def save(path, key, state):
        real(path, key, state)
        if state["seeds"] == seeds and state["group"] == 0 and state["epoch"] == epoch:
            raise Killed

    monkeypatch.setattr(protocol, "_save_checkpoint", save)


def _trained_epochs(monkeypatch) -> list[tuple[list[int], int]]:
    """Record each engine.train call of the evaluation: (seeds, first epoch it trains)."""
    from ddbench import engine

    real, calls = engine.train, []

    def train(build, seeds, *a, resume=None, **k):
        calls.append((list(seeds), 0 if resume is None else int(resume["epoch"])))
        return real(build, seeds, *a, resume=resume, **k)

    monkeypatch.setattr(engine, "train", train)
    return calls


@pytest.mark.parametrize("parallel", [False, True])  # True: the seeds train stacked, as on CUDA
def test_a_killed_evaluation_resumes_mid_seed_to_the_same_accuracies(
    make_set, tmp_path, monkeypatch, one_thread, parallel
):
    s = make_set(ipc=3)
    p = _standard(epochs=6, seeds=[0, 1])  # DSA, momentum, the lr step at epoch 3
    reference = _eval(s, p, tmp_path / "ref", parallel)
    assert not (tmp_path / "ref" / "eval_checkpoint.pt").exists()  # removed once scored

    run = tmp_path / "run"
    # one by one: seed 0 is scored and seed 1 dies after its 4th epoch; stacked: both die there
    in_training = [0, 1] if parallel else [1]
    with monkeypatch.context() as m:
        _kill_at(m, in_training, 4)
        with pytest.raises(Killed):
            _eval(s, p, run, parallel)
    scored = set() if parallel else {"0"}
    partial = run / "result.partial.json"
    done = set(json.loads(partial.read_text())["per_seed"]) if partial.exists() else set()
    assert done == scored
    assert (run / "eval_checkpoint.pt").exists()
    calls = _trained_epochs(monkeypatch)
    resumed = _eval(s, p, run, parallel)
    assert calls == [(in_training, 4)]  # nothing scored is retrained; the rest goes on at epoch 4
    assert resumed["accuracy"] == reference["accuracy"]  # bit-identical per seed, mean and std
    assert resumed["train_loss_final"] == reference["train_loss_final"]
    assert not (run / "eval_checkpoint.pt").exists()


def test_stored_crop_labels_resume_at_the_epoch_of_the_checkpoint(
    make_set, tmp_path, monkeypatch, one_thread
):
    """labels=crops (FKD's replay): the resumed student replays the crops of its epoch."""
    s = make_set(ipc=2)
    cfg = protocol_config("sre2l_fkd")
    cfg["teacher"] = {**cfg["teacher"], "epochs": 1, "model_kwargs": {"net_width": 8}}
    p = Protocol.from_config({**cfg, "epochs": 4, "seeds": [0], "batch_size": 8})
    reference = _eval(s, p, tmp_path / "ref")
    with monkeypatch.context() as m:
        _kill_at(m, [0], 2)
        with pytest.raises(Killed):
            _eval(s, p, tmp_path)
    calls = _trained_epochs(monkeypatch)
    resumed = _eval(s, p, tmp_path)
    assert calls == [([0], 2)] and resumed["accuracy"] == reference["accuracy"]
    # the loss of the last epoch is the one of that epoch's stored crops
    assert resumed["train_loss_final"] == reference["train_loss_final"]


def test_a_checkpoint_of_another_evaluation_is_ignored(
    make_set, tmp_path, monkeypatch, one_thread, caplog
):
    s, other = make_set(ipc=3), make_set(ipc=3)
    other.images = other.images.flip(-1)  # another set: another checksum
    p = _standard(epochs=4, seeds=[0])
    with monkeypatch.context() as m:
        _kill_at(m, [0], 2)
        with pytest.raises(Killed):
            _eval(other, p, tmp_path)
    reference = _eval(s, p, tmp_path / "ref")
    calls = _trained_epochs(monkeypatch)
    with caplog.at_level("WARNING", logger="ddbench"):
        result = _eval(s, p, tmp_path)
    assert "written by another evaluation" in caplog.text
    assert calls == [([0], 0)] and result["accuracy"] == reference["accuracy"]


def test_a_checkpoint_after_the_last_epoch_skips_the_training(
    make_set, tmp_path, monkeypatch, one_thread
):
    """Killed between the end of a seed's training and its score: nothing is retrained."""
    s = make_set(ipc=2)
    p = _standard(epochs=3, seeds=[0])
    reference = _eval(s, p, tmp_path / "ref")
    real = protocol._save_checkpoint

    def save(path, key, state):
        real(path, key, state)
        if state["group"] == 1:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(protocol, "_save_checkpoint", save)
        with pytest.raises(Killed):
            _eval(s, p, tmp_path)
    steps = []
    monkeypatch.setattr(protocol.engine, "sgd_step", lambda *a: steps.append(1))
    assert _eval(s, p, tmp_path)["accuracy"] == reference["accuracy"] and not steps


def test_the_command_resumes_an_evaluation_killed_with_sigkill(tmp_path):
    """``ddbench evaluate`` under ``standard`` (a tiny budget) killed with SIGKILL while it
    trains its second seed: the rerun resumes it and writes the result.json of an unbroken run."""
    d = tmp_path / "d"
    p = run_cli("distill", "dataset=digits", "ipc=5", "progress=false", f"hydra.run.dir={d}",
                cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    args = ["evaluate", f"synset={d / 'synset.safetensors'}", "protocol=standard",
            "protocol.epochs=300", "protocol.seeds=[0,1]", "model.kwargs.net_width=8",
            "progress=false", "eval_checkpoint_every=1", "eval_checkpoint_seconds=0"]  # fmt: skip
    ref = tmp_path / "ref"
    assert run_cli(*args, f"hydra.run.dir={ref}", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    env = dict(os.environ, DDBENCH_ALLOCATOR="system", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddbench.cli", *args, f"hydra.run.dir={run}"], cwd=tmp_path,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # seed 0 is scored, and seed 1 checkpointed since
                ckpt = (run / "eval_checkpoint.pt").stat().st_mtime_ns
                if ckpt > (run / "result.partial.json").stat().st_mtime_ns:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the evaluation ended before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (run / "result.json").exists()
    again = run_cli(*args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming the evaluation of seed(s) [1]" in again.stderr + again.stdout
    got, want = (json.loads((x / "result.json").read_text()) for x in (run, ref))
    assert got["accuracy"] == want["accuracy"] and got["config_key"] == want["config_key"]
    assert not (run / "eval_checkpoint.pt").exists() and not (run / "result.partial.json").exists()

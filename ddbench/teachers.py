"""Trained teachers: one cache of networks per (dataset, model, recipe, seed), trained once.

A teacher is trained with the core engine on the train split (the val split is held out and
used to check it; the test split is never touched) and stored as
``$DDBENCH_CACHE/teachers/<dataset>/<model>-<key>.safetensors``: the weights plus JSON
metadata (its config, val accuracy after every epoch, training time, versions). ``key`` hashes
everything that changes the weights, so a cache hit is exact and costs no training. Training
checkpoints every epoch next to the file (``.train_state.pt``); a killed training resumes from
there.

Convergence is judged on val only (:func:`not_converged`): a teacher whose best val accuracy
still rose by more than ``tol`` points over its last epochs is reported (a warning when it is
trained or loaded, a line of ``ddbench teacher list``) as not converged.

    ddbench teacher train fashion_mnist [--epochs 5 --model convnet --seed 0]
    ddbench teacher list
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench import data, engine
from ddbench.cache import CachedConfig, cache_root, get_or_train, resume_state
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.provenance import versions
from ddbench.synset import atomic_write, read_header

log = logging.getLogger("ddbench")
SCHEMA = 1
# not_converged's defaults: the last fifth of the epochs may raise the best val accuracy by at
# most this many points
CONVERGED_TOL = 0.5
CONVERGED_LAST = 0.2


@dataclass
class TeacherConfig(CachedConfig):
    """What a teacher is: its network and the recipe it is trained with on the train split."""

    kind = "teacher"

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str = "none"  # none | dsa (the dataset's strategy) | a DSA strategy string
    seed: int = 0


def teacher_path(dataset: str, cfg: TeacherConfig) -> Path:
    return cache_root() / "teachers" / dataset / f"{cfg.model}-{cfg.key(dataset)}.safetensors"


def _build(dataset: str, cfg: TeacherConfig) -> nn.Module:
    spec = data.get_spec(dataset)
    return create_model(
        cfg.model, spec.channels, spec.num_classes, spec.im_size, **cfg.model_kwargs
    )


def load_net(
    path: str | Path, config: type[CachedConfig], build: Any, device: Any = "cpu"
) -> tuple[Any, dict]:
    """A cached network file of ``config.kind`` (``teacher``, ``encoder``): its weights loaded
    into ``build(dataset, cfg)`` (the file's dataset and its ``config`` read back), in eval mode
    on ``device``, and the file's metadata. One clear error for a missing file, a file of
    another kind, or unreadable weights."""
    path, kind = Path(path), config.kind
    meta = read_header(path) if path.exists() else None
    if meta is None or meta.get("kind") != kind:
        raise DDBenchError(f"{path}: not a ddbench {kind} file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DDBenchError(f"{path}: unreadable {kind} file ({e})") from e
    net = build(meta["dataset"], config.from_config(meta["config"]))
    net.load_state_dict(state)
    return net.to(device).eval(), meta


def save_net(path: Path, net: nn.Module, meta: dict) -> None:
    """Store a trained network in the cache as :func:`load_net` reads it: its weights and
    ``meta`` in one safetensors file, written atomically; its training checkpoint
    (``.train_state.pt`` next to it) is removed."""
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(weights, tmp, metadata={"ddbench": json.dumps(meta)}))
    path.with_suffix(".train_state.pt").unlink(missing_ok=True)


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A cached teacher (in eval mode) and its metadata."""
    return load_net(path, TeacherConfig, _build, device)


def get_teacher(
    dataset: str,
    cfg: TeacherConfig,
    *,
    device: torch.device | str = "auto",
    train: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The cached teacher for ``(dataset, cfg)``; trained (or resumed) first if missing."""
    device = engine.pick_device(device) if isinstance(device, str) else device
    path = teacher_path(dataset, cfg)
    net, meta, hit = get_or_train(
        path, cfg.key(dataset), lambda p: load_teacher(p, device),
        lambda: train_teacher(dataset, cfg, device=device, progress=progress), "teacher",
        may_train=train,
        missing=f"no cached teacher for {dataset} {cfg}; run `ddbench teacher train {dataset}`",
    )  # fmt: skip
    if hit:
        log.info("teacher cache hit: %s (val %.2f%%)", path, meta["val_accuracy"])
        _warn_if_not_converged(meta)
    return net, meta


def train_teacher(
    dataset: str, cfg: TeacherConfig, *, device: torch.device, progress: bool = True
) -> tuple[nn.Module, dict]:
    """Train a teacher with the engine, checkpointing every epoch, and store it in the cache."""
    spec = data.get_spec(dataset)
    path = teacher_path(dataset, cfg)
    state_path = path.with_suffix(".train_state.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tr, val = data.load_split(dataset, "train"), data.load_split(dataset, "val")
    strategy = {"none": None, "dsa": spec.dsa_strategy}.get(cfg.augment, cfg.augment)
    recipe = engine.Recipe(
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
        augment=strategy,
    )  # fmt: skip
    resume = resume_state(state_path, "teacher")
    t0 = time.perf_counter()
    before = float((resume or {}).get("seconds", 0.0))
    # val accuracy (%) after each epoch, kept in the checkpoint so that a resumed run has it all
    history = [float(a) for a in (resume or {}).get("val_history", [])]
    probe: list[nn.Module] = []  # a network that loads each epoch's weights to score them

    def save_state(state: dict) -> None:
        if not probe:
            with torch.random.fork_rng(devices=[]):  # its init draws leave the training's alone
                probe.append(_build(dataset, cfg).to(device).eval())
        probe[0].load_state_dict(state["models"][0])
        history.append(engine.accuracy(probe, val.images, val.labels, transform=tr.normalize)[0])
        state["val_history"] = list(history)
        state["seconds"] = before + time.perf_counter() - t0
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    result = engine.train(
        lambda: _build(dataset, cfg), [cfg.seed], tr.normalize(tr.images), tr.labels, recipe,
        device=device, progress=f"teacher {dataset}/{cfg.model}" if progress else False,
        checkpoint=save_state, checkpoint_every=1, resume=resume,
        distributed=False,  # trained by the one process holding the cache lock (see cache.lock)
    )  # fmt: skip
    net = result.models[0]
    val_acc = engine.accuracy([net], val.images, val.labels, transform=tr.normalize)[0]
    meta = {
        "kind": "teacher",
        "schema": SCHEMA,
        "dataset": dataset,
        "key": cfg.key(dataset),
        "config": asdict(cfg),
        "val_accuracy": val_acc,
        "val_history": history,
        "train_seconds": before + time.perf_counter() - t0,
        "final_train_loss": result.losses[-1] if result.losses else None,
        "versions": versions(),
    }
    save_net(path, net, meta)
    log.info("teacher %s: val accuracy %.2f%% -> %s", dataset, val_acc, path)
    _warn_if_not_converged(meta)
    return net.eval(), meta


def not_converged(
    history: list[float], tol: float = CONVERGED_TOL, last: float = CONVERGED_LAST
) -> str | None:
    """Why a teacher with val accuracies ``history`` (%, one per epoch) is not converged, or None.

    Not converged: the best val accuracy of its last ``last`` fraction of epochs (at least one)
    exceeds the best of the epochs before them by more than ``tol`` points, or it has fewer than
    two epochs to compare.
    """
    if tol < 0 or not 0 < last < 1:
        raise DDBenchError(f"convergence check needs tol >= 0 and 0 < last < 1, got {tol}, {last}")
    n = len(history)
    if n < 2:
        return f"{n} epoch(s) of val accuracy, too few to judge"
    k = min(n - 1, max(1, round(n * last)))
    gain = max(history[-k:]) - max(history[:-k])
    if gain > tol:
        return (
            f"best val accuracy rose {gain:.2f} points in the last {k} of {n} epochs "
            f"(> {tol}); train it longer"
        )
    return None


def convergence(meta: dict, tol: float = CONVERGED_TOL, last: float = CONVERGED_LAST) -> str:
    """``converged``, ``not converged: <why>``, or ``unknown`` (a teacher stored without its val
    history, or with one that misses epochs) for a teacher's metadata."""
    history, epochs = meta.get("val_history"), meta.get("config", {}).get("epochs")
    if history is None:
        return "unknown (no val history stored)"
    if len(history) != epochs:
        return f"unknown (val history covers {len(history)} of {epochs} epochs)"
    why = not_converged(history, tol, last)
    return "converged" if why is None else f"not converged: {why}"


def _warn_if_not_converged(meta: dict) -> None:
    verdict = convergence(meta)
    if verdict.startswith("not converged: "):
        log.warning(
            "teacher not converged on val: %s (%s)", verdict.removeprefix("not converged: "),
            meta["dataset"],
        )  # fmt: skip


def list_teachers() -> list[dict]:
    """Metadata of every cached teacher (with its ``path``)."""
    out = []
    for f in sorted((cache_root() / "teachers").glob("*/*.safetensors")):
        try:
            meta = read_header(f)
        except DDBenchError:
            continue
        if meta.get("kind") == "teacher":
            out.append({**meta, "path": str(f)})
    return out

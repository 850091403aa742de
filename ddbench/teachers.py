"""Trained teachers: one cache of networks per (dataset, model, recipe, seed), trained once.

A teacher is trained with the core engine on the train split (the val split is held out and
used to check it; the test split is never touched) and stored as
``$DDBENCH_CACHE/teachers/<dataset>/<model>-<key>.safetensors``: the weights plus JSON
metadata (its config, val accuracy, training time, versions). ``key`` hashes everything that
changes the weights, so a cache hit is exact and costs no training. Training checkpoints every
epoch next to the file (``.train_state.pt``); a killed training resumes from there.

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
from ddbench.cache import CachedConfig, cache_root, lock
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.provenance import versions
from ddbench.synset import atomic_write, read_header

log = logging.getLogger("ddbench")
SCHEMA = 1


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


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A cached teacher (in eval mode) and its metadata."""
    path = Path(path)
    meta = read_header(path) if path.exists() else None
    if meta is None or meta.get("kind") != "teacher":
        raise DDBenchError(f"{path}: not a ddbench teacher file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DDBenchError(f"{path}: unreadable teacher file ({e})") from e
    net = _build(meta["dataset"], TeacherConfig.from_config(meta["config"]))
    net.load_state_dict(state)
    return net.to(device).eval(), meta


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
    if path.exists():
        try:
            net, meta = load_teacher(path, device)
            if meta.get("key") == cfg.key(dataset):
                log.info("teacher cache hit: %s (val %.2f%%)", path, meta["val_accuracy"])
                return net, meta
        except DDBenchError as e:
            log.warning("retraining teacher: %s", e)
    if not train:
        raise DDBenchError(
            f"no cached teacher for {dataset} {cfg}; run `ddbench teacher train {dataset}`"
        )
    # Parallel jobs of a sweep may all miss at once: one trains, the others wait for it.
    with lock(path.with_suffix(".lock"), "this teacher"):
        if path.exists():
            return get_teacher(dataset, cfg, device=device, train=False)
        return train_teacher(dataset, cfg, device=device, progress=progress)


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
    resume = None
    if state_path.exists():
        try:
            resume = torch.load(state_path, weights_only=True)
            log.info("resuming teacher training from epoch %d (%s)", resume["epoch"], state_path)
        except Exception as e:  # a damaged checkpoint must not block a fresh start
            log.warning("ignoring unreadable teacher checkpoint %s (%s)", state_path, e)

    t0 = time.perf_counter()
    before = float((resume or {}).get("seconds", 0.0))

    def save_state(state: dict) -> None:
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
        "train_seconds": before + time.perf_counter() - t0,
        "final_train_loss": result.losses[-1] if result.losses else None,
        "versions": versions(),
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(weights, tmp, metadata={"ddbench": json.dumps(meta)}))
    state_path.unlink(missing_ok=True)
    log.info("teacher %s: val accuracy %.2f%% -> %s", dataset, val_acc, path)
    return net.eval(), meta


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

"""The on-disk cache shared by trained teachers, encoders and expert trajectories: its root, a
lock, the fetch-or-train of a cached network and the read of its training checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ddbench.errors import DDBenchError

log = logging.getLogger("ddbench")


def cache_root() -> Path:
    """``$DDBENCH_CACHE``, else ``$XDG_CACHE_HOME/ddbench/cache`` (default ``~/.cache``)."""
    if os.environ.get("DDBENCH_CACHE"):
        return Path(os.environ["DDBENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "ddbench" / "cache"


@contextlib.contextmanager
def lock(path: Path, what: str = "this entry"):
    """An exclusive lock on ``path`` across processes (advisory ``flock``); ``what`` names the
    guarded work in the log line of a process that has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is working on %s; waiting for it (%s)", what, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def get_or_train(
    path: Path,
    key: str,
    load: Callable[[Path], tuple[Any, dict]],
    train: Callable[[], tuple[Any, dict]],
    what: str,
    *,
    may_train: bool = True,
    missing: str = "",
) -> tuple[Any, dict, bool]:
    """The ``what`` (``teacher``, ``encoder``) cached at ``path``, or the one ``train()`` makes
    and stores there: ``(value, meta, hit)``. ``load(path)`` gives ``(value, meta)``; the file
    counts only when ``meta["key"]`` is ``key``, and one that fails to load is retrained (a
    warning). Parallel jobs that all miss train once: one trains under ``path``'s lock, the
    others wait for it and load its file. ``may_train=False``: the error ``missing`` instead of
    training."""
    if path.exists():
        try:
            value, meta = load(path)
            if meta.get("key") == key:
                return value, meta, True
        except DDBenchError as e:
            log.warning("retraining %s: %s", what, e)
    if not may_train:
        raise DDBenchError(missing or f"no cached {what} at {path}")
    with lock(path.with_suffix(".lock"), f"this {what}"):
        if path.exists():  # trained by the process this one waited for
            return get_or_train(path, key, load, train, what, may_train=False, missing=missing)
        value, meta = train()
        return value, meta, False


def resume_state(
    path: Path, what: str, restore: Callable[[dict], None] | None = None
) -> dict | None:
    """The engine state of ``what``'s training checkpointed at ``path``, to resume from, after
    ``restore(state)`` took what the caller keeps in it; None when there is none, or when it or
    ``restore`` fails (a warning: a damaged checkpoint must not block a fresh start)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
        if restore is not None:
            restore(state)
        log.info("resuming %s training from epoch %d (%s)", what, state["epoch"], path)
        return state
    except Exception as e:
        log.warning("ignoring unreadable %s checkpoint %s (%s)", what, path, e)
        return None


class CachedConfig:
    """Mixin of the dataclass configs of cached artefacts (teachers, experts): strict
    construction from a config node and a key hashing the dataset and every field."""

    kind = "cached"
    # fields added after entries were cached: hashed only when not at their default, so the
    # entries cached before them keep their keys
    _HASHED_IF_SET: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None):
        cfg = dict(cfg or {})
        extra = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if extra:
            raise DDBenchError(f"{cls.kind} config has unknown keys {extra}")
        return cls(**cfg)

    def key(self, dataset: str) -> str:
        fields = asdict(self)
        for name in self._HASHED_IF_SET:
            if fields[name] == self.__dataclass_fields__[name].default:
                del fields[name]
        canon = json.dumps({"dataset": dataset, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

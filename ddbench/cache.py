"""The on-disk cache shared by trained teachers and expert trajectories: its root and a lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

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

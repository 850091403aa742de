"""The method interface: a small base class, the task it receives, and the checkpointer.

A method is a class configured by a Hydra node (``_target_``) with one entry point,
``distill(task) -> SyntheticSet``. Everything a method may use comes with the task; shared
machinery (training engine, models, DSA) is requested from the core, never copied.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddbench.data import DatasetSpec, RealDataset
from ddbench.errors import DDBenchError
from ddbench.provenance import peak_memory_bytes
from ddbench.synset import SyntheticSet, atomic_write


class Checkpointer:
    """Saves a method's state (tensors + JSON) atomically; a restarted run resumes from it.

    A checkpoint is tied to a key (the hash of the run's config): one written by a different
    configuration is never resumed from.
    """

    def __init__(self, directory: str | Path | None, key: str = "", every: int = 0):
        self.dir = Path(directory) if directory else None
        self.key = key
        self.every = every

    @property
    def path(self) -> Path | None:
        return None if self.dir is None else self.dir / "checkpoint.safetensors"

    def due(self, step: int) -> bool:
        return self.dir is not None and self.every > 0 and step % self.every == 0

    def save(
        self, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any] | None = None
    ) -> None:
        if self.path is None:
            return
        from safetensors.torch import save_file

        meta = {"step": str(step), "key": self.key, "state": json.dumps(state or {})}
        t = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(self.path, lambda tmp: save_file(t, tmp, metadata=meta))

    def load(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(step, tensors, state)`` of the last checkpoint of this config, or None."""
        if self.path is None or not self.path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key:
                    logging.getLogger("ddbench").warning(
                        "ignoring %s: written by another config", self.path
                    )
                    return None
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a damaged checkpoint must not block a fresh start
            logging.getLogger("ddbench").warning(
                "ignoring unreadable checkpoint %s (%s)", self.path, e
            )
            return None
        return int(meta["step"]), tensors, json.loads(meta.get("state", "{}"))

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


@dataclass
class Task:
    """Everything a method may use to make a set."""

    train: RealDataset
    ipc: int
    model_factory: Callable[[], nn.Module]
    generator: torch.Generator
    seed: int
    device: torch.device
    augment: Any = None  # a ddbench.augment.DSA with the dataset's strategy
    logger: Any = None  # ddbench.tracking.Tracker
    checkpointer: Checkpointer = field(default_factory=lambda: Checkpointer(None))
    precision: str = "fp32"
    val_loader: Callable[[], RealDataset] | None = None

    @property
    def spec(self) -> DatasetSpec:
        return self.train.spec

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @cached_property
    def val(self) -> RealDataset:
        """The validation split (for tuning or early stopping; never the test split)."""
        if self.val_loader is None:
            raise DDBenchError("this task has no validation split")
        return self.val_loader()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.train.normalize(x)

    def real_images(self, c: int | None = None, n: int | None = None) -> torch.Tensor:
        """Normalised float images of class ``c`` (all classes if None) on the task's device,
        ``n`` of them drawn at random (all if None)."""
        idx = torch.arange(len(self.train)) if c is None else self.train.indices_of(c)
        if n is not None:
            idx = idx[torch.randperm(len(idx), generator=self.generator)[:n]]
        return self.normalize(self.train.images[idx].to(self.device))

    def progress(self, it: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, disable=None, leave=False)

    def make_set(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        method: Method,
        lr: torch.Tensor | None = None,
        protocol: str = "standard",
        **extra: Any,
    ) -> SyntheticSet:
        """Wrap tensors in a :class:`SyntheticSet` with the metadata every set carries."""
        spec = self.spec
        meta = {
            "dataset": spec.name,
            "classes": list(spec.classes),
            "num_classes": spec.num_classes,
            "image_shape": list(spec.shape),
            "space": self.train.space(),  # normalised, ZCA-whitened if the task's data is
            "ipc": self.ipc,
            "method": {"name": method.name, "config": method.config},
            "seed": self.seed,
            "protocol": protocol,
            **extra,
        }
        return SyntheticSet(
            images.detach().float().cpu(), labels.detach().cpu(), meta, lr, zca=self.train.zca
        )


class Method:
    """Base class of all methods. Subclasses set ``name`` and implement :meth:`distill`.

    Constructor keyword arguments are the method's Hydra config (recorded in the set).
    """

    name: str = "method"

    def __init__(self, **config: Any):
        self.config: dict[str, Any] = dict(config)

    def distill(self, task: Task) -> SyntheticSet:
        raise NotImplementedError


def build_method(method_cfg: dict[str, Any]) -> Method:
    """The :class:`Method` a resolved ``method`` config node describes (``_target_`` + its
    keyword arguments), with the node recorded as its ``config`` (what a set and a cache key see).
    """
    from hydra.utils import get_object, instantiate

    if "_target_" not in method_cfg:
        raise DDBenchError(f"method config {method_cfg.get('name')!r} has no _target_")
    try:
        target = get_object(method_cfg["_target_"])
    except Exception as e:
        raise DDBenchError(f"cannot import method {method_cfg['_target_']!r}: {e}") from e
    if not (isinstance(target, type) and issubclass(target, Method)):
        raise DDBenchError(f"{method_cfg['_target_']} is not a ddbench.method.Method subclass")
    try:
        method = instantiate(method_cfg, _convert_="all")
    except Exception as e:
        raise DDBenchError(
            f"could not build method {method_cfg.get('name')!r} from {method_cfg['_target_']}: {e}"
        ) from e
    method.name = method_cfg.get("name", method.name)
    method.config = method_cfg  # the full node (_target_ included) is recorded in the set
    return method


def run_distill(method: Method, task: Task) -> SyntheticSet:
    """Call ``method.distill`` and record its cost (wall time, peak memory, device, precision)
    in the set."""
    if task.ipc is not None and task.ipc < 1:
        raise DDBenchError(f"ipc must be >= 1, got {task.ipc}")
    t0 = time.perf_counter()
    synset = method.distill(task)
    if not isinstance(synset, SyntheticSet):
        raise DDBenchError(
            f"method {method.name!r} returned {type(synset).__name__}, not a SyntheticSet"
        )
    # a resumed run also counts the time its interrupted runs spent (recorded by the method)
    before = float((synset.meta.get("distillation") or {}).get("seconds_before_resume") or 0.0)
    synset.meta["cost"] = {
        "wall_seconds": time.perf_counter() - t0 + before,
        "resumed_seconds": before,
        "peak_memory_bytes": peak_memory_bytes(task.device),
        "device": task.device.type,
        "precision": task.precision,  # bf16 autocast changes the numbers, not only the time
    }
    return synset

"""The graph track's jobs: ``ddbench run|distill|evaluate`` on a graph dataset or a graph set.

``ddbench.cli`` hands a job here when :func:`ddbench.graphs.handles` says the config is a graph
one; everything else (Hydra composition, sweeps, the run directory, the tracker) is the image
track's. The distilled set is ``synset.safetensors`` (a graph set) in the run directory, reused
when it was made by the same config; ``result.json`` is skipped when it already holds this
config's result.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ddbench.errors import DDBenchError
from ddbench.graphs import data as gdata
from ddbench.graphs import format as gformat
from ddbench.graphs.format import GraphSet
from ddbench.graphs.models import CONVS
from ddbench.graphs.protocol import GraphProtocol, evaluate

log = logging.getLogger("ddbench")

_DISTILL_KEYS = ("dataset", "method", "ipc", "seed")
_RUN_KEYS = (*_DISTILL_KEYS, "graph_protocol", "model", "eval_split")


@dataclass
class GraphTask:
    """Everything a graph method may use to make a set."""

    train: GraphSet
    ipc: int
    seed: int
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    val_loader: Any = None
    logger: Any = None

    @cached_property
    def val(self) -> GraphSet:
        if self.val_loader is None:
            raise DDBenchError("this task has no validation split")
        return self.val_loader()

    def log(self, message: str) -> None:
        log.info("%s", message)

    def make_set(self, s: GraphSet, *, method: Any, **extra: Any) -> GraphSet:
        """``s`` with the metadata every graph set carries."""
        meta = {
            **{k: v for k, v in self.train.meta.items() if k in ("dataset", "classes", "tu")},
            "num_classes": self.train.num_classes,
            "ipc": self.ipc,
            "method": {"name": method.name, "config": method.config},
            "seed": self.seed,
            "protocol": "gnn",
            **extra,
        }
        s.meta = meta
        return s


def run_distill(method: Any, task: GraphTask) -> GraphSet:
    """``method.distill(task)`` with its cost recorded in the set."""
    t0 = time.perf_counter()
    s = method.distill(task)
    if not isinstance(s, GraphSet):
        raise DDBenchError(f"method {method.name!r} returned {type(s).__name__}, not a GraphSet")
    s.meta["cost"] = {"wall_seconds": time.perf_counter() - t0, "device": task.device.type}
    return s


def dataset_name(ds: Any) -> str:
    """Register the config's dataset if it is a TU folder; its name."""
    if ds.get("kind") == "graph" and ds.get("root"):
        gdata.register_tu(str(ds.tu_name), str(ds.root))
        return str(ds.tu_name)
    return str(ds.name)


def load_split(name: str, split: str) -> GraphSet:
    s = gdata.load_graph_split(name, split)
    if name in gdata.TU_ROOTS:
        s.meta["tu"] = {"name": name, "root": gdata.TU_ROOTS[name]}
    return s


def pinned_protocol(name: str) -> GraphProtocol | None:
    """``conf/graph_protocol/<name>.yaml`` as shipped, or None."""
    f = importlib.resources.files("ddbench.conf") / "graph_protocol" / f"{name}.yaml"
    if "/" in name or not f.is_file():
        return None
    return GraphProtocol.from_config(OmegaConf.to_container(OmegaConf.load(str(f))))


def protocol_of(cfg: Any) -> GraphProtocol:
    node = cfg.get("graph_protocol")
    if node is None:
        return GraphProtocol()
    p = GraphProtocol.from_config(OmegaConf.to_container(node, resolve=True))
    pinned = pinned_protocol(p.name)
    if pinned is None or pinned.hash != p.hash:
        log.warning("graph protocol %r differs from the pinned recipe: not comparable", p.name)
        p.comparable = False
    return p


def distill(cfg: Any, run_dir: Path) -> tuple[GraphSet, Path]:
    from ddbench.cli import config_key, reusable_set
    from ddbench.engine import pick_device
    from ddbench.method import build_method

    name = dataset_name(cfg.dataset)
    method = build_method(OmegaConf.to_container(cfg.method, resolve=True))
    if getattr(method, "kind", "image") != "graph":
        raise DDBenchError(
            f"method {method.name!r} distils images; graph datasets take mirage, graph_random "
            "or graph_full"
        )
    key = config_key(cfg, _DISTILL_KEYS)
    out = run_dir / "synset.safetensors"
    s = reusable_set(out, key, gformat.load, cfg.force)
    if s is not None:
        return s, out
    task = GraphTask(
        train=load_split(name, "train"),
        ipc=int(cfg.ipc),
        seed=int(cfg.seed),
        generator=torch.Generator().manual_seed(int(cfg.seed)),
        device=pick_device(cfg.device),
        val_loader=lambda: load_split(name, "val"),
    )
    if task.ipc < 1:
        raise DDBenchError(f"ipc must be >= 1, got {task.ipc}")
    torch.manual_seed(int(cfg.seed))
    s = run_distill(method, task)
    s.meta["config_key"] = key
    s.meta["distill_config"] = {"ipc": task.ipc}  # the run's ipc; meta["ipc"] is the set's own
    gformat.save(s, out)
    log.info("saved %s (%d graphs, %d bytes, %.1fs)", out, len(s), s.nbytes(),
             s.meta["cost"]["wall_seconds"])  # fmt: skip
    return s, out


def score(cfg: Any, s: GraphSet, path: Path, run_dir: Path, tracker: Any) -> dict:
    from ddbench.cli import _eval_split, config_key
    from ddbench.engine import pick_device
    from ddbench.protocol import write_result

    protocol = protocol_of(cfg)
    model = str(cfg.model.name) if cfg.get("model") and cfg.model.name in CONVS else None
    if model is None:
        log.info("model %s is not a GNN: the graph protocol's %s", cfg.model.name, protocol.model)
    split = _eval_split(cfg)
    name = s.meta.get("dataset")
    tu = s.meta.get("tu")
    if tu and not gdata.is_graph_dataset(name):
        gdata.register_tu(tu["name"], tu["root"])
    test = load_split(name, split)
    s.meta["_path"] = str(path)
    result = evaluate(s, protocol, test, model, device=pick_device(cfg.device), split=split)
    result["config_key"] = config_key(cfg, _RUN_KEYS)
    write_result(result, run_dir / "result.json")
    tracker.result(result)
    acc = result["accuracy"]
    note = "" if protocol.comparable else "  [protocol not comparable]"
    if split != "test":
        note += "  [VAL split: a tuning score, not a test result]"
    print(f"{'VAL ' if split != 'test' else ''}{result['method']} {name} graphs={len(s)} "
          f"{protocol.name}/{result['model']}: {acc['mean']:.2f} +- {acc['std']:.2f} %{note}"
          f"  -> {run_dir / 'result.json'}")  # fmt: skip
    return result


def _done(cfg: Any, run_dir: Path, sha: str | None = None) -> dict | None:
    import json

    from ddbench.cli import config_key

    f = run_dir / "result.json"
    if cfg.force or not f.exists():
        return None
    try:
        r = json.loads(f.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if r.get("config_key") != config_key(cfg, _RUN_KEYS):
        return None
    if sha is not None and (r.get("synset") or {}).get("sha256") != sha:
        return None
    return r


def run_job(job: str, cfg: Any) -> dict | float | None:
    """``job_run``, ``job_distill`` or ``job_evaluate`` for a graph config."""
    from ddbench.cli import _already_done, _eval_split, _run_dir, _tracker

    run_dir = _run_dir()
    if job == "job_evaluate":
        path = Path(cfg.synset)
        s = gformat.load(path)
    else:
        path, s = None, None
    if job != "job_distill":
        done = _done(cfg, run_dir, s.meta.get("sha256") if s is not None else None)
        if done is not None:
            return _already_done(cfg, run_dir, done)
    tracker = _tracker(cfg, run_dir)
    try:
        if s is None:
            s, path = distill(cfg, run_dir)
            if job == "job_distill":
                print(f"saved {path}")
                return None
        result = score(cfg, s, path, run_dir, tracker)
    finally:
        tracker.finish()
    return 100.0 - float(result["accuracy"]["mean"]) if _eval_split(cfg) == "val" else result

"""The pinned graph protocol: train fresh GNNs on a graph set, score them once on the real test
split (or val, for tuning).

Each seed: ``torch.manual_seed(seed)``, a fresh GNN (``model``: gcn, gin or gat;
cross-architecture evaluation is the same protocol with another model), ``steps`` Adam steps on
batches of ``batch_size`` graphs drawn epoch by epoch from a seeded permutation of the set, the
cross-entropy of each graph weighted by the set's ``weights`` (Mirage's frequencies; all 1
without weights, or with ``use_weights: false``) and normalised by the batch's total weight.
The score is the final model's accuracy. A fixed number of steps, not epochs, gives a set of
20 graphs and the full train split the same number of updates.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ddbench.engine import accuracy_summary
from ddbench.errors import DDBenchError
from ddbench.graphs.format import GraphSet
from ddbench.graphs.models import CONVS, POOLS, create_gnn

_NOT_HASHED = ("name", "description", "comparable", "model")


@dataclass
class GraphProtocol:
    name: str = "gnn"
    description: str = ""
    model: str = "gcn"  # reported beside the hash, as for images
    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.001
    weight_decay: float = 0.0005
    hidden: int = 64
    layers: int = 2
    pool: str = "root"
    dropout: float = 0.0
    use_weights: bool = True
    eval_batch_size: int = 512
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    comparable: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GraphProtocol:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(cfg) - known - {"kind"})
        if extra:
            raise DDBenchError(f"graph protocol {cfg.get('name')!r} has unknown keys {extra}")
        p = cls(**{k: list(v) if isinstance(v, list | tuple) else v
                   for k, v in cfg.items() if k != "kind"})  # fmt: skip
        if p.model not in CONVS:
            raise DDBenchError(f"graph protocol: model must be one of {', '.join(CONVS)}")
        if p.pool not in POOLS:
            raise DDBenchError("graph protocol: pool must be root or sum")
        if not p.seeds or min(p.steps, p.batch_size, p.hidden, p.layers) < 1 or p.lr <= 0:
            raise DDBenchError(
                "graph protocol: seeds must be non-empty; steps, batch_size, hidden, layers >= 1"
                " and lr > 0"
            )
        return p

    @property
    def hash(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in _NOT_HASHED}
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def model_kwargs(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "layers": self.layers, "pool": self.pool,
                "dropout": self.dropout}  # fmt: skip


def pinned_defaults_hash() -> str:
    """The hash of the pinned protocol's defaults (the shipped ``conf/graph_protocol/gnn.yaml``
    names the same values)."""
    return GraphProtocol().hash


def accuracy(model: torch.nn.Module, data: GraphSet, device: torch.device, batch: int) -> float:
    from torch_geometric.loader import DataLoader

    model.eval()
    correct = 0
    with torch.no_grad():
        for b in DataLoader(data, batch_size=batch, shuffle=False):
            b = b.to(device)
            correct += int((model(b).argmax(1) == b.y).sum())
    return 100.0 * correct / len(data)


def train_one(
    s: GraphSet, protocol: GraphProtocol, model_name: str, seed: int, device: torch.device,
    num_classes: int,
) -> tuple[torch.nn.Module, float]:  # fmt: skip
    """One fresh GNN trained on ``s`` with ``seed``; returns it and its final training loss."""
    from torch_geometric.data import Batch

    torch.manual_seed(seed)
    model = create_gnn(model_name, s.num_features, num_classes, **protocol.model_kwargs())
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    g = torch.Generator().manual_seed(seed)
    items = [s[i] for i in range(len(s))]
    w = s.weights if (protocol.use_weights and s.weights is not None) else torch.ones(len(s))
    order, pos, loss = torch.randperm(len(s), generator=g), 0, torch.tensor(0.0)
    for _ in range(protocol.steps):
        if pos >= len(order):
            order, pos = torch.randperm(len(s), generator=g), 0
        idx = order[pos : pos + protocol.batch_size]
        pos += protocol.batch_size
        b = Batch.from_data_list([items[i] for i in idx.tolist()]).to(device)
        ce = torch.nn.functional.cross_entropy(model(b), b.y, reduction="none")
        wb = w[idx].to(device)
        loss = (ce * wb).sum() / wb.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, float(loss.detach())


def evaluate(
    s: GraphSet, protocol: GraphProtocol, test: GraphSet, model: str | None = None,
    device: str | torch.device = "cpu", split: str = "test",
) -> dict[str, Any]:  # fmt: skip
    """Train one GNN per seed on ``s``; their final accuracy on ``test`` (a dict like the image
    protocol's result)."""
    device = torch.device(device)
    model = model or protocol.model
    if s.num_features != test.num_features:
        raise DDBenchError(
            f"the set has {s.num_features} node features, the {split} split {test.num_features}"
        )
    num_classes = max(test.num_classes, s.num_classes)
    t0 = time.perf_counter()
    accs, losses = [], []
    for seed in protocol.seeds:
        net, loss = train_one(s, protocol, model, seed, device, num_classes)
        accs.append(accuracy(net, test, device, protocol.eval_batch_size))
        losses.append(loss)
    meta = s.meta
    return {
        "method": (meta.get("method") or {}).get("name"),
        "dataset": meta.get("dataset"),
        "ipc": meta.get("ipc"),
        "kind": "graph",
        "model": model,
        "model_kwargs": protocol.model_kwargs(),
        "split": split,
        "protocol": {
            "name": protocol.name,
            "hash": protocol.hash,
            "comparable": protocol.comparable,
        },  # fmt: skip
        "accuracy": accuracy_summary(protocol.seeds, accs),
        "cost": {
            "distill_seconds": (meta.get("cost") or {}).get("wall_seconds"),
            "eval_seconds": time.perf_counter() - t0,
            "synset_bytes": s.nbytes(),
            "num_graphs": len(s),
            "num_nodes": int(s.x.shape[0]),
        },
        "synset": {"path": meta.get("_path"), "sha256": meta.get("sha256")},
        "device": str(device),
        "train_loss_final": losses[-1],
    }

"""A set of graphs in one safetensors file, in the design of :mod:`ddbench.synset`.

Tensors (graph ``g`` owns nodes ``node_ptr[g]:node_ptr[g+1]`` and edges
``edge_ptr[g]:edge_ptr[g+1]``; edge endpoints are local to their graph):

    x           float32 [N, F]   node features of all graphs, concatenated
    edge_index  int64   [2, E]   directed edges (source, target), local node indices
    node_ptr    int64   [G + 1]  per-graph node offsets (0 first, N last, non-decreasing)
    edge_ptr    int64   [G + 1]  per-graph edge offsets (0 first, E last, non-decreasing)
    labels      int64   [G]      class of each graph
    weights     float32 [G]      optional: a positive weight per graph (Mirage: a frequency)
    roots       uint8   [N]      optional: 1 marks the nodes a root-pooling GNN reads out

The JSON metadata sits in the header under ``ddbench`` (``kind: graph_set``), with the
checksum of the tensors (:func:`ddbench.synset.tensors_sha256`). Every reader checks the file
and the tensors and fails with one :class:`~ddbench.errors.DDBenchError` line on bad input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import ddbench
from ddbench.errors import DDBenchError
from ddbench.synset import atomic_write, read_header, tensors_sha256

KIND = "graph_set"
SCHEMA_VERSION = 1
REQUIRED = ("x", "edge_index", "node_ptr", "edge_ptr", "labels")
OPTIONAL = ("weights", "roots")


@dataclass
class GraphSet(Dataset):
    """Graphs as concatenated tensors plus metadata; item ``i`` is a
    ``torch_geometric.data.Data`` (``x``, ``edge_index``, ``y``, and ``weight`` / ``root`` where
    the set has them), so ``torch_geometric.loader.DataLoader(graph_set)`` batches it."""

    x: torch.Tensor
    edge_index: torch.Tensor
    node_ptr: torch.Tensor
    edge_ptr: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    weights: torch.Tensor | None = None
    roots: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        from torch_geometric.data import Data

        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        n0, n1 = int(self.node_ptr[i]), int(self.node_ptr[i + 1])
        e0, e1 = int(self.edge_ptr[i]), int(self.edge_ptr[i + 1])
        d = Data(x=self.x[n0:n1], edge_index=self.edge_index[:, e0:e1], y=self.labels[i : i + 1])
        if self.weights is not None:
            d.weight = self.weights[i : i + 1]
        if self.roots is not None:
            d.root = self.roots[n0:n1].bool()
        return d

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes") or int(self.labels.max()) + 1)

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def num_nodes(self, i: int) -> int:
        return int(self.node_ptr[i + 1] - self.node_ptr[i])

    def edges(self, i: int) -> torch.Tensor:
        """The local edge index ``[2, E_i]`` of graph ``i``."""
        return self.edge_index[:, int(self.edge_ptr[i]) : int(self.edge_ptr[i + 1])]

    def nodes(self, i: int) -> torch.Tensor:
        """The node features ``[n_i, F]`` of graph ``i``."""
        return self.x[int(self.node_ptr[i]) : int(self.node_ptr[i + 1])]

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {
            "x": self.x.float().contiguous(),
            "edge_index": self.edge_index.long().contiguous(),
            "node_ptr": self.node_ptr.long().contiguous(),
            "edge_ptr": self.edge_ptr.long().contiguous(),
            "labels": self.labels.long().contiguous(),
        }
        if self.weights is not None:
            t["weights"] = self.weights.float().contiguous()
        if self.roots is not None:
            t["roots"] = self.roots.to(torch.uint8).contiguous()
        return t

    def nbytes(self) -> int:
        """Bytes of the tensors as stored (the size a random subset is matched to)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def subset(self, idx: torch.Tensor | list[int], **meta: Any) -> GraphSet:
        """The graphs ``idx`` (in that order) as a new set; ``meta`` updates the metadata."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        xs, es, ns, ms, rs = [], [], [0], [0], []
        for i in idx.tolist():
            xs.append(self.nodes(i))
            es.append(self.edges(i))
            ns.append(ns[-1] + self.num_nodes(i))
            ms.append(ms[-1] + es[-1].shape[1])
            if self.roots is not None:
                rs.append(self.roots[int(self.node_ptr[i]) : int(self.node_ptr[i + 1])])
        return GraphSet(
            x=torch.cat(xs) if xs else self.x[:0],
            edge_index=torch.cat(es, 1) if es else self.edge_index[:, :0],
            node_ptr=torch.tensor(ns),
            edge_ptr=torch.tensor(ms),
            labels=self.labels[idx],
            meta={**self.meta, **meta},
            weights=None if self.weights is None else self.weights[idx],
            roots=None if self.roots is None else (torch.cat(rs) if rs else self.roots[:0]),
        )


def from_graphs(
    graphs: list[tuple[torch.Tensor, torch.Tensor]],
    labels: list[int] | torch.Tensor,
    meta: dict[str, Any] | None = None,
    weights: list[float] | torch.Tensor | None = None,
    roots: list[torch.Tensor] | None = None,
) -> GraphSet:
    """A :class:`GraphSet` from ``(x [n, F], edge_index [2, e])`` pairs (local indices)."""
    ns, es = [0], [0]
    for x, ei in graphs:
        ns.append(ns[-1] + int(x.shape[0]))
        es.append(es[-1] + int(ei.shape[1]))
    feats = graphs[0][0].shape[1] if graphs else 0
    s = GraphSet(
        x=torch.cat([g[0].float() for g in graphs]) if graphs else torch.zeros(0, feats),
        edge_index=(
            torch.cat([g[1].long() for g in graphs], 1) if graphs else torch.zeros(2, 0).long()
        ),
        node_ptr=torch.tensor(ns),
        edge_ptr=torch.tensor(es),
        labels=torch.as_tensor(labels, dtype=torch.long).reshape(-1),
        meta=dict(meta or {}),
        weights=None if weights is None else torch.as_tensor(weights, dtype=torch.float32),
        roots=None if roots is None else torch.cat([r.to(torch.uint8) for r in roots]),
    )
    validate(s, "graphs")
    return s


def validate(s: GraphSet, where: str) -> None:
    """Check shapes, dtypes, offsets, edge endpoints, features, labels, weights and roots."""
    t = s.tensors()
    x, ei, nptr, eptr, y = (t[k] for k in REQUIRED)
    if x.dim() != 2:
        raise DDBenchError(f"{where}: x must be [nodes, features], got shape {tuple(x.shape)}")
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise DDBenchError(f"{where}: edge_index must be [2, edges], got {tuple(ei.shape)}")
    g = y.numel()
    if y.dim() != 1 or g == 0:
        raise DDBenchError(f"{where}: labels must be a non-empty 1-d tensor")
    for name, ptr, total in (("node_ptr", nptr, x.shape[0]), ("edge_ptr", eptr, ei.shape[1])):
        if ptr.dim() != 1 or ptr.numel() != g + 1:
            raise DDBenchError(f"{where}: {name} must hold graphs + 1 = {g + 1} offsets")
        if int(ptr[0]) != 0 or int(ptr[-1]) != total or bool((ptr[1:] < ptr[:-1]).any()):
            raise DDBenchError(
                f"{where}: {name} must rise from 0 to {total} without decreasing (wrong offsets)"
            )
    if bool((nptr[1:] == nptr[:-1]).any()):
        raise DDBenchError(f"{where}: a graph has no nodes (node_ptr repeats an offset)")
    if not bool(torch.isfinite(x).all()):
        raise DDBenchError(f"{where}: node features hold NaN or Inf")
    if ei.numel():
        sizes = (nptr[1:] - nptr[:-1]).repeat_interleave(eptr[1:] - eptr[:-1])
        if bool((ei < 0).any()) or bool((ei >= sizes).any()):
            raise DDBenchError(f"{where}: edge_index points outside its graph's nodes")
    num_classes = s.meta.get("num_classes")
    hi = int(num_classes) if num_classes is not None else None
    if bool((y < 0).any()) or (hi is not None and bool((y >= hi).any())):
        raise DDBenchError(f"{where}: labels outside 0..{(hi or 1) - 1}")
    if "weights" in t:
        w = t["weights"]
        if w.shape != (g,) or not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
            raise DDBenchError(f"{where}: weights must be {g} finite positive numbers")
    if "roots" in t:
        r = t["roots"]
        if r.shape != (x.shape[0],) or bool((r > 1).any()):
            raise DDBenchError(f"{where}: roots must be one 0/1 flag per node")
        per_graph = torch.zeros(g, dtype=torch.long).index_add_(
            0, torch.arange(g).repeat_interleave(nptr[1:] - nptr[:-1]), r.long()
        )
        if bool((per_graph == 0).any()):
            raise DDBenchError(f"{where}: a graph has no root node")


def save(s: GraphSet, path: str | Path) -> Path:
    """Validate and write ``s`` atomically; returns the path."""
    from safetensors.torch import save_file

    validate(s, str(path))
    tensors = s.tensors()
    meta = dict(s.meta)
    meta["kind"] = KIND
    meta.setdefault("schema_version", SCHEMA_VERSION)
    meta.setdefault("ddbench_version", ddbench.__version__)
    meta["num_graphs"] = len(s)
    meta["num_features"] = s.num_features
    meta["sha256"] = tensors_sha256(tensors)
    header = {"ddbench": json.dumps(meta, sort_keys=True, default=str)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    s.meta = meta
    return Path(path)


def is_graph_file(path: str | Path) -> bool:
    """Whether ``path`` is a ddbench file whose metadata says ``kind: graph_set``."""
    try:
        return read_header(path).get("kind") == KIND
    except DDBenchError:
        return False


def load(path: str | Path, *, verify: bool = True) -> GraphSet:
    """Read and check a graph set file (see the module docstring)."""
    from safetensors.torch import load_file

    meta = read_header(path)
    if meta.get("kind") != KIND:
        raise DDBenchError(f"{path} is not a graph set (kind {meta.get('kind')!r})")
    try:
        t = load_file(str(path))
    except Exception as e:
        raise DDBenchError(f"{path} could not be read as safetensors: {e}") from e
    missing = [k for k in REQUIRED if k not in t]
    if missing:
        raise DDBenchError(f"{path} lacks the tensor(s) {missing}")
    unknown = sorted(set(t) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DDBenchError(f"{path} holds unexpected tensors {unknown}")
    dtypes = {"x": torch.float32, "edge_index": torch.int64, "node_ptr": torch.int64}
    dtypes.update(edge_ptr=torch.int64, labels=torch.int64, weights=torch.float32)
    dtypes["roots"] = torch.uint8
    for k, v in t.items():
        if v.dtype != dtypes[k]:
            raise DDBenchError(f"{path}: tensor {k} is {v.dtype}, expected {dtypes[k]}")
    if verify and meta.get("sha256") and tensors_sha256(t) != meta["sha256"]:
        raise DDBenchError(f"{path}: checksum mismatch, the tensors were changed after saving")
    s = GraphSet(meta=meta, **{k: t.get(k) for k in (*REQUIRED, *OPTIONAL)})
    validate(s, str(path))
    return s

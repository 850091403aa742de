"""Mirage (Gupta et al., "Mirage: Model-Agnostic Graph Distillation for Graph Classification",
ICLR 2024), and the graph baselines: a random subset at a byte budget and the whole train split.

An L-layer message-passing GNN embeds node v from v's L-hop computation tree (v, its
neighbours, their neighbours, ... unrolled L levels, a neighbour repeated on every path that
reaches it) and sums the node embeddings, so it sees a graph as the multiset of its nodes' trees.
Mirage therefore

1. gives every node's L-hop computation tree a canonical code, the same for isomorphic trees
   whatever the node order (``ddbench.graphs.trees.TreeCodes``: a node's code is its label and
   the sorted codes of its children, built level by level and interned as integers);
2. turns every training graph into the set of its tree codes (a transaction) and mines, class
   by class, the sets of trees that occur together in at least a fraction ``threshold`` of the
   class's graphs (FP-growth, mlxtend's ``fpgrowth``);
3. drops the tree sets frequent in more than one class, and keeps each remaining one as a graph
   of the class: the disjoint union of its trees, edges pointing from child to parent, the trees'
   roots marked for root pooling, the number of graphs that hold it as its weight;
4. walks the threshold schedule ``thresholds`` (highest first) and keeps the threshold whose set
   scores best on the validation split (a GNN of the pinned graph protocol trained on each
   candidate for ``select_steps`` steps); ties go to the higher threshold, the smaller set.

No GNN is trained to make the trees; the selection in step 4 is the paper's threshold tuning on
validation data. docs/graphs.md says where this follows the authors' code and where the paper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ddbench.errors import DDBenchError
from ddbench.graphs.format import GraphSet, from_graphs
from ddbench.graphs.trees import mine, transactions
from ddbench.method import Method, Settings


def _graph_task(task: Any, method: str) -> Any:
    from ddbench.graphs.run import GraphTask

    if not isinstance(task, GraphTask):
        raise DDBenchError(
            f"{method} distils graph datasets (dataset=motif, digits_graph, mnist_graph, tu), "
            "not images"
        )
    return task


def _nbytes_of(s: GraphSet, i: int) -> int:
    """Bytes graph ``i`` adds to a stored set (nodes, edges, offsets, label, weight, roots)."""
    n, e = s.num_nodes(i), int(s.edge_ptr[i + 1] - s.edge_ptr[i])
    per_node = s.x.shape[1] * 4 + (1 if s.roots is not None else 0)
    return n * per_node + e * 16 + 8 * 3 + (4 if s.weights is not None else 0)


def pattern_sets(
    s: GraphSet,
    hops: int,
    thresholds: list[float],
    max_len: int | None = None,
    max_patterns: int | None = None,
    per_class: int | None = None,
) -> list[tuple[float, GraphSet | None, dict[str, Any]]]:
    """Mirage's set at each threshold of ``thresholds`` in turn: ``(threshold, set, stats)``,
    the set None where no class keeps a pattern. Stops after the first threshold at which a
    class mines more than ``max_patterns`` sets (lower ones would mine more). ``per_class``
    keeps at most that many sets per class, the most frequent."""
    codes, baskets, rows = transactions(s, hops)
    labels = s.labels.tolist()
    num_classes = s.num_classes
    by_class = [[b for b, y in zip(baskets, labels) if y == c] for c in range(num_classes)]
    out = []
    for thr in thresholds:
        mined = [mine(by_class[c], thr, max_len) for c in range(num_classes)]
        seen: dict[frozenset[int], int] = {}
        for m in mined:
            for p in m:
                seen[p] = seen.get(p, 0) + 1
        graphs, ys, ws, roots = [], [], [], []
        for c, m in enumerate(mined):
            # a fixed order: by frequency, then by the patterns' canonical text
            keep = sorted((p for p in m if seen[p] == 1),
                          key=lambda p: (-m[p], sorted(codes.text(k) for k in p)))  # fmt: skip
            keep = keep[:per_class] if per_class else keep
            for p in keep:
                xs, es, rs, base = [], [], [], 0
                for code in sorted(p, key=codes.text):
                    lab, edges = codes.graph(code)
                    xs.append(rows[torch.tensor(lab)])
                    es.extend((a + base, b + base) for a, b in edges)
                    r = torch.zeros(len(lab), dtype=torch.uint8)
                    r[0] = 1
                    rs.append(r)
                    base += len(lab)
                ei = torch.tensor(es, dtype=torch.long).reshape(-1, 2).t()
                graphs.append((torch.cat(xs), ei))
                ys.append(c)
                ws.append(float(m[p]))
                roots.append(torch.cat(rs))
        stats = {
            "threshold": thr,
            "patterns_per_class": [sum(1 for p in m if seen[p] == 1) for m in mined],
            "kept_per_class": [int((torch.tensor(ys) == c).sum()) for c in range(num_classes)],
            "dropped_shared": sum(1 for p, k in seen.items() if k > 1),
        }
        if max_patterns is not None and max(len(m) for m in mined) > max_patterns:
            stats["over_max_patterns"] = True
            out.append((thr, None, stats))
            break
        meta = {"num_classes": num_classes}
        out.append((thr, from_graphs(graphs, ys, meta, ws, roots) if graphs else None, stats))
    return out


# ----------------------------------------------------------------------------- methods


class Mirage(Method):
    """Frequent computation trees per class, with their frequencies (module docstring)."""

    name = "mirage"
    kind = "graph"

    @dataclass
    class Settings(Settings):
        hops: int = 2  # L: the computation trees' depth (the protocol's GNNs have 2 layers)
        # the threshold schedule: minimum support, a fraction of a class's graphs, highest first
        thresholds: list[float] = field(default_factory=lambda: [0.5, 0.4, 0.3, 0.2, 0.1])
        max_len: int = 0  # the most trees in one mined set (0: no limit, as the authors)
        # the schedule stops at the first threshold that mines more sets than this in a class
        max_patterns: int = 20000
        # at most this many sets per class, the most frequent (0: all, as the authors; a cap
        # keeps the classes balanced where one class mines far more sets than another)
        per_class: int = 0
        select_steps: int = 300  # training steps of the validation GNN per candidate threshold

        def __post_init__(self):
            if self.hops < 1:
                raise DDBenchError(f"mirage: hops must be >= 1, got {self.hops}")
            if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
                raise DDBenchError("mirage: thresholds must be fractions in (0, 1]")
            if self.max_len < 0 or self.per_class < 0:
                raise DDBenchError("mirage: max_len and per_class must be >= 0")
            if self.select_steps < 1 or self.max_patterns < 1:
                raise DDBenchError("mirage: select_steps and max_patterns must be >= 1")

    def distill(self, task: Any) -> GraphSet:
        from dataclasses import replace

        from ddbench.graphs.protocol import GraphProtocol, evaluate

        task = _graph_task(task, self.name)
        t0 = time.perf_counter()
        schedule = sorted(set(self.thresholds), reverse=True)
        candidates = pattern_sets(
            task.train,
            self.hops,
            schedule,
            self.max_len or None,
            self.max_patterns,
            self.per_class or None,
        )
        mining_seconds = time.perf_counter() - t0
        usable = [(t, s, st) for t, s, st in candidates
                  if s is not None and len(set(s.labels.tolist())) == task.train.num_classes]  # fmt: skip
        if not usable:
            raise DDBenchError(
                f"mirage: no threshold of {schedule} leaves a pattern in every class; add lower "
                "thresholds (method.thresholds=[...])"
            )
        selection = []
        best = usable[0]
        if len(usable) > 1:
            proto = replace(GraphProtocol(), steps=self.select_steps, seeds=[task.seed])
            best_acc = -1.0
            for cand in usable:
                acc = evaluate(cand[1], proto, task.val, device=task.device, split="val")
                score = acc["accuracy"]["mean"]
                selection.append({"threshold": cand[0], "graphs": len(cand[1]), "val": score})
                task.log(f"mirage threshold {cand[0]}: {len(cand[1])} graphs, val {score:.2f} %")
                if score > best_acc:
                    best, best_acc = cand, score
        thr, s, stats = best
        ipc = int(torch.bincount(s.labels).max())
        return task.make_set(
            s, method=self, ipc=ipc,
            mirage={"hops": self.hops, "threshold": thr, **stats, "selection": selection,
                    "candidates": [c[2] for c in candidates],
                    "mining_seconds": mining_seconds},
        )  # fmt: skip


class GraphRandom(Method):
    """Real training graphs drawn at random, class by class in turn: ``ipc`` per class, or as
    many as fit in ``budget_bytes`` (the bytes of another set, e.g. Mirage's)."""

    name = "graph_random"
    kind = "graph"

    @dataclass
    class Settings(Settings):
        budget_bytes: int = 0  # 0: ipc graphs per class

        def __post_init__(self):
            if self.budget_bytes < 0:
                raise DDBenchError("graph_random: budget_bytes must be >= 0")

    def distill(self, task: Any) -> GraphSet:
        task = _graph_task(task, self.name)
        train = task.train
        perms = []
        for c in range(train.num_classes):
            idx = (train.labels == c).nonzero().flatten()
            perms.append(idx[torch.randperm(len(idx), generator=task.generator)].tolist())
        picked: list[int] = []
        if self.budget_bytes == 0:
            for p in perms:
                picked += p[: task.ipc]
        else:
            used = 16  # the two offset tensors' leading zeros
            full = [False] * len(perms)
            rank = 0
            while not all(full):
                for c, p in enumerate(perms):
                    if full[c] or rank >= len(p):
                        full[c] = True
                        continue
                    cost = _nbytes_of(train, p[rank])
                    if used + cost > self.budget_bytes:
                        full[c] = True
                        continue
                    picked.append(p[rank])
                    used += cost
                rank += 1
        if not picked:
            raise DDBenchError(f"graph_random: budget_bytes={self.budget_bytes} holds no graph")
        s = train.subset(sorted(picked))
        ipc = int(torch.bincount(s.labels).max())
        return task.make_set(s, method=self, ipc=ipc, indices=sorted(picked))


class GraphFull(Method):
    """The whole train split of a graph dataset: the upper bound."""

    name = "graph_full"
    kind = "graph"

    def distill(self, task: Any) -> GraphSet:
        task = _graph_task(task, self.name)
        s = task.train.subset(torch.arange(len(task.train)))
        ipc = int(torch.bincount(s.labels).max())
        return task.make_set(s, method=self, ipc=ipc, full_dataset=True)

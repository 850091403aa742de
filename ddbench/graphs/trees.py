"""Computation trees of graphs and frequent sets of them, for Mirage (``methods/mirage.py``).

An L-hop computation tree of node v is v, its neighbours, their neighbours, ... unrolled L
levels (a neighbour repeated on every path that reaches it). :class:`TreeCodes` gives each tree a
canonical code, the same for isomorphic trees whatever the node order; :func:`transactions`
turns every graph into the set of its trees' codes; :func:`mine` finds the sets of codes held by
a fraction of the graphs (FP-growth, mlxtend's ``fpgrowth``).
"""

from __future__ import annotations

import torch

from ddbench.graphs.format import GraphSet


def node_label_ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, ids)``: the distinct feature rows of ``x`` (sorted) and each node's row index,
    the discrete node label the trees are built from."""
    rows, ids = torch.unique(x, dim=0, return_inverse=True)
    return rows, ids


class TreeCodes:
    """An interning table of computation trees: code ``k`` is ``entries[k] = (label, children)``
    with ``children`` the sorted tuple of the child trees' codes. Two trees get the same code
    exactly when they are isomorphic as labelled rooted trees."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.entries: list[tuple[int, tuple[int, ...]]] = []
        self._text: dict[int, str] = {}

    def intern(self, label: int, children: tuple[int, ...]) -> int:
        key = (label, children)
        code = self.index.get(key)
        if code is None:
            code = self.index[key] = len(self.entries)
            self.entries.append(key)
        return code

    def trees(self, labels: list[int], edge_index: torch.Tensor, hops: int) -> list[int]:
        """The code of each node's ``hops``-hop computation tree in one graph (node labels
        ``labels``, edges read as undirected, a repeated edge counted once)."""
        n = len(labels)
        neighbours: list[set[int]] = [set() for _ in range(n)]
        for a, b in edge_index.t().tolist():
            if a != b:
                neighbours[a].add(b)
                neighbours[b].add(a)
        codes = [self.intern(lab, ()) for lab in labels]
        for _ in range(hops):
            codes = [
                self.intern(labels[v], tuple(sorted(codes[u] for u in neighbours[v])))
                for v in range(n)
            ]
        return codes

    def text(self, code: int) -> str:
        """A canonical string of tree ``code``, independent of the order codes were interned
        in: ``label(child child ...)`` with the children's strings sorted."""
        done = self._text.get(code)
        if done is None:
            label, children = self.entries[code]
            inner = " ".join(sorted(self.text(c) for c in children))
            done = self._text[code] = f"{label}({inner})" if children else str(label)
        return done

    def graph(self, code: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Tree ``code`` as node labels (the root first, then depth first with the children in
        the order of their :meth:`text`) and ``(child, parent)`` edges: the same lists for
        isomorphic trees, whatever the order the codes were interned in."""
        labels: list[int] = []
        edges: list[tuple[int, int]] = []
        stack = [(code, -1)]
        while stack:
            c, parent = stack.pop()
            me = len(labels)
            label, children = self.entries[c]
            labels.append(label)
            if parent >= 0:
                edges.append((me, parent))
            stack.extend((k, me) for k in sorted(children, key=self.text, reverse=True))
        return labels, edges


def transactions(s: GraphSet, hops: int) -> tuple[TreeCodes, list[list[int]], torch.Tensor]:
    """``(codes, per-graph sorted distinct tree codes, feature rows)`` of every graph in ``s``."""
    rows, ids = node_label_ids(s.x)
    codes = TreeCodes()
    out = []
    for i in range(len(s)):
        n0, n1 = int(s.node_ptr[i]), int(s.node_ptr[i + 1])
        out.append(sorted(set(codes.trees(ids[n0:n1].tolist(), s.edges(i), hops))))
    return codes, out, rows


def mine(
    baskets: list[list[int]], threshold: float, max_len: int | None = None
) -> dict[frozenset[int], int]:
    """The sets of items held by at least ``threshold`` (a fraction) of ``baskets``, each with
    the number of baskets holding it (FP-growth)."""
    import pandas as pd
    from mlxtend.frequent_patterns import fpgrowth

    n = len(baskets)
    if n == 0:
        return {}
    need = max(1, int(-(-threshold * n // 1)))  # ceil: held by at least threshold * n baskets
    counts: dict[int, int] = {}
    for b in baskets:
        for item in b:
            counts[item] = counts.get(item, 0) + 1
    items = sorted(k for k, c in counts.items() if c >= need)
    if not items:
        return {}
    col = {k: j for j, k in enumerate(items)}
    table = torch.zeros(n, len(items), dtype=torch.bool)
    for r, b in enumerate(baskets):
        hit = [col[k] for k in b if k in col]
        table[r, hit] = True
    df = pd.DataFrame(table.numpy(), columns=items)
    found = fpgrowth(df, min_support=need / n, use_colnames=True, max_len=max_len)
    out = {}
    for support, itemset in zip(found["support"], found["itemsets"]):
        out[frozenset(int(k) for k in itemset)] = int(round(float(support) * n))
    return out

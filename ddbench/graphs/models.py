"""GCN, GIN and GAT (torch_geometric's layers) for graph classification, registered by name.

Each network is ``layers`` message-passing layers (ReLU after each), a readout that sums node
embeddings per graph, and a linear classifier. ``pool="root"`` sums only the nodes a graph
marks as roots (``data.root``; all nodes when the graph has no marks): a Mirage graph is a
disjoint union of computation trees whose roots carry the trees' embeddings, and on a real graph
every node is the root of its own computation tree, so both are read out the same way.
``pool="sum"`` sums every node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ddbench.errors import DDBenchError


def _gcn(i: int, o: int) -> nn.Module:
    from torch_geometric.nn import GCNConv

    return GCNConv(i, o)


def _gin(i: int, o: int) -> nn.Module:
    from torch_geometric.nn import GINConv

    return GINConv(nn.Sequential(nn.Linear(i, o), nn.ReLU(), nn.Linear(o, o)))


def _gat(i: int, o: int) -> nn.Module:
    from torch_geometric.nn import GATConv

    return GATConv(i, o, heads=4, concat=False)


CONVS: dict[str, Callable[[int, int], nn.Module]] = {"gcn": _gcn, "gin": _gin, "gat": _gat}
POOLS = ("root", "sum")


class GNN(nn.Module):
    """``layers`` convolutions of one kind, a (root) sum readout and a linear classifier."""

    def __init__(
        self, conv: str, in_dim: int, num_classes: int, hidden: int = 64, layers: int = 2,
        pool: str = "root", dropout: float = 0.0,
    ):  # fmt: skip
        super().__init__()
        if conv not in CONVS:
            raise DDBenchError(f"unknown GNN {conv!r}; known: {', '.join(CONVS)}")
        if pool not in POOLS:
            raise DDBenchError(f"unknown pooling {pool!r}; use root or sum")
        if min(in_dim, num_classes, hidden, layers) < 1:
            raise DDBenchError("a GNN needs in_dim, num_classes, hidden and layers >= 1")
        dims = [in_dim] + [hidden] * layers
        self.convs = nn.ModuleList(CONVS[conv](a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden, num_classes)
        self.pool, self.dropout = pool, dropout

    def forward(self, batch) -> torch.Tensor:
        x, ei = batch.x, batch.edge_index
        for conv in self.convs:
            x = torch.relu(conv(x, ei))
        index = batch.batch if batch.batch is not None else x.new_zeros(len(x), dtype=torch.long)
        root = getattr(batch, "root", None)
        if self.pool == "root" and root is not None:
            x = x * root.to(x.dtype)[:, None]
        out = x.new_zeros(int(batch.num_graphs), x.shape[1]).index_add_(0, index, x)
        out = nn.functional.dropout(out, self.dropout, self.training)
        return self.head(out)


def create_gnn(name: str, in_dim: int, num_classes: int, **kwargs) -> GNN:
    """The registered GNN ``name`` (gcn, gin, gat); ``kwargs``: hidden, layers, pool, dropout."""
    if name not in CONVS:
        raise DDBenchError(f"unknown GNN {name!r}; known: {', '.join(CONVS)}")
    try:
        return GNN(name, in_dim, num_classes, **kwargs)
    except TypeError as e:
        raise DDBenchError(f"GNN {name!r}: {e}") from None

"""Graph sets on the leaderboard: what ``ddbench submit`` / ``leaderboard build`` / ``verify``
check for a graph set and its result (``ddbench.leaderboard`` hands graph entries here).

A graph result (``kind: graph``, as :func:`ddbench.graphs.protocol.evaluate` writes it) follows
:data:`GRAPH_SCHEMA`; its protocol must be a pinned graph protocol
(``conf/graph_protocol/<name>.yaml``) with its seeds; what the result claims about its set
(checksum, dataset, ipc, method, graphs, nodes, bytes) is recomputed from the set
(:func:`set_facts`, :func:`claim_errors`); and no graph of the set may copy a test graph that the
train split does not hold (:func:`graph_copies`). Entries are stored as
``submissions/<dataset>/graphs/<protocol>/<method>-<sha12>.json``, one table per graph dataset x
protocol, since graph sets are compared at their bytes rather than at an IPC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddbench.errors import DDBenchError

_NUM, _INT, _STR, _BOOL = "number", "integer", "string", "boolean"

GRAPH_SCHEMA: dict[str, Any] = {
    "method": _STR,
    "dataset": _STR,
    "ipc": _INT,
    "kind": _STR,
    "model": _STR,
    "model_kwargs": "object",
    "?split": _STR,
    "protocol": {"name": _STR, "hash": _STR, "comparable": _BOOL},
    "accuracy": {"mean": _NUM, "std": _NUM, "per_seed": "list"},
    "cost": {
        "distill_seconds": _NUM + "|null",
        "eval_seconds": _NUM,
        "synset_bytes": _INT,
        "num_graphs": _INT,
        "num_nodes": _INT,
    },
    "synset": {"path": _STR + "|null", "sha256": _STR},
    "device": _STR,
    "?train_loss_final": _NUM + "|null",
    "?config_key": _STR,
}
BUDGET = "graphs"  # the board's budget column for graph entries: one table per dataset x protocol
COPY_HOPS = 3  # a set graph is a test copy when its 3-hop tree multiset equals a test graph's


def set_facts(s: Any) -> dict[str, Any]:
    """What a loaded graph set is, recomputed from its tensors."""
    import torch

    meta = s.meta
    method = meta.get("method")
    per_class = torch.bincount(s.labels, minlength=s.num_classes).tolist()
    return {
        "dataset": meta.get("dataset"),
        "ipc": meta.get("ipc"),
        "method": method.get("name") if isinstance(method, dict) else None,
        "full_dataset": bool(meta.get("full_dataset")),
        "num_graphs": len(s),
        "num_nodes": int(s.x.shape[0]),
        "per_class": per_class,
        "bytes": s.nbytes(),
        "sha256": meta.get("sha256"),
    }


def claim_errors(e: dict, facts: dict) -> list[str]:
    """What a graph result or entry claims about its set that the set contradicts."""
    from ddbench.leaderboard import set_errors

    errors = set_errors(e, facts, "graphs")
    want = {"synset_bytes": facts["bytes"], "num_graphs": facts["num_graphs"],
            "num_nodes": facts["num_nodes"]}  # fmt: skip
    for key, value in want.items():
        if e["cost"][key] != value:
            errors.append(f"'cost.{key}' is {e['cost'][key]}, the set's is {value}")
    return errors


def check_protocol(result: dict) -> Any:
    """The result's graph protocol is pinned and unmodified, with its seeds; returns it."""
    from ddbench.board_checks import _BAD_TEXT, check_pinned
    from ddbench.graphs.run import pinned_protocol

    p = result["protocol"]
    proto = None if _BAD_TEXT.search(p["name"]) else pinned_protocol(p["name"])
    if proto is None:
        raise DDBenchError(
            f"graph protocol {p['name']!r:.60} is not pinned (no conf/graph_protocol/<name>.yaml)"
        )
    return check_pinned(result, proto, proto.hash, "graph protocol")


def _signatures(s: Any, hops: int) -> list[tuple[int, ...]]:
    """Per graph, the sorted codes of its nodes' ``hops``-hop computation trees (one shared
    code table, so equal tuples mean graphs no message-passing GNN of ``hops`` layers tells
    apart; isomorphic graphs always have equal tuples)."""
    from ddbench.graphs.trees import TreeCodes

    codes = TreeCodes()
    out = []
    for i in range(len(s)):
        labels = [tuple(r) for r in s.nodes(i).tolist()]
        out.append(tuple(sorted(codes.trees(labels, s.edges(i), hops))))
    return out


def graph_copies(s: Any, test: Any, train: Any, hops: int = COPY_HOPS) -> list[dict[str, int]]:
    """The graphs of ``s`` that copy a graph of the ``test`` split which the ``train`` split
    does not hold: ``{graph, test_graph}`` for each set graph whose node features and
    ``hops``-hop computation trees are those of such a test graph (a copy whatever its node
    order, or a graph no message-passing GNN of ``hops`` layers tells apart from one). A test
    graph equal to a train graph (molecules that differ only in bond orders, say) may be in a
    set, as any train graph may. The three sets' trees are coded in one table."""
    import torch

    from ddbench.graphs.format import GraphSet

    parts = [test, train, s]
    shift = torch.tensor([0] + [int(p.node_ptr[-1]) for p in parts]).cumsum(0)
    eshift = torch.tensor([0] + [int(p.edge_ptr[-1]) for p in parts]).cumsum(0)
    joint = GraphSet(
        x=torch.cat([p.x for p in parts]),
        edge_index=torch.cat([p.edge_index for p in parts], 1),
        node_ptr=torch.cat(
            [test.node_ptr[:1]] + [p.node_ptr[1:] + k for p, k in zip(parts, shift)]
        ),
        edge_ptr=torch.cat(
            [test.edge_ptr[:1]] + [p.edge_ptr[1:] + k for p, k in zip(parts, eshift)]
        ),
        labels=torch.cat([p.labels for p in parts]),
    )
    sig = _signatures(joint, hops)
    in_train = set(sig[len(test) : len(test) + len(train)])
    first: dict[tuple[int, ...], int] = {}
    for j, t in enumerate(sig[: len(test)]):
        if t not in in_train:
            first.setdefault(t, j)
    hits = ((i, first.get(t)) for i, t in enumerate(sig[len(test) + len(train) :]))
    return [{"graph": i, "test_graph": j} for i, j in hits if j is not None]


def dataset_splits(s: Any) -> tuple[Any, Any]:
    """``(test, train)`` of the set's dataset."""
    from ddbench.graphs import data as gdata
    from ddbench.graphs.run import load_split

    name = s.meta.get("dataset")
    tu = s.meta.get("tu")
    if isinstance(tu, dict) and not gdata.is_graph_dataset(str(name)):
        gdata.register_tu(tu["name"], tu["root"])
    return load_split(str(name), "test"), load_split(str(name), "train")


def _copies_message(copies: list[dict[str, int]]) -> str:
    c = copies[0]
    return (f"{len(copies)} graph(s) of the set copy test graphs (graph {c['graph']} is test "
            f"graph {c['test_graph']})")  # fmt: skip


def check_submission(result: dict, result_path: Path, synset_path: Path) -> tuple[Any, dict]:
    """Check a graph result (already read and free of path parts) and its set; returns
    ``(set, checks)`` with ``checks = {"set": facts, "near_copies": {...}}`` (the copies of
    test graphs, :func:`graph_copies`: none, or it raises)."""
    from ddbench.board_checks import schema_errors
    from ddbench.graphs.format import load

    errors = schema_errors(result, GRAPH_SCHEMA)
    if errors:
        raise DDBenchError(
            f"{result_path} does not follow the graph result schema: {'; '.join(errors)}"
        )
    split = result.get("split", "test")
    if split != "test":
        raise DDBenchError(f"{result_path} was scored on the {split!r} split; only test results "
                           "can be submitted")  # fmt: skip
    check_protocol(result)
    s = load(synset_path)
    facts = set_facts(s)
    errors = claim_errors(result, facts)
    if errors:
        raise DDBenchError("; ".join(errors))
    copies = graph_copies(s, *dataset_splits(s))
    if copies:
        raise DDBenchError(_copies_message(copies))
    near = {"copies": copies, "check": "graph_copies", "hops": COPY_HOPS}
    return s, {"set": facts, "near_copies": near}


def verify_entry(
    path: Path, e: dict, set_path: Path, tolerance: float, seeds: list[int] | None,
    steps: int | None, device: str, out: Any = print, tag: str = "",
) -> dict[str, Any]:  # fmt: skip
    """Recheck one graph entry against its set and re-evaluate it under its pinned graph
    protocol; prints one ``OK`` or ``FLAG`` line (``tag`` appended to an OK line) and returns
    the report as ``ddbench.leaderboard.verify`` makes it (``flags`` empty when all holds).
    ``seeds`` / ``steps`` override the protocol for tests only (``leaderboard verify
    --epochs`` sets the steps of a graph protocol)."""
    rep = _verify(path, e, set_path, tolerance, seeds, steps, device)
    from ddbench.board_checks import print_verdict

    print_verdict(path, rep, out, tag)
    return rep


def _verify(
    path: Path, e: dict, set_path: Path, tolerance: float, seeds: list[int] | None,
    steps: int | None, device: str,
) -> dict[str, Any]:  # fmt: skip
    from dataclasses import replace

    from ddbench.board_checks import compare, submitted_scores
    from ddbench.engine import pick_device
    from ddbench.graphs.format import load
    from ddbench.graphs.protocol import evaluate

    override = {k: v for k, v in (("steps", steps), ("seeds", seeds)) if v is not None}
    rep: dict[str, Any] = {"entry": str(path), "flags": [], "override": override or None}
    try:
        proto = check_protocol(e)
        s = load(set_path)
        rep["flags"] += claim_errors(e, set_facts(s))
        if not rep["flags"]:
            test, train = dataset_splits(s)
            copies = graph_copies(s, test, train)
            if copies:
                rep["flags"].append(_copies_message(copies))
    except DDBenchError as err:
        rep["flags"].append(str(err))
    if rep["flags"]:
        return rep
    proto = replace(proto, **override)
    submitted = submitted_scores(e, proto.seeds, rep)
    if submitted is None:
        return rep
    s.meta["_path"] = str(set_path)
    try:
        r = evaluate(s, proto, test, e["model"], device=pick_device(device))
    except DDBenchError as err:
        rep["flags"].append(f"could not re-evaluate: {err}")
        return rep
    compare(rep, submitted, proto.seeds, r["accuracy"]["mean"], tolerance)
    return rep

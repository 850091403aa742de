"""Mirage vs a random subset of equal bytes vs the full train split, on GCN, GIN and GAT.

    python bench/graphs.py --datasets motif digits_graph [--steps 1000] [--seeds 0 1 2]
        [--mirage KEY=VALUE ...] [--out bench/results/graphs] [--time-only]

Per dataset: Mirage distils once (seed 0; its wall time and mining time are recorded), a random
subset of real training graphs is drawn at Mirage's byte size (graph_random, seed 0), and each
set is scored under the graph protocol (conf/graph_protocol/gnn.yaml; ``--steps`` / ``--seeds``
override it, which the JSON records as ``comparable: false``) with every architecture. The time
of training one GCN on the full train split for the protocol's steps is recorded beside
Mirage's distillation time (wall-clock and this process's CPU seconds, the latter less affected
by other jobs on the machine): a gradient-based graph distillation (DosCond, KiDD) trains GNNs on
the full data at least that long. One JSON per dataset in ``--out``; ``--time-only`` skips the
scoring and writes the times alone to ``<dataset>_time.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from ddbench.graphs.data import load_graph_split
from ddbench.graphs.models import CONVS
from ddbench.graphs.protocol import GraphProtocol, evaluate, train_one
from ddbench.graphs.run import GraphTask, pinned_protocol, run_distill
from ddbench.methods.mirage import GraphFull, GraphRandom, Mirage


def bench(
    dataset: str, protocol: GraphProtocol, mirage_kwargs: dict, time_only: bool = False
) -> dict:
    train, test = load_graph_split(dataset, "train"), load_graph_split(dataset, "test")

    def task(seed: int = 0) -> GraphTask:
        return GraphTask(
            train=train, ipc=1, seed=seed, generator=torch.Generator().manual_seed(seed),
            val_loader=lambda: load_graph_split(dataset, "val"),
        )  # fmt: skip

    torch.manual_seed(0)
    c0 = time.process_time()
    mirage = run_distill(Mirage(**mirage_kwargs), task())
    mirage_cpu = time.process_time() - c0
    sets = (
        {}
        if time_only
        else {
            "mirage": mirage,
            "random_equal_bytes": run_distill(GraphRandom(budget_bytes=mirage.nbytes()), task()),
            "full": run_distill(GraphFull(), task()),
        }
    )
    t0, c0 = time.perf_counter(), time.process_time()
    train_one(train, protocol, "gcn", 0, torch.device("cpu"), len(train.meta["classes"]))
    full_train_seconds, full_train_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "dataset": dataset,
        "protocol": {
            "name": protocol.name,
            "hash": protocol.hash,
            "comparable": protocol.comparable,
            "steps": protocol.steps,
            "seeds": protocol.seeds,
        },  # fmt: skip
        "mirage": {k: v for k, v in mirage.meta["mirage"].items() if k != "candidates"},
        "mirage_settings": Mirage(**mirage_kwargs).config,
        "mirage_distill_seconds": mirage.meta["cost"]["wall_seconds"],
        "mirage_distill_cpu_seconds": mirage_cpu,
        "one_gcn_on_full_data_seconds": full_train_seconds,
        "one_gcn_on_full_data_cpu_seconds": full_train_cpu,
        "torch_threads": torch.get_num_threads(),
        "sets": {},
    }
    for name, s in sets.items():
        row = {"graphs": len(s), "bytes": s.nbytes(), "nodes": int(s.x.shape[0])}
        for model in CONVS:
            r = evaluate(s, protocol, test, model)
            row[model] = {"mean": r["accuracy"]["mean"], "std": r["accuracy"]["std"],
                          "per_seed": [p["accuracy"] for p in r["accuracy"]["per_seed"]]}  # fmt: skip
            print(f"{dataset} {name:18s} {model}: {r['accuracy']['mean']:.2f} "
                  f"+- {r['accuracy']['std']:.2f}  ({len(s)} graphs, {s.nbytes()} B)", flush=True)  # fmt: skip
        out["sets"][name] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["motif", "digits_graph"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--mirage", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Mirage settings, e.g. per_class=20 thresholds=[0.3,0.2]")  # fmt: skip
    p.add_argument("--out", default="bench/results/graphs")
    p.add_argument("--time-only", action="store_true", help="time Mirage and one GCN, no scores")
    a = p.parse_args()
    protocol = pinned_protocol("gnn") or GraphProtocol()
    if a.steps is not None:
        protocol = replace(protocol, steps=a.steps, comparable=False)
    if a.seeds is not None:
        protocol = replace(protocol, seeds=a.seeds, comparable=False)
    kwargs = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.mirage)}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for dataset in a.datasets:
        result = bench(dataset, protocol, kwargs, a.time_only)
        path = Path(a.out) / f"{dataset}{'_time' if a.time_only else ''}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

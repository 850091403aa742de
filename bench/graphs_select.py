"""Mirage's settings for a graph dataset, chosen on its validation split only.

    python bench/graphs_select.py --dataset bzr [--per-class 1 2 5 10 0] [--max-len 0 3]
        [--thresholds 0.5 0.4 0.3] [--steps 300] [--out bench/results/graphs/bzr_select.json]

For each ``max_len``, Mirage's tree sets are mined once at every threshold
(``methods/mirage.py`` ``pattern_sets``, ``hops`` 2 as the protocol's GNNs); each set is then cut
to its ``per_class`` most frequent sets per class (0: all), exactly the set
``Mirage(per_class=...)`` makes, and scored by a GCN of the pinned graph protocol trained for
``--steps`` steps (seed 0) on the **validation** split, as Mirage's own threshold selection
does. The best score wins, ties going to the smaller set; a candidate at least as large as the
train split itself (in bytes) is no distillation and is not chosen. The test split is never read. The
JSON lists every candidate's validation score and bytes, and the chosen settings to pass to
``bench/graphs.py --mirage``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from ddbench.graphs.data import load_graph_split
from ddbench.graphs.protocol import GraphProtocol, evaluate
from ddbench.graphs.run import pinned_protocol
from ddbench.methods.mirage import pattern_sets


def capped(s, per_class: int):
    """The first ``per_class`` graphs of each class (``pattern_sets`` orders each class's sets
    by frequency, so this is ``Mirage(per_class=...)``'s set)."""
    if per_class == 0:
        return s
    keep = []
    for c in range(s.num_classes):
        keep += (s.labels == c).nonzero().flatten()[:per_class].tolist()
    return s.subset(sorted(keep))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--per-class", type=int, nargs="+", default=[1, 2, 5, 10, 0])
    p.add_argument("--max-len", type=int, nargs="+", default=[0, 3])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    train, val = load_graph_split(a.dataset, "train"), load_graph_split(a.dataset, "val")
    proto = replace(pinned_protocol("gnn") or GraphProtocol(), steps=a.steps, seeds=[0])
    rows = []
    for max_len in a.max_len:
        for thr, s, _ in pattern_sets(train, 2, a.thresholds, max_len or None, 20000):
            for per_class in a.per_class:
                if s is None or len(set(s.labels.tolist())) < train.num_classes:
                    continue
                c = capped(s, per_class)
                score = evaluate(c, proto, val, split="val")["accuracy"]["mean"]
                rows.append({"max_len": max_len, "threshold": thr, "per_class": per_class,
                             "graphs": len(c), "bytes": c.nbytes(), "val": score})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    smaller = [r for r in rows if r["bytes"] < train.nbytes()]
    if not smaller:
        raise SystemExit("no candidate is smaller than the train split")
    best = max(smaller, key=lambda r: (r["val"], -r["bytes"]))
    out = {
        "dataset": a.dataset,
        "split": "val",
        "steps": a.steps,
        "train_bytes": train.nbytes(),
        "candidates": rows,
        "chosen": best,
        "mirage_args": [
            f"max_len={best['max_len']}",
            f"per_class={best['per_class']}",
            f"thresholds=[{best['threshold']}]",
        ],  # fmt: skip
    }
    print("chosen:", json.dumps(best))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

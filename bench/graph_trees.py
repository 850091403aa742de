"""How well a graph dataset's computation trees tell its classes apart: the premise of Mirage.

    python bench/graph_trees.py --datasets motif bzr digits_graph [--hops 2] [--threshold 0.5]
        [--out bench/results/graphs/trees.json]

On the train split, every graph is the set of its nodes' ``hops``-hop computation trees
(``ddbench.graphs.trees.transactions``, as Mirage mines them). Per class c and tree t, the
fraction of c's graphs that hold t; a tree *tells c apart* by its gap, that fraction minus the
largest fraction in another class. Reported per dataset: the number of distinct trees, per
class the best gap and how many trees have a gap of at least 0.3, and the mean best gap over
classes. Mirage keeps tree sets frequent in one class and not in the others, so a dataset whose
classes have no tree with a large gap leaves it only sets that do not discriminate. With
``--threshold t``, also Mirage's class-exclusive tree sets at support ``t`` (mined as
``methods/mirage.py`` mines them) and the fraction of the trees in them that are frequent
(support >= ``t``) in another class as well: trees a GNN trained on the sets sees in one class
only, while the real graphs of every class hold them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddbench.graphs.data import load_graph_split
from ddbench.graphs.trees import mine, transactions


def shared_in_sets(baskets: list, labels: list[int], k: int, frac: torch.Tensor, t: float) -> dict:
    """Mirage's class-exclusive sets at support ``t`` and the share of their trees frequent in
    another class too."""
    mined = [mine([b for b, y in zip(baskets, labels) if y == c], t) for c in range(k)]
    seen: dict = {}
    for m in mined:
        for p in m:
            seen[p] = seen.get(p, 0) + 1
    trees = shared = 0
    sets = []
    for c, m in enumerate(mined):
        keep = [p for p in m if seen[p] == 1]
        sets.append(len(keep))
        for p in keep:
            for code in p:
                trees += 1
                shared += int(any(frac[o, code] >= t for o in range(k) if o != c))
    return {"threshold": t, "exclusive_sets_per_class": sets, "trees_in_sets": trees,
            "shared_tree_fraction": shared / trees if trees else None}  # fmt: skip


def tree_gaps(dataset: str, hops: int, threshold: float | None = None) -> dict:
    train = load_graph_split(dataset, "train")
    _, baskets, _ = transactions(train, hops)
    k = train.num_classes
    n_codes = 1 + max(c for b in baskets for c in b)
    held = torch.zeros(k, n_codes)
    for b, y in zip(baskets, train.labels.tolist()):
        held[y, b] += 1
    frac = held / torch.bincount(train.labels, minlength=k)[:, None].clamp(min=1)
    per_class = []
    for c in range(k):
        others = torch.cat([frac[:c], frac[c + 1 :]]).max(0).values
        gap = frac[c] - others
        best = int(gap.argmax())
        per_class.append({"best_gap": float(gap[best]), "best_tree_in_class": float(frac[c, best]),
                          "best_tree_elsewhere": float(others[best]),
                          "trees_gap_0.3": int((gap >= 0.3).sum())})  # fmt: skip
    out = {
        "dataset": dataset,
        "hops": hops,
        "graphs": len(train),
        "distinct_trees": int((held.sum(0) > 0).sum()),
        "mean_best_gap": sum(p["best_gap"] for p in per_class) / k,
        "per_class": per_class,
    }
    if threshold is not None:
        out["mirage_sets"] = shared_in_sets(baskets, train.labels.tolist(), k, frac, threshold)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["motif", "bzr", "digits_graph"])
    p.add_argument("--hops", type=int, default=2)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    for d in a.datasets:
        rows.append(tree_gaps(d, a.hops, a.threshold))
        r = rows[-1]
        print(f"{d}: {r['graphs']} graphs, {r['distinct_trees']} distinct {a.hops}-hop trees, "
              f"mean best gap {r['mean_best_gap']:.2f}, per class "
              f"{[round(c['best_gap'], 2) for c in r['per_class']]}; {r.get('mirage_sets')}",
              flush=True)  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

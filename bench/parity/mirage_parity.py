"""Mirage parity: the authors' NCI1 pipeline (frigategnn/Mirage, patched by
official_mirage_setup.sh) and ddbench's Mirage mine the same train split at the same support;
their class-exclusive pattern sets are compared tree by tree, and both distilled sets are
scored by ddbench's pinned graph protocol. Writes OUT/mirage_<dataset>.json. Run by
bench/parity/mirage.sh (bench/parity/README.md).

Usage: python bench/parity/mirage_parity.py OFFICIAL_CHECKOUT OUT DATASET [--steps N]
    [--official-python PY] [--official-seeds 1,2,...] [--official-epochs N]

Steps, each kept under OUT/work/<dataset>/ and skipped when its output is there (resumable):
1. ddbench's train/val/test splits are written as TU files (graphs in the order test, val,
   train; node label = the one-hot feature's index) for their TUDataset loader.
2. Their script runs with the patched thresholds (ddbench's fraction of each class's train
   graphs, as the absolute count ddbench's ``mine`` uses: ceil(fraction x graphs)), once
   reporting ROC-AUC (their metric) and once accuracy (``--official-metrics``); it writes its
   distilled set as JSON.
3. ddbench's ``pattern_sets`` at that fraction (no limit on set length, all sets per class).
4. Every pattern of both sides becomes the sorted tuple of its trees' canonical strings
   (``TreeCodes.text``'s format, computed from each tree's child -> parent edges and node
   labels), so the two sets are compared as sets of tree sets.
5. Their graphs become a ddbench graph set file (their frequencies as weights, their roots
   marked); both sets are scored by ``ddbench.graphs.protocol.evaluate`` (the pinned ``gnn``
   protocol; GCN, GIN, GAT; seeds 0, 1, 2), and the difference of the means is held to
   max(1.0, 2 standard errors).

Their output is read as JSON (their script's pickle-free dump, edit M7); nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddbench.graphs.data import load_graph_split
from ddbench.graphs.format import GraphSet, from_graphs, load, save
from ddbench.graphs.protocol import GraphProtocol, evaluate
from ddbench.graphs.trees import mine, transactions
from ddbench.methods.mirage import pattern_sets

THRESHOLDS = {"motif": 0.3, "bzr": 0.4}  # the fractions ddbench chose on val (docs/graphs.md)
MODELS = ("gcn", "gin", "gat")
SCRIPT = "NCI1/graph-nci-finalize-reduce-curr.py"


def write_tu(splits: list[GraphSet], folder: Path, name: str) -> None:
    """The graphs of ``splits``, in order, as TU text files in ``folder`` (PyG's raw layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    a, ind, glab, nlab = [], [], [], []
    base = 0
    for s in splits:
        for i in range(len(s)):
            x = s.nodes(i)
            if not bool(((x == 0) | (x == 1)).all()) or not bool((x.sum(1) == 1).all()):
                sys.exit(f"{name}: node features are not one-hot; TU node labels need them")
            nlab += x.argmax(1).tolist()
            a += [(base + u + 1, base + v + 1) for u, v in s.edges(i).t().tolist()]
            ind += [len(glab) + 1] * x.shape[0]
            glab.append(int(s.labels[i]))
            base += x.shape[0]
    for suffix, rows in (("A", [f"{u}, {v}" for u, v in a]), ("graph_indicator", ind),
                         ("graph_labels", glab), ("node_labels", nlab)):  # fmt: skip
        (folder / f"{name}_{suffix}.txt").write_text("\n".join(map(str, rows)) + "\n")


def tree_text(labels: list[int], edges: list[tuple[int, int]], root: int) -> str:
    """The canonical string of the rooted tree (``child -> parent`` edges), in the format of
    ``TreeCodes.text``: ``label(child child ...)``, the children's strings sorted."""
    kids: dict[int, list[int]] = {}
    for c, p in edges:
        kids.setdefault(p, []).append(c)

    def text(v: int) -> str:
        inner = " ".join(sorted(text(c) for c in kids.get(v, [])))
        return f"{labels[v]}({inner})" if inner else str(labels[v])

    return text(root)


def graph_patterns(s: GraphSet) -> list[tuple[int, tuple[str, ...], float]]:
    """``(class, sorted tree strings, weight)`` of every graph of a Mirage-style set: each
    marked root's tree (edges point child -> parent)."""
    out = []
    for i in range(len(s)):
        lab = node_ids(s.nodes(i))
        ei = s.edges(i).t().tolist()
        r = s.roots[int(s.node_ptr[i]) : int(s.node_ptr[i + 1])].nonzero().flatten().tolist()
        trees = tuple(sorted(tree_text(lab, ei, v) for v in r))
        out.append((int(s.labels[i]), trees, float(s.weights[i]) if s.weights is not None else 1))
    return out


ROWS: torch.Tensor | None = None  # the train split's distinct feature rows: ddbench's labels


def node_ids(x: torch.Tensor) -> list[int]:
    """Each node's ddbench label: the index of its feature row among the train split's sorted
    distinct rows (``trees.node_label_ids``)."""
    assert ROWS is not None
    return [int((ROWS == row).all(1).nonzero()[0]) for row in x]


def official_set(dump: dict, train: GraphSet, dataset: str) -> GraphSet:
    """Their graphs (JSON, edit M7) as a ddbench graph set: node label k -> the one-hot row k of
    ddbench's features, their edges and roots, their pattern frequencies as weights."""
    f = train.num_features
    graphs, ys, ws, roots = [], [], [], []
    for g, p in zip(dump["graphs"], dump["patterns"], strict=True):
        k = torch.tensor(g["x"]).reshape(-1)
        graphs.append((torch.nn.functional.one_hot(k, f).float(), torch.tensor(g["edge_index"])))
        ys.append(g["y"])
        ws.append(float(p["freq"]))
        roots.append(torch.tensor(g["roots"]).round().to(torch.uint8))
    meta = {"num_classes": train.num_classes, "dataset": dataset,
            "method": {"name": "mirage_official"}, "classes": train.meta.get("classes")}  # fmt: skip
    return from_graphs(graphs, ys, meta, ws, roots)


def run_official(args, work: Path, thresholds: dict[int, int], metric: str, splits) -> Path:
    """Their patched script, once per metric (resumable: skipped when its results exist)."""
    out = work / f"official_{metric}"
    if (out / "results.jsonl").exists() and (out / "set.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    env = dict(os.environ, MIRAGE_PARITY_ROOT=str(work / "tu"), MIRAGE_PARITY_NAME="DDBENCH",
               MIRAGE_PARITY_NTEST=str(len(splits["test"])),
               MIRAGE_PARITY_NVAL=str(len(splits["val"])),
               MIRAGE_PARITY_THRESHOLDS=json.dumps(thresholds), MIRAGE_PARITY_OUT=str(out),
               MIRAGE_PARITY_METRIC=metric, MPLBACKEND="Agg",
               PYTHONPATH=str(Path(args.official).resolve() / "DD" / "model"))  # fmt: skip
    for key, val in (("SEEDS", args.official_seeds), ("EPOCHS", args.official_epochs)):
        if val:
            env[f"MIRAGE_PARITY_{key}"] = str(val)
    cmd = [args.official_python, str(Path(args.official).resolve() / SCRIPT)]
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as f:
        subprocess.run(cmd, cwd=Path(args.official) / "NCI1", stdout=f, stderr=subprocess.STDOUT,
                       env=env, check=True)  # fmt: skip
    (out / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return out


def summary(scores: list[float]) -> dict:
    a = torch.tensor(scores, dtype=torch.float64)
    return {"mean": a.mean().item(), "std": a.std(unbiased=False).item(), "n": len(scores)}


def bound_of(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(difference b - a of the means, standard error of it, bound max(1, 2 se))."""
    se = math.sqrt(sum(torch.tensor(v, dtype=torch.float64).std().item() ** 2 / len(v)
                       for v in (a, b)))  # fmt: skip
    diff = sum(b) / len(b) - sum(a) / len(a)
    return diff, se, max(1.0, 2 * se)


def main() -> None:
    global ROWS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official", help="a checkout of frigategnn/Mirage (COMMIT file inside)")
    ap.add_argument("out")
    ap.add_argument("dataset", choices=sorted(THRESHOLDS))
    ap.add_argument("--steps", type=int, default=1000, help="ddbench protocol steps (pinned 1000)")
    ap.add_argument("--official-python", default=os.environ.get("MIRAGE_PY", "python3"))
    ap.add_argument("--official-seeds", default="", help="their use_seed (default theirs, 1..10)")
    ap.add_argument("--official-epochs", default="", help="their epochs (default theirs, 301)")
    ap.add_argument(
        "--official-metrics",
        default="auc,accuracy",
        help="their runs: auc (their metric), accuracy (edit M6), or both",
    )
    args = ap.parse_args()
    out = Path(args.out)
    work = out / "work" / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    seconds_file = work / "seconds.json"  # kept across resumed calls
    seconds: dict[str, float] = (
        json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    )
    splits = {k: load_graph_split(args.dataset, k) for k in ("train", "val", "test")}
    train = splits["train"]
    ROWS = torch.unique(train.x, dim=0)
    frac = THRESHOLDS[args.dataset]
    counts = torch.bincount(train.labels, minlength=train.num_classes).tolist()
    need = {c: max(1, math.ceil(frac * n)) for c, n in enumerate(counts)}  # as trees.mine
    tu = work / "tu" / "DDBENCH" / "raw"
    if not (tu / "DDBENCH_A.txt").exists():
        write_tu([splits["test"], splits["val"], train], tu, "DDBENCH")

    # 1. the authors' pipeline (their metric, then accuracy)
    official = {}
    metrics = args.official_metrics.split(",")
    if not metrics or set(metrics) - {"auc", "accuracy"}:
        sys.exit("--official-metrics: auc, accuracy or auc,accuracy")
    for metric in metrics:
        d = run_official(args, work, need, metric, splits)
        seconds[f"official_{metric}"] = float((d / "seconds.txt").read_text())
        official[metric] = [json.loads(line) for line in (d / "results.jsonl").read_text()
                            .splitlines()]  # fmt: skip
    dumps = [json.loads((work / f"official_{m}" / "set.json").read_text()) for m in metrics]
    dump = dumps[0]
    if dump["thresholds"] != [need[c] for c in range(train.num_classes)]:
        sys.exit(f"their run mined at {dump['thresholds']}, not {list(need.values())}")
    if any(d["patterns"] != dump["patterns"] for d in dumps):
        sys.exit("their two runs mined different patterns: their mining is not deterministic")

    # 2. ddbench's Mirage at the same support
    t0 = time.perf_counter()
    ((thr, ours, stats),) = pattern_sets(train, 2, [frac])
    seconds["ddbench_mining"] = time.perf_counter() - t0
    codes, baskets, _ = transactions(train, 2)
    isolated = sum(1 for i in range(len(train))
                   for v in range(train.num_nodes(i))
                   if v not in set(train.edges(i).flatten().tolist()))  # fmt: skip

    # exact supports, from ddbench's transactions (each graph's set of tree strings)
    baskets_text = [{codes.text(k) for k in bk} for bk in baskets]
    ys = train.labels.tolist()
    by_class = [[bk for bk, y in zip(baskets, ys) if y == c] for c in range(train.num_classes)]

    by_text = [[bk for bk, y in zip(baskets_text, ys) if y == c] for c in range(train.num_classes)]

    def support(p: tuple[str, ...], c: int) -> int:
        return sum(1 for bk, y in zip(baskets_text, ys) if y == c and set(p) <= bk)

    def explain(p: tuple[str, ...], c: int, side: str) -> dict:
        """A pattern of class ``c`` only one side keeps: its exact support in every class, and
        where that puts it (frequent in which classes at the thresholds)."""
        sup = [support(p, k) for k in range(train.num_classes)]
        frequent_in = [k for k in range(train.num_classes) if sup[k] >= need[k]]
        return {"kept_by": side, "class": c, "trees": len(p), "support": sup,
                "frequent_in": frequent_in}  # fmt: skip

    # 3. their set in ddbench's file, and both sides' patterns as tree strings
    path = work / "official_set.safetensors"
    if not path.exists():
        save(official_set(dump, train, args.dataset), path)
    theirs = load(path)
    p_ours = graph_patterns(ours)
    p_theirs = graph_patterns(theirs)
    # their trees straight from their dump (node labels, child -> parent edges, root 0)
    p_dump = [(p["class"], tuple(sorted(
        tree_text(node_ids(torch.nn.functional.one_hot(torch.tensor(t["labels"]),
                                                       train.num_features)), t["edges"], 0)
        for t in p["trees"])), float(p["freq"])) for p in dump["patterns"]]  # fmt: skip
    compare = {}
    for c in range(train.num_classes):
        a = {p: w for k, p, w in p_ours if k == c}
        b = {p: w for k, p, w in p_theirs if k == c}
        bd = {p: w for k, p, w in p_dump if k == c}
        both = set(a) & set(b)
        compare[str(c)] = {
            "ddbench": len(a), "official": len(b), "common": len(both),
            "only_ddbench": len(set(a) - set(b)), "only_official": len(set(b) - set(a)),
            "same_frequencies": all(a[p] == b[p] for p in both),
            "official_graphs_match_their_patterns": bd == b,
            "threshold_count": need[c], "train_graphs": counts[c],
            "official_mined_before_exclusion": dump["mined_per_class"].get(str(c)),
            "ddbench_mined_before_exclusion": len(mine(by_class[c], frac)),
            "official_frequencies_exact": all(b[p] == support(p, c) for p in b),
            "differences": [explain(p, c, side) for side, d in (("ddbench", a), ("official", b))
                            for p in sorted(set(d) - set(a if side == "official" else b))],
        }  # fmt: skip
    # the cause of differences: pyfpgrowth (their miner) on ddbench's transactions, in their venv
    replay = work / "pyfpgrowth_on_ddbench_transactions.json"
    if not replay.exists():
        tx = work / "transactions.json"
        tx.write_text(json.dumps({"need": need, "classes": [
            [sorted(bk) for bk, y in zip(baskets_text, ys) if y == c]
            for c in range(train.num_classes)]}))  # fmt: skip
        code = ("import json, sys, pyfpgrowth\n"
                "d = json.load(open(sys.argv[1]))\n"
                "out = [[[list(p), v] for p, v in pyfpgrowth.find_frequent_patterns(\n"
                "    tr, d['need'][str(c)]).items()] for c, tr in enumerate(d['classes'])]\n"
                "json.dump(out, open(sys.argv[2], 'w'))\n")  # fmt: skip
        subprocess.run([args.official_python, "-c", code, str(tx), str(replay)], check=True)
    fp = [{tuple(sorted(p)): v for p, v in cls} for cls in json.loads(replay.read_text())]
    fp_excl = {(c, p, float(v)) for c, m in enumerate(fp) for p, v in m.items()
               if not any(p in fp[k] for k in range(len(fp)) if k != c)}  # fmt: skip
    pyfpgrowth_replay = {
        "mined_per_class": [len(m) for m in fp],
        "frequencies_exact": all(v == support(p, c) for c, m in enumerate(fp)
                                 for p, v in m.items()),
        "same_as_official_set": fp_excl == set(p_theirs),
        "missed_frequent_single_trees_per_class": [
            sum(1 for t in {t for bk in by_text[c] for t in bk}
                if (t,) not in fp[c] and support((t,), c) >= need[c])
            for c in range(train.num_classes)],
    }  # fmt: skip
    trees_ours = {t for _, p, _ in p_ours for t in p}
    trees_theirs = {t for _, p, _ in p_theirs for t in p}

    # 4. both sets under ddbench's pinned protocol
    proto = GraphProtocol(steps=args.steps)
    if args.steps != 1000:
        proto.comparable = False
    cache = work / f"scores_steps{args.steps}.json"
    scores = json.loads(cache.read_text()) if cache.exists() else {}
    for side, s in (("official", theirs), ("ddbench", ours)):
        for m in MODELS:
            key = f"{side}/{m}"
            if key in scores:
                continue
            t0 = time.perf_counter()
            r = evaluate(s, proto, splits["test"], model=m)
            scores[key] = [p["accuracy"] for p in r["accuracy"]["per_seed"]]
            seconds[f"evaluate_{key}"] = time.perf_counter() - t0
            cache.write_text(json.dumps(scores, indent=1) + "\n")
            seconds_file.write_text(json.dumps(seconds, indent=1) + "\n")
    per_model = {}
    for m in MODELS:
        a, b = scores[f"official/{m}"], scores[f"ddbench/{m}"]
        diff, se, bound = bound_of(a, b)
        per_model[m] = {"official": summary(a), "ddbench": summary(b),
                        "difference_ddbench_minus_official": diff, "standard_error": se,
                        "bound": bound, "within_bound": abs(diff) <= bound}  # fmt: skip
    pa = [v for m in MODELS for v in scores[f"official/{m}"]]
    pb = [v for m in MODELS for v in scores[f"ddbench/{m}"]]
    diff, se, bound = bound_of(pa, pb)

    def own(metric):
        rows = {}
        for r in official[metric]:
            rows[r["gnn"]] = {"top5_val_test_mean": 100 * r["top5_val_test_mean"],
                              "top5_val_test_std": 100 * r["top5_val_test_std"],
                              "all_seeds_test_mean": 100 * sum(r["test"]) / len(r["test"]),
                              "seeds": r["seeds"], "test_per_seed": r["test"]}  # fmt: skip
        return rows

    commit = (Path(args.official) / "COMMIT").read_text().strip()
    result = {
        "method": "mirage", "dataset": args.dataset, "hops": 2,
        "threshold_fraction": thr, "threshold_counts": need,
        "patterns": compare,
        "distinct_trees_in_sets": {"ddbench": len(trees_ours), "official": len(trees_theirs),
                                   "common": len(trees_ours & trees_theirs)},
        "pyfpgrowth_on_ddbench_transactions": pyfpgrowth_replay,
        "ddbench_stats": stats,
        "train_isolated_nodes": isolated,
        "distinct_2hop_trees_train": len({k for b in baskets for k in b}),
        "sets": {side: {"graphs": len(s), "nodes": int(s.x.shape[0]), "bytes": s.nbytes()}
                 for side, s in (("official", theirs), ("ddbench", ours))},
        "protocol": {"name": proto.name, "hash": proto.hash, "steps": proto.steps,
                     "seeds": proto.seeds, "comparable": proto.comparable},
        "ddbench_protocol": {"per_model": per_model,
                             "pooled": {"official": summary(pa), "ddbench": summary(pb),
                                        "difference_ddbench_minus_official": diff,
                                        "standard_error": se, "bound": bound,
                                        "within_bound": abs(diff) <= bound}},
        "official_own_evaluation": {
            "epochs": int(args.official_epochs or 301),
            "seeds": args.official_seeds or "1,2,3,4,5,6,7,8,9,10",
            "procedure": "their script: per seed the test score at the best-val epoch of "
                         "301 (or --official-epochs), the mean/std over the 5 seeds best on "
                         "val; GNN width 128, 2 layers, dropout 0.5, Adam lr 1e-3 weight "
                         "decay 1e2, batch 500, unweighted",
            **{("roc_auc" if m == "auc" else m): own(m) for m in metrics}},
        "official_repo": "frigategnn/Mirage", "official_commit": commit,
        "official_script": SCRIPT,
        "official_edits": "bench/parity/official_mirage_setup.sh (M1-M8)",
        "data": "ddbench's train, val and test splits on both sides (TU files, order test, val, "
                "train)",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), OMP_NUM_THREADS=1",
        "torch": torch.__version__,
        "commands": {"this": shlex.join([sys.executable, *sys.argv]),
                     "official": shlex.join([args.official_python, SCRIPT])},
        "seconds": seconds,
    }  # fmt: skip
    path = out / f"mirage_{args.dataset}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{path}: patterns {compare}; ddbench protocol official "
        f"{summary(pa)['mean']:.2f}, ddbench {summary(pb)['mean']:.2f}, diff {diff:+.2f} "
        f"(bound {bound:.2f})"
    )


if __name__ == "__main__":
    main()

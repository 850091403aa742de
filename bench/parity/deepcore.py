"""Selection parity: ddbench's coreset baselines against DeepCore's selection on the same inputs.

Per dataset, ddbench computes the per-image inputs once (herding/k-center features, forgetting
counts, EL2N and GraNd scores, on its ``train`` split, with a stated scoring budget); then, at
each IPC, ddbench's selection (``Method.select``) and DeepCore's routine (imported from a
DeepCore checkout through ``sys.path``, never copied) pick from the same inputs, and the JSON
reports the overlap of the chosen train indices per method, the cause of each difference, and
the check of that cause (the differing rule switched to ddbench's must give the same indices).
EL2N is not in DeepCore: its picks are compared with data_diet's ``subset_train_idxs_by_scores``
(Paul et al.'s code) when a data_diet checkout is given.

Also checked on the same training run or networks: DeepCore's forgetting counter
(``Forgetting.after_loss``) against ddbench's (``count: batch``), and DeepCore's GraNd score
(``GraNd.finish_run``) against ddbench's ``gradient: last_layer``.

The index lists of both sides are written to ``OUT/indices/``; ``--evaluate`` imports the
differing pairs with ``ddbench import indices`` and scores them with ``ddbench evaluate``.

Usage: python bench/parity/deepcore.py DEEPCORE_CHECKOUT OUT [--data-diet CHECKOUT]
  [--datasets mnist,fashion_mnist] [--ipcs 1,10] [--seed 0] [--scoring cheap|paper]
  [--evaluate] [--eval-seeds 0,1,2] [--eval-epochs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from ddbench.coreset import draw_seeds, train_models
from ddbench.data import load_split
from ddbench.method import Task
from ddbench.methods.el2n import EL2N, GraNd
from ddbench.methods.forgetting import Forgetting
from ddbench.methods.herding import Herding, KCenter
from ddbench.models import create_model

ROOT = Path(__file__).resolve().parents[2]
PY = os.environ.get("DDBENCH_PY", sys.executable)

# The local shims DeepCore and data_diet need here (their files are not edited):
SHIMS = {
    "S1": "numpy >= 2 has no np.in1d (kcentergreedy.py:42, 171): np.in1d = np.isin",
    "S2": "data_diet/data.py imports jax, tensorflow and tensorflow_datasets at the top; "
    "subset_train_idxs_by_scores uses numpy only: empty stand-in modules for the three",
    "S3": "DeepCore classes are built with their constructors on a TensorDataset carrying "
    "`classes` and `targets` (as torchvision's); `run()` (their training loop) is replaced: "
    "forgetting events come from ddbench's training run (their `after_loss` called on each "
    "mini-batch of it), GraNd's networks are ddbench's (same seeds) wrapped with DeepCore's "
    "EmbeddingRecorder, and their `finish_run` scores them",
    "S4": "balanced selection budgets are round(fraction * n_c) in DeepCore; a class's picks "
    "are taken from a call with fraction = ipc / n_c, so every class gets exactly ipc",
    "S5": "herding with DeepCore's rule flipped: metric = -euclidean_dist (their argmax of "
    "the negated distance is the argmin of the distance), no line of theirs edited",
}

# Scoring budgets: the comparison needs the same inputs on both sides, not the paper's budget.
SCORING = {
    "cheap": {  # a few CPU minutes for both datasets
        "model": "mlp",
        "features": {"features": "trained", "feature_epochs": 1},
        "forgetting": {"epochs": 5},
        "el2n": {"models": 2, "epochs": 2},
        "grand_last_layer": {"models": 2, "epochs": 0, "gradient": "last_layer"},
        "grand_full": {"models": 1, "epochs": 0, "gradient": "full"},
    },
    "paper": {  # ddbench's defaults (the papers' definitions) on its ConvNet
        "model": "convnet",
        "features": {"features": "trained", "feature_epochs": 10},
        "forgetting": {},
        "el2n": {},
        "grand_last_layer": {"gradient": "last_layer"},
        "grand_full": {},
    },
}


# ----------------------------------------------------------------------------- DeepCore import


def import_deepcore(checkout: Path):
    sys.path.insert(0, str(checkout))
    if not hasattr(np, "in1d"):  # S1
        np.in1d = np.isin
    import deepcore.methods as dcm
    from deepcore.methods.methods_utils import euclidean_dist
    from deepcore.nets.nets_utils.recorder import EmbeddingRecorder

    return dcm, euclidean_dist, EmbeddingRecorder


def import_data_diet(checkout: Path):
    for name in ("jax", "tensorflow", "tensorflow_datasets"):  # S2
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.random = None
            sys.modules[name] = mod
    sys.path.insert(0, str(checkout))
    from data_diet.data import subset_train_idxs_by_scores

    return subset_train_idxs_by_scores


def commit_of(checkout: Path) -> str:
    p = checkout / "COMMIT"
    if p.exists():
        return p.read_text().strip()
    return subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


class TrainSet(torch.utils.data.TensorDataset):
    """ddbench's normalised train split as DeepCore expects a dataset (``classes``,
    ``targets``)."""

    def __init__(self, train):
        super().__init__(train.normalize(train.images), train.labels)
        self.classes = list(train.classes)
        self.targets = train.labels.numpy()


def deepcore_args(num_classes: int, batch: int):
    return types.SimpleNamespace(
        selection_batch=batch, workers=0, num_classes=num_classes, device="cpu",
        print_freq=10**9,
    )  # fmt: skip


# ----------------------------------------------------------------------------- comparison


def overlap(a, b) -> dict:
    a, b = {int(i) for i in a}, {int(i) for i in b}
    inter = len(a & b)
    return {
        "shared": inter,
        "ddbench": len(a),
        "theirs": len(b),
        "fraction_shared": inter / max(len(a), 1),
        "jaccard": inter / max(len(a | b), 1),
    }


def same(a, b) -> bool:
    return sorted(int(i) for i in a) == sorted(int(i) for i in b)


def tie_check(scores: torch.Tensor, train, ipc: int, ours, theirs) -> dict:
    """Per class: the images scored strictly above the ipc-th highest are picked by both, and
    the remaining picks of each side all have the ipc-th score (one tie block)."""
    ours, theirs = set(int(i) for i in ours), set(int(i) for i in theirs)
    ok, tied_classes = True, 0
    for c in range(train.num_classes):
        idx = train.indices_of(c)
        members = set(idx.tolist())
        s = scores[idx].double()
        kth = s.sort(descending=True).values[ipc - 1]
        above = {int(i) for i in idx[s > kth]}
        tie = {int(i) for i in idx[s == kth]}
        for side in (ours, theirs):
            mine = side & members
            ok &= above <= mine and (mine - above) <= tie
        tied_classes += len(tie) > ipc - len(above)
    return {"forced_picks_shared_and_rest_from_one_tie_block": bool(ok),
            "classes_with_a_tie_at_the_cut": tied_classes}  # fmt: skip


def make_task(train, ipc: int, seed: int, model: str) -> Task:
    spec = train.spec
    return Task(
        train=train, ipc=ipc,
        model_factory=lambda: create_model(model, spec.channels, spec.num_classes, spec.im_size),
        generator=torch.Generator().manual_seed(seed), seed=seed, device=torch.device("cpu"),
    )  # fmt: skip


def per_class_deepcore_select(dc, train, ipc: int):
    """DeepCore's balanced ``select()`` with each class's budget exactly ``ipc`` (S4)."""
    picked = []
    for c in range(train.num_classes):
        n_c = len(train.indices_of(c))
        dc.fraction = ipc / n_c
        got = np.asarray(dc.select()["indices"]).astype(np.int64)
        picked += [int(i) for i in got if int(train.labels[i]) == c]
    return picked


def compare_dataset(name: str, a, dcm, euclid, recorder, data_diet, out: Path) -> list[dict]:
    cfg = SCORING[a.scoring]
    train = load_split(name, "train")
    n, k = len(train), train.num_classes
    labels = train.labels
    rows: list[dict] = []
    dst = TrainSet(train)
    batch = Forgetting().batch_size

    # --- features (herding, k-center): one feature network, per-class embeddings
    herding = Herding(**cfg["features"])
    feat_task = make_task(train, 1, a.seed, cfg["model"])
    fmodel = herding.feature_model(feat_task)
    feats = [herding.features_of(feat_task, fmodel, c).detach() for c in range(k)]

    # --- scores, computed once by ddbench (score() fills the cache that select() reads later)
    forgetting = Forgetting(**cfg["forgetting"])
    dc_forget = dcm.Forgetting(dst, deepcore_args(k, batch), 0.5, a.seed, epochs=0, balance=True)
    dc_forget.before_run()  # their counters: forgetting_events, last_acc (zeros)
    real_train = forgetting._train

    def spy(task, seeds, epochs, desc, **kw):  # S3: their after_loss on ddbench's batches
        inner = kw["on_batch"]

        def both(rows_, logits):
            inner(rows_, logits)
            r = rows_.reshape(-1)
            out_ = logits.reshape(len(r), -1).detach()
            dc_forget.after_loss(out_, None, labels[r], r.cpu().numpy(), 0)

        kw["on_batch"] = both
        return real_train(task, seeds, epochs, desc, **kw)

    forgetting._train = spy
    t0 = time.perf_counter()
    f_scores = forgetting.score(make_task(train, 1, a.seed, cfg["model"]))
    seconds = {"forgetting": time.perf_counter() - t0}
    forgetting._train = real_train
    ours_counts = f_scores["count"].float().cpu()
    theirs_counts = dc_forget.forgetting_events.float().cpu()

    el2n = EL2N(**cfg["el2n"])
    gl = GraNd(**cfg["grand_last_layer"])
    gf = GraNd(**cfg["grand_full"])
    score_of = {}
    for key, m in (("el2n", el2n), ("grand_last_layer", gl), ("grand_full", gf)):
        t0 = time.perf_counter()
        score_of[key] = m.score(make_task(train, 1, a.seed, cfg["model"]))["score"].cpu()
        seconds[key] = time.perf_counter() - t0

    # DeepCore's GraNd score on ddbench's last-layer networks (same seeds)
    seeds = draw_seeds(make_task(train, 1, a.seed, cfg["model"]), gl.models)
    nets = train_models(make_task(train, 1, a.seed, cfg["model"]), seeds, gl.epochs, lr=gl.lr,
                        batch_size=gl.batch_size, desc="", augment=gl.augment)  # fmt: skip

    class View(torch.nn.Module):  # a ddbench network as DeepCore's nets look (S3)
        def __init__(self, net):
            super().__init__()
            self.net, self.embedding_recorder, self.no_grad = net, recorder(), False

        def get_last_layer(self):
            return self.net.classifier

        def forward(self, x):
            return self.net.classifier(self.embedding_recorder(self.net.embed(x)))

    dc_batch = 256  # DeepCore main.py: --selection_batch defaults to --batch, 256
    dc_grand = dcm.GraNd(dst, deepcore_args(k, dc_batch), 0.5, a.seed, epochs=0,
                         repeat=len(nets), balance=True)  # fmt: skip
    dc_grand.train_indx = np.arange(n)
    columns: dict[int, torch.Tensor] = {}

    def grand_run():  # S3: their finish_run scores ddbench's network cur_repeat
        r = dc_grand.cur_repeat
        if r not in columns:
            dc_grand.model = View(nets[r]).eval()
            dc_grand.model_optimizer = types.SimpleNamespace(zero_grad=lambda: None)
            dc_grand.criterion = torch.nn.CrossEntropyLoss()
            dc_grand.finish_run()
            columns[r] = dc_grand.norm_matrix[:, r].clone()
        dc_grand.norm_matrix[:, r] = columns[r]

    dc_grand.run = grand_run
    dc_grand.fraction = 0.5
    theirs_grand = torch.as_tensor(np.asarray(dc_grand.select()["scores"])).float()
    # their loss is CrossEntropyLoss's batch mean: each score is ddbench's divided by the size
    # of the image's scoring batch (dc_batch, or the remainder for the last batch)
    bsize = torch.full((n,), float(dc_batch))
    if n % dc_batch:
        bsize[n - n % dc_batch :] = float(n % dc_batch)
    rel = ((theirs_grand * bsize - score_of["grand_last_layer"]).abs()
           / score_of["grand_last_layer"].clamp_min(1e-12)).max().item()  # fmt: skip

    definitions = {
        "forgetting_counts_identical": bool(torch.equal(ours_counts, theirs_counts)),
        "forgetting_counts_max_abs_difference": float((ours_counts - theirs_counts).abs().max()),
        "grand_deepcore_times_batch_size_equals_ddbench_last_layer_max_rel_error": rel,
        "grand_last_batch": {"images": int(n % dc_batch), "scored_in_batches_of": dc_batch},
    }

    for ipc in a.ipcs:

        def task(model=cfg["model"], ipc=ipc):
            return make_task(train, ipc, a.seed, model)

        def record(method, ours, theirs, ipc=ipc, **extra):
            code = "data_diet" if method.startswith("el2n") else "DeepCore"
            row = {"dataset": name, "ipc": ipc, "method": method, "authors_code": code,
                   **overlap(ours, theirs), "identical": same(ours, theirs), **extra}  # fmt: skip
            stem = f"{name}_ipc{ipc}_{method}"
            for side, idx in (("ddbench", ours), ("theirs", theirs)):
                p = out / "indices" / f"{stem}_{side}.json"
                p.write_text(json.dumps(sorted(int(i) for i in idx)))
            rows.append(row)
            print(f"{stem}: shared {row['shared']}/{row['ddbench']} "
                  f"identical={row['identical']}", file=sys.stderr, flush=True)  # fmt: skip
            return row

        # herding: argmin (Welling) vs DeepCore's argmax
        t = task()
        ours, theirs, flipped, gap = [], [], [], {"ddbench": 0.0, "theirs": 0.0}
        shim = types.SimpleNamespace(metric=euclid, args=types.SimpleNamespace(print_freq=10**9))
        flip = types.SimpleNamespace(metric=lambda x, y: -euclid(x, y), args=shim.args)  # S5
        for c in range(k):
            idx = train.indices_of(c)
            ours += idx[herding.pick(t, feats[c])].tolist()
            theirs += dcm.Herding.herding(shim, feats[c], ipc, index=idx.numpy()).tolist()
            flipped += dcm.Herding.herding(flip, feats[c], ipc, index=idx.numpy()).tolist()
            pos = {int(j): r for r, j in enumerate(idx.tolist())}
            mu = feats[c].mean(0)
            for side, picks in (("ddbench", ours), ("theirs", theirs)):
                rows_c = [pos[j] for j in picks if j in pos]
                gap[side] += float((feats[c][rows_c].mean(0) - mu).norm() / mu.norm()) / k
        record("herding", ours, theirs,
               cause="DeepCore's herding takes the argmax of ||(t+1) mu - sum_selected - x|| "
                     "(herding.py:82), ddbench the argmin (Welling 2009)",
               check={"deepcore_with_argmin_identical_to_ddbench": same(ours, flipped)},
               picks_mean_to_class_mean_relative_distance=gap)  # fmt: skip

        # k-center: ddbench's first center is the image nearest the class mean, DeepCore's a
        # random one (np.random.seed(seed); randint)
        kc = KCenter(**cfg["features"])
        ours, theirs, given_first, errors = [], [], [], []
        for c in range(k):
            idx = train.indices_of(c)
            mine = kc.pick(task(), feats[c])
            ours += idx[mine].tolist()
            try:
                theirs += np.asarray(dcm.k_center_greedy(
                    feats[c], ipc, euclid, "cpu", random_seed=a.seed, index=idx.numpy(),
                    already_selected=[], print_freq=10**9)).tolist()  # fmt: skip
            except (IndexError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}")
            if ipc > 1:  # their loop from ddbench's first center (already_selected)
                given_first += np.asarray(dcm.k_center_greedy(
                    feats[c], ipc - 1, euclid, "cpu", random_seed=a.seed, index=idx.numpy(),
                    already_selected=[int(idx[mine[0]])], print_freq=10**9)).tolist()  # fmt: skip
        check = ({"deepcore_from_ddbench_first_center_identical": same(ours, given_first)}
                 if ipc > 1 else {"note": "one center per class: the first center is the whole "
                                           "selection"})  # fmt: skip
        if errors:
            first = []
            for c in range(k):  # their first center (kcentergreedy.py:34-38), as they draw it
                np.random.seed(a.seed)
                first.append(int(train.indices_of(c)[np.random.randint(0, len(feats[c]))]))
            record("kcenter", ours, first,
                         deepcore_error=f"k_center_greedy(budget={ipc}) fails: {errors[0]} "
                                        "(kcentergreedy.py:48-52: its distance matrix has "
                                        "budget - 1 = 0 rows); the DeepCore side is its random "
                                        "first center",
                         cause="first center: ddbench the image nearest the class mean, DeepCore "
                               "a random one (np.random.seed(seed), the same seed per class)",
                         check=check)  # fmt: skip
        else:
            record("kcenter", ours, theirs,
                   cause="first center: ddbench the image nearest the class mean, DeepCore a "
                         "random one (np.random.seed(seed), the same seed per class)",
                   check=check)  # fmt: skip

        # forgetting: ranking of ddbench's counts by both; ties broken differently
        ours = forgetting.select(task()).tolist()
        dc_forget.run = lambda: None
        dc_forget.train_indx = np.arange(n)
        dc_forget.forgetting_events = ours_counts.clone()
        theirs = per_class_deepcore_select(dc_forget, train, ipc)
        dc_forget.forgetting_events = theirs_counts.clone()
        theirs_own = per_class_deepcore_select(dc_forget, train, ipc)
        record("forgetting", ours, theirs,
               cause="ties (images with the same count) are broken by ddbench with a seeded "
                     "random permutation, by DeepCore by numpy's argsort order reversed "
                     "(forgetting.py:71-78)",
               check=tie_check(ours_counts, train, ipc, ours, theirs),
               deepcore_on_its_own_counts_identical_to_on_ddbench_counts=same(theirs,
                                                                              theirs_own))  # fmt: skip

        # GraNd (last layer, DeepCore's definition): ranking of ddbench's scores by both
        sc = score_of["grand_last_layer"]
        ours = gl.select(task()).tolist()
        saved = dict(columns)
        for r in columns:
            columns[r] = sc.clone()  # the same scores on their side
        theirs = per_class_deepcore_select(dc_grand, train, ipc)
        columns.clear()
        columns.update(saved)
        theirs_own = per_class_deepcore_select(dc_grand, train, ipc)
        last = set(range(n - n % dc_batch, n)) if n % dc_batch else set()
        record("grand_last_layer", ours, theirs,
               check=tie_check(sc, train, ipc, ours, theirs),
               deepcore_own_scores={
                   **overlap(ours, theirs_own),
                   "picks_from_the_last_scoring_batch": {
                       "theirs": len(last & set(theirs_own)), "ddbench": len(last & set(ours))},
                   "cause": "DeepCore's score is the gradient of the batch-mean loss: divided by "
                            "the batch size, and by the smaller size of the last batch, whose "
                            "images score higher (grand.py:41-48)"})  # fmt: skip

        # GraNd, ddbench's default (full gradient at init) vs DeepCore's definition
        ours = gf.select(task()).tolist()
        record("grand_full_vs_deepcore_definition", ours, theirs_own,
               cause="score definitions differ: ddbench's default is the full-parameter gradient "
                     "norm (Paul et al.), DeepCore's the last layer's (grand.py:28-51)")  # fmt: skip

        # EL2N: ddbench's per-class top vs data_diet's keep_max_scores
        sc = score_of["el2n"]
        ours = el2n.select(task()).tolist()
        if data_diet is not None:
            with tempfile.TemporaryDirectory() as tmp:
                theirs = []
                for c in range(k):
                    idx = train.indices_of(c)
                    np.save(Path(tmp) / "s.npy", sc[idx].numpy())
                    ns = types.SimpleNamespace(subset="keep_max_scores", subset_size=ipc,
                                               scores_path=str(Path(tmp) / "s.npy"),
                                               train_batch_size=128)  # fmt: skip
                    got, _ = data_diet(idx.numpy(), ns)
                    theirs += idx[torch.as_tensor(got, dtype=torch.long)].tolist()
                np.save(Path(tmp) / "s.npy", sc.numpy())
                ns = types.SimpleNamespace(subset="keep_max_scores", subset_size=k * ipc,
                                           scores_path=str(Path(tmp) / "s.npy"),
                                           train_batch_size=128)  # fmt: skip
                glob, _ = data_diet(np.arange(n), ns)
            glob = torch.as_tensor(glob, dtype=torch.long)
            record("el2n_vs_data_diet", ours, theirs,
                   check=tie_check(sc, train, ipc, ours, theirs),
                   data_diet_global={
                       **overlap(ours, glob.tolist()),
                       "per_class": torch.bincount(labels[glob], minlength=k).tolist(),
                       "cause": "data_diet keeps the top scores of the whole train set "
                                "(data.py:140-151), not of each class"})  # fmt: skip
        # DeepCore's main.py budgets at fraction = k * ipc / n (balance=True)
        frac = k * ipc / n
        budgets = [round(frac * len(train.indices_of(c))) for c in range(k)]
        for r in rows:
            if r["dataset"] == name and r["ipc"] == ipc:
                r["deepcore_main_py_budgets_per_class_at_fraction_k_ipc_over_n"] = budgets
    for r in rows:
        r["definitions"] = definitions
        r["scoring_seconds"] = seconds
    return rows


def evaluate_pairs(rows: list[dict], out: Path, a) -> None:
    """Import both index lists of every differing comparison and score them."""
    for r in rows:
        if r["identical"]:
            continue
        stem = f"{r['dataset']}_ipc{r['ipc']}_{r['method']}"
        r["accuracy"] = {}
        for side in ("ddbench", "theirs"):
            idx = out / "indices" / f"{stem}_{side}.json"
            s = out / "sets" / f"{stem}_{side}.safetensors"
            s.parent.mkdir(exist_ok=True)
            if not s.exists():
                subprocess.run([PY, "-m", "ddbench.cli", "import", "indices", str(idx),
                                "--dataset", r["dataset"], "--out", str(s)], check=True)  # fmt: skip
            run_dir = out / "eval" / f"{stem}_{side}"
            cmd = [PY, "-m", "ddbench.cli", "evaluate", f"synset={s}", "protocol=standard",
                   f"protocol.seeds=[{a.eval_seeds}]", "precision=fp32", "device=cpu",
                   f"hydra.run.dir={run_dir}"]  # fmt: skip
            if a.eval_epochs:
                cmd.append(f"protocol.epochs={a.eval_epochs}")
            res = run_dir / "result.json"
            if not res.exists():
                subprocess.run(cmd, check=True, cwd=ROOT)
            got = json.loads(res.read_text())["accuracy"]
            r["accuracy"][side] = {"mean": got["mean"], "std": got["std"], "command":
                                   shlex.join(cmd[2:])}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deepcore", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--data-diet", type=Path, default=None)
    p.add_argument("--datasets", default="mnist,fashion_mnist")
    p.add_argument("--ipcs", default="1,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", choices=list(SCORING), default="cheap")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--eval-seeds", default="0,1,2")
    p.add_argument("--eval-epochs", type=int, default=0, help="0: the protocol's (1000)")
    a = p.parse_args()
    a.ipcs = [int(i) for i in a.ipcs.split(",")]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = a.out.resolve()
    (out / "indices").mkdir(parents=True, exist_ok=True)
    dcm, euclid, recorder = import_deepcore(a.deepcore.resolve())
    data_diet = import_data_diet(a.data_diet.resolve()) if a.data_diet else None
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DDBENCH_CACHE"] = cache  # scores computed here, by this run
        for name in a.datasets.split(","):
            t0 = time.perf_counter()
            with open(out / f"deepcore_{name}.log", "w") as log, contextlib.redirect_stdout(log):
                rows = compare_dataset(name, a, dcm, euclid, recorder, data_diet, out)
            if a.evaluate:
                evaluate_pairs(rows, out, a)
            result = {
                "dataset": name, "ipcs": a.ipcs, "seed": a.seed, "scoring": a.scoring,
                "scoring_settings": SCORING[a.scoring], "rows": rows,
                "deepcore_repo": "PatrickZH/DeepCore",
                "deepcore_commit": commit_of(a.deepcore.resolve()),
                "data_diet_repo": "mansheej/data_diet" if a.data_diet else None,
                "data_diet_commit": commit_of(a.data_diet.resolve()) if a.data_diet else None,
                "shims": SHIMS,
                "data": "ddbench's train split (the 10% val carve-out excluded), both sides",
                "evaluate_command": "ddbench import indices OUT/indices/<dataset>_ipc<K>_<method>_<side>.json "
                "--dataset D --out S.safetensors; ddbench evaluate synset=S.safetensors "
                "protocol=standard protocol.seeds=[0,1,2] precision=fp32",
                "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), "
                f"{torch.get_num_threads()} thread(s)",
                "torch": torch.__version__, "numpy": np.__version__,
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
            path = out / f"deepcore_{name}.json"
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()

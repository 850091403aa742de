"""INFER and HeLlO against their baselines at (near) equal stored bytes (issue 30).

    python bench/new_methods.py --dataset fashion_mnist --ipc 10 [--only infer hello]
        [--seeds 0 1 2] [--epochs N] [--iterations N] [--hello-epochs N] [--out DIR]
        [--infer-json '{"teachers": [...], "r_bn": 0.1}'] [--hello-json '{...}']

INFER (protocol ``infer``: stored static labels, mixup 0.8, KL at T=30) against SRe2L and CDA
recovered with INFER's first teacher (SRe2L's default ConvNet-BN) and relabelled with the SAME
static labels as INFER: the mean logits of INFER's teachers on each image
(``methods/infer.py`` ``static_logits``, float16, class-consistent). INFER stores
``B K + B M`` image-sized tensors (``B = int(ipc / (M/K + 1))``) and ``(B + B M) K`` labels,
SRe2L/CDA ``ipc K`` images and labels: every row reports its images, labels and extras bytes.

HeLlO (its images, the same for all three rows) under ``hello`` (the set's projector online),
``kd`` (the teacher the projector learnt from, online: nothing stored for labels, the teacher
needed at training time) and ``kd_hard`` (hard labels). Its label bytes (hard labels +
projector) are reported next to FKD's per-crop labels for the same images.

Sets are saved in ``--out`` and reused by a rerun; distillations checkpoint there and each
evaluation resumes (``partial`` and ``checkpoint`` files), so a killed run continues.
``--epochs`` / ``--seeds`` / ``--iterations`` other than the pinned ones mark a row
``comparable: false``. One JSON per block, ``<out>/<dataset>_ipc<ipc>_<block>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from ddbench import data, synset
from ddbench.augment import DSA
from ddbench.method import Checkpointer, Method, Task, run_distill
from ddbench.methods.cda import CDA
from ddbench.methods.hello import HeLlO
from ddbench.methods.infer import INFER, static_logits
from ddbench.methods.sre2l import SRe2L
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.recover import load_members
from ddbench.relabel import relabel_set

log = logging.getLogger("ddbench")


def make_task(dataset: str, ipc: int, seed: int, directory: Path) -> Task:
    spec = data.get_spec(dataset)
    return Task(
        train=data.load_split(dataset, "train"), ipc=ipc,
        model_factory=lambda: create_model("convnet", spec.channels, spec.num_classes,
                                           spec.im_size),
        generator=torch.Generator().manual_seed(seed), seed=seed, device=torch.device("cpu"),
        augment=DSA(spec.dsa_strategy), checkpointer=Checkpointer(directory, "bench", 50),
        val_loader=lambda: data.load_split(dataset, "val"),
    )  # fmt: skip


def made(method: Method, args, name: str) -> synset.SyntheticSet:
    """The set of ``method`` (seed 0), loaded from ``--out`` when a run already saved it."""
    path = args.out / f"{args.dataset}_ipc{args.ipc}_{name}.safetensors"
    if path.exists():
        return synset.load(path)
    work = args.out / "work" / f"{args.dataset}_ipc{args.ipc}_{name}"
    torch.manual_seed(0)
    s = run_distill(method, make_task(args.dataset, args.ipc, 0, work))
    synset.save(s, path)
    return synset.load(path)


def score(s: synset.SyntheticSet, protocol: str, args, name: str, extras: bool = True) -> dict:
    """``s`` under ``protocol``; ``extras``: whether the row uses (and counts) the set's extras."""
    cfg = protocol_config(protocol)
    pinned = dict(cfg)
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.seeds:
        cfg["seeds"] = list(args.seeds)
    if cfg != pinned or args.iterations:
        cfg["comparable"] = False
    p = Protocol.from_config(cfg)
    stem = args.out / "work" / f"{args.dataset}_ipc{args.ipc}_{name}_{protocol}"
    r = evaluate(s, p, device="cpu", progress=False, partial=f"{stem}.partial.json",
                 checkpoint=f"{stem}.eval_checkpoint.pt")  # fmt: skip
    nb = s.nbytes() if extras else {**s.nbytes(), "extras": 0}
    return {
        "row": name, "protocol": p.name, "hash": p.hash, "comparable": p.comparable,
        "epochs": p.epochs, "seeds": p.seeds,
        "accuracy": r["accuracy"]["mean"], "std": r["accuracy"]["std"],
        "bytes": {**nb, "total": sum(nb.values())}, "stored_images": len(s.images),
        "yielded_images": len(s), "labels": r["labels"],
        "distill_seconds": (s.meta.get("cost") or {}).get("wall_seconds"),
        "eval_seconds": r["cost"]["eval_seconds"],
    }  # fmt: skip


def same_labels(s: synset.SyntheticSet, infer: INFER, args, name: str) -> synset.SyntheticSet:
    """``s`` relabelled with INFER's static labels (the mean logits of INFER's teachers)."""
    path = args.out / f"{args.dataset}_ipc{args.ipc}_{name}.safetensors"
    if path.exists():
        return synset.load(path)
    members = load_members(make_task(args.dataset, args.ipc, 0, None), infer.teacher_configs())
    try:
        logits = static_logits(members, s.images)
        meta = {"static": "mean", "teachers": [m.meta["key"] for m in members]}
    finally:
        for m in members:
            m.remove()
    out = synset.SyntheticSet(s.images, s.labels, dict(s.meta))
    out = relabel_set(out, logits, s.hard_labels, method=name, label_dtype=infer.label_dtype,
                      label_topk=None, mismatch="swap", meta=meta)  # fmt: skip
    synset.save(out, path)
    return synset.load(path)


def infer_block(args) -> dict:
    over = {"iterations": args.iterations} if args.iterations else {}
    own = json.loads(args.infer_json)
    teachers = {"teachers": own.pop("teachers")} if "teachers" in own else {}
    infer = INFER(**over, **own, **teachers)
    infer.apply_recipe(args.dataset, args.ipc)
    sets = {"infer": made(INFER(**over, **own, **teachers), args, "infer")}
    first = infer.teachers[0]  # SRe2L/CDA recover with INFER's first teacher
    for name, cls in (("sre2l", SRe2L), ("cda", CDA)):
        theirs = made(cls(teacher=first, **over, **own), args, name)
        sets[f"{name}_same_labels"] = same_labels(theirs, infer, args, f"{name}_same_labels")
    return {name: score(s, "infer", args, name) for name, s in sets.items()}


def hello_block(args) -> dict:
    over = {"epochs": args.hello_epochs} if args.hello_epochs else {}
    s = made(HeLlO(**over, **json.loads(args.hello_json)), args, "hello")
    proj = s.meta["relabel"]["projector"]
    rows = {
        "hello": score(s, "hello", args, "hello"),
        "teacher_online": score(s, "kd", args, "hello_images", extras=False),
        "hard_labels": score(s, "kd_hard", args, "hello_images", extras=False),
    }
    rows["hello"]["projector"] = {k: proj[k] for k in (
        "projector_bytes", "label_bytes", "fkd_label_bytes", "fkd_ratio", "substitution",
        "val_agreement_with_teacher")}  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--only", nargs="+", default=["infer", "hello"], choices=["infer", "hello"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override the protocols' epochs")
    ap.add_argument("--iterations", type=int, default=None, help="recovery iterations (all)")
    ap.add_argument("--hello-epochs", type=int, default=None, help="HeLlO's projector epochs")
    ap.add_argument(
        "--infer-json",
        default="{}",
        help="INFER settings (JSON); its `teachers` "
        "are SRe2L/CDA's first teacher and their relabel's teachers; its other keys "
        "go to SRe2L and CDA too",
    )
    ap.add_argument("--hello-json", default="{}", help="HeLlO settings (JSON)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/new_methods"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for block in args.only:
        t0 = time.perf_counter()
        rows = {"infer": infer_block, "hello": hello_block}[block](args)
        out = {"dataset": args.dataset, "ipc": args.ipc, "block": block,
               "settings": {k: str(v) for k, v in vars(args).items()},
               "seconds": time.perf_counter() - t0, "rows": rows}  # fmt: skip
        path = args.out / f"{args.dataset}_ipc{args.ipc}_{block}.json"
        path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        for name, r in rows.items():
            b = r["bytes"]
            print(f"{args.dataset} ipc {args.ipc} {block:5s} {name:18s} {r['protocol']:8s} "
                  f"{r['accuracy']:6.2f} +- {r['std']:.2f}  images {b['images']} labels "
                  f"{b['labels']} extras {b['extras']} total {b['total']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""The transfer track's two tables (docs/transfer.md): KRR-ST and DP4TL against their baselines.

    python bench/transfer.py krr [--pairs fashion_mnist_to_mnist mnist_to_fashion_mnist]
        [--ipc 10] [--iterations 2000] [--protocol transfer] [--out bench/results/transfer]
    python bench/transfer.py dp4tl [--pair mnist_fashion20_to_digits28] [--ipc 20]
        [--keep 0.5] [--protocol transfer] [--out bench/results/transfer]
    (both: [--rows NAME ...] only those rows, e.g. ``--rows full_source``;
     [--encoder KEY=VALUE ...] the SimCLR encoder's settings, ddbench.encoders.EncoderConfig;
     dp4tl: [--surrogate KEY=VALUE ...] LM's surrogate teacher, ddbench.teachers.TeacherConfig)

``krr``: per pair, KRR-ST distils ``ipc * classes`` images from the source (seed 0), and a
random and a herding subset of the same size are drawn (``ipc`` per class); each set and the
no-pre-training baseline are scored by :func:`ddbench.transfer.evaluate` under the transfer
protocol (its seeds: 0, 1, 2). ``dp4tl``: on the pair's source, DP4TL keeps ``keep`` of the
classes by label mapping (lm), feature mapping (fm) and at random (random class pruning, the
baseline), ``ipc`` images per kept class; the full source is ``ipc`` images of every class; each
is scored the same way. One JSON per table (every result, with the sets' costs) and a Markdown
table beside it, rewritten after every row. ``--smoke`` shrinks every budget (encoders,
surrogate, herding features, the protocol's epochs, one seed) to prove the pipeline on CPU; its
numbers mean nothing and the JSON says ``comparable: false``.

Resumable: each set is saved to ``OUT/<tag>/sets/<name>.safetensors`` as it is made (KRR-ST
checkpoints while it distils, in ``OUT/<tag>/checkpoints/``) and each row's result to
``OUT/<tag>/rows/<name>.json`` as it is scored; a rerun with the same arguments loads both and
does only what is missing. A stored row is reused only if its protocol hash, its set's checksum
and its target's recipe are the current ones; a stored set only if it was made with the same
settings (a DP4TL set: on the same target images). ``--rows NAME ...`` makes and scores only
those rows, so two runs (one thread each) can build one table; each writes the table of every
row stored so far, and a last run without ``--rows`` writes the whole table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ddbench import _alloc, data, synset, transfer
from ddbench.augment import DSA
from ddbench.method import Checkpointer, Task, run_distill
from ddbench.methods.dp4tl import DP4TL
from ddbench.methods.herding import Herding
from ddbench.methods.krr_st import KRRST
from ddbench.methods.subset import Random
from ddbench.models import create_model
from ddbench.protocol import write_result

KRR_PAIRS = ("fashion_mnist_to_mnist", "mnist_to_fashion_mnist")  # the KRR table's, in order
SMOKE = {"epochs": 1, "model_kwargs": {"net_width": 16}}  # encoders and surrogates under --smoke


def dotlist(items: list[str]) -> dict:
    """``KEY=VALUE`` items (dotted keys nest) as a dict."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))


def task(
    dataset: str,
    ipc: int,
    seed: int,
    model_kwargs: dict,
    checkpoints: Path | None = None,
    key: str = "",
) -> Task:
    spec = data.get_spec(dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Task(
        train=data.load_split(dataset, "train"), ipc=ipc, seed=seed, device=device,
        model_factory=lambda: create_model(
            "convnet", spec.channels, spec.num_classes, spec.im_size, **model_kwargs
        ).to(device),
        generator=torch.Generator().manual_seed(seed), augment=DSA(spec.dsa_strategy),
        val_loader=lambda: data.load_split(dataset, "val"),
        checkpointer=Checkpointer(checkpoints, key, 50 if checkpoints else 0),
    )  # fmt: skip


def settings_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_set(
    out: Path, name: str, method, dataset: str, ipc: int, mk: dict, resumable=False, make=True
):
    """The set ``name``: loaded from ``OUT/sets`` if a run with the same settings saved it, else
    distilled (seed 0; checkpointed if ``resumable``) and saved there (``make=False``: ``None``
    instead)."""
    parts = [name, type(method).__name__, method.settings, dataset, ipc, mk]
    target = getattr(method.settings, "target", None)
    if target:  # a set chosen by its target's images: their recipe too
        parts.append(data.get_spec(target).source)
    key = settings_key(*parts)
    path = out / "sets" / f"{name}.safetensors"
    if path.exists():
        s = synset.load(path)
        if s.meta.get("bench_key") == key:
            logging.info("%s: reusing %s", name, path)
            s.meta["_path"] = str(path)
            return s
        if make:
            logging.warning("%s: %s was made with other settings; making it again", name, path)
    if not make:
        return None
    ckpt = out / "checkpoints" / name if resumable else None
    logging.info("%s: distilling (%s on %s, ipc %d)", name, type(method).__name__, dataset, ipc)
    s = run_distill(method, task(dataset, ipc, 0, mk, ckpt, key))
    s.meta["bench_key"] = key
    s.meta["_path"] = str(synset.save(s, path))
    s = synset.load(path)  # the checksum the rows record
    s.meta["_path"] = str(path)
    if ckpt is not None and ckpt.exists():
        shutil.rmtree(ckpt)
    return s


def score(
    name: str, s, protocol, target: str, out: Path, model_kwargs: dict, source=None, make=True
):
    """The row ``name``: loaded from ``OUT/rows`` if it was scored under this protocol on this
    set and on the target's images as the catalogue now makes them, or copied from a row of the
    table scored on the same set (``same_set_as``), else scored and saved there (``make=False``:
    ``None`` instead)."""
    path = out / "rows" / f"{name}.json"
    sha = s.meta.get("sha256") if s is not None else None
    now = (protocol.hash, sha, data.get_spec(target).source)
    if path.exists():
        r = json.loads(path.read_text())
        if (r["protocol"]["hash"], r["synset"]["sha256"], r.get("target_data")) == now:
            logging.info("%s: reusing %s", name, path)
            return r
    if not make:
        return None
    twin = same_set_row(out, path, now) if s is not None else None
    if twin is not None:  # an identical set (e.g. LM and FM keeping the same classes)
        r = json.loads(twin.read_text())
        r["same_set_as"] = twin.stem  # scored once: the protocol is seeded, the set the same
        r["synset"]["path"] = s.meta.get("_path", r["synset"]["path"])
        r["cost"]["distill_seconds"] = (s.meta.get("cost") or {}).get("wall_seconds")
        write_result(r, path)
        logging.info("%s: the same set as %s; its scores reused", name, twin.stem)
        return r
    t0 = time.perf_counter()
    logging.info("%s: scoring on %s (%s)", name, target, protocol.name)
    r = transfer.evaluate(s, protocol, target, model_kwargs=model_kwargs, source=source)
    write_result(r, path)
    acc = r["accuracy"]
    logging.info("%s -> %s: %.2f +- %.2f (%.0f s)", name, target, acc["mean"], acc["std"],
                 time.perf_counter() - t0)  # fmt: skip
    return r


def same_set_row(out: Path, path: Path, now: tuple) -> Path | None:
    """Another row of this table scored on the same set (checksum), protocol and target images."""
    for other in sorted((out / "rows").glob("*.json")):
        if other != path:
            r = json.loads(other.read_text())
            if (r["protocol"]["hash"], r["synset"]["sha256"], r.get("target_data")) == now:
                return other
    return None


def table(rows: list[tuple[str, dict]], title: str) -> str:
    lines = [f"## {title}", "", "| set | images | pre-trained on | target test acc. (%) | seeds |",
             "|---|---:|---|---:|---|"]  # fmt: skip
    for name, r in rows:
        acc = r["accuracy"]
        seeds = ", ".join(f"{p['accuracy']:.2f}" for p in acc["per_seed"])
        lines.append(f"| {name} | {r['num_images']} | {r['pretrained_on']} | "
                     f"{acc['mean']:.2f} +- {acc['std']:.2f} | {seeds} |")  # fmt: skip
    return "\n".join(lines) + "\n\n"  # a blank line before the next pair's heading


def scored_rows(
    prefix: str, methods: dict, pair, a, protocol, out: Path, mk: dict, on_row, making=True
):  # fmt: skip
    """Each method's set made (or loaded) and scored on the pair's target, in order (``None``:
    no pre-training); ``on_row(rows, key, set)`` after each row. ``making=False``: rows are
    only looked up (a pair this run does not make)."""
    rows = []
    for k, method in methods.items():
        s, row = None, f"{prefix}_scratch"
        # --rows: the others are only looked up (a row another run scored joins the table)
        make = making and (not a.rows or row_id(k) in a.rows)
        if method is not None:
            row = f"{prefix}_{k}"
            resumable = isinstance(method, KRRST)  # the one long distillation: checkpointed
            s = make_set(out, row, method, pair.source, a.ipc, mk, resumable=resumable, make=make)
            if s is None:
                continue
        r = score(row, s, protocol, pair.target, out, mk, pair.source, make=make)
        if r is not None:
            rows.append((k, r))
            on_row(rows, k, s)
    return rows


def row_id(key: str) -> str:
    """A row's name on the command line (``--rows``) and in ``OUT/rows/<pair>_<name>.json``."""
    return "scratch" if key == "no pre-training" else key


def table_pairs(a, out: Path) -> list[str]:
    """The KRR table's pairs: this run's (``--pairs``), and every other pair with stored rows,
    only looked up, so that a run of one pair keeps the other pairs in the table; in the
    order of the default pairs, then the others."""
    stored = [p for p in transfer.PAIRS if any((out / "rows").glob(f"{p}_*.json"))]
    listed = set(a.pairs) | set(stored)
    return [p for p in KRR_PAIRS if p in listed] + [p for p in sorted(listed) if p not in KRR_PAIRS]


def bench_krr(a, protocol, out: Path, report) -> None:
    results, text = {}, ""
    mk = SMOKE["model_kwargs"] if a.smoke else {}
    for name in table_pairs(a, out):
        pair = transfer.get_pair(name)
        krr_kwargs = {"iterations": a.iterations, **dotlist(a.krr), "encoder": dotlist(a.encoder)}
        if a.smoke:
            krr_kwargs.update(num_models=2, online_iteration=5, batch_real=128, encoder=SMOKE)
        herding = {"features": "pixels"} if a.smoke else {}
        methods = {"krr_st": KRRST(**krr_kwargs), "random": Random(), "herding": Herding(**herding),
                   "no pre-training": None}  # fmt: skip
        title = f"{pair.source} -> {pair.target}, ipc {a.ipc} ({protocol.name})"

        def on_row(rows, k, s, name=name, title=title, before=text):
            results[name] = dict(rows)
            report(results, before + table(rows, title))

        rows = scored_rows(name, methods, pair, a, protocol, out, mk, on_row, name in a.pairs)
        text += table(rows, title) if rows else ""


def bench_dp4tl(a, protocol, out: Path, report) -> None:
    pair = transfer.get_pair(a.pair)
    mk = SMOKE["model_kwargs"] if a.smoke else {}
    extra = {"surrogate": dotlist(a.surrogate), "encoder": dotlist(a.encoder)}
    if a.smoke:
        extra = {"surrogate": SMOKE, "encoder": SMOKE}
    methods = {
        f"dp4tl_{m}": DP4TL(target=pair.target, mapping=m, keep_classes=a.keep, **extra)
        for m in ("lm", "fm", "random")
    }
    methods.update({"full_source": Random(), "no pre-training": None})
    kept = {}
    title = f"{pair.source} -> {pair.target}, keep {a.keep}, ipc {a.ipc} ({protocol.name})"

    def on_row(rows, k, s):
        if s is not None:
            kept[k] = s.meta.get("kept_classes")
        text = table(rows, title) + "\nkept classes: " + json.dumps(kept) + "\n"
        report({"results": dict(rows), "kept_classes": kept}, text)

    scored_rows(a.pair, methods, pair, a, protocol, out, mk, on_row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", choices=("krr", "dp4tl"))
    p.add_argument("--pairs", nargs="+", default=list(KRR_PAIRS))
    p.add_argument("--pair", default="mnist_fashion20_to_digits28")
    p.add_argument("--ipc", type=int, default=None, help="krr: 10, dp4tl: 20")
    p.add_argument("--iterations", type=int, default=2000, help="KRR-ST's outer iterations")
    p.add_argument(
        "--krr",
        nargs="*",
        default=[],
        help="more KRR-ST settings KEY=VALUE (e.g. batch_real=256)",
    )
    p.add_argument("--encoder", nargs="*", default=[], help="EncoderConfig KEY=VALUE (both tables)")
    p.add_argument("--surrogate", nargs="*", default=[], help="DP4TL's TeacherConfig KEY=VALUE")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument(
        "--rows",
        nargs="+",
        choices=("krr_st", "random", "herding", "dp4tl_lm", "dp4tl_fm", "dp4tl_random",
                 "full_source", "scratch"),
        help="make and score only these rows (two runs can share a table); the table lists every "
        "row scored so far",
    )  # fmt: skip
    p.add_argument("--protocol", default="transfer")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: proves the pipeline only")
    p.add_argument("--out", default="bench/results/transfer")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _alloc.configure()
    a.ipc = a.ipc or (10 if a.table == "krr" else 20)
    cfg = transfer.transfer_protocol_config(a.protocol)
    if a.smoke:
        for stage in ("pretrain_labels", "pretrain_representation", "finetune"):
            cfg[stage]["epochs"] = 2
        cfg.update(seeds=[0], comparable=False, name=f"{a.protocol}_smoke")
    protocol = transfer.TransferProtocol.from_config(cfg)
    tag = f"{a.table}_ipc{a.ipc}" + ("_smoke" if a.smoke else "")
    out = Path(a.out) / tag
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    final = {}

    def report(results: dict, text: str) -> None:  # after every row: a partial table
        record = {"args": vars(a), "protocol": {"name": protocol.name, "hash": protocol.hash,
                  "comparable": protocol.comparable}, "seconds": time.perf_counter() - t0,
                  "results": results}  # fmt: skip
        write_result(record, out / "results.json")
        synset.atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
        final["text"] = text

    (bench_krr if a.table == "krr" else bench_dp4tl)(a, protocol, out, report)
    print(final.get("text", ""))


if __name__ == "__main__":
    main()

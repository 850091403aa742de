"""The transfer track's two tables (docs/transfer.md): KRR-ST and DP4TL against their baselines.

    python bench/transfer.py krr [--pairs fashion_mnist_to_mnist mnist_to_fashion_mnist]
        [--ipc 10] [--iterations 2000] [--protocol transfer] [--out bench/results/transfer]
    python bench/transfer.py dp4tl [--pair mnist_fashion20_to_digits28] [--ipc 20]
        [--keep 0.5] [--protocol transfer] [--out bench/results/transfer]
    (both: [--encoder KEY=VALUE ...] the SimCLR encoder's settings, ddbench.encoders.EncoderConfig;
     dp4tl: [--surrogate KEY=VALUE ...] LM's surrogate teacher, ddbench.teachers.TeacherConfig)

``krr``: per pair, KRR-ST distils ``ipc * classes`` images from the source (seed 0), and a
random and a herding subset of the same size are drawn (``ipc`` per class); each set and the
no-pre-training baseline are scored by :func:`ddbench.transfer.evaluate` under the transfer
protocol (its seeds: 0, 1, 2). ``dp4tl``: on the pair's source, DP4TL keeps ``keep`` of the
classes by label mapping (lm), feature mapping (fm) and at random (random class pruning, the
baseline), ``ipc`` images per kept class; the full source is ``ipc`` images of every class; each
is scored the same way. One JSON per table (every result, with the sets' costs) and a Markdown
table beside it (``--keep-sets``: the sets too). ``--smoke`` shrinks every budget (encoders,
surrogate, herding features, the protocol's epochs, one seed) to prove the pipeline on CPU; its
numbers mean nothing and the JSON says ``comparable: false``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ddbench import _alloc, data, synset, transfer
from ddbench.augment import DSA
from ddbench.method import Task, run_distill
from ddbench.methods.dp4tl import DP4TL
from ddbench.methods.herding import Herding
from ddbench.methods.krr_st import KRRST
from ddbench.methods.subset import Random
from ddbench.models import create_model

SMOKE = {"epochs": 1, "model_kwargs": {"net_width": 16}}  # encoders and surrogates under --smoke


def dotlist(items: list[str]) -> dict:
    """``KEY=VALUE`` items (dotted keys nest) as a dict."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))


def task(dataset: str, ipc: int, seed: int, model_kwargs: dict) -> Task:
    spec = data.get_spec(dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Task(
        train=data.load_split(dataset, "train"), ipc=ipc, seed=seed, device=device,
        model_factory=lambda: create_model(
            "convnet", spec.channels, spec.num_classes, spec.im_size, **model_kwargs
        ).to(device),
        generator=torch.Generator().manual_seed(seed), augment=DSA(spec.dsa_strategy),
        val_loader=lambda: data.load_split(dataset, "val"),
    )  # fmt: skip


def score(name: str, s, protocol, target: str, out: Path, model_kwargs: dict, source=None):
    if s is not None and out.joinpath("sets").is_dir():  # --keep-sets
        s.meta["_path"] = str(synset.save(s, out / "sets" / f"{name}.safetensors"))
    r = transfer.evaluate(s, protocol, target, model_kwargs=model_kwargs, source=source)
    acc = r["accuracy"]
    logging.info("%s -> %s: %.2f +- %.2f", name, target, acc["mean"], acc["std"])
    return r


def table(rows: list[tuple[str, dict]], title: str) -> str:
    lines = [f"## {title}", "", "| set | images | pre-trained on | target test acc. (%) | seeds |",
             "|---|---:|---|---:|---|"]  # fmt: skip
    for name, r in rows:
        acc = r["accuracy"]
        seeds = ", ".join(f"{p['accuracy']:.2f}" for p in acc["per_seed"])
        lines.append(f"| {name} | {r['num_images']} | {r['pretrained_on']} | "
                     f"{acc['mean']:.2f} +- {acc['std']:.2f} | {seeds} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def bench_krr(a, protocol, out: Path) -> tuple[dict, str]:
    results, text = {}, ""
    mk = SMOKE["model_kwargs"] if a.smoke else {}
    for name in a.pairs:
        pair = transfer.get_pair(name)
        krr_kwargs = {"iterations": a.iterations, **dotlist(a.krr), "encoder": dotlist(a.encoder)}
        if a.smoke:
            krr_kwargs.update(num_models=2, online_iteration=5, batch_real=128, encoder=SMOKE)
        t0 = time.perf_counter()
        sets = {"krr_st": run_distill(KRRST(**krr_kwargs), task(pair.source, a.ipc, 0, mk))}
        sets["krr_st"].meta["bench_seconds"] = time.perf_counter() - t0
        sets["random"] = run_distill(Random(), task(pair.source, a.ipc, 0, mk))
        herding = {"features": "pixels"} if a.smoke else {}
        sets["herding"] = run_distill(Herding(**herding), task(pair.source, a.ipc, 0, mk))
        rows = [
            (k, score(f"{name}_{k}", s, protocol, pair.target, out, mk)) for k, s in sets.items()
        ]
        rows.append(("no pre-training", score(f"{name}_scratch", None, protocol, pair.target, out,
                                              mk, pair.source)))  # fmt: skip
        results[name] = dict(rows)
        text += table(rows, f"{pair.source} -> {pair.target}, ipc {a.ipc} ({protocol.name})")
    return results, text


def bench_dp4tl(a, protocol, out: Path) -> tuple[dict, str]:
    pair = transfer.get_pair(a.pair)
    mk = SMOKE["model_kwargs"] if a.smoke else {}
    extra = {"surrogate": dotlist(a.surrogate), "encoder": dotlist(a.encoder)}
    if a.smoke:
        extra = {"surrogate": SMOKE, "encoder": SMOKE}
    sets = {
        f"dp4tl_{m}": run_distill(
            DP4TL(target=pair.target, mapping=m, keep_classes=a.keep, **extra),
            task(pair.source, a.ipc, 0, mk),
        )
        for m in ("lm", "fm", "random")
    }
    sets["full_source"] = run_distill(Random(), task(pair.source, a.ipc, 0, mk))
    rows = [(k, score(f"{a.pair}_{k}", s, protocol, pair.target, out, mk)) for k, s in sets.items()]
    rows.append(("no pre-training", score(f"{a.pair}_scratch", None, protocol, pair.target, out,
                                          mk, pair.source)))  # fmt: skip
    kept = {k: s.meta.get("kept_classes") for k, s in sets.items()}
    text = table(rows, f"{pair.source} -> {pair.target}, keep {a.keep}, ipc {a.ipc} "
                 f"({protocol.name})")  # fmt: skip
    text += "\nkept classes: " + json.dumps(kept) + "\n"
    return {"results": dict(rows), "kept_classes": kept}, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", choices=("krr", "dp4tl"))
    p.add_argument(
        "--pairs", nargs="+", default=["fashion_mnist_to_mnist", "mnist_to_fashion_mnist"]
    )
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
    p.add_argument("--protocol", default="transfer")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: proves the pipeline only")
    p.add_argument("--out", default="bench/results/transfer")
    p.add_argument("--keep-sets", action="store_true", help="save the sets in OUT/<tag>/sets")
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
    (out / "sets" if a.keep_sets else out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, text = (bench_krr if a.table == "krr" else bench_dp4tl)(a, protocol, out)
    record = {"args": vars(a), "protocol": {"name": protocol.name, "hash": protocol.hash,
              "comparable": protocol.comparable}, "seconds": time.perf_counter() - t0,
              "results": results}  # fmt: skip
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

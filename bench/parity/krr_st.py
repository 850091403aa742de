"""Parity run for KRR-ST on a SHARED target model: the authors' train.py (db-Lee/selfsup_dd,
patched by official_krr_st_setup.sh) and ddbench's ``method=krr_st`` at the same budget and
settings, both regressing the same cached ddbench encoder's representations, on ddbench's train
split. The authors' final ``x_syn.pt`` / ``y_syn.pt`` are imported (``ddbench import krr_st
--method krr_st``); both sets are scored by ``ddbench transfer`` on the pair's target under the
pinned transfer protocol; the difference is held to max(1, 2 standard errors).

    python bench/parity/krr_st.py OFFICIAL_CHECKOUT OUT [--pair fashion_mnist_to_mnist]
        [--ipc 10] [--iterations 1000] [--seed 0] [--batch-real 256] [--online-iteration 100]
        [--encoder epochs=5 model_kwargs.net_width=64] [--ddbench-set SET [--ddbench-result R]]

``--ddbench-set``: ddbench's set made with these settings elsewhere (bench/transfer.py's
``krr_st`` set), checked against them; ``--ddbench-result``: its ``ddbench transfer`` result
(checked: that set, that protocol, that target). Writes OUT/krr_st_<source>_ipc<N>.json in
parity.py's format (bench/parity/table.py prints it); under another ``--protocol`` (e.g.
``transfer_probe``, a linear probe on the frozen pre-trained features, which tells
representations apart where fine-tuning saturates) its name and the scores' files end in
``_<protocol>``, so both protocols' results sit side by side. Each step is skipped when its output
exists, so a rerun resumes.
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
from pathlib import Path

import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import krr_st_shim  # noqa: E402
from parity import run  # noqa: E402  (the step runner of parity.py: one thread, a log)

PY = os.environ.get("DDBENCH_PY", sys.executable)
DDBENCH = [PY, "-m", "ddbench.cli"]
REPO = "db-Lee/selfsup_dd"


def settings(a) -> dict:
    """ddbench's KRR-ST settings of this run (``method.*``); the authors' flags below match."""
    return {"iterations": a.iterations, "batch_real": a.batch_real,
            "online_iteration": a.online_iteration, "num_models": 10, "lr_img": 1e-3,
            "encoder": OmegaConf.to_container(OmegaConf.from_dotlist(a.encoder))}  # fmt: skip


def check_set(path: Path, a, source: str) -> None:
    """ddbench's set given with --ddbench-set was made with this run's settings."""
    from ddbench import synset

    s = synset.load(path)
    cfg = (s.meta.get("method") or {}).get("config") or {}
    want = settings(a)
    enc = dict(cfg.get("encoder") or {})
    bad = [k for k, v in want.items() if k != "encoder" and cfg.get(k) != v]
    bad += [f"encoder.{k}" for k, v in want["encoder"].items() if enc.get(k) != v]
    if s.meta.get("dataset") != source or s.meta.get("seed") not in (None, a.seed) or bad:
        raise SystemExit(f"{path} was not made with this run's settings ({bad or 'dataset/seed'})")


def score(set_path: Path, a, out: Path, log: Path, timings: dict) -> dict:
    if not out.exists():
        cmd = [*DDBENCH, "transfer", str(set_path), "--pair", a.pair, "--protocol", a.protocol,
               "--out", str(out)]  # fmt: skip
        timings[str(out)] = run(cmd, ROOT, log)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("official", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--pair", default="fashion_mnist_to_mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--online-iteration", type=int, default=100)
    p.add_argument("--encoder", nargs="*", default=["epochs=5", "model_kwargs.net_width=64"])
    p.add_argument(
        "--protocol", default="transfer", help="the transfer protocol (a smoke run: transfer_quick)"
    )
    p.add_argument("--ddbench-set", type=Path)
    p.add_argument("--ddbench-result", type=Path)
    a = p.parse_args()
    from ddbench import data, transfer

    pair = transfer.get_pair(a.pair)
    source, spec = pair.source, data.get_spec(pair.source)
    off = a.official.resolve()
    subprocess.run(["bash", str(HERE / "official_krr_st_setup.sh"), str(off)], check=True)
    commit = (off / "COMMIT").read_text().strip()
    work = (
        a.out.resolve() / "work" / f"krr_st_{source}_ipc{a.ipc}_it{a.iterations}" / f"seed{a.seed}"
    )
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    datasets = krr_st_shim.export_data(source, work.parent / "datasets").parent
    enc = krr_st_shim.export_encoder(source, settings(a)["encoder"])
    # the authors' side
    theirs = work / "official" / "krr"
    official_cmd = [PY, "train.py", "--data_name", source, "--data_dir", str(datasets),
                    "--save_dir", str(work / "official"), "--exp_name", "krr",
                    "--seed", str(a.seed), "--outer_iteration", str(a.iterations),
                    "--outer_batch_size", str(a.batch_real),
                    "--online_iteration", str(a.online_iteration), "--outer_lr", "1e-3",
                    "--num_models", "10", "--eval_every", "0", "--save_every", str(a.iterations),
                    "--print_every", "50", "--target_path", enc["path"],
                    "--parity_num_images", str(a.ipc * spec.num_classes)]  # fmt: skip
    if not (theirs / "y_syn.pt").exists():
        timings["official"] = run(official_cmd, off, work / "official.log")
    ref = work / "official.safetensors"
    if not ref.exists():
        subprocess.run([*DDBENCH, "import", "krr_st", str(theirs), "--dataset", source, "--out",
                        str(ref), "--method", "krr_st", "--code", f"{REPO}@{commit[:7]}"],
                       check=True, cwd=ROOT)  # fmt: skip
    # ddbench's side
    leaves = [f"method.{k}={v}" for k, v in settings(a).items() if k != "encoder"]
    leaves += [f"++method.encoder.{x}" for x in a.encoder]  # model_kwargs may gain keys
    ours_cmd = [*DDBENCH, "distill", "method=krr_st", f"dataset={source}", f"ipc={a.ipc}",
                f"seed={a.seed}", *leaves, "progress=false",
                f"hydra.run.dir={work / 'ddbench'}"]  # fmt: skip
    if a.ddbench_set:
        check_set(a.ddbench_set, a, source)
        ours = a.ddbench_set.resolve()
    else:
        ours = work / "ddbench" / "synset.safetensors"
        if not ours.exists():
            timings["ddbench"] = run(ours_cmd, ROOT, work / "ddbench.log")
    # both scored on the target under the pinned transfer protocol
    tag = "" if a.protocol == "transfer" else f"_{a.protocol}"  # one file per protocol
    results = {"official": score(ref, a, work / f"eval_official{tag}.json",
                                 work / f"eval_official{tag}.log", timings)}  # fmt: skip
    if a.ddbench_result:
        from ddbench import synset

        r = json.loads(a.ddbench_result.read_text())
        sha = synset.load(ours).meta["sha256"]
        if (r["synset"]["sha256"], r["protocol"]["hash"], r["target"]) != (
            sha,
            results["official"]["protocol"]["hash"],
            pair.target,
        ):
            raise SystemExit(f"{a.ddbench_result} is not a result of {ours} under "
                             f"{results['official']['protocol']['name']} on {pair.target}")  # fmt: skip
        results["ddbench"] = r
    else:
        results["ddbench"] = score(ours, a, work / f"eval_ddbench{tag}.json",
                                   work / f"eval_ddbench{tag}.log", timings)  # fmt: skip
    summary, pooled = {}, {}
    for side, r in results.items():
        pooled[side] = [x["accuracy"] for x in r["accuracy"]["per_seed"]]
        acc = torch.tensor(pooled[side], dtype=torch.float64)
        summary[side] = {"mean": acc.mean().item(),
                         "std": acc.std(unbiased=False).item() if len(acc) > 1 else 0.0,
                         "n": len(acc), "per_distillation_seed_mean": [acc.mean().item()]}  # fmt: skip
    se = math.sqrt(sum(torch.tensor(v, dtype=torch.float64).std().item() ** 2 / len(v)
                       for v in pooled.values())) if min(map(len, pooled.values())) > 1 else 0.0  # fmt: skip
    diff = summary["ddbench"]["mean"] - summary["official"]["mean"]
    bound = max(1.0, 2 * se)
    proto = results["official"]["protocol"]
    result = {
        "method": "krr_st", "dataset": source, "ipc": a.ipc, "iterations": a.iterations,
        "distillation_seeds": [a.seed], "protocol": f"{proto['name']} on {pair.target}",
        "eval_seeds": ",".join(str(x["seed"]) for x in results["official"]["accuracy"]["per_seed"]),
        "official": summary["official"], "ddbench": summary["ddbench"],
        "difference_ddbench_minus_official": diff, "bound": bound, "standard_error": se,
        "within_bound": abs(diff) <= bound,
        "per_seed": [{"seed": a.seed, "official": results["official"]["accuracy"],
                      "ddbench": results["ddbench"]["accuracy"]}],
        "official_repo": REPO, "official_commit": commit,
        "official_edits": "bench/parity/official_krr_st_setup.sh (K0-K8)",
        "data": "ddbench's train split (the 10% val carve-out excluded), both sides; the target's "
                "splits as the transfer protocol reads them",
        "shared_target_model": enc, "settings": settings(a),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), OMP_NUM_THREADS=1",
        "torch": torch.__version__,
        "commands": {"official_seed0": shlex.join(official_cmd), "ddbench_seed0": shlex.join(
            ours_cmd[2:]) if not a.ddbench_set else f"bench/transfer.py's set {a.ddbench_set}",
            "evaluate": f"ddbench transfer SET --pair {a.pair} --protocol {a.protocol}"},
        "seconds": timings,
    }  # fmt: skip
    path = a.out / f"krr_st_{source}_ipc{a.ipc}{tag}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{path}: official {summary['official']['mean']:.2f}, ddbench "
          f"{summary['ddbench']['mean']:.2f}, diff {diff:+.2f} (bound {bound:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

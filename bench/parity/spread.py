"""ddbench's own spread at a parity row's budget: the row's ddbench distillation rerun with other
distillation seeds (everything else as recorded, the start included: a same-start row's
``method.init_from`` stays the authors' start), each set scored under the row's protocol and
evaluation seeds. A parity row has one set per side and distillation seed, so its bound holds
the models' variance only; this measures how far ddbench's sets move between runs of the same
update from the same start, the scale against which a one-seed difference can be read.

Usage: python bench/parity/spread.py PARITY_JSON SEEDS OUT
  PARITY_JSON  a result of parity.py (its ``commands`` and ``per_seed``); its first
               distillation seed's ddbench command is rerun
  SEEDS        comma-separated distillation seeds, e.g. 1,2
  OUT          OUT/seed<S>/ (set, log, eval/) per seed and OUT/spread.json; a step whose output
               exists is skipped, so a stopped run resumes
Environment: DDBENCH_PY (default: this interpreter) runs ``-m ddbench.cli`` from the repository.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DDBENCH = [os.environ.get("DDBENCH_PY", sys.executable), "-m", "ddbench.cli"]


def rerun_args(command: str, seed: int, out: Path) -> list[str]:
    """The recorded ddbench distill command's arguments with ``seed`` and the run directory
    replaced (the interpreter that recorded it dropped)."""
    args = shlex.split(command)
    args = args[args.index("distill") :]
    keys = [a.split("=", 1)[0] for a in args]
    for key in ("seed", "hydra.run.dir"):
        if key not in keys:
            raise SystemExit(f"the recorded command has no {key}=: {command}")
    return [
        f"seed={seed}" if k == "seed" else f"hydra.run.dir={out}" if k == "hydra.run.dir" else a
        for a, k in zip(args, keys)
    ]


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, check=True)


def main() -> None:
    source, seeds, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    row = json.loads(source.read_text())
    first = row["per_seed"][0]
    command = row["commands"][f"ddbench_seed{first['seed']}"]
    means = {first["seed"]: first["ddbench"]["mean"]}
    models = {first["seed"]: [m["accuracy"] for m in first["ddbench"].get("per_seed", [])]}
    for seed in (int(s) for s in seeds.split(",")):
        d = out / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "synset.safetensors").exists():
            run([*DDBENCH, *rerun_args(command, seed, d)], out / f"seed{seed}.log")
        if not (d / "eval" / "result.json").exists():
            run([*DDBENCH, "evaluate", f"synset={d / 'synset.safetensors'}",
                 f"protocol={row['protocol']}", f"protocol.seeds=[{row['eval_seeds']}]",
                 "precision=fp32", "device=cpu", "progress=false",
                 f"hydra.run.dir={d / 'eval'}"], out / f"seed{seed}.log")  # fmt: skip
        accuracy = json.loads((d / "eval" / "result.json").read_text())["accuracy"]
        means[seed] = accuracy["mean"]
        models[seed] = [m["accuracy"] for m in accuracy["per_seed"]]
    values = list(means.values())
    result = {
        "source": str(source), "method": row["method"], "dataset": row["dataset"],
        "ipc": row["ipc"], "iterations": row["iterations"], "protocol": row["protocol"],
        "eval_seeds": row["eval_seeds"], "command": command,
        "ddbench_set_means": {str(k): v for k, v in means.items()},
        "ddbench_model_accuracies": {str(k): v for k, v in models.items()},
        "range": max(values) - min(values),
        "std_over_sets": statistics.stdev(values) if len(values) > 1 else 0.0,
        "official_mean": row["official"]["mean"],
    }  # fmt: skip
    (out / "spread.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{row['method']} {row['dataset']} ipc {row['ipc']}: ddbench set means "
          f"{', '.join(f'{k}: {v:.2f}' for k, v in means.items())} (range {result['range']:.2f}); "
          f"authors' {row['official']['mean']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

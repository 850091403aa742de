"""Two sets of expert trajectories side by side, at equal epochs: the expert recipes compared
apart from the distillation (issue 27: "check the expert recipes separately").

Each side is a folder of ``replay_buffer_<n>.pt`` files (MTT's ``buffer.py`` format: the authors'
experts as their code writes them, ddbench's through ``ddbench expert export``), read and checked
against ddbench's network by :func:`ddbench.experts.buffer_to_flat`. Per compared epoch ``e``
(0, ``--every``, ..., the shorter side's last) and side, over its experts (mean and std):

* ``accuracy``: the test accuracy of the expert at epoch ``e`` (instance-norm ConvNet: no
  running statistics, so the flat parameters are the whole network);
* ``distance_from_init``: ``||theta_e - theta_0||``;
* ``epoch_step``: ``||theta_e - theta_{e-1}||`` (e >= 1);
* ``target_distance``: ``||theta_e - theta_{e+M}||^2`` for ``M = --expert-epochs`` (2), the
  denominator of MTT's matching loss for a start at ``e`` (where ``e + M`` exists).

Usage: python bench/parity/expert_stats.py DATASET DIR_A DIR_B [--names authors,ddbench]
       [--every 5] [--expert-epochs 2] [--model convnet] [--model-kwarg KEY=VALUE] [--out X.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from ddbench import data, experts
from ddbench.cli import _model_kwarg, expert_config
from ddbench.engine import accuracy


def trajectories(folder: str, flat: experts.FlatModel) -> list[torch.Tensor]:
    out = []
    for f in experts.buffer_files([folder]):
        for j, t in enumerate(experts.read_buffer(f)):
            out.append(experts.buffer_to_flat(t, flat, f"{f.name} trajectory {j}"))
    return out


def summary(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "n": len(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("dirs", nargs=2)
    p.add_argument("--names", default="authors,ddbench")
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--expert-epochs", type=int, default=2)
    p.add_argument("--model", default="convnet")
    p.add_argument("--model-kwarg", action="append", type=_model_kwarg, default=[])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    names = a.names.split(",")
    cfg, _ = expert_config(a.dataset, "mtt", a.model, model_kwargs=dict(a.model_kwarg))
    net = experts.build_expert_model(a.dataset, cfg).eval()
    flat = experts.FlatModel(net)
    sides = {n: trajectories(d, flat) for n, d in zip(names, a.dirs)}
    last = min(t.shape[0] for ts in sides.values() for t in ts) - 1
    epochs = sorted({*range(0, last + 1, max(1, a.every)), last})
    test = data.load_split(a.dataset, "test")
    rows = []
    for e in epochs:
        row: dict = {"epoch": e}
        for name, ts in sides.items():
            accs = []
            for t in ts:
                torch.nn.utils.vector_to_parameters(t[e], net.parameters())
                (acc,) = accuracy([net], test.images, test.labels, transform=test.normalize)
                accs.append(acc)
            stats = {
                "accuracy": summary(accs),
                "distance_from_init": summary([float((t[e] - t[0]).norm()) for t in ts]),
            }
            if e >= 1:
                stats["epoch_step"] = summary([float((t[e] - t[e - 1]).norm()) for t in ts])
            if e + a.expert_epochs <= last:
                m = a.expert_epochs
                stats["target_distance"] = summary(
                    [float(((t[e] - t[e + m]) ** 2).sum()) for t in ts]
                )
            row[name] = stats
        rows.append(row)
        print(f"epoch {e:3d}  " + "  ".join(
            f"{n}: acc {row[n]['accuracy']['mean']:.2f} +- {row[n]['accuracy']['std']:.2f}, "
            f"|theta-theta0| {row[n]['distance_from_init']['mean']:.3f}" for n in names
        ))  # fmt: skip
    result = {
        "dataset": a.dataset, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
        "sides": {n: {"folder": str(Path(d).resolve()), "experts": len(sides[n]),
                      "epochs": min(t.shape[0] for t in sides[n]) - 1}
                  for n, d in zip(names, a.dirs)},
        "expert_epochs_for_target_distance": a.expert_epochs, "epochs": rows,
        "command": " ".join(sys.argv), "machine": platform.machine(), "torch": torch.__version__,
    }  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

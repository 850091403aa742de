"""Print one line per ``result.json`` under a folder (the benchmark scripts' summary).

Usage: python bench/summarize.py DIR [--fyi] [--nearest]
  --fyi      also print the mean mirror symmetry of each set's images (ddbench.fyi.mirror_symmetry)
  --nearest  also print the median L2 distance from each set image to its nearest training image
             of the same dataset, in the set's own space (how far distillation moved the pixels)
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--fyi", action="store_true")
    ap.add_argument("--nearest", action="store_true")
    args = ap.parse_args()
    for f in sorted(args.root.rglob("result.json")):
        r = json.loads(f.read_text())
        a, c = r["accuracy"], r["cost"]
        line = (
            f"{f.parent.relative_to(args.root)!s:40s} {r['method']:10s} ipc={r['ipc']:<3d} "
            f"{a['mean']:6.2f} +- {a['std']:.2f} seeds={len(a['per_seed'])} "
            f"distill {_secs(c.get('distill_seconds'))} eval {_secs(c.get('eval_seconds'))} "
            f"protocol={r['protocol']['name']} comparable={r['protocol']['comparable']}"
        )
        if r.get("split", "test") != "test":
            line += f" split={r['split']} (a tuning score, not a test result)"
        if args.fyi:
            line += f" symmetry={_symmetry(f.parent):.3f}"
        if args.nearest:
            line += f" nearest_real={_nearest_real(f.parent):.2f}"
        print(line)


def _secs(v: float | None) -> str:
    """Seconds, or ``-`` where the run did not do that step (``ddbench evaluate`` distils none)."""
    return "-" if v is None else f"{v:.0f}s"


def _run_set(run_dir: Path):
    """The set a run wrote (the first ``*.safetensors`` under its folder), or None."""
    import ddbench

    sets = sorted(run_dir.rglob("*.safetensors"))
    return ddbench.load(sets[0]) if sets else None


def _symmetry(run_dir: Path) -> float:
    from ddbench.fyi import mirror_symmetry

    s = _run_set(run_dir)
    return float("nan") if s is None else float(mirror_symmetry(s.images).mean())


@functools.cache
def _train_split(dataset: str):
    from ddbench.data import load_split

    return load_split(dataset, "train")


def _nearest_real(run_dir: Path) -> float:
    import torch

    from ddbench.protocol import set_space_transform

    s = _run_set(run_dir)
    if s is None:
        return float("nan")
    train = _train_split(s.meta["dataset"])
    real = set_space_transform(s, train)(train.images).float().flatten(1)
    x = s.images.float().flatten(1)
    return float(torch.cat([torch.cdist(c, real).min(1).values for c in x.split(64)]).median())


if __name__ == "__main__":
    main()

"""Print one line per ``result.json`` under a folder (the benchmark scripts' summary).

Usage: python bench/summarize.py DIR [--fyi]
  --fyi  also print the mean mirror symmetry of each set's images (ddbench.fyi.mirror_symmetry)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--fyi", action="store_true")
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
        if args.fyi:
            line += f" symmetry={_symmetry(f.parent):.3f}"
        print(line)


def _secs(v: float | None) -> str:
    """Seconds, or ``-`` where the run did not do that step (``ddbench evaluate`` distils none)."""
    return "-" if v is None else f"{v:.0f}s"


def _symmetry(run_dir: Path) -> float:
    import ddbench
    from ddbench.fyi import mirror_symmetry

    sets = sorted(run_dir.rglob("*.safetensors"))
    if not sets:
        return float("nan")
    ds = ddbench.load(sets[0])
    return float(mirror_symmetry(ds.images).mean())


if __name__ == "__main__":
    main()

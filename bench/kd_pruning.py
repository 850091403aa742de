"""The KD weight of "Distilling the Knowledge in Data Pruning" chosen on val, scored on test.

Usage: python bench/kd_pruning.py best VAL_DIR
         one line ``method ipc hard_weight`` per method and subset size: the alpha
         (alpha = 1 - hard_weight) with the best mean val accuracy
       python bench/kd_pruning.py table VAL_DIR TEST_DIR
         per method and size: the val accuracy of every alpha, the chosen alpha and its test score

VAL_DIR holds the ``result.json`` files of ``ddbench -m run +experiment=kd_pruning`` (every one
scored on val); TEST_DIR those of the chosen alphas scored on test (bench/kd_pruning.sh).
Ties on val go to the smaller alpha.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def results(root: Path, split: str) -> list[dict]:
    """The ``result.json`` files under ``root``; each must be scored on ``split`` under a
    teacher protocol (its ``labels.hard_weight`` gives alpha)."""
    out = []
    for f in sorted(root.rglob("result.json")):
        r = json.loads(f.read_text())
        if r.get("split", "test") != split:
            raise SystemExit(f"{f}: scored on {r.get('split', 'test')}, expected {split}")
        if r["labels"]["kind"] != "teacher":
            raise SystemExit(f"{f}: trained on {r['labels']['kind']} labels, not a teacher's")
        r["alpha"] = round(1.0 - float(r["labels"]["hard_weight"]), 6)
        out.append(r)
    if not out:
        raise SystemExit(f"no result.json under {root}")
    return out


def best(val: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (method, ipc): the val result with the highest mean accuracy (ties: smaller alpha)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in val:
        groups[(r["method"], r["ipc"])].append(r)
    return {
        k: max(rs, key=lambda r: (r["accuracy"]["mean"], -r["alpha"]))
        for k, rs in sorted(groups.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("best").add_argument("val", type=Path)
    t = sub.add_parser("table")
    t.add_argument("val", type=Path)
    t.add_argument("test", type=Path)
    a = ap.parse_args()
    val = results(a.val, "val")
    chosen = best(val)
    if a.cmd == "best":
        for (method, ipc), r in chosen.items():
            print(method, ipc, r["labels"]["hard_weight"])
        return
    test = {(r["method"], r["ipc"]): r for r in results(a.test, "test")}
    alphas = sorted({r["alpha"] for r in val})
    by = {(r["method"], r["ipc"], r["alpha"]): r["accuracy"]["mean"] for r in val}
    head = " ".join(f"a={x:<5g}" for x in alphas)
    print(f"{'method':10s} {'ipc':>4s}  val: {head}  best a   test (chosen a)")
    for (method, ipc), r in chosen.items():
        cells = " ".join(
            f"{by[(method, ipc, x)]:7.2f}" if (method, ipc, x) in by else f"{'-':>7s}"
            for x in alphas
        )
        tr = test.get((method, ipc))
        if tr is not None and round(1.0 - float(tr["labels"]["hard_weight"]), 6) != r["alpha"]:
            raise SystemExit(f"{method} ipc={ipc}: the test run's alpha is not the one chosen")
        score = (
            "not run"
            if tr is None
            else f"{tr['accuracy']['mean']:6.2f} +- {tr['accuracy']['std']:.2f} "
            f"seeds={len(tr['accuracy']['per_seed'])}"
        )
        print(f"{method:10s} {ipc:4d}       {cells}  {r['alpha']:<6g}   {score}")


if __name__ == "__main__":
    main()

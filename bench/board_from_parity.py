"""Leaderboard entries from the sets of a parity run: ddbench's set and the authors' set (a
reference row, shown as "<method> (authors' set)"), each scored under the row's pinned protocol
with all its seeds and submitted with its budget.

A parity run (bench/parity/parity.py) scores both sets under the method's pinned protocol with
three of its seeds (``PARITY_EVAL_SEEDS``, 0,1,2). This script evaluates each set under the
protocol as pinned (seeds 0-4), taking the three seeds already scored from the parity run's
``result.json`` (``ddbench evaluate reuse=[...]``, which checks that it is the same set, recipe,
model, precision and kind of device), so only the missing seeds train; then ``ddbench submit``s
it. Each step is skipped when its output exists, so an interrupted run resumes.

Usage: python bench/board_from_parity.py PARITY_JSON [PARITY_JSON ...]
         [--work PARITY_OUT/work] [--sides ddbench official] [--board leaderboard]
         [--out outputs/board_from_parity] [--plan]
  PARITY_JSON  bench/results/parity/<row>.json; its sets and evaluations are read from
               ``<work>/<method>_<dataset>_ipc<K>_it<N>/seed<S>/eval_<side>/result.json``
               (the row's distillation seeds; --work defaults to the folder its commands name)
  --plan       print what would run, run nothing
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DDBENCH = [sys.executable, "-m", "ddbench.cli"]


def budget_note(row: dict, side: str, row_name: str, seed: int) -> str:
    """The budget the page shows (one line, no path: ``submit`` refuses slashes): the row's
    budget, whose code made the set, and the parity row it comes from."""
    repo = str(row.get("official_repo", "")).split(" (")[0].replace("/", " ")
    who = "ddbench" if side == "ddbench" else f"the authors' code ({repo})"
    return (f"CPU budget: {row['iterations']} iterations; made by {who} in the parity row "
            f"{row_name}, distillation seed {seed}")[:200]  # fmt: skip


def work_dir(row: dict) -> Path | None:
    """The parity run's work folder, from the folder its commands name."""
    for cmd in (row.get("commands") or {}).values():
        if m := re.search(r"(/[^\s=]+/work)/[^/\s]+/seed\d+/", str(cmd)):
            return Path(m.group(1))
    return None


def jobs(row_path: Path, work: Path | None, sides: list[str]):
    """(side, seed, the parity evaluation's result.json) of each set of the row."""
    row = json.loads(row_path.read_text())
    work = work or work_dir(row)
    if work is None:
        print(f"skipped: {row_path} names no work folder (give --work)")
        return
    name = f"{row['method']}_{row['dataset']}_ipc{row['ipc']}_it{row['iterations']}"
    for seed in row["distillation_seeds"]:
        for side in sides:
            res = work / name / f"seed{seed}" / f"eval_{side}" / "result.json"
            if res.exists():
                yield row, side, seed, res
            else:
                print(f"skipped: {res} is missing (the parity run's evaluation of this set)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--sides", nargs="+", default=["ddbench", "official"],
                    choices=["ddbench", "official"])  # fmt: skip
    ap.add_argument("--board", default=str(ROOT / "leaderboard"))
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "board_from_parity")
    ap.add_argument("--plan", action="store_true")
    a = ap.parse_args()
    failed = []
    for row_path in a.rows:
        for row, side, seed, res in jobs(row_path, a.work, a.sides):
            parity = json.loads(res.read_text())
            protocol, synset = parity["protocol"]["name"], parity["synset"]["path"]
            run = a.out / row_path.stem / f"seed{seed}" / side
            evaluate = [*DDBENCH, "evaluate", f"synset='{synset}'", f"protocol={protocol}",
                        f"reuse=['{res}']", f"precision={parity['precision']}",
                        f"device={parity['device']}", "progress=false",
                        f"hydra.run.dir={run}"]  # fmt: skip
            note = budget_note(row, side, row_path.stem, seed)
            submit = [*DDBENCH, "submit", str(run / "result.json"), "--synset", synset,
                      "--board", a.board, "--budget", note]  # fmt: skip
            if a.plan:
                print(" ".join(evaluate), "\n ", " ".join(submit[:4]), "...")
                continue
            if not (run / "result.json").exists():
                if subprocess.run(evaluate, cwd=ROOT).returncode:  # the reason is on stderr
                    failed.append(f"not scored: {run} (ddbench evaluate failed)")
                    continue
            if (run / ".submitted").exists():
                print(f"done: {run}")
                continue
            out = subprocess.run(submit, cwd=ROOT, capture_output=True, text=True)
            if out.returncode and "already on the board" not in out.stdout + out.stderr:
                failed.append(f"not submitted: {run}: {(out.stdout + out.stderr).strip()}")
                continue
            print(out.stdout.strip() or f"already on the board: {run}")
            (run / ".submitted").touch()
    if failed:
        sys.exit("\n".join(failed))


if __name__ == "__main__":
    main()

"""``ddbench aggregate DIR...``: one table of every ``result.json`` under some directories.

A cell is method x dataset x IPC x protocol (name and hash) x model x split. Its score pools
the per-seed accuracies of all the cell's results (for instance several distillation seeds,
each evaluated with the protocol's seeds): mean and population std over all those models, with
the number of results and of models. Results of the same protocol *name* with different
*hashes* (a pinned recipe and an overridden one) are never pooled: aggregation refuses them
unless ``--by-hash`` is given, which keeps them in separate rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddbench.errors import DDBenchError

# protocol and synset import torch: imported where used, so `ddbench aggregate` starts fast.

COLUMNS = ("method", "dataset", "ipc", "protocol", "hash", "model", "split")


@dataclass
class Cell:
    """The results of one method x dataset x IPC x protocol x model x split."""

    key: tuple
    comparable: bool = True
    pinned: bool = True
    accuracies: list[float] = field(default_factory=list)  # per model (seed)
    files: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies))


def find_results(dirs: list[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable ``result.json`` under ``dirs`` (a file may also be named directly)."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise DDBenchError(f"{d}: no such file or directory")
        files = [d] if d.is_file() else sorted(d.rglob("result.json"))
        for f in files:
            try:
                r = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DDBenchError(f"{f}: not a readable result.json ({e})") from e
            if not isinstance(r, dict) or "accuracy" not in r or "protocol" not in r:
                raise DDBenchError(f"{f}: not a ddbench result.json (no accuracy/protocol)")
            out.append((f, r))
    return out


def _accuracies(r: dict) -> list[float]:
    acc = r["accuracy"]
    per_seed = acc.get("per_seed") or []
    if per_seed:
        return [float(p["accuracy"]) for p in per_seed]
    return [float(acc["mean"])]


def aggregate(results: list[tuple[Path, dict]], by_hash: bool = False) -> list[Cell]:
    """Group results into cells; refuse to mix hashes of one protocol name unless ``by_hash``."""
    from ddbench.protocol import pinned_protocol_hash

    hashes: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    cells: dict[tuple, Cell] = {}
    for f, r in results:
        p = r["protocol"]
        key = (
            str(r.get("method")), str(r.get("dataset")), int(r.get("ipc") or 0),
            str(p.get("name")), str(p.get("hash")), str(r.get("model")), str(r.get("split", "test")),
        )  # fmt: skip
        hashes[key[:3] + key[5:] + (key[3],)][key[4]].append(str(f))
        c = cells.setdefault(key, Cell(key))
        c.comparable &= bool(p.get("comparable", True))
        c.pinned &= pinned_protocol_hash(key[3]) == key[4]
        c.accuracies += _accuracies(r)
        c.files.append(str(f))
    if not by_hash:
        for group, by in hashes.items():
            if len(by) > 1:
                lines = "\n".join(f"  {h}: {', '.join(fs[:3])}{' ...' if len(fs) > 3 else ''}"
                                  for h, fs in sorted(by.items()))  # fmt: skip
                raise DDBenchError(
                    f"refusing to pool results of protocol {group[-1]!r} with different hashes "
                    f"(different recipes: an overridden protocol?) for {group[0]} {group[1]} "
                    f"ipc={group[2]} model={group[3]} split={group[4]}:\n{lines}\n"
                    "aggregate them separately, or pass --by-hash to keep them in separate rows"
                )
    return sorted(cells.values(), key=lambda c: (c.key[1], c.key[2], c.key[3], c.key[6], -c.mean))


def _protocol_label(c: Cell) -> str:
    marks = ("" if c.comparable else " †") + ("" if c.pinned else " ‡")
    return c.key[3] + marks


def markdown(cells: list[Cell]) -> str:
    head = ["method", "dataset", "IPC", "protocol", "hash", "model", "split", "accuracy (%)", "n"]
    rows = []
    for c in cells:
        m, ds, ipc, _, h, model, split = c.key
        split_s = "**VAL**" if split == "val" else split
        rows.append([m, ds, str(ipc), _protocol_label(c), f"`{h}`", model, split_s,
                     f"{c.mean:.2f} ± {c.std:.2f}", f"{len(c.files)} ({len(c.accuracies)} models)"])  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = []
    if any(not c.comparable for c in cells):
        notes.append(
            "† protocol marked not comparable (a smoke recipe): not comparable with papers"
        )
    if any(not c.pinned for c in cells):
        notes.append("‡ hash differs from the pinned conf/protocol/<name>.yaml (overridden recipe)")
    if any(c.key[6] != "test" for c in cells):
        notes.append("VAL: scored on the val split (tuning), not test results")
    notes.append("accuracy: mean ± population std over all models of the cell's results; "
                 "n: results (models)")  # fmt: skip
    return "\n".join(lines) + "\n\n" + "\n".join(f"{n}  " for n in notes) + "\n"


def to_csv(cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*COLUMNS, "mean", "std", "n_results", "n_models", "comparable", "pinned"])
    for c in cells:
        w.writerow([*c.key, f"{c.mean:.4f}", f"{c.std:.4f}", len(c.files), len(c.accuracies),
                    c.comparable, c.pinned])  # fmt: skip
    return buf.getvalue()


def main(args: list[str]) -> None:
    from ddbench.synset import atomic_write

    p = argparse.ArgumentParser(
        prog="ddbench aggregate",
        description="mean ± std of every result.json under the directories, one markdown table",
    )
    p.add_argument("dirs", nargs="+", help="directories searched for result.json (recursively)")
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--by-hash", action="store_true",
                   help="keep results of one protocol name with different hashes in separate "
                        "rows instead of refusing them")  # fmt: skip
    a = p.parse_args(args)
    results = find_results(a.dirs)
    if not results:
        raise DDBenchError(f"no result.json under {', '.join(a.dirs)}")
    cells = aggregate(results, by_hash=a.by_hash)
    table = markdown(cells)
    print(table, end="")
    for path, text in ((a.out, table), (a.csv, to_csv(cells) if a.csv else None)):
        if path:
            atomic_write(Path(path), lambda tmp, text=text: Path(tmp).write_text(text))
            print(f"wrote {path}")

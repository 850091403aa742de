"""How far, and in which direction, sets moved from one start: for sets distilled from the same
start (a parity row's "from the authors' start" or "both sides from one start" runs), the rms
pixel change of each set from the start, per set and per class, each set's pixel std and learned
lr (if it stores one), and the cosine between every two sets' moves. Two implementations of one update should move by similar amounts, with the cosine
between their moves like the cosine between two seeds of one implementation.

Usage: python bench/parity/moves.py START NAME=SET [NAME=SET ...]   (ddbench set files)
"""

from __future__ import annotations

import itertools
import sys

from ddbench import synset


def main() -> None:
    start = synset.load(sys.argv[1])
    sets = dict(a.split("=", 1) for a in sys.argv[2:])
    if len(sets) < 1:
        raise SystemExit(__doc__)
    s0 = start.images.float()
    moves, extra = {}, {}
    for name, path in sets.items():
        s = synset.load(path)
        if s.images.shape != s0.shape or not s.labels.equal(start.labels):
            raise SystemExit(f"{path}: not the start's shape and labels")
        moves[name] = s.images.float() - s0
        lr = "-" if s.lr is None else f"{float(s.lr.reshape(-1)[0]):.3g}"
        extra[name] = f"{s.images.float().std():.3f} | {lr}"
    classes = start.labels.unique() if start.labels.dim() == 1 else None
    print("| set | rms move | max move | pixel std | learned lr | rms move per class |")
    print("|---|---|---|---|---|---|")
    for name, d in moves.items():
        per = (
            " ".join(f"{d[start.labels == c].pow(2).mean().sqrt():.3f}" for c in classes)
            if classes is not None
            else "-"
        )
        print(
            f"| {name} | {d.pow(2).mean().sqrt():.4f} | {d.abs().max():.3f} | {extra[name]} | {per} |"
        )
    print("\n| sets | cosine of their moves | rms difference |")
    print("|---|---|---|")
    for (a, da), (b, db) in itertools.combinations(moves.items(), 2):
        x, y = da.flatten(), db.flatten()
        cos = (x @ y / (x.norm() * y.norm())).item()
        print(f"| {a} / {b} | {cos:.3f} | {(da - db).pow(2).mean().sqrt():.4f} |")


if __name__ == "__main__":
    main()

"""Measure the leaderboard's near-copy score on honest sets and on test-set copies.

The score of a synthetic image is its best centred cosine similarity to a test image over
translations of up to ``--shift`` pixels and a mirror (``ddbench.leaderboard.best_matches``,
the function ``submit`` and ``verify`` use). This script measures it, per dataset, on

- honest images: real train images (subsampled; a real train subset is the most honest set),
  also grouped into random IPC-1 and IPC-10 sets, and every set file found under ``--sets``
  (any method, any IPC; deduplicated by checksum, large sets subsampled);
- attacks: test images shifted by 1 or 2 pixels (the border filled with the background), with
  8 % noise (Gaussian noise whose norm is 8 % of the image's norm, in the normalised space),
  mirrored, and combinations,

and reports the false-positive rate on honest images and sets and the detection rate of each
attack at ``--threshold`` (default: ``Limits().copy_cosine``), with the score distributions.

    python bench/near_copy_thresholds.py --out bench/results/near_copy/thresholds.json \
        --sets bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ddbench import data, leaderboard, synset
from ddbench.errors import DDBenchError

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def summary(scores: torch.Tensor, threshold: float) -> dict:
    q = torch.quantile(scores.double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    return {
        "n": len(scores),
        "min": round(float(scores.min()), 5),
        "max": round(float(scores.max()), 5),
        "quantiles": {str(k): round(v, 5) for k, v in zip(QUANTILES, q)},
        "flagged_fraction": round(float((scores >= threshold).double().mean()), 5),
    }


def shifted(x: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """``x`` moved by ``(dy, dx)`` pixels, the uncovered border set to ``fill``."""
    h, w = x.shape[-2:]
    out = fill.expand_as(x).clone()
    out[..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = x[
        ..., max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def noisy(x: torch.Tensor, rel: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose expected norm is ``rel`` times each image's norm."""
    scale = rel * x.flatten(1).norm(dim=1) / x[0].numel() ** 0.5
    return x + scale.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)


def random_shift(x: torch.Tensor, size: int, fill: torch.Tensor, g: torch.Generator):
    """Each image moved by ``size`` pixels in one of eight directions, chosen at random."""
    moves = [(dy, dx) for dy in (-size, 0, size) for dx in (-size, 0, size) if (dy, dx) != (0, 0)]
    pick = torch.randint(len(moves), (len(x),), generator=g).tolist()
    return torch.cat([shifted(x[i : i + 1], *moves[k], fill) for i, k in enumerate(pick)])


def find_sets(roots: list[str], exclude: list[str]) -> list[Path]:
    found = []
    for r in roots:
        p = Path(r)
        found += [p] if p.is_file() else sorted(p.rglob("*.safetensors")) if p.is_dir() else []
    return [f for f in found if not any(x in str(f) for x in exclude)]


def measure(dataset: str, args, set_files: list[Path]) -> dict:
    g = torch.Generator().manual_seed(0)
    train, test = data.load_split(dataset, "train"), data.load_split(dataset, "test")
    t = test.standardize(test.images)
    th, shift = args.threshold, args.shift
    out: dict = {"train_images": len(train.images), "test_images": len(test.images)}
    t0 = time.time()

    # honest: real train images, and random IPC-1 / IPC-10 sets of them
    idx = torch.randperm(len(train.images), generator=g)[: args.honest_images]
    scores = leaderboard.best_matches(train.standardize(train.images[idx]), t, shift)["cosine"]
    out["honest_train_images"] = summary(scores, th)
    labels = train.labels[idx]
    for ipc in (1, 10):
        flagged, n = 0, 0
        per_class = [scores[labels == c] for c in range(train.num_classes)]
        for k in range(min(len(p) for p in per_class) // ipc):
            n += 1
            flagged += int(any(bool((p[k * ipc : (k + 1) * ipc] >= th).any()) for p in per_class))
        out[f"honest_train_sets_ipc{ipc}"] = {"sets": n, "flagged": flagged,
                                              "false_positive_rate": round(flagged / max(n, 1), 5)}  # fmt: skip

    # honest: set files of the methods
    seen, sets = set(), []
    for f in set_files:
        try:
            head = synset.read_header(f)
            if head.get("dataset") != dataset or head.get("sha256") in seen:
                continue
            seen.add(head.get("sha256"))
            s = synset.load(f)
        except DDBenchError:
            continue
        x, tt = leaderboard.comparison_space(s, test)
        if len(x) > args.max_set_images:
            x = x[torch.randperm(len(x), generator=g)[: args.max_set_images]]
        m = leaderboard.best_matches(x, tt, shift)["cosine"]
        sets.append({
            "method": (s.meta.get("method") or {}).get("name"), "ipc": s.meta.get("ipc"),
            "images_scored": len(x), "full_dataset": bool(s.meta.get("full_dataset")),
            "sha12": str(s.meta.get("sha256"))[:12], "max_cosine": round(float(m.max()), 5),
            "flagged": bool(m.max() >= th),
        })  # fmt: skip
    out["method_sets"] = {
        "sets": len(sets),
        "methods": sorted({str(s["method"]) for s in sets}),
        "flagged": sum(s["flagged"] for s in sets),
        "false_positive_rate": round(sum(s["flagged"] for s in sets) / max(len(sets), 1), 5),
        "max_cosine": max((s["max_cosine"] for s in sets), default=None),
        "per_set": sorted(sets, key=lambda s: (str(s["method"]), s["ipc"] or 0, s["sha12"])),
    }

    # attacks on test images
    ti = torch.randperm(len(t), generator=g)[: args.attack_images]
    x = t[ti]
    fill = test.standardize(torch.zeros(1, *x.shape[1:], dtype=torch.uint8))
    attacks = {
        "copy": x,
        "shift1": random_shift(x, 1, fill, g),
        "shift2": random_shift(x, 2, fill, g),
        "mirror": x.flip(-1),
        "noise8": noisy(x, 0.08, g),
        "shift1+noise8": noisy(random_shift(x, 1, fill, g), 0.08, g),
        "mirror+shift1": random_shift(x.flip(-1), 1, fill, g),
    }
    out["attacks"] = _attack_results(attacks, t, ti, shift, th)
    out["gap"] = {
        "honest_max": max(
            out["honest_train_images"]["max"], out["method_sets"]["max_cosine"] or -1.0
        ),  # fmt: skip
        "attack_min": min(v["min"] for v in out["attacks"].values()),
    }
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _attack_results(attacks, t, ti, shift, th) -> dict:
    res = {}
    for name, a in attacks.items():
        m = leaderboard.best_matches(a, t, shift)
        res[name] = {
            **summary(m["cosine"], th),
            "detection_rate": round(float((m["cosine"] >= th).double().mean()), 5),
            "source_found": round(float((m["test_index"] == ti).double().mean()), 5),
        }
    return res


def main() -> None:
    d = leaderboard.Limits()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist", "mnist"])
    p.add_argument("--sets", nargs="*", default=["bench/results"],
                   help="set files, or folders searched for *.safetensors")  # fmt: skip
    p.add_argument("--exclude", nargs="*", default=[],
                   help="skip set files whose path contains one of these (e.g. attack sets that "
                        "tests wrote)")  # fmt: skip
    p.add_argument("--threshold", type=float, default=d.copy_cosine)
    p.add_argument("--shift", type=int, default=d.copy_shift)
    p.add_argument("--honest-images", type=int, default=2000)
    p.add_argument("--attack-images", type=int, default=300)
    p.add_argument("--max-set-images", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/near_copy/thresholds.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    files = find_sets(args.sets, args.exclude)
    report: dict = {
        "threshold": args.threshold,
        "shift": args.shift,
        "mirror": True,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "set_files_found": len(files),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "datasets": {},
    }
    for ds in args.datasets:
        try:
            data.load_split(ds, "test", prepare_if_missing=False)
        except DDBenchError as e:
            print(f"{ds}: skipped ({e})")
            continue
        r = measure(ds, args, files)
        report["datasets"][ds] = r
        att = ", ".join(f"{k} {v['detection_rate']:.3f}" for k, v in r["attacks"].items())
        print(f"{ds}: honest max {r['gap']['honest_max']:.4f}, attack min "
              f"{r['gap']['attack_min']:.4f}; FP images "
              f"{r['honest_train_images']['flagged_fraction']:.4f}, method sets "
              f"{r['method_sets']['flagged']}/{r['method_sets']['sets']}; detection: {att}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

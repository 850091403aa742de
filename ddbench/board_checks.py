"""The checks the leaderboard's tracks share (``ddbench.leaderboard`` for image sets,
``ddbench.graphs.board`` for graph sets, ``ddbench.transfer_board`` for transfer results): the
size limits, the result schema and its checker, the test-set near-copy search, the pinned
protocol check, and the re-evaluation's comparison and verdict line. ``ddbench.leaderboard``
re-exports every name, so ``from ddbench.leaderboard import near_copies`` keeps working.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddbench.errors import DDBenchError

MiB = 1024 * 1024


@dataclass
class Limits:
    """What a submission may be (``submit`` flags override them)."""

    max_set_bytes: int = 64 * MiB
    max_json_bytes: int = 1 * MiB
    # A synthetic image is a near-copy of a test image when its best centred cosine similarity
    # to it, over translations of up to ``copy_shift`` pixels and a mirror, is at least
    # ``copy_cosine`` (see :func:`near_copies`; the threshold is measured by
    # bench/near_copy_thresholds.py, docs/leaderboard.md).
    copy_cosine: float = 0.993
    copy_shift: int = 2

    def __post_init__(self) -> None:
        if not -1.0 <= self.copy_cosine <= 1.0:
            raise DDBenchError(f"copy_cosine must be in [-1, 1], not {self.copy_cosine}")
        if self.copy_shift < 0:
            raise DDBenchError(f"copy_shift must be >= 0 pixels, not {self.copy_shift}")
        if min(self.max_set_bytes, self.max_json_bytes) < 1:
            raise DDBenchError("the size limits must be positive")


# ----------------------------------------------------------------------------- schema

_NUM, _INT, _STR, _BOOL = "number", "integer", "string", "boolean"
_HEX16, _HEX64 = re.compile(r"^[0-9a-f]{16}$"), re.compile(r"^[0-9a-f]{64}$")
# key -> type, or a nested dict; a leading "?" marks an optional key; "|null" allows None.
RESULT_SCHEMA: dict[str, Any] = {
    "method": _STR,
    "dataset": _STR,
    "ipc": _INT,
    "model": _STR,
    "model_kwargs": "object",
    "?split": _STR,
    "protocol": {"name": _STR, "hash": _STR, "comparable": _BOOL},
    "accuracy": {"mean": _NUM, "std": _NUM, "per_seed": "list"},
    "labels": {"kind": _STR, "bytes": _INT},
    "cost": {
        "distill_seconds": _NUM + "|null",
        "eval_seconds": _NUM,
        "peak_memory_bytes": _INT,
        "synset_bytes": _INT,
        "image_bytes": _INT,
        "label_bytes": _INT,
        "?extra_bytes": _INT,
    },
    "synset": {"path": _STR + "|null", "sha256": _STR},
    "versions": "object",
    "device": _STR,
    "precision": _STR,
    "?train_loss_final": _NUM + "|null",
    "?config_key": _STR,
}


def _type_ok(value: Any, kind: str) -> bool:
    kinds = kind.split("|")
    if value is None:
        return "null" in kinds
    for k in kinds:
        if k == _STR and isinstance(value, str):
            return True
        if k == _BOOL and isinstance(value, bool):
            return True
        if k == _INT and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k == _NUM and isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value)
        if k == "object" and isinstance(value, dict):
            return True
        if k == "list" and isinstance(value, list):
            return True
    return False


def schema_errors(obj: Any, schema: dict[str, Any] = RESULT_SCHEMA, where: str = "") -> list[str]:
    """Missing keys and wrong types of a result.json (empty when it is well formed)."""
    if not isinstance(obj, dict):
        return [f"{where or 'the result'} must be a JSON object"]
    errors = []
    for key, kind in schema.items():
        optional = key.startswith("?")
        key = key.lstrip("?")
        path = f"{where}.{key}" if where else key
        if key not in obj:
            if not optional:
                errors.append(f"missing key {path!r}")
            continue
        if isinstance(kind, dict):
            errors += schema_errors(obj[key], kind, path)
        elif not _type_ok(obj[key], kind):
            errors.append(f"{path!r} must be {kind.replace('|', ' or ')}, got {obj[key]!r:.40}")
    if errors:
        return errors
    if where == "":  # value checks once the types are right
        acc = obj["accuracy"]
        for i, p in enumerate(acc["per_seed"]):
            if not (isinstance(p, dict) and _type_ok(p.get("seed"), _INT)
                    and _type_ok(p.get("accuracy"), _NUM)):  # fmt: skip
                errors.append(
                    f"'accuracy.per_seed[{i}]' must be {{seed: integer, accuracy: number}}"
                )
        values = [acc["mean"], acc["std"]] + [p.get("accuracy", 0) for p in acc["per_seed"]
                                              if isinstance(p, dict)]  # fmt: skip
        if any(isinstance(v, (int, float)) and not 0 <= v <= 100 for v in values):
            errors.append("accuracies must be percentages in [0, 100]")
        if not acc["per_seed"]:
            errors.append("'accuracy.per_seed' is empty")
        if obj["ipc"] < 1:
            errors.append("'ipc' must be >= 1")
        if not _HEX16.match(obj["protocol"]["hash"]):
            errors.append("'protocol.hash' must be 16 lowercase hex digits")
        if not _HEX64.match(obj["synset"]["sha256"]):
            errors.append("'synset.sha256' must be 64 lowercase hex digits")
    return errors


def best_matches(
    images, test, shift: int = 2, flip: bool = True, chunk: int = 2048
) -> dict[str, Any]:
    """For each image, its best match among ``test`` over small translations and a mirror.

    ``images`` ``[N,C,H,W]`` and ``test`` ``[M,C,H,W]`` are in the same image space. For every
    translation ``(dy, dx)`` with ``|dy|, |dx| <= shift`` (and for the horizontally mirrored
    image when ``flip``), the image and each test image are cropped to their overlap and
    compared by centred cosine similarity (each crop minus its mean, then normalised), so a
    copy moved by a few pixels, whatever fills the border, matches its source with cosine 1.
    ``shift`` is capped at half the image's side. Returns tensors ``cosine`` (the best,
    ``[N]``), ``test_index``, ``dy``, ``dx`` and ``flipped`` of that best match.
    """
    import torch

    x = images.detach().float()
    t = test.detach().float().to(x.device)
    n, (h, w) = len(x), x.shape[-2:]
    shift = max(0, min(shift, h // 2, w // 2))
    queries = torch.cat([x, x.flip(-1)]) if flip else x
    best = torch.full((len(queries),), -2.0, device=x.device)
    arg = torch.zeros(len(queries), dtype=torch.long, device=x.device)
    how = torch.zeros(len(queries), dtype=torch.long, device=x.device)
    shifts = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]

    def unit(v):
        v = v.flatten(1)
        v = v - v.mean(1, keepdim=True)
        return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)

    with torch.no_grad():
        for k, (dy, dx) in enumerate(shifts):
            # image pixel (y, x) against test pixel (y - dy, x - dx)
            qy, ty = slice(max(0, dy), h + min(0, dy)), slice(max(0, -dy), h + min(0, -dy))
            qx, tx = slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w + min(0, -dx))
            q = unit(queries[..., qy, qx])
            for start in range(0, len(t), chunk):
                c, ci = (q @ unit(t[start : start + chunk, :, ty, tx]).T).max(1)
                better = c > best
                best = torch.where(better, c, best)
                arg = torch.where(better, ci + start, arg)
                how = torch.where(better, torch.full_like(how, k), how)
    flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    if flip:
        mirrored = best[n:] > best[:n]
        best = torch.where(mirrored, best[n:], best[:n])
        arg = torch.where(mirrored, arg[n:], arg[:n])
        how = torch.where(mirrored, how[n:], how[:n])
        flipped = mirrored
    dy = torch.tensor([s[0] for s in shifts], device=x.device)[how]
    dx = torch.tensor([s[1] for s in shifts], device=x.device)[how]
    return {"cosine": best.cpu(), "test_index": arg.cpu(), "dy": dy.cpu(), "dx": dx.cpu(),
            "flipped": flipped.cpu()}  # fmt: skip


def comparison_space(synset, dataset_split) -> tuple[Any, Any]:
    """The set's images and the real images of ``dataset_split`` in one space for
    :func:`best_matches`: the dataset's normalised space (a ZCA set's whitening undone), or
    [0, 1] pixels for a set in raw pixel space."""
    space = synset.meta.get("space") or {}
    x, real = synset.unwhitened(), dataset_split.images
    if space.get("normalized", True):
        return x, dataset_split.standardize(real)
    return x, real.float() / 255.0


def near_copies(
    synset, limits: Limits | None = None, device: str = "cpu", dataset: str | None = None
) -> dict[str, Any]:
    """Synthetic images that match a test image of their dataset (or of ``dataset``, which must
    have the set's image shape) within ``limits``.

    The best match of each synthetic image over translations of up to ``limits.copy_shift``
    pixels and a mirror (:func:`best_matches`) in the dataset's normalised space; an image is a
    near-copy when that centred cosine similarity is at least ``limits.copy_cosine``. Returns
    ``{"max_cosine", "thresholds", "copies": [{"image", "test_index", "cosine", "shift",
    "flipped"}]}``.
    """
    from ddbench import data

    limits = limits or Limits()
    dataset = dataset or synset.meta.get("dataset")
    try:
        test = data.load_split(dataset, "test")
        x, t = comparison_space(synset, test)
    except DDBenchError as e:
        raise DDBenchError(f"cannot check the set against the {dataset} test split: {e}") from e
    m = best_matches(x.to(device), t, limits.copy_shift, flip=True)
    flagged = (m["cosine"] >= limits.copy_cosine).nonzero().flatten().tolist()
    copies = [
        {
            "image": int(i),
            "test_index": int(m["test_index"][i]),
            "cosine": round(float(m["cosine"][i]), 6),
            "shift": [int(m["dy"][i]), int(m["dx"][i])],
            "flipped": bool(m["flipped"][i]),
        }
        for i in flagged
    ]
    return {
        "max_cosine": round(float(m["cosine"].max()), 6) if len(x) else None,
        "thresholds": {"cosine": limits.copy_cosine, "shift": limits.copy_shift, "flip": True},
        "copies": copies,
    }


def _copies_message(nc: dict) -> str:
    c = nc["copies"]
    first = ", ".join(
        f"image {d['image']} ~ test image {d['test_index']} (cosine {d['cosine']:.4f}, shift "
        f"{tuple(d['shift'])}{', mirrored' if d['flipped'] else ''})"
        for d in c[:3]
    )
    return f"{len(c)} synthetic image(s) are near-copies of test images: {first}"


_BAD_TEXT = re.compile(r"[/\\]|\.\.")


def check_pinned(result: dict, proto: Any, pinned_hash: str, what: str = "protocol") -> Any:
    """``result`` was scored under ``proto`` as pinned (its hash ``pinned_hash``), unmodified,
    with its seeds and a mean that matches them; returns ``proto``. Image and graph protocols
    (``what``) share this check."""
    p = result["protocol"]
    if p["hash"] != pinned_hash:
        raise DDBenchError(
            f"{what} {p['name']!r} hash {p['hash']} differs from the pinned hash {pinned_hash}: "
            "the recipe was overridden (e.g. protocol.epochs=...) or is out of date"
        )
    if p["comparable"] != proto.comparable:
        raise DDBenchError(f"{what} {p['name']!r}: 'comparable' is {p['comparable']}, the pinned "
                           f"protocol says {proto.comparable}")  # fmt: skip
    seeds = [s["seed"] for s in result["accuracy"]["per_seed"]]
    if seeds != list(proto.seeds):
        raise DDBenchError(f"per-seed accuracies are for seeds {seeds}; {what} {p['name']!r} "
                           f"uses seeds {list(proto.seeds)}")  # fmt: skip
    _check_accuracy_consistent(result)
    return proto


def _check_accuracy_consistent(result: dict, places: float = 0.01) -> None:
    acc = result["accuracy"]
    vals = [p["accuracy"] for p in acc["per_seed"]]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    if abs(mean - acc["mean"]) > places or abs(std - acc["std"]) > places:
        raise DDBenchError(
            f"accuracy mean/std {acc['mean']:.4f}/{acc['std']:.4f} do not match the per-seed "
            f"accuracies (mean {mean:.4f}, std {std:.4f})"
        )


def submitted_scores(e: dict, seeds: list[int], rep: dict) -> dict[int, float] | None:
    """The entry's accuracy per seed; None, with a flag in ``rep``, if one of ``seeds`` (those
    re-evaluated) has none."""
    submitted = {d["seed"]: d["accuracy"] for d in e["accuracy"]["per_seed"]}
    missing = [x for x in seeds if x not in submitted]
    if missing:
        rep["flags"].append(f"the entry has no accuracy for seed(s) {missing}")
        return None
    return submitted


def compare(rep: dict, submitted: dict, seeds: list[int], got: float, tolerance: float) -> None:
    """Record in ``rep`` the re-evaluated mean ``got`` against the submitted mean over ``seeds``
    (``claimed``, ``reevaluated``, ``difference``, ``detail``), flagged beyond ``tolerance``."""
    claimed = sum(submitted[x] for x in seeds) / len(seeds)
    rep.update(claimed=claimed, reevaluated=got, difference=got - claimed)
    text = f"re-evaluated {got:.2f} % vs submitted {claimed:.2f} % (difference {got - claimed:+.2f}"
    if abs(got - claimed) > tolerance:
        rep["flags"].append(f"{text} > tolerance {tolerance})")
    rep["detail"] = f"{text}, tolerance {tolerance})"


def print_verdict(path: Path, rep: dict, out: Any = print, tag: str = "") -> None:
    """One line per entry: ``FLAG`` with the reasons, or ``OK`` with the comparison."""
    if rep["flags"]:
        out(f"FLAG {path}: {'; '.join(rep['flags'])}")
    else:
        out(f"OK   {path}: {rep['detail']}{tag}")

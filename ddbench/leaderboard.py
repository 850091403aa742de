"""The leaderboard: validated submissions, a static page, and re-evaluation.

    ddbench submit RESULT.json --synset SET.safetensors [--board leaderboard]
    ddbench leaderboard build  [--board leaderboard]
    ddbench leaderboard verify [--board leaderboard] [--tolerance 1.0]

A submission is a ``result.json`` (as ``ddbench run``/``evaluate`` wrote it) and the set file it
scored. ``submit`` checks both (see :func:`check_submission` and ``leaderboard/SCHEMA.md``) and
on success writes one entry, ``submissions/<dataset>/ipc<N>/<protocol>/<method>-<sha12>.json``,
with the set copied beside it. A rejected submission changes nothing. ``build`` regenerates
``README.md`` and ``index.html`` from the entries; ``verify`` re-evaluates every set under its
pinned protocol and flags scores that differ from the submitted ones by more than a tolerance.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import math
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ddbench
from ddbench.errors import DDBenchError

# The ddbench modules that import torch (data, protocol, synset) are imported where they are
# used, so that `ddbench leaderboard build` and `ddbench aggregate` start in well under a second
# (importing torch takes seconds).

DEFAULT_BOARD = "leaderboard"
MiB = 1024 * 1024


@dataclass
class Limits:
    """What a submission may be (``submit`` flags override them)."""

    max_set_bytes: int = 64 * MiB
    max_json_bytes: int = 1 * MiB
    # A synthetic image is a near-copy of a test image when, in the set's image space, its
    # centred cosine similarity is at least ``copy_cosine`` or its L2 distance is at most
    # ``copy_rel_l2`` times the test image's norm. Nearest real train/test pairs of digits and
    # Fashion-MNIST stay below cosine 0.992 and above relative L2 0.12.
    copy_cosine: float = 0.999
    copy_rel_l2: float = 0.05


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


# ----------------------------------------------------------------------------- checks


def near_copies(synset, limits: Limits | None = None, chunk: int = 1024) -> dict[str, Any]:
    """Synthetic images within a small distance of a test image of their dataset.

    Test images are mapped into the set's image space (normalisation, ZCA) and compared in
    chunks: centred cosine similarity and L2 distance relative to the test image's norm.
    Returns ``{"max_cosine", "min_rel_l2", "copies": [{"image", "test_index", ...}], ...}``.
    """
    import torch

    from ddbench import data
    from ddbench.protocol import set_space_transform

    limits = limits or Limits()
    dataset = synset.meta.get("dataset")
    try:
        train = data.load_split(dataset, "train")
        test = data.load_split(dataset, "test")
    except DDBenchError as e:
        raise DDBenchError(f"cannot check the set against the {dataset} test split: {e}") from e
    transform = set_space_transform(synset.meta, train)
    x = synset.images.detach().float().flatten(1)
    xc = x - x.mean(1, keepdim=True)
    xc = xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-8)
    best_cos = torch.full((len(x),), -1.0)
    best_rel = torch.full((len(x),), math.inf)
    arg_cos = torch.zeros(len(x), dtype=torch.long)
    arg_rel = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(test.images), chunk):
            t = transform(test.images[start : start + chunk]).float().flatten(1)
            tc = t - t.mean(1, keepdim=True)
            tc = tc / tc.norm(dim=1, keepdim=True).clamp_min(1e-8)
            cos = xc @ tc.T
            rel = torch.cdist(x, t) / t.norm(dim=1).clamp_min(1e-8)[None]
            c, ci = cos.max(1)
            r, ri = rel.min(1)
            better_c, better_r = c > best_cos, r < best_rel
            best_cos = torch.where(better_c, c, best_cos)
            arg_cos = torch.where(better_c, ci + start, arg_cos)
            best_rel = torch.where(better_r, r, best_rel)
            arg_rel = torch.where(better_r, ri + start, arg_rel)
    flagged = (best_cos >= limits.copy_cosine) | (best_rel <= limits.copy_rel_l2)
    copies = [
        {
            "image": int(i),
            "test_index": int(arg_rel[i] if best_rel[i] <= limits.copy_rel_l2 else arg_cos[i]),
            "cosine": round(float(best_cos[i]), 6),
            "rel_l2": round(float(best_rel[i]), 6),
        }
        for i in flagged.nonzero().flatten().tolist()
    ]
    return {
        "max_cosine": round(float(best_cos.max()), 6) if len(x) else None,
        "min_rel_l2": round(float(best_rel.min()), 6) if len(x) else None,
        "thresholds": {"cosine": limits.copy_cosine, "rel_l2": limits.copy_rel_l2},
        "copies": copies,
    }


def _copies_message(nc: dict) -> str:
    c = nc["copies"]
    first = ", ".join(f"image {d['image']} ~ test image {d['test_index']} (cosine {d['cosine']:.4f}, "
                      f"relative L2 {d['rel_l2']:.4f})" for d in c[:3])  # fmt: skip
    return f"{len(c)} synthetic image(s) are near-copies of test images: {first}"


def check_submission(
    result_path: str | Path, synset_path: str | Path, limits: Limits | None = None
) -> tuple[dict, Any, dict]:
    """Validate a submission; returns ``(result, synset, checks)`` or raises DDBenchError."""
    import torch

    from ddbench import synset as synset_io
    from ddbench.protocol import pinned_protocol_hash

    limits = limits or Limits()
    result_path, synset_path = Path(result_path), Path(synset_path)
    for path, cap, what in ((result_path, limits.max_json_bytes, "result"),
                            (synset_path, limits.max_set_bytes, "set")):  # fmt: skip
        if not path.is_file():
            raise DDBenchError(f"{path}: no such file")
        size = path.stat().st_size
        if size > cap:
            raise DDBenchError(f"{path}: the {what} file is {size} bytes, over the limit of {cap}")
    try:
        result = json.loads(result_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DDBenchError(f"{result_path} is not valid JSON: {e}") from e
    errors = schema_errors(result)
    if errors:
        raise DDBenchError(f"{result_path} does not follow the result schema: {'; '.join(errors)}")
    split = result.get("split", "test")
    if split != "test":
        raise DDBenchError(f"{result_path} was scored on the {split!r} split; only test results "
                           "can be submitted")  # fmt: skip
    # The protocol: pinned, unmodified.
    p = result["protocol"]
    pinned = pinned_protocol_hash(p["name"])
    if pinned is None:
        raise DDBenchError(
            f"protocol {p['name']!r} is not pinned (no conf/protocol/{p['name']}.yaml)"
        )
    if p["hash"] != pinned:
        raise DDBenchError(
            f"protocol {p['name']!r} hash {p['hash']} differs from the pinned hash {pinned}: "
            "the recipe was overridden (e.g. protocol.epochs=...) or is out of date"
        )
    proto = _pinned_protocol(p["name"])
    if p["comparable"] != proto.comparable:
        raise DDBenchError(f"protocol {p['name']!r}: 'comparable' is {p['comparable']}, the pinned "
                           f"protocol says {proto.comparable}")  # fmt: skip
    seeds = [s["seed"] for s in result["accuracy"]["per_seed"]]
    if seeds != list(proto.seeds):
        raise DDBenchError(f"per-seed accuracies are for seeds {seeds}; protocol {p['name']!r} "
                           f"uses seeds {list(proto.seeds)}")  # fmt: skip
    _check_accuracy_consistent(result)
    # The set: loads (no pickle, not truncated, finite, shapes, checksum), is the one scored.
    s = synset_io.load(synset_path)
    meta = s.meta
    if result["synset"]["sha256"] != meta.get("sha256"):
        raise DDBenchError(
            f"sha256 mismatch: the result scored set {result['synset']['sha256'][:12]}..., "
            f"{synset_path} is {str(meta.get('sha256'))[:12]}..."
        )
    for key, theirs in (("dataset", meta.get("dataset")), ("ipc", meta.get("ipc")),
                        ("method", (meta.get("method") or {}).get("name"))):  # fmt: skip
        if result[key] != theirs:
            raise DDBenchError(f"the result says {key} {result[key]!r}, the set says {theirs!r}")
    hard = s.hard_labels
    most = int(torch.bincount(hard).max()) if len(hard) else 0
    if most > result["ipc"]:
        raise DDBenchError(f"a class has {most} images, over the ipc budget of {result['ipc']}")
    nbytes = s.nbytes()
    # labels=crops: the stored per-crop labels count with the set's own (ddbench.crop_labels)
    nbytes["labels"] += int(result["labels"].get("crop_label_bytes", 0))
    want = {
        "labels.bytes": nbytes["labels"],
        "cost.label_bytes": nbytes["labels"],
        "cost.image_bytes": nbytes["images"],
        "cost.synset_bytes": nbytes["images"] + nbytes["labels"],
    }
    for key, value in want.items():
        a, b = key.split(".")
        if result[a][b] != value:
            raise DDBenchError(f"'{key}' is {result[a][b]}, but the set's labels/images take "
                               f"{value} bytes")  # fmt: skip
    if result["labels"]["kind"] not in ("hard", "soft", "teacher", "crops"):
        raise DDBenchError(
            f"'labels.kind' must be hard, soft, teacher or crops, not {result['labels']['kind']!r}"
        )
    if result["labels"]["kind"] == "soft" and not s.soft_labels:
        raise DDBenchError("'labels.kind' is soft, but the set has hard labels")
    nc = near_copies(s, limits)
    if nc["copies"]:
        raise DDBenchError(_copies_message(nc))
    return result, s, {"near_copies": nc}


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


def _pinned_protocol(name: str):
    from ddbench.protocol import Protocol, protocol_config

    return Protocol.from_config(protocol_config(name))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".") or "_"


def entry_path(board: Path, result: dict) -> Path:
    sha12 = result["synset"]["sha256"][:12]
    return (board / "submissions" / _safe(result["dataset"]) / f"ipc{int(result['ipc'])}"
            / _safe(result["protocol"]["name"]) / f"{_safe(result['method'])}-{sha12}.json")  # fmt: skip


def submit(
    result_path: str | Path, synset_path: str | Path, board: str | Path = DEFAULT_BOARD,
    limits: Limits | None = None,
) -> Path:  # fmt: skip
    """Validate and add a submission to ``board``; returns the entry's path."""
    from ddbench.synset import atomic_write

    board = Path(board)
    result, _, checks = check_submission(result_path, synset_path, limits)
    entry = entry_path(board, result)
    set_file = entry.with_suffix(".safetensors")
    if entry.exists():
        raise DDBenchError(f"this set is already on the board: {entry}")
    stored = dict(result)
    stored["synset"] = {"path": set_file.name, "sha256": result["synset"]["sha256"]}
    stored["submission"] = {
        "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "result_file": Path(result_path).name,
        "set_file": set_file.name,
        "set_file_bytes": Path(synset_path).stat().st_size,
        "checked_by": f"ddbench {ddbench.__version__}",
        "checks": checks,
    }
    text = json.dumps(stored, indent=2) + "\n"
    atomic_write(set_file, lambda tmp: shutil.copyfile(synset_path, tmp))
    try:
        atomic_write(entry, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        set_file.unlink(missing_ok=True)
        raise
    return entry


# ----------------------------------------------------------------------------- build


def entries(board: str | Path = DEFAULT_BOARD) -> list[tuple[Path, dict]]:
    """Every submission entry on the board, as ``(path, entry)``."""
    root = Path(board) / "submissions"
    out = []
    for f in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            out.append((f, json.loads(f.read_text())))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DDBenchError(f"{f}: unreadable board entry ({e})") from e
    return out


def _groups(board: Path) -> dict[tuple, list[tuple[Path, dict]]]:
    groups: dict[tuple, list] = defaultdict(list)
    for f, e in entries(board):
        p = e["protocol"]
        groups[(e["dataset"], int(e["ipc"]), p["name"], p["hash"])].append((f, e))
    for rows in groups.values():
        rows.sort(key=lambda fe: -fe[1]["accuracy"]["mean"])
    return dict(sorted(groups.items()))


def _model_label(e: dict) -> str:
    """The model and the kwargs that differ from its shipped config (conf/model/<name>.yaml)."""
    import importlib.resources

    from omegaconf import OmegaConf

    kw = e.get("model_kwargs") or {}
    f = importlib.resources.files("ddbench.conf") / "model" / f"{_safe(e['model'])}.yaml"
    default = {}
    if f.is_file():
        default = OmegaConf.to_container(OmegaConf.load(str(f))).get("kwargs") or {}
    diff = ",".join(f"{k}={v}" for k, v in sorted(kw.items()) if default.get(k) != v)
    return e["model"] + (f" ({diff})" if diff else "")


_COLUMNS = (  # key, header, type
    ("rank", "#", "num"), ("method", "method", "str"), ("accuracy", "accuracy (%)", "num"),
    ("std", "std", "num"), ("distill", "distill (s)", "num"), ("eval", "eval (s)", "num"),
    ("bytes", "storage (bytes)", "num"), ("model", "model", "str"), ("set", "set", "str"),
)  # fmt: skip


def _row(rank: int, f: Path, e: dict, board: Path) -> dict[str, tuple[str, str]]:
    """column key -> (sort value, display text)."""
    c = e.get("cost") or {}
    d = c.get("distill_seconds")
    link = f.with_name(e["synset"]["path"]).relative_to(board).as_posix()
    acc = e["accuracy"]
    return {
        "rank": (str(rank), str(rank)),
        "method": (e["method"], e["method"]),
        "accuracy": (f"{acc['mean']:.4f}", f"{acc['mean']:.2f}"),
        "std": (f"{acc['std']:.4f}", f"{acc['std']:.2f}"),
        "distill": ("" if d is None else f"{d:.3f}", "–" if d is None else f"{d:.1f}"),
        "eval": (f"{c['eval_seconds']:.3f}", f"{c['eval_seconds']:.1f}"),
        "bytes": (str(c["synset_bytes"]), f"{c['synset_bytes']:,}"),
        "model": (_model_label(e), _model_label(e)),
        "set": (link, link),
    }


def _title(key: tuple) -> str:
    ds, ipc, name, h = key
    return f"{ds} · IPC {ipc} · {name} ({h})"


def markdown(board: Path) -> str:
    groups = _groups(board)
    lines = [
        "# ddbench leaderboard",
        "",
        "Generated by `ddbench leaderboard build` from `submissions/`; do not edit by hand.",
        "One table per dataset × IPC × pinned protocol. Accuracy: the protocol's final-epoch test",
        "accuracy, mean and std over its seeds. `index.html` has the same tables, sortable.",
        "Submitting: `docs/leaderboard.md`; entry schema: `SCHEMA.md`.",
        "",
    ]
    if not groups:
        lines += ["No submissions yet.", ""]
    for key, rows in groups.items():
        lines += [f"## {_title(key)}", ""]
        if not all(e["protocol"].get("comparable", True) for _, e in rows):
            lines += ["*Smoke protocol: not comparable with papers or other protocols.*", ""]
        lines.append("| " + " | ".join(h for _, h, _ in _COLUMNS) + " |")
        lines.append("|" + "---|" * len(_COLUMNS))
        for i, (f, e) in enumerate(rows, 1):
            r = _row(i, f, e, board)
            cells = [r[k][1] for k, _, _ in _COLUMNS]
            cells[-1] = f"[{Path(r['set'][1]).name}]({r['set'][1]})"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


_JS = r"""
(function () {
  function sortTable(table, key, dir) {
    var ths = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var col = -1;
    ths.forEach(function (th, i) { if (th.dataset.key === key) col = i; });
    if (col < 0) return false;
    var num = ths[col].dataset.type === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value, c;
      if (num) {
        var fx = parseFloat(x), fy = parseFloat(y);
        if (isNaN(fx) || isNaN(fy)) return (isNaN(fx) ? 1 : 0) - (isNaN(fy) ? 1 : 0);
        c = fx - fy;
      } else { c = x.localeCompare(y); }
      return dir === "asc" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    ths.forEach(function (th) { th.removeAttribute("aria-sort"); });
    ths[col].setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    table.dataset.sort = key + ":" + dir;
    return true;
  }
  function fromHash() {
    var m = /(?:^#|&)sort=([A-Za-z_]+)(?::(asc|desc))?/.exec(location.hash);
    if (!m) return;
    document.querySelectorAll("table.board").forEach(function (t) {
      sortTable(t, m[1], m[2] || "desc");
    });
  }
  document.querySelectorAll("table.board").forEach(function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        var cur = (t.dataset.sort || "").split(":");
        var dir = cur[0] === th.dataset.key && cur[1] === "desc" ? "asc" : "desc";
        if (sortTable(t, th.dataset.key, dir)) {
          history.replaceState(null, "", "#sort=" + th.dataset.key + ":" + dir);
        }
      });
    });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.board { border-collapse: collapse; min-width: 60%; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
td:nth-child(2), td:nth-child(8), td:nth-child(9), th:nth-child(2), th:nth-child(8),
th:nth-child(9) { text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:hover { background: #fafae8; }
.note { color: #a15c00; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def page(board: Path) -> str:
    esc = html.escape
    groups = _groups(board)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>ddbench leaderboard</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>ddbench leaderboard</h1>",
        "<p>One table per dataset × IPC × pinned protocol. Accuracy: final-epoch test accuracy, "
        "mean and std over the protocol's seeds. Click a column header to sort; a link such as "
        "<code>#sort=accuracy:asc</code> sorts on load. Generated by "
        "<code>ddbench leaderboard build</code>.</p>",
    ]  # fmt: skip
    if not groups:
        parts.append("<p>No submissions yet.</p>")
    for key, rows in groups.items():
        ds, ipc, name, h = key
        parts.append(
            f'<section data-dataset="{esc(ds)}" data-ipc="{ipc}" data-protocol="{esc(name)}">'
        )
        parts.append(f"<h2>{esc(ds)} · IPC {ipc} · {esc(name)} <code>{esc(h)}</code></h2>")
        if not all(e["protocol"].get("comparable", True) for _, e in rows):
            parts.append('<p class="note">Smoke protocol: not comparable with papers.</p>')
        parts.append('<table class="board" data-sort="accuracy:desc"><thead><tr>')
        for k, head, kind in _COLUMNS:
            sort = ' aria-sort="descending"' if k == "accuracy" else ""
            parts.append(f'<th data-key="{k}" data-type="{kind}"{sort}>{esc(head)}</th>')
        parts.append("</tr></thead><tbody>")
        for i, (f, e) in enumerate(rows, 1):
            r = _row(i, f, e, board)
            cells = []
            for k, _, _ in _COLUMNS:
                value, text = r[k]
                shown = (f'<a href="{esc(text)}">{esc(Path(text).name)}</a>' if k == "set"
                         else esc(text))  # fmt: skip
                cells.append(f'<td data-key="{k}" data-value="{esc(value)}">{shown}</td>')
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table></section>")
    parts += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(parts)


def build(board: str | Path = DEFAULT_BOARD) -> tuple[Path, Path]:
    """Regenerate ``README.md`` and ``index.html`` of ``board``."""
    from ddbench.synset import atomic_write

    board = Path(board)
    md, page_html = markdown(board), page(board)
    readme, index = board / "README.md", board / "index.html"
    atomic_write(readme, lambda tmp: Path(tmp).write_text(md))
    atomic_write(index, lambda tmp: Path(tmp).write_text(page_html))
    return readme, index


# ----------------------------------------------------------------------------- verify


def verify(
    board: str | Path = DEFAULT_BOARD, tolerance: float = 1.0, *, epochs: int | None = None,
    seeds: list[int] | None = None, device: str = "auto", limits: Limits | None = None,
    out=print,
) -> list[dict]:  # fmt: skip
    """Re-evaluate every entry under its pinned protocol; returns one report per entry.

    A report is flagged when the set no longer loads or matches its checksum, the protocol is no
    longer the pinned one, the accuracies are inconsistent, a synthetic image is a near-copy of a
    test image, or the re-evaluated score differs from the submitted one by more than
    ``tolerance`` points. ``epochs``/``seeds`` change the protocol for tests only: seeds restricts
    the comparison to those seeds' accuracies; an epochs override makes the check meaningless
    and is marked as such.
    """
    from ddbench import synset as synset_io
    from ddbench.protocol import evaluate, pinned_protocol_hash

    board = Path(board)
    reports = []
    override = {k: v for k, v in (("epochs", epochs), ("seeds", seeds)) if v is not None}
    tag = (
        f"  [TEST OVERRIDE {override}: not a verification of the pinned score]" if override else ""
    )
    for f, e in entries(board):
        rep: dict[str, Any] = {"entry": str(f), "flags": [], "override": override or None}
        reports.append(rep)
        try:
            p = e["protocol"]
            if pinned_protocol_hash(p["name"]) != p["hash"]:
                raise DDBenchError(
                    f"protocol {p['name']!r} is no longer pinned at hash {p['hash']}"
                )
            _check_accuracy_consistent(e)
            s = synset_io.load(f.with_name(e["synset"]["path"]))
            if s.meta.get("sha256") != e["synset"]["sha256"]:
                raise DDBenchError("the set file is not the one submitted (sha256 differs)")
        except (DDBenchError, KeyError, TypeError) as err:
            rep["flags"].append(str(err))
            out(f"FLAG {f}: {err}")
            continue
        nc = near_copies(s, limits)
        if nc["copies"]:
            rep["flags"].append(_copies_message(nc))
        proto = _pinned_protocol(p["name"])
        if epochs is not None:
            proto.epochs = int(epochs)
        if seeds is not None:
            proto.seeds = [int(x) for x in seeds]
        submitted = {d["seed"]: d["accuracy"] for d in e["accuracy"]["per_seed"]}
        missing = [x for x in proto.seeds if x not in submitted]
        if missing:
            rep["flags"].append(f"the entry has no accuracy for seed(s) {missing}")
            out(f"FLAG {f}: {rep['flags'][-1]}")
            continue
        s.meta["_path"] = str(f.with_name(e["synset"]["path"]))
        try:
            r = evaluate(s, proto, e["model"], e.get("model_kwargs") or {}, device=device,
                         progress=False)  # fmt: skip
        except DDBenchError as err:
            rep["flags"].append(f"could not re-evaluate: {err}")
            out(f"FLAG {f}: {rep['flags'][-1]}")
            continue
        claimed = sum(submitted[x] for x in proto.seeds) / len(proto.seeds)
        rep.update(claimed=claimed, reevaluated=r["accuracy"]["mean"],
                   difference=r["accuracy"]["mean"] - claimed)  # fmt: skip
        if abs(rep["difference"]) > tolerance:
            rep["flags"].append(
                f"re-evaluated {r['accuracy']['mean']:.2f} % vs submitted {claimed:.2f} % "
                f"(difference {rep['difference']:+.2f} > tolerance {tolerance})"
            )
        status = "FLAG" if rep["flags"] else "OK  "
        detail = "; ".join(rep["flags"]) or (
            f"re-evaluated {rep['reevaluated']:.2f} % vs submitted {claimed:.2f} % "
            f"(difference {rep['difference']:+.2f}, tolerance {tolerance})"
        )
        out(f"{status} {f}: {detail}{tag}")
    return reports


# ----------------------------------------------------------------------------- commands


def _limits_args(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--max-set-bytes", type=int, default=d.max_set_bytes)
    p.add_argument("--max-json-bytes", type=int, default=d.max_json_bytes)
    p.add_argument(
        "--copy-cosine",
        type=float,
        default=d.copy_cosine,
        help="flag a synthetic image with centred cosine >= this to a test image",
    )
    p.add_argument("--copy-rel-l2", type=float, default=d.copy_rel_l2,
                   help="flag a synthetic image within this L2 distance (relative to the test "
                        "image's norm) of a test image")  # fmt: skip


def _limits(a: argparse.Namespace) -> Limits:
    return Limits(a.max_set_bytes, a.max_json_bytes, a.copy_cosine, a.copy_rel_l2)


def main_submit(args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="ddbench submit",
                                description="validate a result and its set, add them to the board")  # fmt: skip
    p.add_argument("result", help="result.json written by ddbench run/evaluate")
    p.add_argument("--synset", required=True, help="the .safetensors set the result scored")
    p.add_argument("--board", default=DEFAULT_BOARD, help="the leaderboard directory")
    _limits_args(p)
    a = p.parse_args(args)
    entry = submit(a.result, a.synset, a.board, _limits(a))
    print(f"accepted: {entry}")
    print(f"run `ddbench leaderboard build --board {a.board}` to update the tables")


def main_leaderboard(args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="ddbench leaderboard")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="regenerate README.md and index.html from the submissions")
    b.add_argument("--board", default=DEFAULT_BOARD)
    v = sub.add_parser("verify", help="re-evaluate every submitted set under its protocol")
    v.add_argument("--board", default=DEFAULT_BOARD)
    v.add_argument("--tolerance", type=float, default=1.0,
                   help="largest accepted |re-evaluated - submitted| mean accuracy, in points")  # fmt: skip
    v.add_argument("--epochs", type=int, default=None, help="TESTS ONLY: override the epochs")
    v.add_argument("--seeds", default=None,
                   help="TESTS ONLY: comma-separated seeds to re-evaluate (a subset)")  # fmt: skip
    v.add_argument("--device", default="auto")
    v.add_argument("--report", default=None, help="also write the reports as JSON")
    _limits_args(v)
    a = p.parse_args(args)
    if a.action == "build":
        readme, index = build(a.board)
        print(f"wrote {readme} and {index} ({len(entries(a.board))} submissions)")
        return
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
    reports = verify(a.board, a.tolerance, epochs=a.epochs, seeds=seeds, device=a.device,
                     limits=_limits(a))  # fmt: skip
    flagged = [r for r in reports if r["flags"]]
    if a.report:
        from ddbench.synset import atomic_write

        text = json.dumps(reports, indent=2) + "\n"
        atomic_write(Path(a.report), lambda tmp: Path(tmp).write_text(text))
    print(f"verified {len(reports)} submission(s): {len(flagged)} flagged")
    if flagged:
        sys.stdout.flush()
        raise SystemExit(1)

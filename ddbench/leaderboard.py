"""The leaderboard: validated submissions, a static page, and re-evaluation.

    ddbench submit RESULT.json --synset SET.safetensors [--board leaderboard]
    ddbench leaderboard build  [--board leaderboard]
    ddbench leaderboard verify [--board leaderboard] [--tolerance 1.0] [--own-only]
    ddbench leaderboard reproduce ENTRY [--board leaderboard]

A submission is a ``result.json`` (as ``ddbench run``/``evaluate`` wrote it) and the set file it
scored. ``submit`` checks both (see :func:`check_submission` and ``leaderboard/SCHEMA.md``) and
on success writes one entry, ``submissions/<dataset>/ipc<N>/<protocol>/<method>-<sha12>.json``,
with the set copied beside it; a set already on the board (same tensors, same track: image
or transfer) is refused whatever its metadata says, unless the result is another view of it
(another pinned protocol or model: it joins the entry's ``other_results``). A rejected
submission changes nothing.
``build`` regenerates ``README.md``, ``index.html`` and the sets' thumbnails from the
well-formed entries (:func:`scan`; ``ddbench.board_page``, scores from ``ddbench.scores``),
listing the others as excluded;
``verify`` recomputes from each set what its entry claims, looks for test-set near-copies, and
re-evaluates it under its pinned protocol; ``reproduce`` reruns an entry's distillation
(``ddbench.reproduce``). A malformed entry is flagged with its reason and never stops the
others.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import sys
import unicodedata
from pathlib import Path
from typing import Any

import ddbench
from ddbench import transfer_board
from ddbench.board_checks import (  # noqa: F401  (re-exported: the tracks' shared checks)
    _BAD_TEXT,
    _HEX16,
    _HEX64,
    _INT,
    RESULT_SCHEMA,
    Limits,
    _check_accuracy_consistent,
    _copies_message,
    _type_ok,
    best_matches,
    check_pinned,
    compare,
    comparison_space,
    near_copies,
    print_verdict,
    schema_errors,
    submitted_scores,
)
from ddbench.errors import DDBenchError

# The ddbench modules that import torch (data, protocol, synset) are imported where they are
# used, so that `ddbench leaderboard build` and `ddbench aggregate` start in well under a second
# (importing torch takes seconds).

DEFAULT_BOARD = "leaderboard"
MiB = 1024 * 1024


# ----------------------------------------------------------------------------- checks


# Values that are descriptions, not names: a slash is allowed there (a transfer result's
# ``target_data`` is the catalogue's text on how the target's images are made, checked against
# the catalogue by ddbench.transfer_board.check_protocol); control characters are not.
PROSE = ("target_data",)


def text_errors(
    obj: Any, where: str = "", skip: tuple[str, ...] = ("synset.path",), prose: tuple[str, ...] = PROSE
) -> list[str]:  # fmt: skip
    """Free-text values and keys of a result that hold path parts (``/``, ``\\``, ``..``), NUL
    or other control or format characters; ``skip``: keys (dotted) not checked; ``prose``: keys
    (dotted) whose values may hold path parts but no control or format character."""
    errors = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{where}.{k}" if where else str(k)
            if path in skip:
                continue
            errors += text_errors(str(k), f"key of {where or 'the result'}", skip, ())
            if path in prose and isinstance(v, str):
                if any(unicodedata.category(c) in ("Cc", "Cf") for c in v):
                    errors.append(f"{path!r} holds a control character: {v!r:.60}")
                continue
            errors += text_errors(v, path, skip, prose)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            errors += text_errors(v, f"{where}[{i}]", skip, prose)
    elif isinstance(obj, str):
        if _BAD_TEXT.search(obj) or any(unicodedata.category(c) in ("Cc", "Cf") for c in obj):
            errors.append(f"{where!r} holds a path part or a control character: {obj!r:.60}")
    return errors


def set_facts(s) -> dict[str, Any]:
    """What a loaded set is, recomputed from its tensors: dataset, ipc, images per class,
    label kind and bytes (``submission.set`` of an entry)."""
    import torch

    from ddbench.data import CATALOGUE

    meta = s.meta
    spec = CATALOGUE.get(meta.get("dataset"))
    k = int(meta.get("num_classes") or (spec.num_classes if spec else 0))
    hard = s.hard_labels
    per_class = torch.bincount(hard, minlength=k).tolist() if len(hard) else [0] * k
    nbytes = s.nbytes()
    method = meta.get("method")
    return {
        "dataset": meta.get("dataset"),
        "ipc": meta.get("ipc"),
        "method": method.get("name") if isinstance(method, dict) else None,
        "full_dataset": bool(meta.get("full_dataset")),
        "num_images": len(s),
        "per_class": per_class,
        "label_kind": "soft" if s.soft_labels else "hard",
        "label_storage": s.label_storage["format"],  # dense | topk | dbr (hard labels + distances)
        "image_bytes": nbytes["images"],
        "label_bytes": nbytes["labels"],
        "extra_bytes": nbytes.get("extras", 0),
        "view": meta.get("view"),  # a view's budget is checked on load (ddbench.synset)
        "sha256": meta.get("sha256"),
    }


def _header_errors(e: dict, meta: dict) -> list[str]:
    """Disagreements between an entry and its set's header (checksum, dataset, ipc, method)."""
    errors = []
    if e["synset"]["sha256"] != meta.get("sha256"):
        errors.append(f"sha256 mismatch: the result scored set {e['synset']['sha256'][:12]}..., "
                      f"the set file is {str(meta.get('sha256'))[:12]}...")  # fmt: skip
    method = meta.get("method")
    for key, theirs in (("dataset", meta.get("dataset")), ("ipc", meta.get("ipc")),
                        ("method", method.get("name") if isinstance(method, dict) else None)):  # fmt: skip
        if e[key] != theirs:
            errors.append(f"the result says {key} {e[key]!r:.40}, the set says {theirs!r:.40}")
    return errors


def set_errors(e: dict, facts: dict, unit: str) -> list[str]:
    """What an entry claims about its set of ``unit`` (``images``, ``graphs``) that the set's
    facts contradict, whatever the set holds: its header, a class over the ipc budget (a view's
    budget is checked on load) and the submission's own ``set`` claims (``full_dataset``,
    ``num_<unit>``, ``per_class``)."""
    errors = _header_errors(e, {**facts, "method": {"name": facts["method"]}})
    most = max(facts["per_class"], default=0)
    if most > e["ipc"] and not facts.get("view"):
        errors.append(f"a class has {most} {unit}, over the ipc budget of {e['ipc']}")
    claimed = (e.get("submission") or {}).get("set")
    if isinstance(claimed, dict):
        for key in ("full_dataset", f"num_{unit}", "per_class"):
            if key in claimed and claimed[key] != facts[key]:
                errors.append(f"'submission.set.{key}' is {claimed[key]!r:.60}, the set's is "
                              f"{facts[key]!r:.60}")  # fmt: skip
    return errors


def claim_errors(e: dict, facts: dict, protocol_labels: str | None = None) -> list[str]:
    """What a result or entry claims about its set that the set (``set_facts``) contradicts:
    checksum, dataset, ipc, method, the per-class budget, full-dataset status, label kind and
    byte counts. ``protocol_labels``: the pinned protocol's ``labels`` (the kind it implies)."""
    errors = set_errors(e, facts, "images")
    crops = e["labels"].get("crop_label_bytes", 0)  # labels=crops: the stored per-crop labels
    crops = crops if _type_ok(crops, _INT) and crops >= 0 else 0
    want = {
        "labels.bytes": facts["label_bytes"] + crops,
        "cost.label_bytes": facts["label_bytes"] + crops,
        "cost.image_bytes": facts["image_bytes"],
        "cost.synset_bytes": facts["image_bytes"]
        + facts["label_bytes"]
        + crops
        + facts.get("extra_bytes", 0),
    }
    for key, value in want.items():
        a, b = key.split(".")
        if e[a][b] != value:
            errors.append(f"'{key}' is {e[a][b]}, but the set's labels/images take {value} bytes")
    kind = e["labels"]["kind"]
    if kind not in ("hard", "soft", "teacher", "crops", "dbr"):
        errors.append(f"'labels.kind' must be hard, soft, teacher, crops or dbr, not {kind!r:.40}")
    elif kind == "dbr" and facts.get("label_storage") != "dbr":
        errors.append("'labels.kind' is dbr, but the set stores no DBR labels")
    elif kind in ("hard", "soft") and kind != facts["label_kind"]:
        errors.append(f"'labels.kind' is {kind}, but the set has {facts['label_kind']} labels")
    elif protocol_labels in ("teacher", "crops") and kind != protocol_labels:
        errors.append(f"'labels.kind' is {kind}, but the protocol trains on {protocol_labels}")
    elif protocol_labels not in (None, "teacher", "crops") and kind in ("teacher", "crops"):
        errors.append(f"'labels.kind' is {kind}, but the protocol trains on the set's labels")
    return errors


def _read_json(path: Path, cap: int, what: str) -> Any:
    """A JSON file of at most ``cap`` bytes, or a DDBenchError naming what is wrong with it."""
    try:
        size = path.stat().st_size
        if size > cap:
            raise DDBenchError(f"{path}: the {what} file is {size} bytes, over the limit of {cap}")
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DDBenchError(f"{path} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise DDBenchError(f"{path}: JSON nested too deeply") from e
    except OSError as e:
        raise DDBenchError(f"{path}: cannot read the {what} file ({e.strerror or e})") from e


def _check_protocol(result: dict):
    """The result's protocol is pinned and unmodified, with its seeds; returns the Protocol."""
    from ddbench.protocol import pinned_protocol_hash

    p = result["protocol"]
    pinned = pinned_protocol_hash(p["name"]) if not _BAD_TEXT.search(p["name"]) else None
    if pinned is None:
        raise DDBenchError(
            f"protocol {p['name']!r:.60} is not pinned (no conf/protocol/<name>.yaml)"
        )
    return check_pinned(result, _pinned_protocol(p["name"]), pinned)


def check_submission(
    result_path: str | Path, synset_path: str | Path, limits: Limits | None = None
) -> tuple[dict, Any, dict]:
    """Validate a submission; returns ``(result, synset, checks)`` or raises DDBenchError.

    ``checks``: ``{"set": set_facts(...), "near_copies": near_copies(...)}``.
    """
    from ddbench import synset as synset_io

    limits = limits or Limits()
    result_path, synset_path = Path(result_path), Path(synset_path)
    for path, cap, what in ((result_path, limits.max_json_bytes, "result"),
                            (synset_path, limits.max_set_bytes, "set")):  # fmt: skip
        if not path.is_file():
            raise DDBenchError(f"{path}: no such file")
        size = path.stat().st_size
        if size > cap:
            raise DDBenchError(f"{path}: the {what} file is {size} bytes, over the limit of {cap}")
    result = _read_json(result_path, limits.max_json_bytes, "result")
    errors = [] if _graph(result) or transfer_board.is_transfer(result) else schema_errors(result)
    if errors:
        raise DDBenchError(f"{result_path} does not follow the result schema: {'; '.join(errors)}")
    try:
        errors = text_errors(result)
    except RecursionError as e:
        raise DDBenchError(f"{result_path}: JSON nested too deeply") from e
    if errors:
        raise DDBenchError(f"{result_path}: names may not hold path parts or control characters: "
                           f"{'; '.join(errors[:3])}")  # fmt: skip
    from ddbench.graphs import board as graph_board
    from ddbench.graphs.format import is_graph_file

    if _graph(result) or is_graph_file(synset_path):  # a graph set: the graph track checks it
        return result, *graph_board.check_submission(result, result_path, synset_path)
    if transfer_board.is_transfer(result):  # a set scored by transfer: the transfer track checks it
        return result, *transfer_board.check_submission(result, result_path, synset_path, limits)
    split = result.get("split", "test")
    if split != "test":
        raise DDBenchError(f"{result_path} was scored on the {split!r} split; only test results "
                           "can be submitted")  # fmt: skip
    proto = _check_protocol(result)
    # The set: loads (no pickle, not truncated, finite, shapes, checksum), is the one scored.
    s = synset_io.load(synset_path)
    facts = set_facts(s)
    errors = claim_errors(result, facts, proto.labels)
    if errors:
        raise DDBenchError("; ".join(errors))
    nc = near_copies(s, limits)
    if nc["copies"]:
        raise DDBenchError(_copies_message(nc))
    return result, s, {"set": facts, "near_copies": nc}


def _pinned_protocol(name: str):
    from ddbench.protocol import Protocol, protocol_config

    return Protocol.from_config(protocol_config(name))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".") or "_"


def _graph(e: Any) -> bool:
    """A graph result or entry (``kind: graph``; checked by ``ddbench.graphs.board``)."""
    return isinstance(e, dict) and e.get("kind") == "graph"


def entry_path(board: Path, result: dict) -> Path:
    sha12 = result["synset"]["sha256"][:12]
    budget = "graphs" if _graph(result) else f"ipc{int(result['ipc'])}"
    if transfer_board.is_transfer(result):
        budget = _safe(transfer_board.budget(result))
    return (board / "submissions" / _safe(result["dataset"]) / budget
            / _safe(result["protocol"]["name"]) / f"{_safe(result['method'])}-{sha12}.json")  # fmt: skip


def submit(
    result_path: str | Path, synset_path: str | Path, board: str | Path = DEFAULT_BOARD,
    limits: Limits | None = None, budget: str | None = None,
) -> Path:  # fmt: skip
    """Validate and add a submission to ``board``; returns the entry's path.

    One set, one entry per track: a set whose tensors (``synset.sha256``) are already on the
    board's image tables (or, for a transfer result, its transfer tables) is refused, whatever
    its method name or other metadata say, unless the result is a new view of it (the same
    method's set under another pinned protocol or on another model): that result joins the
    entry's ``other_results``. A set may hold one image entry and one transfer entry (a random
    subset is the reference of both). ``budget``: the distillation budget as a short
    text (e.g. ``CPU budget: 200 of 20000 iterations``), stored in the entry.
    """
    from ddbench.synset import atomic_write

    board = Path(board)
    if budget is not None:
        errors = text_errors(budget, "--budget")
        if errors or len(budget) > 200:
            raise DDBenchError(errors[0] if errors else "--budget is over 200 characters")
    result, _, checks = check_submission(result_path, synset_path, limits)
    sha = result["synset"]["sha256"]
    entry = entry_path(board, result)
    if not entry.resolve().is_relative_to(board.resolve()):
        raise DDBenchError(f"{entry.parent} leads outside the board (a symlinked folder?)")
    good, bad = scan(board, limits)
    track = transfer_board.is_transfer(result)
    same = [(f, e) for f, e, _ in good
            if e["synset"]["sha256"] == sha and transfer_board.is_transfer(e) == track]  # fmt: skip
    known = [f for f, _ in same] + [f for f, _ in bad if f.stem.endswith(f"-{sha[:12]}")]
    if same and len(known) == 1 and _attachable(same[0][1], result):
        return _attach(same[0][0], same[0][1], result, result_path)
    if known:
        raise DDBenchError(
            f"this set is already on the board: {known[0]} (one set, one entry per track)"
        )
    checks["set"]["train_images"] = _train_images(result["dataset"])
    set_file = entry.with_suffix(".safetensors")
    stored = dict(result)
    stored["synset"] = {"path": set_file.name, "sha256": sha}
    stored["submission"] = {
        "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "result_file": _safe(Path(result_path).name),
        "set_file": set_file.name,
        "set_file_bytes": Path(synset_path).stat().st_size,
        "checked_by": f"ddbench {ddbench.__version__}",
        **({"budget": budget} if budget else {}),
        "set": checks["set"],
        "checks": {"near_copies": checks["near_copies"]},
    }
    text = json.dumps(stored, indent=2) + "\n"
    atomic_write(set_file, lambda tmp: shutil.copyfile(synset_path, tmp))
    try:
        atomic_write(entry, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        set_file.unlink(missing_ok=True)
        raise
    return entry


def _view(r: dict) -> tuple:
    """What makes two results of one set different views: protocol (hash) and model."""
    kw = r.get("model_kwargs") or {}
    return (r["protocol"]["hash"], r["model"], json.dumps(kw, sort_keys=True))


def results_of(e: dict) -> list[dict]:
    """An entry's results: its own, then the other views of its set (``other_results``: the
    same set under another pinned protocol or on another model)."""
    others = e.get("other_results")
    return [e, *(others if isinstance(others, list) else [])]


def _attachable(e: dict, result: dict) -> bool:
    """A result of a set already on the board joins its entry when it is a new view (another
    protocol or model) of the same method's set."""
    if any(map(transfer_board.is_transfer, (result, e))):  # one transfer result per entry
        return False
    if (result["method"], result["dataset"], result["ipc"]) != (e["method"], e["dataset"],
                                                                e["ipc"]):  # fmt: skip
        return False
    return _view(result) not in {_view(r) for r in results_of(e)}


def _attach(f: Path, e: dict, result: dict, result_path: str | Path) -> Path:
    """Add ``result`` (checked by :func:`check_submission`) to entry ``f`` as another view."""
    from ddbench.synset import atomic_write

    view = dict(result)
    view["synset"] = {"path": e["synset"]["path"], "sha256": e["synset"]["sha256"]}
    view["submission"] = {
        "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "result_file": _safe(Path(result_path).name),
        "checked_by": f"ddbench {ddbench.__version__}",
    }
    stored = dict(e, other_results=[*e.get("other_results", []), view])
    text = json.dumps(stored, indent=2) + "\n"
    atomic_write(f, lambda tmp: Path(tmp).write_text(text))
    return f


def _train_images(dataset: str) -> int | None:
    """Images in the dataset's train split (the compression ratio's reference)."""
    from ddbench import data

    try:
        return len(data.load_split(dataset, "train"))
    except DDBenchError:
        return None


# ----------------------------------------------------------------------------- build


def _entry_files(root: Path) -> list[Path]:
    """Every ``*.json`` under ``root/submissions``, not following symlinked folders."""
    top = root / "submissions"
    out = []
    for d, dirs, files in os.walk(top) if top.is_dir() else ():
        dirs.sort()
        out += [Path(d) / f for f in sorted(files) if f.endswith(".json")]
    return out


def _set_header(path: Path, max_bytes: int) -> dict:
    """The ddbench metadata in a set file's header, read without torch (``build`` stays fast);
    ``verify`` loads and checks the whole set."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(max_bytes, path.stat().st_size - 8):
                raise ValueError("bad header length")
            meta = json.loads(json.loads(fh.read(n))["__metadata__"]["ddbench"])
        if not isinstance(meta, dict):
            raise TypeError("the metadata is not an object")
        return meta
    except (OSError, ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as e:
        raise DDBenchError(f"the set file {path.name} has no readable ddbench header ({e})") from e


def _set_file(root: Path, f: Path, e: dict) -> Path:
    """The set file of entry ``f``: a file name beside the entry that resolves (symlinks
    followed) inside the board ``root``."""
    name = e["synset"]["path"]
    if not isinstance(name, str) or not name or name in (".", "..") or _BAD_TEXT.search(name) \
            or any(unicodedata.category(c) in ("Cc", "Cf") for c in name):  # fmt: skip
        raise DDBenchError(f"'synset.path' {name!r:.60} must be a file name beside the entry")
    path = f.with_name(name)
    if not path.resolve().is_relative_to(root):
        raise DDBenchError(f"'synset.path' {name!r:.60} leads outside the board")
    if not path.is_file():
        raise DDBenchError(f"the set file {name} is missing")
    return path


def scan(
    board: str | Path = DEFAULT_BOARD, limits: Limits | None = None
) -> tuple[list[tuple[Path, dict, dict]], list[tuple[Path, str]]]:
    """The board's entries, checked without loading a set: ``(good, bad)``.

    ``good``: ``(path, entry, set header)`` of each entry that reads as JSON within the size
    limit, follows the schema, holds no path part or control character in its names, whose set
    file lies beside it inside the board and whose set header agrees with it (checksum,
    dataset, ipc, method), and whose set is not already listed by an earlier entry.
    ``bad``: ``(path, reason)`` of every other entry. Nothing raises on a bad entry.
    """
    limits = limits or Limits()
    board = Path(board)
    root = board.resolve()
    good, bad, seen = [], [], {}
    for f in _entry_files(board):
        try:
            if not f.resolve().is_relative_to(root):
                raise DDBenchError("the entry file leads outside the board")
            e = _read_json(f, 2 * limits.max_json_bytes, "entry")
            schema = _graph_schema() if _graph(e) else RESULT_SCHEMA  # ddbench.graphs.board
            if transfer_board.is_transfer(e):
                schema = transfer_board.TRANSFER_SCHEMA
            errors = schema_errors(e, schema) or text_errors(e, skip=("synset.path", "submission"))
            if errors:
                raise DDBenchError("; ".join(errors[:3]))
            meta = _set_header(_set_file(root, f, e), limits.max_set_bytes)
            errors = _header_errors(e, meta) + _other_results_errors(e, meta)
            if errors:
                raise DDBenchError("; ".join(errors[:3]))
            key = (e["synset"]["sha256"], transfer_board.is_transfer(e))
            if key in seen:
                raise DDBenchError(f"the same set as {seen[key]} (one set, one entry per track)")
            seen[key] = f
            good.append((f, e, meta))
        except (DDBenchError, RecursionError) as err:
            bad.append((f, str(err) if isinstance(err, DDBenchError) else "nested too deeply"))
    return good, bad


def _graph_schema() -> dict[str, Any]:
    from ddbench.graphs.board import GRAPH_SCHEMA

    return GRAPH_SCHEMA


def _other_results_errors(e: dict, meta: dict) -> list[str]:
    """What is wrong with an entry's ``other_results`` (each a result of the entry's set)."""
    others = e.get("other_results", [])
    if not isinstance(others, list):
        return ["'other_results' must be a list"]
    errors, views = [], {_view(e)}
    for i, r in enumerate(others):
        where = f"other_results[{i}]"
        found = [f"{where}: {x}" for x in schema_errors(r)]
        if not found:
            found = text_errors(r, where, skip=(f"{where}.synset.path", f"{where}.submission"))
            found += [f"{where}: {x}" for x in _header_errors(r, meta)]
            if r["synset"]["path"] != e["synset"]["path"]:
                found.append(f"{where} scored another set file than the entry's")
            if _view(r) in views:
                found.append(f"{where} repeats a protocol and model of the entry")
            views.add(_view(r))
        errors += found
    return errors


def entries(board: str | Path = DEFAULT_BOARD) -> list[tuple[Path, dict]]:
    """The board's well-formed entries, as ``(path, entry)`` (see :func:`scan`)."""
    return [(f, e) for f, e, _ in scan(board)[0]]


def _model_label(e: dict) -> str:
    """The model and the kwargs that differ from its shipped config (conf/model/<name>.yaml)."""
    import importlib.resources

    from omegaconf import OmegaConf

    kw = e.get("model_kwargs") or {}
    if _graph(e):  # a GNN of the graph protocol, whose hash covers its kwargs
        return e["model"]
    f = importlib.resources.files("ddbench.conf") / "model" / f"{_safe(e['model'])}.yaml"
    default = {}
    if f.is_file():
        default = OmegaConf.to_container(OmegaConf.load(str(f))).get("kwargs") or {}
    diff = ",".join(f"{k}={v}" for k, v in sorted(kw.items()) if default.get(k) != v)
    return e["model"] + (f" ({diff})" if diff else "")


def build(board: str | Path = DEFAULT_BOARD, out=None) -> tuple[Path, Path]:
    """Regenerate ``README.md``, ``index.html`` and the missing thumbnails of ``board``
    (``ddbench.board_page``)."""
    from ddbench import board_page

    entries = board_page.Entries(scan=scan, results_of=results_of, model_label=_model_label)
    return board_page.write(board, entries, out)


# ----------------------------------------------------------------------------- verify


def verify(
    board: str | Path = DEFAULT_BOARD, tolerance: float = 1.0, *, epochs: int | None = None,
    seeds: list[int] | None = None, device: str = "auto", limits: Limits | None = None,
    out=print, all_results: bool = True,
) -> list[dict]:  # fmt: skip
    """Check every entry against its set and re-evaluate it; returns one report per entry.

    A report is flagged when the entry is malformed (see :func:`scan`: it is not evaluated),
    the protocol is no longer the pinned one or the accuracies are inconsistent, the set no
    longer loads or disagrees with what the entry claims (checksum, dataset, ipc, per-class
    budget, label kind, bytes: :func:`claim_errors`), a synthetic image is a near-copy of a
    test image, or the re-evaluated score (on the entry's split) differs from the submitted one
    by more than ``tolerance`` points. Every entry prints one line, ``OK`` or ``FLAG`` with the
    reasons. ``epochs``/``seeds`` change the protocol for tests only: seeds restricts the
    comparison to those seeds' accuracies; an epochs override makes the check meaningless and
    is marked as such. Every result of an entry (:func:`results_of`: its own and the other
    views of its set) is checked and re-evaluated; ``all_results=False``: its own only.
    """
    from ddbench import synset as synset_io
    from ddbench.engine import pick_device

    board = Path(board)
    limits = limits or Limits()
    reports = []
    override = {k: v for k, v in (("epochs", epochs), ("seeds", seeds)) if v is not None}
    tag = (
        f"  [TEST OVERRIDE {override}: not a verification of the pinned score]" if override else ""
    )
    good, bad = scan(board, limits)
    for f, why in bad:
        reports.append({"entry": str(f), "flags": [why], "override": override or None})
        out(f"FLAG {f}: {why}")
    root = board.resolve()
    for f, e, _ in good:
        if _graph(e):  # the graph track re-checks and re-evaluates its own entries
            from ddbench.graphs.board import verify_entry

            path = _set_file(root, f, e)
            reports.append(verify_entry(f, e, path, tolerance, seeds, epochs, device, out, tag))
            continue
        if transfer_board.is_transfer(e):  # so does the transfer track
            path = _set_file(root, f, e)
            reports.append(transfer_board.verify_entry(f, e, path, tolerance, seeds, epochs,
                                                       device, limits, out, tag))  # fmt: skip
            continue
        rep: dict[str, Any] = {"entry": str(f), "flags": [], "override": override or None}
        reports.append(rep)
        views = results_of(e) if all_results else [e]
        try:
            protos = [_check_protocol(r) for r in views]
            path = _set_file(root, f, e)
            s = synset_io.load(path)
            facts = set_facts(s)
            for r, proto in zip(views, protos):
                rep["flags"] += claim_errors(r, facts, proto.labels)
        except DDBenchError as err:
            rep["flags"].append(str(err))
        if rep["flags"]:
            out(f"FLAG {f}: {'; '.join(rep['flags'])}")
            continue
        try:
            nc = near_copies(s, limits, device=str(pick_device(device)))
        except DDBenchError as err:
            nc = {"copies": []}
            rep["flags"].append(f"could not look for near-copies: {err}")
        if nc["copies"]:
            rep["flags"].append(_copies_message(nc))
        s.meta["_path"] = str(path)
        details, rep["results"] = [], []
        for i, (r, proto) in enumerate(zip(views, protos)):
            one = _reevaluate(s, r, proto, epochs, seeds, device, tolerance)
            one["view"] = f"{r['protocol']['name']}/{_model_label(r)}"
            rep["results"].append(one)
            if i == 0:
                rep.update({k: one[k] for k in ("claimed", "reevaluated", "difference")
                            if k in one})  # fmt: skip
            rep["flags"] += [f"{one['view']}: {x}" if i else x for x in one["flags"]]
            details.append((f"{one['view']}: " if i else "") + one["detail"])
        status = "FLAG" if rep["flags"] else "OK  "
        out(f"{status} {f}: {'; '.join(rep['flags']) or '; '.join(details)}{tag}")
    return reports


def _reevaluate(s, r: dict, proto, epochs, seeds, device, tolerance: float) -> dict[str, Any]:
    """Re-evaluate set ``s`` as result ``r`` claims (its pinned protocol, model, split)."""
    from ddbench.protocol import evaluate

    one: dict[str, Any] = {"flags": [], "detail": ""}
    if epochs is not None:
        proto.epochs = int(epochs)
    if seeds is not None:
        proto.seeds = [int(x) for x in seeds]
    submitted = submitted_scores(r, proto.seeds, one)
    if submitted is None:
        return one
    try:
        new = evaluate(s, proto, r["model"], r.get("model_kwargs") or {}, device=device,
                       progress=False, split=r.get("split", "test"))  # fmt: skip
    except (DDBenchError, TypeError, ValueError, KeyError) as err:
        one["flags"].append(f"could not re-evaluate: {err}")
        return one
    compare(one, submitted, proto.seeds, new["accuracy"]["mean"], tolerance)
    return one


# ----------------------------------------------------------------------------- commands


def _limits_args(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--max-set-bytes", type=int, default=d.max_set_bytes)
    p.add_argument("--max-json-bytes", type=int, default=d.max_json_bytes)
    p.add_argument("--copy-cosine", type=float, default=d.copy_cosine,
                   help="flag a synthetic image whose best centred cosine to a test image (over "
                        "small translations and a mirror) is at least this")  # fmt: skip
    p.add_argument(
        "--copy-shift",
        type=int,
        default=d.copy_shift,
        help="largest translation, in pixels, tried by the near-copy check",
    )


def _limits(a: argparse.Namespace) -> Limits:
    return Limits(a.max_set_bytes, a.max_json_bytes, a.copy_cosine, a.copy_shift)


def main_submit(args: list[str]) -> None:
    p = argparse.ArgumentParser(prog="ddbench submit",
                                description="validate a result and its set, add them to the board")  # fmt: skip
    p.add_argument("result", help="result.json written by ddbench run/evaluate")
    p.add_argument("--synset", required=True, help="the .safetensors set the result scored")
    p.add_argument("--board", default=DEFAULT_BOARD, help="the leaderboard directory")
    p.add_argument("--budget", default=None,
                   help="the distillation budget, shown on the page (e.g. 'CPU budget: 200 of "
                        "the paper's 20000 iterations')")  # fmt: skip
    _limits_args(p)
    a = p.parse_args(args)
    entry = submit(a.result, a.synset, a.board, _limits(a), budget=a.budget)
    print(f"accepted: {entry}")
    print(f"run `ddbench leaderboard build --board {a.board}` to update the tables")


def main_leaderboard(args: list[str], reproduce_main: Any = None) -> None:
    """``ddbench leaderboard build|verify|reproduce``; ``reproduce_main``: the reproduce action
    (``ddbench.reproduce.main``, which reads the board through this module), given by the
    command line."""
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
    v.add_argument("--own-only", action="store_true",
                   help="re-evaluate each entry's own result only, not the other views of its "
                        "set (other protocols, other models)")  # fmt: skip
    _limits_args(v)
    r = sub.add_parser("reproduce", help="rerun an entry's distillation from its recorded "
                                         "config and seed, evaluate the new set, compare")  # fmt: skip
    r.add_argument("entry", help="the entry: its file, or its name (e.g. dm-0123456789ab)")
    r.add_argument("--board", default=DEFAULT_BOARD)
    r.add_argument("--workdir", default=None,
                   help="where the rerun works (default: outputs/reproduce/<entry>); rerunning "
                        "the same command resumes there")  # fmt: skip
    r.add_argument("--device", default="auto")
    r.add_argument("--report", default=None, help="also write the report as JSON")
    a = p.parse_args(args)
    if a.action == "reproduce":
        if reproduce_main is None:
            raise DDBenchError("leaderboard reproduce: no reproduce action was given")
        rep = reproduce_main(a)
        if not rep["within"]:
            sys.stdout.flush()
            raise SystemExit(1)
        return
    if a.action == "build":
        readme, index = build(a.board, out=print)
        good, bad = scan(a.board)
        for f, why in bad:
            print(f"EXCLUDED {f}: {why}")
        print(f"wrote {readme} and {index} ({len(good)} submissions, {len(bad)} excluded)")
        return
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
    reports = verify(a.board, a.tolerance, epochs=a.epochs, seeds=seeds, device=a.device,
                     limits=_limits(a), all_results=not a.own_only)  # fmt: skip
    flagged = [r for r in reports if r["flags"]]
    if a.report:
        from ddbench.synset import atomic_write

        text = json.dumps(reports, indent=2) + "\n"
        atomic_write(Path(a.report), lambda tmp: Path(tmp).write_text(text))
    print(f"verified {len(reports)} submission(s): {len(flagged)} flagged")
    if flagged:
        sys.stdout.flush()
        raise SystemExit(1)

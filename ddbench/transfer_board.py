"""Transfer results on the leaderboard: what ``ddbench submit`` / ``leaderboard build`` /
``verify`` / ``reproduce`` check for a set scored by the transfer protocol
(``ddbench.leaderboard`` hands such results here; docs/transfer.md, docs/leaderboard.md); the
checks shared with the other tracks are ``ddbench.board_checks``.

A transfer result (``track: transfer``, as :func:`ddbench.transfer.evaluate` writes it) follows
:data:`TRANSFER_SCHEMA`; its protocol must be a pinned transfer protocol
(``conf/transfer_protocol/<name>.yaml``, hash and seeds), with the mode and labelled fraction
that protocol gives its target; what it claims about its set (checksum, source dataset, ipc,
method, images, what it pre-trains on, bytes) is recomputed from the set (:func:`set_facts`,
:func:`claim_errors`); and no image of the set may be a near-copy of a test image of the source
**or of the target** (a set that smuggles the target's test images would score by memory).
Entries are stored as ``submissions/<source>/ipc<N>_to_<target>/<protocol>/<method>-<sha12>.json``:
one table per source x IPC x target x protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddbench.errors import DDBenchError

_NUM, _INT, _STR, _BOOL = "number", "integer", "string", "boolean"

TRANSFER_SCHEMA: dict[str, Any] = {
    "track": _STR,
    "method": _STR,
    "dataset": _STR,  # the source
    "source": _STR,
    "target": _STR,
    "ipc": _INT,
    "num_images": _INT,
    "pretrained_on": _STR,
    "model": _STR,
    "model_kwargs": "object",
    "protocol": {
        "name": _STR,
        "hash": _STR,
        "comparable": _BOOL,
        "mode": _STR,
        "label_fraction": _NUM,
    },  # fmt: skip
    "accuracy": {"mean": _NUM, "std": _NUM, "per_seed": "list"},
    "cost": {
        "distill_seconds": _NUM + "|null",
        "eval_seconds": _NUM,
        "synset_bytes": _INT,
        "image_bytes": _INT,
        "label_bytes": _INT,
    },
    "synset": {"path": _STR + "|null", "sha256": _STR},
    "target_train_images": _INT,
    "versions": "object",
    "device": _STR,
}


def is_transfer(e: Any) -> bool:
    """A transfer result or entry (``track: transfer``)."""
    return isinstance(e, dict) and e.get("track") == "transfer"


def budget(e: dict) -> str:
    """The board's budget column of a transfer entry: ``ipc<N>_to_<target>``."""
    return f"ipc{int(e['ipc'])}_to_{e['target']}"


def set_facts(s: Any) -> dict[str, Any]:
    """What a loaded set is, as the transfer track scores it, recomputed from its tensors."""
    meta = s.meta
    method = meta.get("method")
    nbytes = s.nbytes()
    return {
        "dataset": meta.get("dataset"),
        "ipc": meta.get("ipc"),
        "method": method.get("name") if isinstance(method, dict) else None,
        "num_images": len(s),
        "pretrained_on": "representation" if s.representation else "labels",
        "image_bytes": nbytes["images"],
        "label_bytes": nbytes["labels"],
        "sha256": meta.get("sha256"),
    }


def claim_errors(e: dict, facts: dict) -> list[str]:
    """What a transfer result or entry claims about its set that the set contradicts."""
    errors = []
    if e["synset"]["sha256"] != facts["sha256"]:
        errors.append(f"sha256 mismatch: the result scored set {e['synset']['sha256'][:12]}..., "
                      f"the set file is {str(facts['sha256'])[:12]}...")  # fmt: skip
    for key in ("dataset", "ipc", "method", "num_images", "pretrained_on"):
        if e[key] != facts[key]:
            errors.append(f"'{key}' is {e[key]!r:.60}, the set's is {facts[key]!r:.60}")
    if e["source"] != e["dataset"]:
        errors.append(f"'source' {e['source']!r:.40} is not the set's dataset {e['dataset']!r:.40}")
    for key in ("image_bytes", "label_bytes"):
        if e["cost"][key] != facts[key]:
            errors.append(f"'cost.{key}' is {e['cost'][key]}, the set's is {facts[key]}")
    if e["cost"]["synset_bytes"] != facts["image_bytes"] + facts["label_bytes"]:
        errors.append(f"'cost.synset_bytes' is {e['cost']['synset_bytes']}, the set's is "
                      f"{facts['image_bytes'] + facts['label_bytes']}")  # fmt: skip
    return errors


def check_protocol(result: dict) -> Any:
    """The result's transfer protocol is pinned and unmodified (hash, seeds), with the mode and
    labelled fraction it gives the result's target, whose images were made by the catalogue's
    recipe (``target_data``); returns it."""
    from ddbench import data
    from ddbench.board_checks import _BAD_TEXT, check_pinned
    from ddbench.transfer import load_protocol

    p = result["protocol"]
    if _BAD_TEXT.search(p["name"]):
        raise DDBenchError(f"transfer protocol {p['name']!r:.60} is not a protocol name")
    proto = load_protocol(p["name"])  # an unknown name raises, naming the known ones
    check_pinned(result, proto, proto.hash, "transfer protocol")
    spec = data.get_spec(result["target"])  # an unknown target raises
    made = result.get("target_data", spec.source)  # results before the field: the catalogue's
    if made != spec.source:
        raise DDBenchError(f"'target_data' is {made!r:.80}, but the catalogue makes "
                           f"{result['target']!r}'s images as {spec.source!r:.80}: the result "
                           "was scored on other target images; score the set again")  # fmt: skip
    pinned = proto.for_target(result["target"])
    for key in ("mode", "label_fraction"):
        if p[key] != getattr(pinned, key):
            raise DDBenchError(f"'protocol.{key}' is {p[key]!r:.40}; transfer protocol "
                               f"{p['name']!r} gives {getattr(pinned, key)!r} for target "
                               f"{result['target']!r}")  # fmt: skip
    return proto


def copies(s: Any, target: str, limits: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Near-copies of the source's test images and of the target's
    (:func:`ddbench.leaderboard.near_copies` on each): ``{"source": ..., "target": ...}``."""
    from ddbench.board_checks import near_copies

    return {"source": near_copies(s, limits, device),
            "target": near_copies(s, limits, device, dataset=target)}  # fmt: skip


def copies_message(nc: dict[str, Any]) -> str | None:
    """The first split's near-copies as one message, or None when there are none."""
    from ddbench.board_checks import _copies_message

    for split in ("source", "target"):
        if nc[split]["copies"]:
            return f"{split} test split: {_copies_message(nc[split])}"
    return None


def check_submission(
    result: dict, result_path: Path, synset_path: Path, limits: Any = None
) -> tuple[Any, dict]:
    """Check a transfer result (already read and free of path parts) and its set; returns
    ``(set, checks)`` with ``checks = {"set": facts, "near_copies": {"source", "target"}}``."""
    from ddbench import synset as synset_io
    from ddbench.board_checks import schema_errors

    errors = schema_errors(result, TRANSFER_SCHEMA)
    if errors:
        raise DDBenchError(
            f"{result_path} does not follow the transfer result schema: {'; '.join(errors)}"
        )
    check_protocol(result)
    s = synset_io.load(synset_path)
    facts = set_facts(s)
    errors = claim_errors(result, facts)
    if errors:
        raise DDBenchError("; ".join(errors))
    nc = copies(s, result["target"], limits)
    why = copies_message(nc)
    if why:
        raise DDBenchError(why)
    return s, {"set": facts, "near_copies": nc}


def evaluate_as(e: dict, s: Any, proto: Any, device: str = "auto") -> dict[str, Any]:
    """Score set ``s`` as entry ``e`` was: its pinned transfer protocol, target and model."""
    from ddbench import transfer

    return transfer.evaluate(s, proto, e["target"], e["model"], e.get("model_kwargs") or {},
                             device=device)  # fmt: skip


def verify_entry(
    path: Path, e: dict, set_path: Path, tolerance: float, seeds: list[int] | None,
    epochs: int | None, device: str, limits: Any = None, out: Any = print, tag: str = "",
) -> dict[str, Any]:  # fmt: skip
    """Recheck one transfer entry against its set and re-evaluate it under its pinned transfer
    protocol; prints one ``OK`` or ``FLAG`` line and returns the report as
    ``ddbench.leaderboard.verify`` makes it (``flags`` empty when all holds). ``seeds`` /
    ``epochs`` (every stage's epochs) override the protocol for tests only."""
    rep = _verify(path, e, set_path, tolerance, seeds, epochs, device, limits)
    from ddbench.board_checks import print_verdict

    print_verdict(path, rep, out, tag)
    return rep


def _verify(
    path: Path, e: dict, set_path: Path, tolerance: float, seeds: list[int] | None,
    epochs: int | None, device: str, limits: Any,
) -> dict[str, Any]:  # fmt: skip
    from dataclasses import replace

    from ddbench import synset as synset_io
    from ddbench.board_checks import compare, submitted_scores

    override = {k: v for k, v in (("epochs", epochs), ("seeds", seeds)) if v is not None}
    rep: dict[str, Any] = {"entry": str(path), "flags": [], "override": override or None}
    try:
        proto = check_protocol(e)
        s = synset_io.load(set_path)
        rep["flags"] += claim_errors(e, set_facts(s))
        if not rep["flags"]:
            why = copies_message(copies(s, e["target"], limits))
            rep["flags"] += [why] if why else []
    except DDBenchError as err:
        rep["flags"].append(str(err))
    if rep["flags"]:
        return rep
    if seeds is not None:
        proto = replace(proto, seeds=[int(x) for x in seeds])
    if epochs is not None:
        stages = ("pretrain_labels", "pretrain_representation", "finetune")
        proto = replace(proto, **{k: replace(getattr(proto, k), epochs=int(epochs))
                                  for k in stages})  # fmt: skip
    submitted = submitted_scores(e, proto.seeds, rep)
    if submitted is None:
        return rep
    s.meta["_path"] = str(set_path)
    try:
        r = evaluate_as(e, s, proto, device)
    except DDBenchError as err:
        rep["flags"].append(f"could not re-evaluate: {err}")
        return rep
    compare(rep, submitted, proto.seeds, r["accuracy"]["mean"], tolerance)
    return rep

"""``ddbench leaderboard reproduce ENTRY``: rerun an entry's distillation, score the new set.

The entry's set records its method's final config (``meta["method"]["config"]``, recipe
applied), dataset, IPC and seed, and what else the distillation's cache key covers
(``meta["distill_config"]``: the distillation model and its kwargs, precision, kernels, ZCA; a
set made before that was recorded is rerun with the entry's model and the precision in
``meta["cost"]``). ``reproduce`` runs ``ddbench distill`` with those settings in a work folder
(rerunning resumes there), checks that the rerun's config key equals the recorded one (else the
config was not reconstructed and the comparison would mean nothing), evaluates the new set
under the entry's pinned protocol, model and split, and compares the means.

Tolerance: ``max(1 point, 2 standard errors of the difference)``, the standard error of each
mean being its per-seed (population) std over sqrt(seeds); a protocol with one seed gives
1 point.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ddbench.errors import DDBenchError

MIN_TOLERANCE = 1.0  # points


def tolerance(a: dict, b: dict) -> float:
    """``max(1, 2 * sqrt(se_a^2 + se_b^2))`` for two ``accuracy`` dicts (mean, std, per_seed)."""

    def se(acc: dict) -> float:
        n = max(1, len(acc.get("per_seed") or []))
        return float(acc["std"]) / math.sqrt(n)

    return max(MIN_TOLERANCE, 2.0 * math.hypot(se(a), se(b)))


def _value(v: Any) -> str:
    """A Hydra override value for a JSON value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    raise DDBenchError(f"cannot pass {v!r:.40} on the command line")


def _leaves(d: dict, prefix: str, add: bool = False) -> list[str]:
    """``key=value`` overrides of every leaf of ``d``; a leaf inside a ``*kwargs`` dict (a
    model's kwargs, empty in the method's schema, e.g. an encoder's ``model_kwargs``) as
    ``++key=value``, which Hydra lets add a key."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.", add or str(k).endswith("kwargs"))
        else:
            out.append(f"{'++' if add else ''}{prefix}{k}={_value(v)}")
    return out


def distill_overrides(e: dict, meta: dict) -> list[str]:
    """The ``ddbench distill`` overrides that remake the set of entry ``e`` (set header
    ``meta``)."""
    method = meta.get("method") or {}
    name, config = method.get("name"), method.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise DDBenchError("the set does not record its method's config: it cannot be rerun")
    if name.startswith("imported:"):
        raise DDBenchError(
            f"a set imported from another code's output ({name}) is not ddbench's to rerun: "
            "`ddbench leaderboard verify` re-evaluates it"
        )
    if meta.get("seed") is None:
        raise DDBenchError("the set does not record its seed: it cannot be rerun")
    if meta.get("full_dataset"):
        raise DDBenchError(f"a {name} set is not distilled: nothing to rerun")
    rec = meta.get("distill_config") or {}
    model = rec.get("model", e["model"])
    kwargs = rec.get("model_kwargs", e.get("model_kwargs") or {})
    precision = rec.get("precision") or (meta.get("cost") or {}).get("precision") or "fp32"
    out = [f"method={name}", f"dataset={meta['dataset']}", f"seed={int(meta['seed'])}",
           f"model={model}", f"precision={precision}"]  # fmt: skip
    if e.get("kind") == "graph":
        # a graph set's ipc is its largest class, not the run's: the run's is in distill_config
        # (absent: the default ipc); a graph model's width and depth are its protocol's
        out += [f"ipc={int(rec['ipc'])}"] if "ipc" in rec else []
    else:
        out.insert(2, f"ipc={int(meta['ipc'])}")
        out += _leaves({k: v for k, v in kwargs.items()}, "model.kwargs.")
    if rec.get("kernels", "auto") != "auto":
        out.append(f"kernels={rec['kernels']}")
    if rec.get("zca", (meta.get("space") or {}).get("zca")):
        out.append("dataset.zca=true")
        if "zca_eps" in rec:
            out.append(f"dataset.zca_eps={_value(rec['zca_eps'])}")
    out += _leaves({k: v for k, v in config.items() if k not in ("_target_", "name")}, "method.")
    return out


def find_entry(board: Path, name: str) -> tuple[Path, dict, dict]:
    """The well-formed entry named ``name`` (its file, or its file name with or without
    ``.json``) on ``board``: ``(path, entry, set header)``."""
    from ddbench import leaderboard

    good, bad = leaderboard.scan(board)
    want = Path(name)
    for f, e, meta in good:
        if want.suffix == ".json" and want.exists() and f.resolve() == want.resolve():
            return f, e, meta
        if f.name in (want.name, f"{want.name}.json"):
            return f, e, meta
    for f, why in bad:
        if f.name in (want.name, f"{want.name}.json"):
            raise DDBenchError(f"entry {f} is malformed: {why}")
    raise DDBenchError(f"no entry {name!r} on the board {board}")


def _load_set(e: dict, path: Path) -> Any:
    """The rerun's set: a graph set for a graph entry (``kind: graph``), else an image set."""
    if e.get("kind") == "graph":
        from ddbench.graphs.format import load as load_graph_set

        return load_graph_set(path)
    from ddbench import synset as synset_io

    return synset_io.load(path)


def _score(e: dict, new: Any, path: Path, work: Path, device: str) -> dict:
    """The result of the rerun's set under the entry's pinned protocol: the image protocol; for
    a graph entry the graph protocol on its dataset's split; for a transfer entry the transfer
    protocol on its target."""
    if e.get("kind") == "graph":
        from ddbench.engine import pick_device
        from ddbench.graphs import board as graph_board
        from ddbench.graphs.protocol import evaluate as evaluate_graphs

        proto = graph_board.check_protocol(e)
        test, _ = graph_board.dataset_splits(new)
        return evaluate_graphs(new, proto, test, e["model"], device=pick_device(device),
                               split=e.get("split", "test"))  # fmt: skip
    from ddbench import leaderboard, transfer_board
    from ddbench.protocol import evaluate

    if transfer_board.is_transfer(e):  # the transfer protocol on the entry's target
        return transfer_board.evaluate_as(e, new, transfer_board.check_protocol(e), device)
    proto = leaderboard._check_protocol(e)
    new.meta["_path"] = str(path)
    return evaluate(new, proto, e["model"], e.get("model_kwargs") or {}, device=device,
                    progress=False, split=e.get("split", "test"),
                    checkpoint=work / "eval_checkpoint.pt")  # fmt: skip


def reproduce(
    board: str | Path, name: str, workdir: str | Path | None = None, device: str = "auto",
    out=print, extra: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Rerun entry ``name``'s distillation, evaluate the new set as the entry was, compare.

    ``extra``: more ``ddbench distill`` overrides (tests: ``checkpoint_every``). Returns the
    report: ``entry``, ``command``, ``config_key`` (recorded, rerun), ``same_set``, ``claimed``,
    ``reproduced``, ``difference``, ``tolerance``, ``within``.
    """
    board = Path(board)
    f, e, meta = find_entry(board, name)
    work = Path(workdir or Path("outputs") / "reproduce" / f.stem)
    args = ["distill", *distill_overrides(e, meta), "progress=false", f"device={device}",
            f"hydra.run.dir={work}", *(extra or [])]  # fmt: skip
    rep: dict[str, Any] = {"entry": str(f), "command": "ddbench " + " ".join(args)}
    out(f"rerunning: {rep['command']}")
    code = "from ddbench.cli import main; main()"
    p = subprocess.run([sys.executable, "-c", code, *args], env=dict(os.environ),
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise DDBenchError(f"the rerun failed: {' | '.join(tail)}")
    new = _load_set(e, work / "synset.safetensors")
    rep["config_key"] = {"recorded": meta.get("config_key"), "rerun": new.meta.get("config_key")}
    if meta.get("config_key") and meta["config_key"] != new.meta.get("config_key"):
        raise DDBenchError(
            f"the rerun's config key {new.meta.get('config_key')} is not the recorded "
            f"{meta['config_key']}: the recorded config could not be reconstructed"
        )
    rep["same_set"] = new.meta["sha256"] == e["synset"]["sha256"]
    r = _score(e, new, work / "synset.safetensors", work, device)
    (work / "eval_checkpoint.pt").unlink(missing_ok=True)
    claimed, got = e["accuracy"]["mean"], r["accuracy"]["mean"]
    tol = tolerance(e["accuracy"], r["accuracy"])
    rep.update(claimed=claimed, reproduced=got, difference=got - claimed, tolerance=tol,
               within=abs(got - claimed) <= tol,
               distill_seconds={"entry": e["cost"].get("distill_seconds"),
                                "rerun": (new.meta.get("cost") or {}).get("wall_seconds")})  # fmt: skip
    verdict = "REPRODUCED" if rep["within"] else "NOT REPRODUCED"
    out(f"{verdict} {f}: rerun {got:.2f} % vs entry {claimed:.2f} % (difference "
        f"{got - claimed:+.2f}, tolerance {tol:.2f}; {'the same' if rep['same_set'] else 'a new'}"
        " set)")  # fmt: skip
    return rep


def main(a) -> dict[str, Any]:
    """``ddbench leaderboard reproduce`` (arguments parsed by ``leaderboard.main_leaderboard``)."""
    from ddbench.synset import atomic_write

    rep = reproduce(a.board, a.entry, a.workdir, a.device)
    if a.report:
        text = json.dumps(rep, indent=2) + "\n"
        atomic_write(Path(a.report), lambda tmp: Path(tmp).write_text(text))
    return rep

"""The ``ddbench`` command. ``run``, ``distill`` and ``evaluate`` are Hydra apps (overrides,
``-m`` multirun, launchers); the other sub-commands are plain argparse.

    ddbench run      method=random dataset=mnist ipc=10        distill + evaluate
    ddbench distill  method=random dataset=fashion_mnist ipc=1
    ddbench evaluate synset=path/x.safetensors protocol=standard model=convnet
    ddbench -m run   method=random ipc=1,10 dataset=mnist,fashion_mnist
    ddbench data     list | prepare NAME [--download] [--force]
    ddbench show     x.safetensors [--out grid.png]
    ddbench import   dc|mtt|datadam|imagefolder|indices PATH --dataset NAME --out x.safetensors
    ddbench export   x.safetensors OUT_DIR            (ImageFolder of PNGs)
    ddbench teacher  train DATASET [--protocol kd|kd_pruning] [--epochs N --model M --seed S] | list
    ddbench expert   train DATASET [--method mtt] [--num N --epochs E --model M --zca] | list
    ddbench expert   import DATASET replay_buffer_0.pt... [--method mtt --model M --source NAME]
    ddbench expert   export DATASET OUT_DIR [--method mtt --num N --epochs E --source NAME]
    ddbench transfer [SET] --pair NAME | --target DATASET [--protocol transfer] [--out r.json]
    ddbench aggregate DIR... [--out table.md] [--csv table.csv]
    ddbench submit   RESULT.json --synset SET.safetensors [--board leaderboard]
    ddbench leaderboard build | verify [--tolerance 1.0] | reproduce ENTRY   [--board leaderboard]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from ddbench import _alloc
from ddbench.errors import DDBenchError, os_error_message

# Each command imports the modules it needs (they import torch, hydra: seconds) when it runs, so
# that `ddbench --help` and the plain commands start fast.

HYDRA_COMMANDS = ("run", "distill", "evaluate")
OTHER_COMMANDS = ("data", "show", "import", "export", "teacher", "expert", "transfer")
OTHER_COMMANDS += ("aggregate", "submit", "leaderboard")
log = logging.getLogger("ddbench")


def _fail(msg: str, code: int = 2) -> None:
    print(f"ddbench: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


# Run by the restarted interpreter: the parent's sys.path, so that the parent's ddbench is the
# one imported (``python -m`` would put the working directory, and any ``ddbench/`` in it, first).
_RESTART_CODE = (
    "import os, sys; sys.path[:] = os.environ.pop('_DDBENCH_SYSPATH').split(os.pathsep); "
    "from ddbench.cli import main; main()"
)


def restart_command(preload: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that rerun this ``ddbench`` command with ``preload`` in
    ``LD_PRELOAD``: the same interpreter, arguments and module search path as this process."""
    env = dict(
        os.environ,
        LD_PRELOAD=(preload + " " + os.environ.get("LD_PRELOAD", "")).strip(),
        _DDBENCH_REEXEC="1",
        _DDBENCH_SYSPATH=os.pathsep.join(p or os.getcwd() for p in sys.path),
    )
    return [sys.executable, "-c", _RESTART_CODE, *sys.argv[1:]], env


def _maybe_restart_with_tcmalloc() -> None:
    """Re-run this process with Debian's tcmalloc preloaded, where installed.

    Per-step allocations of small-batch training make glibc's malloc page-fault heavily;
    ``DDBENCH_ALLOCATOR=system`` keeps the default allocator.
    """
    if os.environ.get("DDBENCH_ALLOCATOR") in ("system", "glibc") or _alloc.preloaded_allocator():
        return
    path = _alloc.tcmalloc_path()
    if path is None or os.environ.get("_DDBENCH_REEXEC"):
        return
    argv, env = restart_command(path)
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return


def main(argv: list[str] | None = None) -> None:
    if argv is None:  # a real command line (not a call from Python): pick the allocator
        _maybe_restart_with_tcmalloc()
        _alloc.configure()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-") and "=" not in a), None)
    if command in (None, "-h", "--help", "help") or (
        command is None and {"-h", "--help"} & set(argv)
    ):
        print(__doc__)
        return
    if command not in HYDRA_COMMANDS + OTHER_COMMANDS:
        _fail(
            f"unknown command {command!r}; commands: {', '.join(HYDRA_COMMANDS + OTHER_COMMANDS)}"
        )
    rest = argv[:]
    rest.remove(command)
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for tracebacks
    try:
        if command in HYDRA_COMMANDS:
            if command == "evaluate":
                rest = _evaluate_dataset_arg(rest)
            with _hydra_errors_raised():
                _hydra_app(command, rest)
        else:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            commands = {"data": cmd_data, "show": cmd_show, "import": cmd_import}
            commands.update(export=cmd_export, teacher=cmd_teacher, expert=cmd_expert)
            commands.update(aggregate=cmd_aggregate, submit=cmd_submit, leaderboard=cmd_leaderboard)
            commands.update(transfer=cmd_transfer)
            commands[command](rest)
    except DDBenchError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    except OSError as e:
        if debug:
            raise
        _fail(os_error_message(e, _storage_roots()))
    except RecursionError as e:  # json.loads of a hostile file: nested arrays past the limit
        if debug or "JSON" not in str(e):
            raise
        _fail("a JSON input is nested too deeply to read (a hostile or broken file)")
    except Exception as e:
        if debug or not _is_config_error(e):
            raise
        _fail(_config_error_message(e))


@contextlib.contextmanager
def _hydra_errors_raised():
    """Hydra prints an exception of a job or of its config as a trimmed traceback and exits;
    with ``HYDRA_FULL_ERROR=1`` it re-raises it, so that :func:`main` reports it in one line."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _is_config_error(e: BaseException) -> bool:
    """An error in the command line's overrides or the configs they compose (Hydra, OmegaConf)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (HydraException, OmegaConfBaseException))


def _config_error_message(e: BaseException) -> str:
    from hydra.errors import OverrideParseException

    parts = [str(e)] + ([str(e.__cause__)] if e.__cause__ is not None else [])
    lines = [ln.strip() for part in parts for ln in part.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "^"))]
    msg = "; ".join(dict.fromkeys(lines))
    if isinstance(e, OverrideParseException):
        msg += (
            "; quote a value holding spaces, non-ASCII letters or other special characters: "
            "\"synset='/data/résumé set.safetensors'\" (docs: README, Run)"
        )
    return msg


def _storage_roots() -> list[tuple[Path, str, str]]:
    """The folders ddbench writes outside the run directory, and the variables that move them."""
    from ddbench.cache import cache_root
    from ddbench.data import data_root

    return [(data_root(), "data root", "DDBENCH_DATA"), (cache_root(), "cache", "DDBENCH_CACHE")]


def _evaluate_dataset_arg(args: list[str]) -> list[str]:
    """``ddbench evaluate synset=FILE dataset=NAME``: a set names its dataset, so ``dataset=`` is
    not a setting of ``evaluate``. For a published ``.pt`` file it is the file's dataset
    (``source_dataset``); for a ``.safetensors`` set it is accepted when it agrees with the set
    and refused, naming the set's dataset, when it does not."""
    given = [a for a in args if a.split("=", 1)[0] == "dataset" and "=" in a]
    if not given:
        return args
    name = given[-1].split("=", 1)[1].strip("'\"")
    synsets = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == "synset" and "=" in a]
    if len(given) > 1 or len(synsets) != 1 or "," in name or "," in synsets[0]:
        raise DDBenchError(
            "evaluate takes the dataset from the set: drop dataset=, or name a published .pt "
            "file's dataset with source_dataset=NAME"
        )
    rest = [a for a in args if a not in given]
    path = synsets[0].strip("'\"")
    if path.endswith(".pt"):
        if any(a.split("=", 1)[0] == "source_dataset" for a in rest):
            raise DDBenchError("give the .pt file's dataset once: source_dataset=NAME")
        return [*rest, f"source_dataset={name}"]
    from ddbench.synset import read_header

    theirs = read_header(path).get("dataset")
    if theirs != name:
        raise DDBenchError(
            f"dataset={name}, but {path} is a set of {theirs!r}; evaluate takes the dataset from "
            "the set (drop dataset=)"
        )
    return rest


# ----------------------------------------------------------------------------- Hydra apps


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    def header(path: str) -> dict:
        from ddbench.synset import import_any, read_header

        try:
            if str(path).endswith(".pt"):
                return import_any(path).meta
            return read_header(path)
        except DDBenchError:
            return {}

    def part(value: Any) -> str:
        """A value of a set's header as one safe part of the run directory's path."""
        text = re.sub(r"[^A-Za-z0-9_.:+-]", "_", str(value))[:64].lstrip(".")
        return text or "unknown"

    def method(p: str) -> Any:
        m = header(p).get("method")
        return m.get("name", "unknown") if isinstance(m, dict) else "unknown"

    for key, getter in (
        ("synset_dataset", lambda p: part(header(p).get("dataset", "unknown"))),
        ("synset_method", lambda p: part(method(p))),
        (
            "synset_ipc",
            lambda p: ipc if isinstance(ipc := header(p).get("ipc", 0), int) else part(ipc),
        ),
        ("synset_sha", lambda p: part(header(p).get("sha256") or "unknown")[:12]),
    ):
        if not OmegaConf.has_resolver(key):
            OmegaConf.register_new_resolver(key, getter)


def _hydra_app(command: str, args: list[str]) -> None:
    import hydra

    from ddbench import guard
    from ddbench.methods import register_schemas

    _register_resolvers()
    register_schemas()
    sys.argv = [f"ddbench {command}", *args]
    task = {"run": job_run, "distill": job_distill, "evaluate": job_evaluate}[command]
    app = hydra.main(version_base="1.3", config_path="pkg://ddbench.conf", config_name=command)(
        _job(task)
    )
    with guard.stop_workers_on_signal():  # a killed joblib sweep takes its workers with it
        app()


def _job(fn):
    def wrapped(cfg) -> Any:
        from ddbench import guard, kernels

        guard.die_with_parent()  # a joblib worker: ends with the sweep's process
        try:
            from ddbench import graphs

            if graphs.handles(cfg):  # a graph dataset or graph set: the graph track's job
                with _run_dir_lock():
                    return graphs.run_job(fn.__name__, cfg)
            _check_settings(cfg)
            kernels.set_mode(cfg.get("kernels", "auto"))  # for every model of the job
            with _run_dir_lock():
                return fn(cfg)
        except DDBenchError as e:
            log.error("%s", e)
            _fail(str(e))

    wrapped.__name__ = fn.__name__
    return wrapped


def reusable_set(out: Path, key: str, load: Any, force: bool) -> Any:
    """The set at ``out`` when it exists, loads with ``load`` and was made by the config whose
    key is ``key`` (not with ``force``); else None, after a warning when the file is bad."""
    if not out.exists() or force:
        return None
    try:
        s = load(out)
    except DDBenchError as e:
        log.warning("remaking %s: %s", out, e)
        return None
    if s.meta.get("config_key") != key:
        return None
    log.info("reusing %s (made by this config)", out)
    return s


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _run_dir_lock():
    """The job's hold on its run directory (:func:`ddbench.guard.run_dir_lock`): a second job
    writing there fails at once. Under torchrun the writing process, rank 0, holds it."""
    import contextlib

    from ddbench import engine, guard

    return guard.run_dir_lock(_run_dir()) if engine.is_main_process() else contextlib.nullcontext()


def _check_settings(cfg) -> None:
    """Refuse, before any work, the settings of a job that make no sense: an ``ipc`` that is
    not a whole number >= 1 (run, distill), an unknown ``precision``, negative checkpoint
    intervals, and a protocol that cannot be trained (``protocol.epochs=0``, ...)."""
    from omegaconf import OmegaConf

    from ddbench.method import check_ipc
    from ddbench.protocol import Protocol

    if "synset" not in cfg:  # ddbench evaluate takes the set's ipc
        check_ipc(cfg.ipc)
    _precisions(cfg)
    for key in ("checkpoint_every", "eval_checkpoint_every", "eval_checkpoint_seconds"):
        value = cfg.get(key, 0)
        whole = key != "eval_checkpoint_seconds"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            value = None
        if value is None or value < 0:
            kind = "a whole number" if whole else "a number"
            raise DDBenchError(f"{key} must be {kind} >= 0, got {cfg.get(key)!r}")
    if "protocol" in cfg:
        Protocol.from_config(OmegaConf.to_container(cfg.protocol, resolve=True))


def config_key(cfg: Any, keys: tuple[str, ...], **resolved: Any) -> str:
    """A hash of the parts of the config that define a job's output; ``resolved`` values (the
    precisions a job resolved, see :func:`_precisions`) stand in for the config's own."""
    from omegaconf import OmegaConf

    sub = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in keys
        if k in cfg
    }
    sub.update(resolved)
    ds = sub.get("dataset")
    if isinstance(ds, dict) and not ds.get("zca"):  # the keys of runs without ZCA stay as before
        ds.pop("zca", None)
        ds.pop("zca_eps", None)
    if sub.get("precision") == "fp32":  # likewise for fp32 runs: bf16 ones get their own key
        sub.pop("precision")
    if sub.get("kernels") == "auto":  # and for the default kernels: kernels=off gets its own
        sub.pop("kernels")
    method = sub.get("method")
    experts = method.get("experts") if isinstance(method, dict) else None
    if isinstance(experts, dict) and experts.get("source") == "":  # likewise for ddbench's own
        experts.pop("source")  # experts: runs on imported ones get their own key
    return hashlib.sha256(json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _precisions(cfg) -> tuple[str | None, str]:
    """A job's (distillation, evaluation) precision. ``precision=auto`` distils in bf16 where
    the device computes bf16 natively (``engine.resolve_precision``), else fp32, and evaluates
    in fp32, so that a protocol's numbers do not change with the machine; ``fp32`` and ``bf16``
    apply to both. ``ddbench evaluate`` distils nothing (None)."""
    from ddbench.engine import pick_device, resolve_precision

    given = str(cfg.precision)
    evaluation = "fp32" if given == "auto" else resolve_precision(given, "cpu")  # checks it
    if "synset" in cfg:  # ddbench evaluate: scores a given set
        return None, evaluation
    return resolve_precision(given, pick_device(cfg.device)), evaluation


_DISTILL_KEYS = ("dataset", "method", "ipc", "seed", "model", "precision", "kernels")
_RUN_KEYS = (*_DISTILL_KEYS, "protocol")


def _overridden(node: str) -> set[str]:
    """The keys under ``node`` that the command line sets (``node.a.b=...``, ``+node.c=...``)."""
    from hydra.core.hydra_config import HydraConfig

    keys = set()
    for text in HydraConfig.get().overrides.task:
        key = text.lstrip("+~").split("=", 1)[0]
        if key.startswith(node + "."):
            keys.add(key[len(node) + 1 :])
    return keys


def _register_dataset(cfg) -> str:
    from ddbench import data

    ds = cfg.dataset
    if ds.name == "imagefolder" or "root" in ds:
        data.register_image_folder(
            ds.name, ds.root, tuple(ds.get("im_size", (64, 64))), int(ds.get("channels", 3))
        )
    data.get_spec(ds.name)
    return ds.name


def _tracker(cfg, run_dir: Path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from ddbench.tracking import Tracker

    lg = cfg.logger
    hc = HydraConfig.get()
    group = lg.get("group") or (Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None)
    return Tracker(
        lg.kind, project=lg.get("project", "ddbench"), group=group,
        name=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True), directory=str(run_dir),
    )  # fmt: skip


def _distill(cfg, run_dir: Path, tracker) -> Any:
    """Make (or reuse, when it exists for this exact config) the run's synthetic set."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from ddbench import data, synset
    from ddbench.augment import DSA
    from ddbench.engine import pick_device
    from ddbench.method import Checkpointer, Task, build_method, run_distill
    from ddbench.models import create_model

    name = _register_dataset(cfg)
    method = build_method(OmegaConf.to_container(cfg.method, resolve=True))
    method.apply_recipe(name, int(cfg.ipc), explicit=_overridden("method"))
    log.info("method %s:\n%s", method.name, OmegaConf.to_yaml(method.config))
    with open_dict(cfg):  # the key covers the final settings (a plug-in's defaults, a recipe)
        cfg.method = method.config
    precision = _precisions(cfg)[0]
    key = config_key(cfg, _DISTILL_KEYS, precision=precision)
    out = run_dir / "synset.safetensors"
    s = reusable_set(out, key, synset.load, cfg.force)
    if s is not None:
        return s, out
    spec = data.get_spec(name)
    device = pick_device(cfg.device)
    model_kwargs = dict(cfg.model.get("kwargs") or {})
    create_model(
        cfg.model.name, spec.channels, spec.num_classes, spec.im_size, **model_kwargs
    )  # fail early

    def model_factory():
        return create_model(
            cfg.model.name, spec.channels, spec.num_classes, spec.im_size, **model_kwargs
        ).to(device)

    zca = {"zca": bool(cfg.dataset.get("zca", False))}
    zca["zca_eps"] = float(cfg.dataset.get("zca_eps", data.ZCA_EPS))
    log.info("distilling in %s (precision=%s)", precision, cfg.precision)
    task = Task(
        train=data.load_split(name, "train", **zca),
        ipc=int(cfg.ipc),
        model_factory=model_factory,
        generator=torch.Generator().manual_seed(int(cfg.seed)),
        seed=int(cfg.seed),
        device=device,
        augment=DSA(spec.dsa_strategy),
        logger=tracker,
        checkpointer=Checkpointer(run_dir, key, int(cfg.checkpoint_every)),
        precision=precision,
        val_loader=lambda: data.load_split(name, "val", **zca),
    )
    torch.manual_seed(int(cfg.seed))
    s = run_distill(method, task)
    s.meta["config_key"] = key
    # what the key covers besides the set's own metadata (ddbench leaderboard reproduce)
    s.meta["distill_config"] = {"model": cfg.model.name, "model_kwargs": model_kwargs,
                                "precision": precision, "kernels": str(cfg.kernels), **zca}  # fmt: skip
    synset.save(s, out)
    task.checkpointer.clear()
    log.info("saved %s (%d images, %.1fs)", out, len(s), s.meta["cost"]["wall_seconds"])
    return s, out


EVAL_CHECKPOINT = "eval_checkpoint.pt"  # the models in training (protocol.evaluate)


def _evaluate(cfg, s, path: Path, run_dir: Path, tracker) -> dict:
    from omegaconf import OmegaConf

    from ddbench.protocol import Protocol, evaluate, write_result

    protocol = Protocol.from_config(OmegaConf.to_container(cfg.protocol, resolve=True))
    pinned = _pinned_protocol_hash(protocol.name)
    if pinned != protocol.hash:  # overridden on the command line, or not a pinned protocol
        log.warning(
            "protocol %r differs from the pinned recipe: results are marked not comparable",
            protocol.name,
        )
        protocol.comparable = False
    s.meta["_path"] = str(path)
    split = _eval_split(cfg)
    model, model_kwargs = _eval_model(cfg, protocol)
    result = evaluate(
        s, protocol, model, model_kwargs, device=cfg.device,
        precision=_precisions(cfg)[1], parallel=cfg.parallel, progress=bool(cfg.progress), log=log,
        partial=run_dir / "result.partial.json", split=split,
        checkpoint=run_dir / EVAL_CHECKPOINT, checkpoint_every=int(cfg.eval_checkpoint_every),
        checkpoint_seconds=float(cfg.eval_checkpoint_seconds),
        reuse=_reused_results(cfg.get("reuse") or []),
    )  # fmt: skip
    result["config_key"] = _run_key(cfg)
    write_result(result, run_dir / "result.json")
    (run_dir / "result.partial.json").unlink(missing_ok=True)
    (run_dir / EVAL_CHECKPOINT).unlink(missing_ok=True)
    tracker.result(result)
    acc = result["accuracy"]
    note = "" if protocol.comparable else "  [protocol not comparable with papers]"
    if split != "test":
        note += "  [VAL split: a tuning score, not a test result]"
    if result["protocol"].get("cross_protocol"):
        note += f"  [cross-protocol: the set declares {result['protocol']['set_declares']}]"
    print(f"{'VAL ' if split != 'test' else ''}{result['method']} {result['dataset']} ipc={result['ipc']} {protocol.name}/{result['model']}: "
          f"{acc['mean']:.2f} +- {acc['std']:.2f} %{note}  -> {run_dir / 'result.json'}")  # fmt: skip
    return result


def _eval_model(cfg, protocol) -> tuple[str | None, dict]:
    """The model an evaluation trains: the command line's ``model=...`` when named, else the
    protocol's own (``model:``; None lets :func:`ddbench.protocol.evaluate` take it), else the
    config's default."""
    from hydra.core.hydra_config import HydraConfig

    named = any(
        t.lstrip("+~").split("=", 1)[0].split(".")[0] == "model"
        for t in HydraConfig.get().overrides.task
    )
    if protocol.model is not None and not named:
        return None, {}
    return cfg.model.name, dict(cfg.model.get("kwargs") or {})


def _pinned_protocol_hash(name: str) -> str | None:
    """The hash of ``conf/protocol/<name>.yaml`` as shipped (see protocol.pinned_protocol_hash)."""
    from ddbench.protocol import pinned_protocol_hash

    return pinned_protocol_hash(name)


def _reused_results(paths) -> dict[str, dict]:
    """``{"sha256:<hex>": result}`` of ``ddbench evaluate reuse=[...]`` (protocol.reusable_seeds
    checks each against the evaluation): each earlier result is named by the checksum of its
    file, which a board entry can hold where a local path cannot."""
    from ddbench.leaderboard import Limits, _read_json

    if isinstance(paths, str):
        paths = [paths]
    found = {}
    for p in map(Path, paths):
        result = _read_json(p, Limits().max_json_bytes, "reused result")
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        log.info("reuse: %s (sha256 %s)", p, sha[:16])
        found[f"sha256:{sha}"] = result
    return found


def _eval_split(cfg) -> str:
    split = str(cfg.get("eval_split", "test"))
    if split not in ("test", "val"):
        raise DDBenchError(f"eval_split must be test or val, not {split!r}")
    return split


def _run_key(cfg) -> str:
    """config_key of a run; a val evaluation gets its own key (test keys stay as they were), and
    so does a run that distils in another precision than it evaluates in (``precision=auto``)."""
    keys = _RUN_KEYS if _eval_split(cfg) == "test" else (*_RUN_KEYS, "eval_split")
    distill, evaluation = _precisions(cfg)
    resolved = {"precision": distill or evaluation}
    if distill not in (None, evaluation):
        resolved["eval_precision"] = evaluation
    return config_key(cfg, keys, **resolved)


def _done(cfg, run_dir: Path, synset_sha256: str | None = None) -> dict | None:
    """The existing result of this exact config (and, for ``evaluate``, of this exact set), if
    any; None with force=true."""
    f = run_dir / "result.json"
    if cfg.force or not f.exists():
        return None
    try:
        r = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    if r.get("config_key") != _run_key(cfg):
        return None
    if synset_sha256 is not None and (r.get("synset") or {}).get("sha256") != synset_sha256:
        return None
    return r


def _already_done(cfg, run_dir: Path, done: dict) -> dict | float:
    """Report a finished job; its return value as if it had just run."""
    acc, split = done["accuracy"], _eval_split(cfg)
    tag = "VAL " if split != "test" else ""
    print(
        f"already done: {tag}{acc['mean']:.2f} +- {acc['std']:.2f} %  ({run_dir / 'result.json'}; force=true redoes it)"
    )
    return 100.0 - float(acc["mean"]) if split == "val" else done


def job_run(cfg) -> dict | float:
    """Distill and evaluate; the result dict, or with ``eval_split=val`` the val error
    (100 - mean accuracy) as a float, the objective a sweeper such as Optuna minimises."""
    _check_class_protocol_scores(cfg)
    run_dir = _run_dir()
    split = _eval_split(cfg)
    done = _done(cfg, run_dir)
    if done is not None:
        return _already_done(cfg, run_dir, done)
    tracker = _tracker(cfg, run_dir)
    try:
        s, path = _distill(cfg, run_dir, tracker)
        _show_for_tracker(s, run_dir, tracker)
        result = _evaluate(cfg, s, path, run_dir, tracker)
    finally:
        tracker.finish()
    return 100.0 - float(result["accuracy"]["mean"]) if split == "val" else result


def _check_class_protocol_scores(cfg) -> None:
    """``ddbench run`` distils and then scores under a class protocol: refuse, before any work,
    a method whose sets carry representation targets (``label_kind = "representation"``),
    which only the transfer protocol scores."""
    from ddbench.method import method_class
    from ddbench.synset import REPRESENTATION

    target = cfg.method.get("_target_") if "method" in cfg else None
    if target and getattr(method_class(target), "label_kind", None) == REPRESENTATION:
        raise DDBenchError(
            f"method {cfg.method.get('name')} makes representation targets, which no class "
            "protocol scores: `ddbench distill` it, then `ddbench transfer SET --pair NAME` "
            "(docs/transfer.md)"
        )


def job_distill(cfg) -> None:
    run_dir = _run_dir()
    tracker = _tracker(cfg, run_dir)
    try:
        s, path = _distill(cfg, run_dir, tracker)
        _show_for_tracker(s, run_dir, tracker)
        print(f"saved {path}")
    finally:
        tracker.finish()


def job_evaluate(cfg) -> dict | float:
    """Score a saved set; like job_run, the val error (a float) when ``eval_split=val``."""
    from ddbench import synset

    run_dir = _run_dir()
    path = Path(cfg.synset)
    if path.suffix == ".pt":
        s = synset.import_any(path, cfg.get("source_dataset"), bool(cfg.get("zca", False)))
    else:
        s = synset.load(path)
    sha = s.meta.get("sha256")  # an imported .pt set has none: it is always scored
    done = _done(cfg, run_dir, sha) if sha else None
    if done is not None:
        return _already_done(cfg, run_dir, done)
    tracker = _tracker(cfg, run_dir)
    try:
        result = _evaluate(cfg, s, path, run_dir, tracker)
    finally:
        tracker.finish()
    return 100.0 - float(result["accuracy"]["mean"]) if _eval_split(cfg) == "val" else result


def _show_for_tracker(s, run_dir: Path, tracker) -> None:
    if tracker.run is not None:
        from ddbench.viz import save_grid

        tracker.image("synset", str(save_grid(s, run_dir / "synset.png")))


# ----------------------------------------------------------------------------- plain commands


def cmd_data(args: list[str]) -> None:
    from ddbench import data

    p = argparse.ArgumentParser(prog="ddbench data")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the catalogue and what is prepared")
    pp = sub.add_parser("prepare", help="convert a dataset once into the data root")
    pp.add_argument("name")
    pp.add_argument(
        "--download", action="store_true", help="fetch with torchvision (needs the web)"
    )
    pp.add_argument("--force", action="store_true")
    a = p.parse_args(args)
    if a.action == "list":
        print(f"data root: {data.data_root()}  (set DDBENCH_DATA to move it)")
        for name, spec in sorted(data.CATALOGUE.items()):
            state = "prepared" if data.is_prepared(name) else "not prepared"
            print(
                f"  {name:14s} image {spec.channels}x{spec.im_size[0]}x{spec.im_size[1]} {spec.num_classes:4d} classes  [{state}]  {spec.source}"
            )
        print(
            "  imagefolder    image any class-per-folder tree: dataset=imagefolder dataset.root=PATH dataset.im_size=[64,64]"
        )
        from ddbench.graphs.data import catalogue_rows

        for r in catalogue_rows():
            n = f"{r['classes']:4d} classes  [{r['state']}]  " if r["classes"] else ""
            print(f"  {r['name']:14s} {r['kind']:5s} {n}{r['source']}")
    else:
        print(f"prepared {a.name}: {data.prepare(a.name, download=a.download, force=a.force)}")


def cmd_show(args: list[str]) -> None:
    from ddbench import synset
    from ddbench.viz import save_grid

    p = argparse.ArgumentParser(
        prog="ddbench show", description="save a PNG grid of a set, one row per class"
    )
    p.add_argument("path")
    p.add_argument("--out", default=None, help="PNG path (default: next to the set)")
    a = p.parse_args(args)
    s = synset.load(a.path)
    out = save_grid(s, a.out or Path(a.path).with_suffix(".png"))
    print(f"wrote {out}")


def cmd_import(args: list[str]) -> None:
    from ddbench import synset
    from ddbench.coreset import import_indices

    p = argparse.ArgumentParser(prog="ddbench import", description="convert a published set format")
    p.add_argument("format", choices=["dc", "mtt", "datadam", "imagefolder", "indices", "krr_st"])
    p.add_argument(
        "path",
        help="res_*.pt (dc, datadam), images_best.pt (mtt), a folder (imagefolder), a "
        ".npy/.pt/.json list of train-split indices (indices: DeepCore's subset['indices']) or "
        "x_syn.pt with y_syn.pt beside it (krr_st: a label-free set of representation targets)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--zca", action="store_true", help="(mtt) the images are ZCA-whitened")
    p.add_argument("--experiment", type=int, default=0, help="(dc) which experiment of res_*.pt")
    p.add_argument(
        "--protocol",
        default=None,
        help="(dc, or any format with --method) the protocol the set declares; default from the "
        "file name (res_DC_* -> dc, res_DSA_* / res_DM_* -> standard), or --method's protocol",
    )
    p.add_argument("--entry", type=int, default=-1,
                   help="(datadam) which saved set of res_DataDAM_*.pt (-1: the last)")  # fmt: skip
    p.add_argument(
        "--split-size", type=int, default=None,
        help="(indices) size of the train set the indices index; must be ddbench's train split's",
    )  # fmt: skip
    p.add_argument(
        "--method", default=None,
        help="the method whose authors' code wrote the file (a name of conf/method/): the set "
        "becomes imported:<method>, declares that method's protocol, and the leaderboard shows "
        "it as the authors' set (a reference row)",
    )  # fmt: skip
    p.add_argument("--code", default=None,
                   help="(with --method) the code and commit the file came from, e.g. "
                   "VILA-Lab/SRe2L@8d00cba; stored in the set, shown on the leaderboard")  # fmt: skip
    a = p.parse_args(args)
    if a.code is not None and a.method is None:
        raise DDBenchError("--code names the authors' code of a --method: give --method too")
    readers = {
        "dc": lambda: synset.import_dc(a.path, a.dataset, a.experiment, protocol=a.protocol),
        "datadam": lambda: synset.import_datadam(a.path, a.dataset, a.entry),
        "mtt": lambda: synset.import_mtt(a.path, a.dataset, zca=a.zca),
        "imagefolder": lambda: synset.import_image_folder(a.path, a.dataset),
        "indices": lambda: import_indices(a.path, a.dataset, split_size=a.split_size),
        "krr_st": lambda: synset.import_krr_st(a.path, a.dataset),
    }
    if a.format not in ("imagefolder", "krr_st"):  # a FIFO, a link loop, ...: refused before any
        # reader opens it (imagefolder and krr_st take a folder; krr_st checks each file it reads)
        synset.check_file(a.path)
    s = readers[a.format]()
    if a.method is not None:
        protocol = a.protocol or _declared_protocol(a.method, s)  # an explicit --protocol wins
        s = synset.as_authors_set(s, a.method, protocol, a.code)
    synset.save(s, a.out)
    print(f"wrote {a.out} ({len(s)} images, ipc {s.ipc}, expects protocol {s.meta['protocol']})")


def _declared_protocol(method: str, s) -> str:
    """The protocol ``method`` declares (its class's ``protocol``), checked against what the
    imported set ``s`` holds: a protocol that trains with the set's learned lr needs one."""
    from ddbench import synset
    from ddbench.method import build_method
    from ddbench.methods import packaged_config
    from ddbench.protocol import Protocol, protocol_config

    built = build_method(packaged_config(method))
    name = getattr(built, "protocol", None) or "standard"
    label_free = getattr(built, "label_kind", None) == synset.REPRESENTATION
    if label_free != s.representation:
        kind = {True: "label-free", False: "labelled"}
        raise DDBenchError(f"{method} sets are {kind[label_free]}; the imported set is "
                           f"{kind[s.representation]}")  # fmt: skip
    if label_free:
        return name  # a transfer protocol (conf/transfer_protocol/), scored by `ddbench transfer`
    if Protocol.from_config(protocol_config(name)).lr_from_set and s.lr is None:
        raise DDBenchError(
            f"{method} sets are scored under {name}, which trains with the set's learned lr; "
            "the imported file has none (lr_*.pt beside images_*.pt)"
        )
    return name


def cmd_export(args: list[str]) -> None:
    from ddbench import synset

    p = argparse.ArgumentParser(
        prog="ddbench export", description="write a set as an ImageFolder of PNGs"
    )
    p.add_argument("path")
    p.add_argument("out_dir")
    a = p.parse_args(args)
    print(f"wrote {synset.export_image_folder(synset.load(a.path), a.out_dir)}")


def cmd_teacher(args: list[str]) -> None:
    from ddbench import data, teachers
    from ddbench.engine import pick_device
    from ddbench.protocol import protocol_config

    p = argparse.ArgumentParser(
        prog="ddbench teacher", description="train (once, resumable) or list cached teachers"
    )
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the cached teachers")
    tp = sub.add_parser("train", help="train the teacher a protocol uses (a cache hit is free)")
    tp.add_argument("dataset")
    tp.add_argument("--protocol", default="kd", help="take the teacher config from this protocol")
    for key, kind in (("model", str), ("epochs", int), ("seed", int), ("lr", float)):
        tp.add_argument(f"--{key}", type=kind, default=None)
    tp.add_argument("--device", default="auto")
    a = p.parse_args(args)
    if a.action == "list":
        print(
            f"teacher cache: {teachers.cache_root() / 'teachers'}  (set DDBENCH_CACHE to move it)"
        )
        for t in teachers.list_teachers():
            c = t["config"]
            print(f"  {t['dataset']:14s} {c['model']:10s} {c['epochs']:4d} ep  seed {c['seed']}  "
                  f"aug {c['augment']}  val {t['val_accuracy']:.2f}%  {t['train_seconds']:.0f}s  "
                  f"{t['path']}\n    val: {teachers.convergence(t)}")  # fmt: skip
        return
    data.get_spec(a.dataset)
    protocol = protocol_config(a.protocol)
    if protocol is None:
        raise DDBenchError(f"unknown protocol {a.protocol!r}")
    node = protocol.get("teacher")
    if not node:
        raise DDBenchError(f"protocol {a.protocol!r} uses no teacher")
    node.update(
        {k: v for k in ("model", "epochs", "seed", "lr") if (v := getattr(a, k)) is not None}
    )
    cfg = teachers.TeacherConfig.from_config(node)
    _, meta = teachers.get_teacher(a.dataset, cfg, device=pick_device(a.device))
    print(f"teacher {a.dataset}/{cfg.model}: val {meta['val_accuracy']:.2f}%  "
          f"-> {teachers.teacher_path(a.dataset, cfg)}")  # fmt: skip
    print(f"  val: {teachers.convergence(meta)}")


def expert_config(
    dataset: str, method: str = "mtt", model: str = "convnet", **overrides: Any
) -> tuple[Any, int]:
    """``(ExpertConfig, num_experts)`` exactly as ``method=<method> model=<model>`` builds them
    (the composed method node's ``experts``, which follow the model), with
    ``overrides`` (ExpertConfig fields; ``model_kwargs`` entries are merged) applied on top."""
    from ddbench import data
    from ddbench.experts import ExpertConfig
    from ddbench.methods import packaged_config

    f = importlib.resources.files("ddbench.conf") / "model" / f"{model}.yaml"
    if not f.is_file():
        raise DDBenchError(f"unknown model {model!r} (no conf/model/{model}.yaml)")
    data.get_spec(dataset)
    method_node = packaged_config(method, [f"model={model}"])
    if "experts" not in method_node:
        raise DDBenchError(f"method {method!r} trains no experts (its config has no experts node)")
    node = dict(method_node["experts"])
    kwargs = overrides.pop("model_kwargs", None) or {}
    node.update({k: v for k, v in overrides.items() if v is not None})
    node["model_kwargs"] = {**(node.get("model_kwargs") or {}), **kwargs}
    return ExpertConfig.from_config(node), int(method_node.get("num_experts", 10))


def _model_kwarg(text: str) -> tuple[str, Any]:
    from omegaconf import OmegaConf

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key = text.split("=", 1)[0]
    return key, OmegaConf.to_container(OmegaConf.from_dotlist([text]))[key]


def list_experts(dataset: str | None = None) -> list[dict[str, Any]]:
    """One entry per cached expert configuration: its config, complete experts, training
    seconds per epoch (mean over them) and the ones still in training (a checkpoint)."""
    import dataclasses

    from ddbench.cache import cache_root
    from ddbench.experts import ExpertConfig
    from ddbench.synset import read_header

    root = cache_root() / "experts"
    out = []
    for d in sorted(root.glob(f"{dataset or '*'}/*/")):
        metas = []
        for f in sorted(d.glob("expert_*.safetensors")):
            try:
                meta = read_header(f)
            except DDBenchError:
                continue
            if meta.get("kind") == "expert":
                metas.append(meta)
        training = len(list(d.glob("expert_*.train_state.pt")))
        if not metas and not training:
            continue
        cfg = metas[0]["config"] if metas else {}
        if not cfg and (d / "config.json").exists():  # only unfinished ones: their config
            try:
                cfg = json.loads((d / "config.json").read_text())["config"]
            except (OSError, ValueError, KeyError):
                cfg = {}
        epochs = max(int(cfg.get("epochs", 1)), 1)
        per_epoch = [float(m["train_seconds"]) / epochs for m in metas if "train_seconds" in m]
        defaults = dataclasses.asdict(ExpertConfig())
        shown = ("model", "model_kwargs", "epochs", "zca", "zca_eps", "seed")
        # fields of files written by an older config shape: shown only when set
        other = {k: v for k, v in cfg.items()
                 if k not in shown and defaults.get(k) != v and (k in defaults or v)}  # fmt: skip
        out.append(
            {
                "dataset": d.parent.name,
                "dir": str(d),
                "config": cfg,
                "non_default": other,
                "experts": sorted(int(m["index"]) for m in metas),
                "training": training,
                "seconds_per_epoch": sum(per_epoch) / len(per_epoch) if per_epoch else None,
            }
        )
    return out


def cmd_expert(args: list[str]) -> None:
    from ddbench import experts
    from ddbench.cache import cache_root
    from ddbench.engine import pick_device

    p = argparse.ArgumentParser(
        prog="ddbench expert",
        description="train (once, resumable), list, import or export cached expert trajectories "
        "(MTT family)",
    )
    sub = p.add_subparsers(dest="action", required=True)
    lp = sub.add_parser("list", help="the cached experts, with their config and s/epoch")
    lp.add_argument("dataset", nargs="?", default=None)
    tp = sub.add_parser(
        "train",
        help="train the experts a method uses (cached ones are skipped, killed ones resume)",
        description="Builds the ExpertConfig exactly as `ddbench run method=METHOD model=MODEL` "
        "does, so that the run finds these experts in the cache.",
    )
    tp.add_argument("dataset")
    tp.add_argument("--method", default="mtt", help="take the experts' config from this method")
    tp.add_argument("--model", default="convnet", help="conf/model/<MODEL>.yaml (default convnet)")
    tp.add_argument("--model-kwarg", action="append", type=_model_kwarg, default=[],
                    metavar="KEY=VALUE", help="override one of the model's kwargs")  # fmt: skip
    tp.add_argument("--num", type=int, default=None, help="experts (default: the method's)")
    tp.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                    help="train on the ZCA-whitened train split (dataset.zca=true runs need it)")  # fmt: skip
    for key, kind in (("epochs", int), ("zca_eps", float), ("seed", int), ("lr", float),
                      ("batch_size", int)):  # fmt: skip
        tp.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None)
    tp.add_argument("--device", default="auto")
    ip = sub.add_parser(
        "import",
        help="store the authors' replay_buffer_<n>.pt trajectories (MTT's buffer.py format) as "
        "cached experts",
        description="Checks every trajectory against the parameters of the network `ddbench run "
        "method=METHOD model=MODEL` builds and caches them under a config whose `source` names "
        "them; the run then uses them with the overrides printed at the end.",
    )
    ip.add_argument("dataset")
    ip.add_argument("paths", nargs="+", help="replay_buffer_<n>.pt files, or folders of them")
    ep = sub.add_parser(
        "export",
        help="write cached experts as replay_buffer_<n>.pt files their distill.py loads",
        description="OUT_DIR is the folder their distill.py reads: <buffer_path>/<DATASET>/<MODEL>"
        " (<DATASET>_NO_ZCA for CIFAR without --zca).",
    )
    ep.add_argument("dataset")
    ep.add_argument("out_dir")
    ep.add_argument("--num", type=int, default=None, help="experts (default: the method's)")
    ep.add_argument("--epochs", type=int, default=None)
    ep.add_argument(
        "--per-file", type=int, default=10, help="trajectories per file (save_interval)"
    )
    for q in (ip, ep):
        q.add_argument("--method", default="mtt", help="take the experts' config from this method")
        q.add_argument("--model", default="convnet", help="conf/model/<MODEL>.yaml")
        q.add_argument("--model-kwarg", action="append", type=_model_kwarg, default=[],
                       metavar="KEY=VALUE", help="override one of the model's kwargs")  # fmt: skip
        q.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                       help="the trajectories live in the ZCA-whitened space")  # fmt: skip
        q.add_argument("--source", default=None,
                       help="the imported experts' name (import default: from the files' hashes)")  # fmt: skip
    a = p.parse_args(args)
    if a.action in ("import", "export"):
        fields = {"zca": a.zca, "source": a.source}
        if a.action == "export":
            fields["epochs"] = a.epochs
        cfg, num = expert_config(
            a.dataset, a.method, a.model, model_kwargs=dict(a.model_kwarg), **fields
        )
        if a.action == "import":
            cfg, written = experts.import_buffers(a.dataset, cfg, a.paths)
            print(f"imported {len(written)} experts ({cfg.epochs} epochs, source {cfg.source}) "
                  f"into {experts.expert_dir(a.dataset, cfg)}")  # fmt: skip
            print(f"use them with: method={a.method} method.experts.source={cfg.source} "
                  f"method.experts.epochs={cfg.epochs} method.num_experts={len(written)}")  # fmt: skip
            return
        num = num if a.num is None else a.num
        if num < 1:
            raise DDBenchError(f"--num must be >= 1, got {num}")
        written = experts.export_buffers(a.dataset, cfg, num, a.out_dir, per_file=a.per_file)
        print(f"wrote {num} experts ({cfg.epochs} epochs) as {len(written)} replay buffer "
              f"file(s) in {a.out_dir}")  # fmt: skip
        return
    if a.action == "list":
        print(f"expert cache: {cache_root() / 'experts'}  (set DDBENCH_CACHE to move it)")
        for e in list_experts(a.dataset):
            c = e["config"]
            zca = f"zca {c.get('zca_eps')}" if c.get("zca") else "no zca"
            spe = e["seconds_per_epoch"]
            extra = " ".join(f"{k}={v}" for k, v in e["non_default"].items())
            kw = ",".join(f"{k}={v}" for k, v in (c.get("model_kwargs") or {}).items())
            training = f" (+{e['training']} training)" if e["training"] else ""
            speed = f"{spe:.1f} s/epoch" if spe is not None else "- s/epoch"
            print(f"  {e['dataset']:14s} {c.get('model', '?')}({kw})  {c.get('epochs', '?')} ep  "
                  f"{zca}  seed {c.get('seed')}  experts {len(e['experts'])}{training}  "
                  f"{speed}  {extra}  {e['dir']}")  # fmt: skip
        return
    overrides = {k: getattr(a, k) for k in ("epochs", "zca", "zca_eps", "seed", "lr", "batch_size")}
    cfg, num = expert_config(
        a.dataset, a.method, a.model, model_kwargs=dict(a.model_kwarg), **overrides
    )
    num = num if a.num is None else a.num
    if num < 1:
        raise DDBenchError(f"--num must be >= 1, got {num}")
    experts.get_experts(a.dataset, cfg, num, device=pick_device(a.device))
    for i in range(num):
        _, meta = experts.load_expert(experts.expert_path(a.dataset, cfg, i))
        print(f"expert {i} {a.dataset}/{cfg.model}: {meta['train_seconds'] / cfg.epochs:.1f} s/epoch"
              f", final loss {meta['epoch_losses'][-1]:.4f}")  # fmt: skip
    print(f"{num} experts ({cfg.epochs} epochs, key {cfg.key(a.dataset)}) in "
          f"{experts.expert_dir(a.dataset, cfg)}")  # fmt: skip


def cmd_transfer(args: list[str]) -> None:
    from ddbench import transfer

    transfer.main(args)


def cmd_aggregate(args: list[str]) -> None:
    from ddbench import aggregate

    aggregate.main(args)


def cmd_submit(args: list[str]) -> None:
    from ddbench import leaderboard

    leaderboard.main_submit(args)


def cmd_leaderboard(args: list[str]) -> None:
    from ddbench import leaderboard, reproduce

    leaderboard.main_leaderboard(args, reproduce_main=reproduce.main)


if __name__ == "__main__":
    main()

"""Expert trajectories (MTT and its successors): networks trained on the real data, with their
flattened parameters recorded after every epoch, trained once and cached.

A sibling of :mod:`ddbench.teachers`: per ``(dataset, model, recipe, ZCA)`` one directory
``$DDBENCH_CACHE/experts/<dataset>/<model>-<key>/`` holding ``expert_<i>.safetensors``, one file
per expert: the tensor ``trajectory [E+1, P]`` (row 0 the initial parameters, row ``e`` those after
epoch ``e``; ``P`` parameters flattened in ``named_parameters()`` order) and JSON metadata (config,
key, seed, losses). Expert ``i`` is trained by the core engine with seed ``cfg.seed + i``. Each
epoch checkpoints the engine's state and the rows collected so far (``expert_<i>.train_state.pt``),
so a killed training resumes; a flock per expert makes parallel jobs train each one once.

The recipe defaults are MTT's ``buffer.py``: SGD lr 0.01, momentum 0, weight decay 0, no lr decay,
batch 256, DSA during training (here: the dataset's DSA strategy), 50 epochs per expert.
``schedule: step`` multiplies the lr by ``gamma`` at each of the ``milestones`` (fractions of the
epochs, :func:`ddbench.engine.lr_at`).

Variants of the training step live with the method they belong to and reach the trainer through
one hook: a method file registers a step factory under a name (:func:`register_step`), and
``ExpertConfig.step`` names it, with its settings in ``step_kwargs`` (each variant's defaults are
the plain step). ``methods/ftd.py`` registers ``gsam`` (FTD's sharpness-aware experts),
``methods/ast.py`` ``smooth`` (AST's experts: an input-gradient penalty and a rising loss weight);
longer experts (DATM's late start epochs) are just ``epochs``. A name not yet registered is looked
up by importing the method modules (``ddbench.methods``), so ``ddbench expert train`` finds every
variant. A step object with ``uses_context = True`` is given an :class:`ExpertStepContext` in its
``context`` attribute before training: the epoch being trained, the batch before augmentation
and a forward of the network at given parameters (what the engine's ``step_fn(closure, params,
optimizer)`` does not pass).

Experts trained elsewhere enter the cache through :func:`import_buffers` (``ddbench expert
import``: the ``replay_buffer_<n>.pt`` files of MTT's ``buffer.py`` and FTD's/DATM's
``buffer_FTD.py``, checked against the network's parameters), under a config whose ``source``
names them, so that they are never mistaken for (or retrained as) ddbench's own;
:func:`export_buffers` (``ddbench expert export``) writes cached experts in that format.

    experts = get_experts("cifar10", ExpertConfig(epochs=50), n=10, device="cuda")
    flat = FlatModel(build_expert_model("cifar10", cfg))
    logits = flat(experts[0][3], x)      # the expert after epoch 3, called functionally
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench import data, engine
from ddbench.cache import CachedConfig, cache_root, lock
from ddbench.engine import pick_device
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.models import create_model
from ddbench.provenance import versions
from ddbench.synset import atomic_write, read_header

log = logging.getLogger("ddbench")
SCHEMA = 1


@dataclass
class ExpertConfig(CachedConfig):
    """What an expert is: its network, the recipe on the train split, and the image space."""

    kind = "expert"
    # added after experts were cached: part of the key only where they differ from the default
    # (and only under schedule: step, the one they change)
    _HASHED_IF_SET = ("milestones", "gamma")

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | cosine (engine.Recipe)
    milestones: list[float] = field(default_factory=lambda: [0.5])  # schedule step: fractions
    gamma: float = 0.1  # schedule step: the lr factor at each milestone
    augment: str = "dsa"  # none | dsa (the dataset's strategy) | a DSA strategy string
    zca: bool = False  # train on ZCA-whitened images (fit on the normalised train split)
    zca_eps: float = 0.1
    seed: int = 0  # expert i is trained with seed + i
    step: str = "plain"  # the training step: plain (the engine's), or a registered variant
    step_kwargs: dict[str, Any] = field(default_factory=dict)  # the variant's settings
    # "": trained by ddbench; a name: imported trajectories (`ddbench expert import`), never
    # trained here (the other fields as given at the import; the network's are checked)
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or self.source != self.source.strip():
            raise DDBenchError(
                f"experts: source must be a name without spaces around it, got {self.source!r}"
            )
        self.milestones = [float(m) for m in self.milestones]
        if not (self.gamma > 0 and all(0 < m <= 1 for m in self.milestones)):
            raise DDBenchError("experts: schedule step needs gamma > 0 and milestones in (0, 1]")
        if self.step == "plain":
            # a variant's settings at their defaults are the plain step (so a command line can
            # turn a method's variant off: step=plain and its settings at their defaults)
            for name, value in self.step_kwargs.items():
                owner = variant_of_setting(name)
                if owner is None or owner.defaults[name] != value:
                    raise DDBenchError(
                        f"experts: step_kwargs {name}={value!r} need a step variant (step: plain)"
                    )
            return
        variant = step_variant(self.step)
        changed = variant.changed(self.step_kwargs)  # checks the names
        if not changed:
            raise DDBenchError(
                f"experts: step {self.step} with its defaults is the plain step; set one of "
                f"{sorted(variant.defaults)} in step_kwargs, or use step: plain"
            )
        variant.build(**{**variant.defaults, **changed})  # checks the values

    @property
    def is_plain(self) -> bool:
        """The engine's default SGD step."""
        return self.step == "plain"

    def key(self, dataset: str) -> str:
        """The hash of the dataset and every field, a step variant's settings under their own
        names and only where they differ from its defaults (each setting name belongs to one
        variant, so the names identify it): a plain expert's key has no step fields, and
        ``milestones``/``gamma`` enter it only under ``schedule: step`` and when set to other
        values than their defaults."""
        fields = asdict(self)
        if not fields["source"]:  # trained here: not hashed, so those keys do not depend on it
            del fields["source"]
        for name in self._HASHED_IF_SET:
            f = self.__dataclass_fields__[name]
            default = f.default if f.default is not MISSING else f.default_factory()
            if fields[name] == default or self.schedule != "step":  # no effect otherwise
                del fields[name]
        step, kwargs = fields.pop("step"), fields.pop("step_kwargs")
        if step != "plain":
            fields.update(step_variant(step).changed(kwargs))
        canon = json.dumps({"dataset": dataset, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def step_fn(self) -> Callable | None:
        """The engine ``step_fn`` of the step variant (None: the engine's default step)."""
        if self.is_plain:
            return None
        variant = step_variant(self.step)
        return variant.build(**{**variant.defaults, **self.step_kwargs})


# ------------------------------------------------------------------------ step variants


@dataclass(frozen=True)
class StepVariant:
    """A registered training step of experts: ``build(**settings)`` gives the engine
    ``step_fn`` (:data:`ddbench.engine.StepFn`); ``defaults`` are its settings, whose default
    values make it the plain step. A step object with ``double_backward = True`` is trained
    eagerly (``torch.compile`` cannot differentiate twice)."""

    name: str
    build: Callable[..., Callable]
    defaults: dict[str, Any]

    def changed(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The settings of ``kwargs`` that differ from the defaults (unknown names refused)."""
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            raise DDBenchError(
                f"experts: step {self.name} has no setting(s) {unknown}; its settings are "
                f"{sorted(self.defaults)}"
            )
        return {k: v for k, v in kwargs.items() if v != self.defaults[k]}


_STEPS: dict[str, StepVariant] = {}


def register_step(name: str, build: Callable[..., Callable], defaults: dict[str, Any]) -> None:
    """Make ``step: name`` train experts with ``build(**settings)`` (see :class:`StepVariant`).
    A method file calls this at import; setting names must not be used by another variant."""
    if name == "plain":
        raise DDBenchError("experts: 'plain' is the engine's own step")
    taken = {k: v.name for v in _STEPS.values() if v.name != name for k in v.defaults}
    clash = sorted(set(defaults) & set(taken))
    if clash:
        raise DDBenchError(f"experts: step {name}'s settings {clash} belong to another variant")
    _STEPS[name] = StepVariant(name, build, dict(defaults))


def step_variant(name: str) -> StepVariant:
    """The registered variant ``name``, importing the method modules once if it is unknown."""
    if name not in _STEPS:
        _import_methods()
    if name not in _STEPS:
        raise DDBenchError(
            f"experts: unknown step {name!r}; choose plain or one of {sorted(_STEPS)}"
        )
    return _STEPS[name]


class ExpertStepContext:
    """What the expert trainer tells a step variant with ``uses_context = True`` beyond the
    engine's ``(closure, params, optimizer)``: ``epoch``, the 0-based epoch being trained;
    ``inputs``, the current batch before augmentation (the normalised train images); and
    ``forward(params, x)``, the network at the parameters ``params`` (in ``parameters()`` order,
    the live ones the step receives) applied to ``x``, differentiable w.r.t. both."""

    def __init__(self, module: nn.Module, epoch: int = 0):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.epoch = epoch
        self.inputs: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's ``batch_transform``: records the batch, changes nothing."""
        self.inputs = x
        return x, y

    def end_epoch(self, epoch: int, loss: float) -> None:
        """The engine's ``on_epoch``: the next batches belong to ``epoch + 1``."""
        self.epoch = epoch + 1

    def forward(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.module, dict(zip(self.names, params)), (x,))


def variant_of_setting(name: str) -> StepVariant | None:
    """The registered variant that has the setting ``name`` (after importing the methods)."""
    if not any(name in v.defaults for v in _STEPS.values()):
        _import_methods()
    return next((v for v in _STEPS.values() if name in v.defaults), None)


def _import_methods() -> None:
    import ddbench.methods

    for mod in pkgutil.iter_modules(ddbench.methods.__path__):
        importlib.import_module(f"ddbench.methods.{mod.name}")


def expert_dir(dataset: str, cfg: ExpertConfig) -> Path:
    return cache_root() / "experts" / dataset / f"{cfg.model}-{cfg.key(dataset)}"


def expert_path(dataset: str, cfg: ExpertConfig, i: int) -> Path:
    return expert_dir(dataset, cfg) / f"expert_{i}.safetensors"


def build_expert_model(dataset: str, cfg: ExpertConfig) -> nn.Module:
    """A fresh network of the experts' architecture (for ``FlatModel``)."""
    spec = data.get_spec(dataset)
    return create_model(
        cfg.model, spec.channels, spec.num_classes, spec.im_size, **cfg.model_kwargs
    )


class FlatModel:
    """Call a network with its parameters given as ONE flat vector ``[P]`` (the trajectory rows):
    ``FlatModel(net)(flat, x)`` is ``net(x)`` with ``net``'s parameters replaced by ``flat``,
    differentiable w.r.t. ``flat`` (``torch.func.functional_call``). Buffers are the module's own.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[P]`` from a name -> tensor mapping (a state_dict or named_parameters)."""
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.shape != (self.num_params,):
            raise DDBenchError(
                f"expected {self.num_params} flat parameters, got {tuple(flat.shape)}"
            )
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten(flat)
        buffers = dict(self.module.named_buffers())
        return torch.func.functional_call(self.module, (params, buffers), (x,))


def check_expert_space(name: str, cfg: ExpertConfig, task: Task) -> None:
    """Experts must have been trained in the task's image space (ZCA or not, same eps)."""
    zca = getattr(task.train, "zca", None)
    if bool(cfg.zca) == (zca is not None) and (zca is None or float(zca.eps) == cfg.zca_eps):
        return
    have = f"ZCA eps {zca.eps:g}" if zca is not None else "no ZCA"
    want = f"ZCA eps {cfg.zca_eps:g}" if cfg.zca else "no ZCA"
    raise DDBenchError(
        f"{name}: the task's images have {have} but the experts are trained with {want}: set "
        f"method.experts.zca (and zca_eps) to match dataset.zca (and dataset.zca_eps)"
    )


def load_expert(path: str | Path) -> tuple[torch.Tensor, dict]:
    """``(trajectory [E+1, P], metadata)`` of one cached expert file."""
    path = Path(path)
    meta = read_header(path) if path.exists() else None
    if meta is None or meta.get("kind") != "expert":
        raise DDBenchError(f"{path}: not a ddbench expert file")
    try:
        traj = load_file(str(path))["trajectory"]
    except (SafetensorError, OSError, KeyError) as e:
        raise DDBenchError(f"{path}: unreadable expert file ({e})") from e
    return traj, meta


def get_experts(
    dataset: str,
    cfg: ExpertConfig,
    n: int,
    device: torch.device | str = "auto",
    *,
    train: bool = True,
    progress: bool = True,
) -> list[torch.Tensor]:
    """The trajectories ``[E+1, P]`` (on CPU) of experts ``0..n-1`` for ``(dataset, cfg)``;
    the missing ones are trained (or resumed) first on ``device``, each once across processes."""
    if n < 1:
        raise DDBenchError(f"need at least one expert, got n={n}")
    device = pick_device(device) if isinstance(device, str) else device
    out = []
    for i in range(n):
        traj = _cached(dataset, cfg, i)
        if traj is None:
            if cfg.source:
                raise DDBenchError(
                    f"expert {i} of {dataset} from source {cfg.source!r} is not in the cache "
                    f"({expert_dir(dataset, cfg)}): imported experts are never trained here; "
                    "import more with `ddbench expert import` or lower num_experts"
                )
            if not train:
                raise DDBenchError(f"expert {i} of {dataset} {cfg} is not cached")
            # parallel jobs may all miss at once: one trains expert i, the others wait for it
            path = expert_path(dataset, cfg, i)
            with lock(path.with_suffix(".lock"), f"expert {i}"):
                traj = _cached(dataset, cfg, i)
                if traj is None:
                    traj = train_expert(dataset, cfg, i, device=device, progress=progress)
        out.append(traj)
    log.info(
        "experts: %d trajectories of %s/%s (%s)", n, dataset, cfg.model, expert_dir(dataset, cfg)
    )
    return out


def _cached(dataset: str, cfg: ExpertConfig, i: int) -> torch.Tensor | None:
    path = expert_path(dataset, cfg, i)
    if not path.exists():
        return None
    try:
        traj, meta = load_expert(path)
    except DDBenchError as e:
        log.warning("retraining expert: %s", e)
        return None
    if meta.get("key") != cfg.key(dataset) or traj.shape[0] != cfg.epochs + 1:
        log.warning("retraining expert %s: written for another config", path)
        return None
    return traj


def _images(dataset: str, cfg: ExpertConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split in the experts' image space: normalised and, with ``cfg.zca``, whitened
    by the dataset's cached ZCA (:func:`ddbench.data.fit_zca`), the one a ZCA task uses."""
    tr = data.load_split(dataset, "train", zca=cfg.zca, zca_eps=cfg.zca_eps)
    return tr.normalize(tr.images), tr.labels


def train_expert(
    dataset: str, cfg: ExpertConfig, i: int, *, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """Train expert ``i`` with the engine, recording its flat parameters after every epoch and
    checkpointing them with the engine's state; store the trajectory in the cache."""
    spec = data.get_spec(dataset)
    path = expert_path(dataset, cfg, i)
    state_path = path.with_suffix(".train_state.pt")
    seed = cfg.seed + i
    strategy = {"none": None, "dsa": spec.dsa_strategy}.get(cfg.augment, cfg.augment)
    recipe = engine.Recipe(
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.lr,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
        milestones=tuple(cfg.milestones), gamma=cfg.gamma, augment=strategy,
    )  # fmt: skip
    build: Callable[[], nn.Module] = lambda: build_expert_model(dataset, cfg)  # noqa: E731
    flat = FlatModel(build())
    resume, rows = None, None
    if state_path.exists():
        try:
            resume = torch.load(state_path, weights_only=True)
            rows = list(resume.pop("trajectory").unbind(0))
            if len(rows) != int(resume["epoch"]) + 1 and int(resume["group"]) == 0:
                raise DDBenchError("trajectory and engine state disagree")
            log.info("resuming expert %d from epoch %d (%s)", i, resume["epoch"], state_path)
        except Exception as e:  # a damaged checkpoint must not block a fresh start
            log.warning("ignoring unreadable expert checkpoint %s (%s)", state_path, e)
            resume, rows = None, None
    if rows is None:  # the initial parameters: built exactly as engine.build_models does
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rows = [flat.flatten(dict(build().named_parameters()))]
    x, y = _images(dataset, cfg)
    step_fn = cfg.step_fn()
    context = None
    if getattr(step_fn, "uses_context", False):
        context = ExpertStepContext(build().to(device), int((resume or {}).get("epoch", 0)))
        step_fn.context = context
    config_path = path.parent / "config.json"  # lets `ddbench expert list` describe unfinished ones
    if not config_path.exists():
        text = json.dumps({"dataset": dataset, "config": asdict(cfg)}, indent=1)
        atomic_write(config_path, lambda tmp: Path(tmp).write_text(text))
    t0 = time.perf_counter()
    before = float((resume or {}).get("seconds", 0.0))

    def save_state(state: dict) -> None:
        rows.append(flat.flatten(state["models"][0]))
        state["trajectory"] = torch.stack(rows)
        state["seconds"] = before + time.perf_counter() - t0
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    result = engine.train(
        build, [seed], x, y, recipe, device=device,
        progress=f"expert {i} {dataset}/{cfg.model}" if progress else False,
        checkpoint=save_state, checkpoint_every=1, resume=resume,
        step_fn=step_fn,
        batch_transform=None if context is None else context.observe,
        on_epoch=None if context is None else context.end_epoch,
        # torch.compile cannot differentiate twice: such a step trains eagerly
        compile=False if getattr(step_fn, "double_backward", False) else "auto",
        distributed=False,  # trained by the one process holding the cache lock (see cache.lock)
    )  # fmt: skip
    traj = torch.stack(rows).contiguous()
    if traj.shape != (cfg.epochs + 1, flat.num_params):
        raise DDBenchError(f"expert {i}: trajectory of shape {tuple(traj.shape)}")
    meta = {
        "kind": "expert",
        "schema": SCHEMA,
        "dataset": dataset,
        "key": cfg.key(dataset),
        "config": asdict(cfg),
        "index": i,
        "seed": seed,
        "param_names": flat.names,
        "train_seconds": before + time.perf_counter() - t0,
        "epoch_losses": result.losses,
        "versions": versions(),
    }
    atomic_write(
        path,
        lambda tmp: save_file({"trajectory": traj}, tmp, metadata={"ddbench": json.dumps(meta)}),
    )
    state_path.unlink(missing_ok=True)
    log.info("expert %d of %s: final loss %.4f -> %s", i, dataset, result.losses[-1], path)
    return traj


# ----------------------------------------------------------- the authors' replay buffers
# MTT's buffer.py (and FTD's/DATM's buffer_FTD.py) saves ``replay_buffer_<n>.pt``: a list of
# trajectories (``save_interval`` = 10 per file), each a list of ``train_epochs + 1`` entries
# (the initial parameters, then those after every epoch), each entry the list of the network's
# ``parameters()`` in module order (buffer.py lines 78, 92, 99, 106). Their distill.py
# concatenates an entry's tensors into one flat vector (distill.py lines 325-332): the layout of
# ddbench's trajectory rows when both networks list the same parameters in the same order.


def _buffer_index(path: Path) -> tuple[int, str]:
    stem = path.stem.removeprefix("replay_buffer_")
    return (int(stem), "") if stem.isdigit() else (1 << 30, path.name)


def buffer_files(paths: list[str | Path]) -> list[Path]:
    """The ``replay_buffer_<n>.pt`` files named, a folder standing for the ones it holds, in
    the order their distill.py reads them (n = 0, 1, ...)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("replay_buffer_*.pt"), key=_buffer_index)
            if not found:
                raise DDBenchError(f"{p}: no replay_buffer_*.pt files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DDBenchError(f"{p}: no such file or folder")
    return out


def read_buffer(path: str | Path) -> list[list[list[torch.Tensor]]]:
    """The trajectories of one replay buffer file (tensors only: no other object unpickled)."""
    path = Path(path)
    try:
        buf = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds for a foreign file)
        raise DDBenchError(f"{path}: not a readable replay buffer ({str(e)[:200]})") from e
    ok = isinstance(buf, list) and all(
        isinstance(t, list) and t and all(isinstance(e, list) for e in t) for t in buf
    )
    if not ok or not buf:
        raise DDBenchError(
            f"{path}: not a replay buffer (a list of trajectories, each a list of epochs, each a "
            "list of parameter tensors)"
        )
    return buf


def buffer_to_flat(
    traj: list[list[torch.Tensor]], flat: FlatModel, where: str = "trajectory"
) -> torch.Tensor:
    """``[E+1, P]`` rows of one trajectory of per-tensor parameter lists, checked against the
    network's parameters (count, then each shape in order)."""
    rows = []
    for e, params in enumerate(traj):
        if len(params) != len(flat.names):
            raise DDBenchError(
                f"{where} epoch {e}: {len(params)} parameter tensors, ddbench's network has "
                f"{len(flat.names)} ({', '.join(flat.names)})"
            )
        for k, (t, name, shape) in enumerate(zip(params, flat.names, flat.shapes)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise DDBenchError(
                    f"{where} epoch {e}: parameter {k} has shape {got}, ddbench's {name} "
                    f"{tuple(shape)}: the buffer was trained on another network (set --model / "
                    "--model-kwarg to the one it was trained with)"
                )
        rows.append(torch.cat([t.detach().reshape(-1).float() for t in params]))
    return torch.stack(rows)


def flat_to_buffer(traj: torch.Tensor, flat: FlatModel) -> list[list[torch.Tensor]]:
    """One trajectory ``[E+1, P]`` as their per-epoch lists of parameter tensors."""
    return [[t.clone() for t in flat.unflatten(row).values()] for row in traj]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_buffers(
    dataset: str, cfg: ExpertConfig, paths: list[str | Path]
) -> tuple[ExpertConfig, list[Path]]:
    """Store the trajectories of the authors' replay buffers as experts ``0..n-1`` of the config
    ``cfg`` with ``epochs`` taken from the files and ``source`` (default: ``buffers-`` and the
    first 12 hex digits of the files' hashes) naming them, so that a run with
    ``method.experts.source=<source> method.experts.epochs=<E>`` matches against exactly these
    trajectories. ``cfg``'s network is checked against the files (count, order and shape of
    the parameters); its recipe fields are recorded as given (the files do not hold the
    recipe). Returns the config and the files written."""
    files = buffer_files(paths)
    flat = FlatModel(build_expert_model(dataset, cfg))
    hashes = [_sha256(f) for f in files]
    source = cfg.source or "buffers-" + hashlib.sha256("".join(hashes).encode()).hexdigest()[:12]
    trajs: list[torch.Tensor] = []
    origin: list[dict[str, Any]] = []
    for f, digest in zip(files, hashes):
        for j, traj in enumerate(read_buffer(f)):
            trajs.append(buffer_to_flat(traj, flat, f"{f.name} trajectory {j}"))
            origin.append({"file": f.name, "sha256": digest, "trajectory": j})
    lengths = sorted({t.shape[0] for t in trajs})
    if len(lengths) != 1 or lengths[0] < 2:
        raise DDBenchError(
            f"the buffers' trajectories have {lengths} entries; they must all have the same "
            "number (epochs + 1, at least 2)"
        )
    out = ExpertConfig(**{**asdict(cfg), "epochs": lengths[0] - 1, "source": source})
    written = []
    with lock(expert_dir(dataset, out) / "import.lock", f"the import of {source}"):
        for i, (traj, where) in enumerate(zip(trajs, origin)):
            path = expert_path(dataset, out, i)
            meta = {
                "kind": "expert",
                "schema": SCHEMA,
                "dataset": dataset,
                "key": out.key(dataset),
                "config": asdict(out),
                "index": i,
                "param_names": flat.names,
                "imported_from": where,
                "versions": versions(),
            }
            tensors = {"trajectory": traj.contiguous()}
            atomic_write(
                path,
                lambda tmp, t=tensors, m=meta: save_file(
                    t, tmp, metadata={"ddbench": json.dumps(m)}
                ),
            )
            written.append(path)
        for stale in expert_dir(dataset, out).glob("expert_*.safetensors"):
            if stale not in written:  # a larger earlier import under the same source
                stale.unlink()
    log.info("imported %d expert trajectories of %s as source %s -> %s",
             len(written), dataset, source, expert_dir(dataset, out))  # fmt: skip
    return out, written


def export_buffers(
    dataset: str, cfg: ExpertConfig, n: int, out_dir: str | Path, per_file: int = 10
) -> list[Path]:
    """Write cached experts ``0..n-1`` of ``cfg`` as ``OUT_DIR/replay_buffer_<k>.pt`` files of
    ``per_file`` trajectories each (buffer.py's ``save_interval``), the format their distill.py
    loads from ``<buffer_path>/<DATASET>/<MODEL>/``. Nothing is trained: the experts must be
    cached."""
    if per_file < 1:
        raise DDBenchError(f"per_file must be >= 1, got {per_file}")
    trajs = get_experts(dataset, cfg, n, "cpu", train=False, progress=False)
    flat = FlatModel(build_expert_model(dataset, cfg))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken = sorted(out.glob("replay_buffer_*.pt"))
    if taken:
        raise DDBenchError(
            f"{out} already holds {len(taken)} replay_buffer_*.pt file(s); their distill.py "
            "would read them too: export into an empty folder"
        )
    written = []
    for k in range(0, n, per_file):
        chunk = [flat_to_buffer(t, flat) for t in trajs[k : k + per_file]]
        path = out / f"replay_buffer_{k // per_file}.pt"
        atomic_write(path, lambda tmp, c=chunk: torch.save(c, tmp))
        written.append(path)
    return written

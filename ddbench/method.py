"""The method interface: a small base class, the task it receives, and the checkpointer.

A method is a class configured by a Hydra node (``_target_``) with one entry point,
``distill(task) -> SyntheticSet``. Everything a method may use comes with the task; shared
machinery (training engine, models, DSA) is requested from the core, never copied.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from ddbench import engine
from ddbench.data import DatasetSpec, RealDataset
from ddbench.errors import DDBenchError
from ddbench.provenance import machine, peak_memory_bytes
from ddbench.synset import SyntheticSet, atomic_write

log = logging.getLogger("ddbench")


class Checkpointer:
    """Saves a method's state (tensors + JSON) atomically; a restarted run resumes from it.

    A checkpoint is tied to a key (the hash of the run's config): one written by a different
    configuration is never resumed from.
    """

    def __init__(self, directory: str | Path | None, key: str = "", every: int = 0):
        self.dir = Path(directory) if directory else None
        self.key = key
        self.every = every

    @property
    def path(self) -> Path | None:
        return None if self.dir is None else self.dir / "checkpoint.safetensors"

    def due(self, step: int) -> bool:
        return self.dir is not None and self.every > 0 and step % self.every == 0

    def save(
        self, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any] | None = None
    ) -> None:
        if self.path is None:
            return
        meta = {"step": str(step), "key": self.key, "state": json.dumps(state or {})}
        t = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(self.path, lambda tmp: save_file(t, tmp, metadata=meta))

    def load(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(step, tensors, state)`` of the last checkpoint of this config, or None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key:
                    logging.getLogger("ddbench").warning(
                        "ignoring %s: written by another config", self.path
                    )
                    return None
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a damaged checkpoint must not block a fresh start
            logging.getLogger("ddbench").warning(
                "ignoring unreadable checkpoint %s (%s)", self.path, e
            )
            return None
        return int(meta["step"]), tensors, json.loads(meta.get("state", "{}"))

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


@dataclass
class Task:
    """Everything a method may use to make a set."""

    train: RealDataset
    ipc: int
    model_factory: Callable[[], nn.Module]
    generator: torch.Generator
    seed: int
    device: torch.device
    augment: Any = None  # a ddbench.augment.DSA with the dataset's strategy
    logger: Any = None  # ddbench.tracking.Tracker
    checkpointer: Checkpointer = field(default_factory=lambda: Checkpointer(None))
    precision: str = "fp32"
    val_loader: Callable[[], RealDataset] | None = None

    @property
    def spec(self) -> DatasetSpec:
        return self.train.spec

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @cached_property
    def val(self) -> RealDataset:
        """The validation split (for tuning or early stopping; never the test split)."""
        if self.val_loader is None:
            raise DDBenchError("this task has no validation split")
        return self.val_loader()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The task's precision as a context: bf16 autocast on the task's device for
        ``precision='bf16'`` (matmul- and convolution-type ops in bf16, the rest as it is), else
        a no-op. The image loop runs each step in it (:meth:`ddbench.distill.ImageDistillation`);
        code outside that loop (scoring, relabelling) enters it around its network calls."""
        return engine.autocast(self.device, self.precision)

    def full_precision(self) -> contextlib.AbstractContextManager:
        """A context in which autocast is off, also inside :meth:`autocast`: the data side of a
        step (normalisation, augmentation grids, the images' update) stays fp32."""
        return torch.autocast(self.device.type, enabled=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`RealDataset.normalize` (in full precision, also within :meth:`autocast`)."""
        with self.full_precision():
            return self.train.normalize(x)

    def real_images(self, c: int | None = None, n: int | None = None) -> torch.Tensor:
        """Normalised float images of class ``c`` (all classes if None) on the task's device,
        ``n`` of them drawn at random (all if None)."""
        idx = torch.arange(len(self.train)) if c is None else self.train.indices_of(c)
        if n is not None:
            idx = idx[torch.randperm(len(idx), generator=self.generator)[:n]]
        return self.normalize(self.train.images[idx].to(self.device))

    def progress(self, it: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        return tqdm(it, total=total, desc=desc, disable=None, leave=False)

    def make_set(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        method: Method,
        lr: torch.Tensor | None = None,
        protocol: str = "standard",
        **extra: Any,
    ) -> SyntheticSet:
        """Wrap tensors in a :class:`SyntheticSet` with the metadata every set carries."""
        spec = self.spec
        meta = {
            "dataset": spec.name,
            "classes": list(spec.classes),
            "num_classes": spec.num_classes,
            "image_shape": list(spec.shape),
            "space": self.train.space(),  # normalised, ZCA-whitened if the task's data is
            "ipc": self.ipc,
            "method": {
                "name": method.name,
                "config": method.config,
                **({"recipe": method.recipe} if method.recipe else {}),
            },
            "seed": self.seed,
            "protocol": protocol,
            **extra,
        }
        return SyntheticSet(
            images.detach().float().cpu(), labels.detach().cpu(), meta, lr, zca=self.train.zca
        )


@dataclass
class Settings:
    """The settings every method has (none); a method's own ``Settings`` subclass adds its fields.

    A method's settings are declared once, as the fields of its ``Settings`` dataclass: the
    defaults of ``MyMethod()`` from Python and of ``method=my_method`` on the command line are
    these (the packaged YAML, ``conf/method/<name>.yaml``, takes them from this class through
    Hydra's config store, :func:`ddbench.methods.register_schemas`). Validation goes in
    ``__post_init__``, which runs for every way of building the method.
    """


class Method:
    """Base class of all methods. Subclasses set ``name``, declare ``Settings`` and implement
    :meth:`distill`.

    ``MyMethod(**overrides)`` builds ``self.settings`` from the ``Settings`` defaults and the
    overrides, typed and validated (an unknown key or a value of the wrong type is an error);
    every setting is readable as an attribute (``self.lr_img``). ``recipes`` names the table of
    published settings per (dataset, IPC) in ``conf/recipes/<recipes>.yaml``
    (:meth:`apply_recipe`, :meth:`for_setting`).
    """

    name: str = "method"
    Settings: ClassVar[type] = Settings
    recipes: ClassVar[str | None] = None

    def __init__(self, **overrides: Any):
        self.settings = make_settings(type(self), overrides)
        self.recipe: dict[str, Any] = {}  # what apply_recipe did (recorded in the set)

    def __getattr__(self, key: str) -> Any:  # a setting, read as an attribute
        settings = self.__dict__.get("settings")
        if settings is not None and key in settings.__dataclass_fields__:
            return getattr(settings, key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    @property
    def config(self) -> dict[str, Any]:
        """The method as a config node: ``_target_``, ``name`` and every setting (what a set's
        metadata and a cache key record)."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", "name": self.name,
                **asdict(self.settings)}  # fmt: skip

    @classmethod
    def for_setting(cls, dataset: str, ipc: int, **overrides: Any) -> Method:
        """The method with the published recipe of ``(dataset, ipc)`` applied; the settings in
        ``overrides`` win over the recipe's."""
        method = cls(**overrides)
        method.apply_recipe(dataset, ipc, explicit=set(_flatten(overrides)))
        return method

    def apply_recipe(self, dataset: str, ipc: int, explicit: set[str] | None = None) -> None:
        """Apply the published recipe of ``(dataset, ipc)`` (``conf/recipes/<recipes>.yaml``) to
        every setting that is still at its default and not named in ``explicit`` (dotted keys;
        a parent covers its children). Done once, by :func:`run_distill` at the latest; what was
        applied is logged and recorded in the set (``meta["method"]["recipe"]``)."""
        if self.recipe or type(self).recipes is None:
            return
        cls = type(self)
        current = asdict(self.settings)
        defaults = _flatten(settings_defaults(cls))
        given = {k for k, v in _flatten(current).items() if defaults.get(k, object()) != v}
        values, self.recipe = recipe_values(cls, current, dataset, ipc, given | set(explicit or ()))
        self.settings = make_settings(cls, values)

    def distill(self, task: Task) -> SyntheticSet:
        raise NotImplementedError


def make_settings(cls: type[Method], overrides: Mapping[str, Any]) -> Any:
    """``cls.Settings`` from its defaults and ``overrides``, typed by OmegaConf and validated by
    the dataclass; a bad key or value is a :class:`DDBenchError`. A nested settings dataclass
    (``experts``, ``teacher``) is merged key by key; a plain dict setting (``model_kwargs``,
    ``step_kwargs``) given in ``overrides`` replaces the default one whole."""
    try:
        node = OmegaConf.structured(cls.Settings)
        _clear_replaced_dicts(node, overrides)
        return OmegaConf.to_object(OmegaConf.merge(node, dict(overrides)))
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, DDBenchError) else None
        if cause is not None:
            raise cause from None
        key = getattr(e, "full_key", None)
        where = f" {key}" if key else ""
        raise DDBenchError(
            f"{cls.name}: invalid setting{where}: {str(e).splitlines()[0]}"
        ) from None


def _clear_replaced_dicts(node: Any, overrides: Mapping[str, Any]) -> None:
    """Empty the plain-dict entries of ``node`` that ``overrides`` sets, so that the merge puts
    the given dict in place of the default instead of adding its keys to it."""
    for key, value in overrides.items():
        if not isinstance(value, Mapping) or key not in node:
            continue
        if is_dataclass(OmegaConf.get_type(node, key)):
            _clear_replaced_dicts(node[key], value)
        elif OmegaConf.is_dict(node[key]):
            node[key] = {}


def settings_defaults(cls: type[Method]) -> dict[str, Any]:
    """The defaults of ``cls``'s settings as a plain nested dict."""
    return asdict(make_settings(cls, {}))


# ------------------------------------------------------------------------------ recipes


def load_recipes(name: str) -> dict[str, Any]:
    """The recipe table ``conf/recipes/<name>.yaml``: ``{dataset or "*": {ipc: {setting: value,
    ..., "source": "where the values come from"}}}``; ``{}`` if there is none."""
    path = importlib.resources.files("ddbench.conf") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        return {}
    table = yaml.safe_load(path.read_text()) or {}
    if not isinstance(table, dict):
        raise DDBenchError(f"recipe table {name}.yaml is not a mapping")
    return table


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def recipe_values(
    cls: type[Method],
    settings: Mapping[str, Any],
    dataset: str | None,
    ipc: int | None,
    explicit: set[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``settings`` with the published recipe of ``(dataset, ipc)`` applied to every key not in
    ``explicit`` (dotted keys; a parent key covers its children), and what was done:
    ``{"setting", "source", "applied", "kept"}``, or ``{"setting": None, "note"}`` when the
    table has no entry (the defaults apply, as the log says)."""
    values = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in settings.items()}
    if cls.recipes is None or dataset is None or ipc is None:
        return values, {}
    table = load_recipes(cls.recipes)
    entry = (table.get(dataset) or {}).get(int(ipc)) or (table.get("*") or {}).get(int(ipc))
    setting = f"{dataset}/ipc{ipc}"
    if not entry:
        note = (
            f"{cls.name}: no published recipe for {setting} in conf/recipes/{cls.recipes}.yaml; "
            f"the documented defaults apply ({table.get('defaults', 'see docs/methods.md')})"
        )
        log.info("%s", note)
        return values, {"setting": None, "note": note}
    entry = dict(entry)
    source = entry.pop("source", None)
    known = _flatten(settings_defaults(cls))
    applied, kept = {}, {}
    for key, value in _flatten(entry).items():
        if key not in known and not any(k.startswith(key + ".") for k in known):
            raise DDBenchError(f"recipe {cls.recipes}.yaml {setting}: {cls.name} has no {key!r}")
        parts = key.split(".")
        if any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1)):
            kept[key] = _get_dotted(values, key, known.get(key))
            continue
        _set_dotted(values, key, value)
        applied[key] = value
    log.info("%s: the published recipe for %s (%s): %s%s", cls.name, setting, source, applied,
             f"; kept as set: {kept}" if kept else "")  # fmt: skip
    return values, {"setting": setting, "source": source, "applied": applied, "kept": kept}


def _get_dotted(d: Mapping[str, Any], key: str, default: Any) -> Any:
    for part in key.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return default
        d = d[part]
    return d


def method_class(target: str) -> type[Method]:
    """The :class:`Method` subclass a ``_target_`` names."""
    from hydra.utils import get_object

    try:
        cls = get_object(target)
    except Exception as e:
        raise DDBenchError(f"cannot import method {target!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise DDBenchError(f"{target} is not a ddbench.method.Method subclass")
    return cls


def build_method(method_cfg: Mapping[str, Any]) -> Method:
    """The :class:`Method` a resolved ``method`` config node describes (``_target_``, ``name``
    and settings)."""
    cfg = dict(method_cfg)
    if "_target_" not in cfg:
        raise DDBenchError(f"method config {cfg.get('name')!r} has no _target_")
    cls = method_class(cfg.pop("_target_"))
    name = cfg.pop("name", cls.name)
    try:
        method = cls(**cfg)
    except DDBenchError:
        raise
    except Exception as e:
        raise DDBenchError(f"could not build method {name!r} from {cls.__qualname__}: {e}") from e
    method.name = name
    return method


def check_ipc(ipc: object) -> int:
    """``ipc`` (images per class) if it is a whole number >= 1, else a :class:`DDBenchError`
    (a fraction, a string or a bool is refused, not rounded)."""
    if isinstance(ipc, bool) or not isinstance(ipc, numbers.Integral) or ipc < 1:
        raise DDBenchError(f"ipc must be a whole number >= 1 (images per class), got {ipc!r}")
    return int(ipc)


def check_class_budget(task: Task, method: str) -> None:
    """Refuse an ``ipc`` above the size of the train split's smallest class, for ``method``
    whose set holds distinct real train images (a subset, a selection). A method that
    synthesises its images is not limited by the class sizes."""
    sizes = torch.bincount(task.train.labels, minlength=task.num_classes)
    c = int(sizes.argmin())
    if task.ipc > int(sizes[c]):
        raise DDBenchError(
            f"ipc={task.ipc}, but the smallest class, {c} ({task.train.classes[c]!r}), "
            f"has {int(sizes[c])} train images, and {method} picks distinct real images (it "
            f"cannot pick an image twice): use ipc <= {int(sizes[c])}"
        )


def run_distill(method: Method, task: Task) -> SyntheticSet:
    """Call ``method.distill`` and record its cost (wall time, peak memory, device, precision)
    in the set."""
    if task.ipc is not None:
        check_ipc(task.ipc)
    method.apply_recipe(task.spec.name, task.ipc)
    t0 = time.perf_counter()
    synset = method.distill(task)
    if not isinstance(synset, SyntheticSet):
        raise DDBenchError(
            f"method {method.name!r} returned {type(synset).__name__}, not a SyntheticSet"
        )
    # a resumed run also counts the time its interrupted runs spent (recorded by the method)
    before = float((synset.meta.get("distillation") or {}).get("seconds_before_resume") or 0.0)
    synset.meta["cost"] = {
        "wall_seconds": time.perf_counter() - t0 + before,
        "resumed_seconds": before,
        "peak_memory_bytes": peak_memory_bytes(task.device),
        "device": task.device.type,
        "machine": machine(task.device),
        "precision": task.precision,  # bf16 autocast changes the numbers, not only the time
    }
    return synset

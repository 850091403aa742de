"""The built-in methods, one module per family; :func:`register_schemas` gives Hydra their
settings (``conf/method/<name>.yaml`` takes its keys and defaults from ``schema/<name>``)."""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "subset", "herding", "forgetting", "el2n", "gradient_matching", "dm", "datadam",
    "mtt", "ftd", "datm", "ast", "sre2l", "cda", "cvdd", "mirage",
    "infer", "hello", "nrr_dd", "pca",
    "krr_st", "dp4tl",
)  # fmt: skip


def builtin_methods() -> dict[str, type]:
    """``{name: class}`` of every public :class:`ddbench.method.Method` subclass defined in the
    built-in modules."""
    from ddbench.method import Method

    found: dict[str, type] = {}
    for module in MODULES:
        mod = importlib.import_module(f"ddbench.methods.{module}")
        for attr, cls in vars(mod).items():
            if (
                inspect.isclass(cls)
                and issubclass(cls, Method)
                and cls.__module__ == mod.__name__
                and not attr.startswith("_")
            ):
                found[cls.name] = cls
    return found


def register_schemas() -> None:
    """Store each built-in method's defaults (``_target_``, ``name``, every setting) in Hydra's
    config store as ``method/schema/<name>``, the first entry of its YAML's defaults list."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in builtin_methods().items():
        store.store(group="method/schema", name=name, node=cls().config)


def packaged_config(name: str, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """The resolved ``method`` node that ``ddbench run method=<name> <overrides>`` composes
    (the default model and dataset unless ``overrides`` choose others, e.g. ``model=convnet_bn``)."""
    from importlib.resources import files

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from ddbench.errors import DDBenchError

    if not (files("ddbench.conf") / "method" / f"{name}.yaml").is_file():
        raise DDBenchError(f"unknown method {name!r} (no conf/method/{name}.yaml)")
    register_schemas()
    args = [f"method={name}", *overrides]
    try:
        if GlobalHydra.instance().is_initialized():  # inside a running ddbench command
            cfg = compose("run", overrides=args)
        else:
            with initialize_config_module("ddbench.conf", version_base="1.3"):
                cfg = compose("run", overrides=args)
    except HydraException as e:
        raise DDBenchError(f"cannot compose method={name}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_container(cfg.method, resolve=True)

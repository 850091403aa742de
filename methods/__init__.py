"""The built-in methods, one module per family; :func:`register_schemas` gives Hydra their
settings (``conf/method/<name>.yaml`` takes its keys and defaults from ``schema/<name>``)."""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "subset", "selection", "gradient_matching", "dm", "datadam",
    "mtt", "ftd", "datm", "ast", "sre2l", "cda", "cvdd",
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

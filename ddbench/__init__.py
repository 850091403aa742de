"""ddbench: a dataset-distillation benchmark with one pinned evaluation protocol."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so `import ddbench` stays cheap and free of import cycles.
    if name in ("load", "save", "SyntheticSet"):
        from ddbench import synset

        return getattr(synset, name)
    raise AttributeError(f"module 'ddbench' has no attribute {name!r}")


__all__ = ["load", "save", "SyntheticSet", "__version__"]

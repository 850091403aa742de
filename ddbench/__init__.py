"""ddbench: a dataset-distillation benchmark with one pinned evaluation protocol."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Read a ddbench set file: a :class:`ddbench.synset.SyntheticSet` (images), or a
    :class:`ddbench.graphs.format.GraphSet` when the file's metadata says ``kind: graph_set``."""
    from ddbench import synset

    if synset.read_header(path).get("kind") == "graph_set":
        from ddbench.graphs import format as graph_format

        return graph_format.load(path, **kwargs)
    return synset.load(path, **kwargs)


def __getattr__(name: str):
    # Lazy so `import ddbench` stays cheap and free of import cycles.
    if name in ("save", "SyntheticSet"):
        from ddbench import synset

        return getattr(synset, name)
    raise AttributeError(f"module 'ddbench' has no attribute {name!r}")


__all__ = ["load", "save", "SyntheticSet", "__version__"]

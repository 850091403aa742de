"""The graph track: graph datasets (:mod:`.data`), the graph set file (:mod:`.format`), GNNs
(:mod:`.models`), the pinned graph protocol (:mod:`.protocol`) and the CLI jobs (:mod:`.run`).
Its methods live with the others (``ddbench.methods.mirage``: mirage, graph_random, graph_full).
See docs/graphs.md."""

from __future__ import annotations

from typing import Any


def handles(cfg: Any) -> bool:
    """Whether a composed ``run``/``distill``/``evaluate`` config is a graph job: its dataset is
    a graph dataset, or the set it evaluates is a graph set file."""
    if "synset" in cfg:
        from ddbench.graphs.format import is_graph_file

        return is_graph_file(str(cfg.synset))
    ds = cfg.get("dataset")
    if ds is None:
        return False
    from ddbench.graphs.data import is_graph_dataset

    return ds.get("kind") == "graph" or is_graph_dataset(str(ds.get("name")))


def run_job(job: str, cfg: Any) -> Any:
    """Run the CLI job ``job`` (``job_run``, ``job_distill``, ``job_evaluate``) on a graph
    config (:func:`ddbench.graphs.run.run_job`)."""
    from ddbench.graphs.run import run_job as run

    return run(job, cfg)

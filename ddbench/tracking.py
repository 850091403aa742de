"""Experiment tracking: console + log file by default, Weights & Biases with ``logger=wandb``.

wandb runs offline with no account when ``WANDB_MODE=offline`` (the default we set when no
API key is configured), one wandb run per Hydra job, grouped by sweep.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ddbench.errors import DDBenchError

log = logging.getLogger("ddbench")


class Tracker:
    """Logs metrics, images and results to the console/log file and optionally to wandb."""

    def __init__(self, kind: str = "console", project: str = "ddbench", group: str | None = None,
                 name: str | None = None, config: dict | None = None, directory: str | None = None):  # fmt: skip
        if kind not in ("console", "wandb"):
            raise DDBenchError(f"unknown logger {kind!r}; use console or wandb")
        self.kind = kind
        self.run = None
        if kind == "wandb":
            import wandb

            if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
                os.environ["WANDB_MODE"] = "offline"
            self.run = wandb.init(project=project, group=group, name=name, config=config, dir=directory,
                                  reinit="finish_previous")  # fmt: skip

    def info(self, msg: str, *args: Any) -> None:
        log.info(msg, *args)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        log.debug("step %s: %s", step, values)
        if self.run is not None:
            self.run.log(values, step=step)

    def image(self, key: str, path: str) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(path)})

    def result(self, result: dict) -> None:
        if self.run is not None:
            acc = result["accuracy"]
            self.run.summary.update(
                {"accuracy_mean": acc["mean"], "accuracy_std": acc["std"], "result": result}
            )

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

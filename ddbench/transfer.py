"""The transfer track: pre-train a fresh model on a set, fine-tune it on a target dataset, test.

A set distilled or pruned from a **source** dataset is scored by what a model pre-trained on it
gives on a **target** task (docs/transfer.md):

1. pre-train K fresh models (the protocol's seeds) on the set: the mean squared error to its
   representation targets for a set without class labels (KRR-ST's,
   :data:`ddbench.synset.REPRESENTATION`), else the cross entropy on its class labels (subsets,
   DP4TL); without a set (``None``) there is no pre-training, the baseline;
2. replace the last layer by a fresh one for the target's classes (seeded) and either fine-tune
   the whole network (``mode: finetune``) or train a linear classifier on its frozen features
   (``mode: linear_probe``) on the target's train split, or a seeded stratified fraction of it
   (``label_fraction``, the same images for every seed);
3. report the target's test accuracy of each final model, mean and std over the seeds.

Every stage trains through :func:`ddbench.engine.train`. A transfer protocol
(``conf/transfer_protocol/<name>.yaml``, :class:`TransferProtocol`) pins the three recipes, the
mode, the fraction and the seeds, and hashes them. The target's val split is never used here:
it is for tuning only. Source -> target pairs are a registry (:data:`PAIRS`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ddbench import data, engine
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.protocol import compose_shipped
from ddbench.provenance import versions

log = logging.getLogger("ddbench")

# ----------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """A source -> target transfer setting (the target's images have the source's shape)."""

    name: str
    source: str
    target: str
    description: str = ""


PAIRS: dict[str, Pair] = {}


def register_pair(name: str, source: str, target: str, description: str = "") -> Pair:
    """Add a named source -> target pair; both datasets must be catalogued, of one image shape."""
    src, tgt = data.get_spec(source), data.get_spec(target)
    if src.shape != tgt.shape:
        raise DDBenchError(f"pair {name}: {source} images are {src.shape}, {target} {tgt.shape}")
    PAIRS[name] = Pair(name, source, target, description)
    return PAIRS[name]


def get_pair(name: str) -> Pair:
    if name not in PAIRS:
        raise DDBenchError(f"unknown transfer pair {name!r}; known: {', '.join(sorted(PAIRS))}")
    return PAIRS[name]


register_pair("fashion_mnist_to_mnist", "fashion_mnist", "mnist", "clothing -> digits")
register_pair("mnist_to_fashion_mnist", "mnist", "fashion_mnist", "digits -> clothing")
register_pair("mnist_to_digits28", "mnist", "digits28", "digits -> scikit-learn digits (28x28)")
register_pair("fashion_mnist_to_digits28", "fashion_mnist", "digits28", "clothing -> digits")
register_pair(
    "mnist_fashion20_to_digits28", "mnist_fashion20", "digits28",
    "the 20-class union (digits 0-9, clothing 10-19) -> scikit-learn digits (28x28)",
)  # fmt: skip

# ----------------------------------------------------------------------------- protocol


@dataclass
class Stage(engine.BaseRecipe):
    """One training stage of a transfer protocol: the training settings of
    :class:`ddbench.engine.BaseRecipe` (``epochs`` required), its loss implied by the stage.
    ``augment``: ``none``, ``dsa`` (the strategy of the dataset trained on) or a DSA strategy
    string."""

    augment: str = "none"

    @classmethod
    def from_config(cls, cfg: Any, where: str) -> Stage:
        if not isinstance(cfg, dict):
            raise DDBenchError(f"{where} must be a mapping of recipe keys, got {cfg!r}")
        extra = sorted(set(cfg) - {f.name for f in fields(cls)})
        if extra:
            raise DDBenchError(f"{where} has unknown keys {extra}")
        stage = cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()})
        stage.check(where)
        stage.recipe("ce", None)  # the engine's own checks of the other keys
        return stage

    def strategy(self, spec: data.DatasetSpec) -> str | None:
        if self.augment in ("", "none"):
            return None
        return spec.dsa_strategy if self.augment == "dsa" else self.augment

    def recipe(self, loss: str, augment: str | None) -> engine.Recipe:
        return self.to_recipe(augment, loss=loss)


_STAGES = ("pretrain_labels", "pretrain_representation", "finetune")
_MODES = ("finetune", "linear_probe")


@dataclass
class TransferProtocol:
    """A named, pinned transfer recipe: the pre-training stages (class labels: cross entropy;
    representation targets: mean squared error), the target stage, the mode, the labelled
    fraction of the target's train split and the seeds. ``per_target`` overrides fields for a
    target dataset (e.g. ``{digits28: {label_fraction: 1.0}}``); the hash covers it."""

    name: str
    pretrain_labels: Stage
    pretrain_representation: Stage
    finetune: Stage
    mode: str = "finetune"
    label_fraction: float = 1.0
    label_seed: int = 0  # the seed of the labelled fraction (the same images for every seed)
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    comparable: bool = True
    description: str = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TransferProtocol:
        cfg = dict(cfg)
        name = cfg.get("name")
        extra = sorted(set(cfg) - {f.name for f in fields(cls)})
        if extra:
            raise DDBenchError(f"transfer protocol {name!r} has unknown keys {extra}")
        missing = [k for k in ("name", *_STAGES) if k not in cfg]
        if missing:
            raise DDBenchError(f"transfer protocol {name!r} lacks {missing}")
        for key in _STAGES:
            cfg[key] = Stage.from_config(cfg[key], f"transfer protocol {name!r} {key}")
        p = cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})
        p._check(f"transfer protocol {name!r}")
        for target, over in p.per_target.items():
            bad = sorted(set(over) - {"mode", "label_fraction", *_STAGES})
            if bad:
                raise DDBenchError(
                    f"transfer protocol {name!r}: per_target.{target} cannot set {bad}"
                )
            p.for_target(target)._check(f"transfer protocol {name!r} ({target})")
        return p

    def _check(self, where: str) -> None:
        if self.mode not in _MODES:
            raise DDBenchError(f"{where}: mode must be one of {_MODES}, got {self.mode!r}")
        f = self.label_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise DDBenchError(f"{where}: label_fraction must be in (0, 1], got {f!r}")
        seeds = self.seeds
        if (
            not seeds
            or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise DDBenchError(f"{where}: seeds must be distinct whole numbers >= 0")

    def for_target(self, target: str) -> TransferProtocol:
        """This protocol with ``per_target[target]`` applied (stages merged key by key)."""
        over = dict(self.per_target.get(target) or {})
        if not over:
            return self
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in over.items():
            if key in _STAGES:
                d[key] = Stage.from_config({**asdict(d[key]), **dict(value)}, key)
            else:
                d[key] = value
        return TransferProtocol(**d)

    @property
    def hash(self) -> str:
        """A hash of every field that changes the numbers (not the name, description or
        ``comparable``)."""
        d = asdict(self)
        for key in ("name", "description", "comparable"):
            d.pop(key)
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def transfer_protocol_config(name: str) -> dict[str, Any]:
    """``conf/transfer_protocol/<name>.yaml`` as shipped: the protocols its ``defaults`` list
    names first (in order), then its own keys."""
    node = compose_shipped("transfer_protocol", name, "transfer protocol")
    if node is None:
        folder = importlib.resources.files("ddbench.conf") / "transfer_protocol"
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise DDBenchError(f"unknown transfer protocol {name!r}; known: {', '.join(known)}")
    return OmegaConf.to_container(node)


def load_protocol(name: str) -> TransferProtocol:
    """The shipped transfer protocol ``name``."""
    return TransferProtocol.from_config(transfer_protocol_config(name))


# ----------------------------------------------------------------------------- training


def _build(model: str, spec: data.DatasetSpec, outputs: int, kwargs: dict) -> nn.Module:
    return create_model(model, spec.channels, outputs, spec.im_size, **kwargs)


def set_space_images(synset) -> torch.Tensor:
    """The set's images in its dataset's normalised space (the space the target is read in)."""
    space = synset.meta.get("space") or {}
    if space.get("zca"):
        raise DDBenchError("the transfer track reads normalised images; this set is in ZCA space")
    images = synset.images.float()
    if not space.get("normalized", True):
        spec = data.get_spec(synset.meta["dataset"])
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        images = (images - mean) / torch.tensor(spec.std).view(1, -1, 1, 1)
    return images


def pretrain(
    synset,
    protocol: TransferProtocol,
    seeds: list[int],
    model: str = "convnet",
    model_kwargs: dict | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[list[nn.Module], str]:
    """One fresh model per seed pre-trained on ``synset`` and what it was trained on:
    ``representation`` (mean squared error to the targets, ``pretrain_representation``; the
    last layer outputs ``D`` values) or ``labels`` (cross entropy on the hard labels,
    ``pretrain_labels``)."""
    spec = data.get_spec(synset.meta["dataset"])
    images = set_space_images(synset)
    if synset.representation:
        kind, stage, loss = "representation", protocol.pretrain_representation, "mse"
        targets = synset.labels.float()
        outputs = targets.shape[1]
    else:
        kind, stage, loss = "labels", protocol.pretrain_labels, "ce"
        targets = synset.hard_labels
        outputs = int(synset.meta.get("num_classes") or spec.num_classes)
    recipe = stage.recipe(loss, stage.strategy(spec))
    kwargs = dict(model_kwargs or {})
    trained = engine.train(
        lambda: _build(model, spec, outputs, kwargs), seeds, images, targets, recipe,
        device=device, progress="pre-train" if progress else False, distributed=False,
    )  # fmt: skip
    return trained.models, kind


def transplant(pre: nn.Module | None, build, seed: int, device) -> nn.Module:
    """A target model (``build()`` after ``torch.manual_seed(seed)``: a fresh last layer) with
    every weight of ``pre`` but its last layer (``classifier``); ``pre`` None: the fresh model."""
    torch.manual_seed(int(seed))
    net = build().to(device)
    if pre is not None:
        state = {k: v for k, v in pre.state_dict().items() if not k.startswith("classifier.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise DDBenchError(
                f"the pre-trained network does not fit the target network ({missing}, {unexpected})"
            )
    return net


def target_splits(target: str, fraction: float, seed: int) -> tuple[Any, Any]:
    """The target's labelled train images (a seeded stratified ``fraction``; all at 1) and its
    test split."""
    train, test = data.load_split(target, "train"), data.load_split(target, "test")
    if fraction < 1:
        train = train.subset(data.stratified_holdout(train.labels, fraction, seed))
    return train, test


def evaluate(
    synset,
    protocol: TransferProtocol,
    target: str,
    model: str = "convnet",
    model_kwargs: dict | None = None,
    *,
    device: torch.device | str = "auto",
    progress: bool = False,
    source: str | None = None,
) -> dict[str, Any]:
    """Score ``synset`` (None: no pre-training) by transfer to ``target`` under ``protocol``:
    the target's test accuracy of each seed's final model, mean and std (module docstring).
    ``source`` names the source dataset of the no-pre-training baseline in the result."""
    device = engine.pick_device(device) if isinstance(device, str) else device
    pinned = protocol.for_target(target)
    tspec = data.get_spec(target)
    meta = synset.meta if synset is not None else {}
    source = meta.get("dataset", source)
    if source is not None and data.get_spec(source).shape != tspec.shape:
        raise DDBenchError(
            f"a model pre-trained on {source} images {data.get_spec(source).shape} cannot take "
            f"{target} images {tspec.shape}; pick a target of the source's shape (e.g. digits28)"
        )
    kwargs = dict(model_kwargs or {})
    train, test = target_splits(target, pinned.label_fraction, pinned.label_seed)
    t0 = time.perf_counter()
    seeds = list(pinned.seeds)
    pre, kind = [None] * len(seeds), "none"
    if synset is not None:
        pre, kind = pretrain(synset, pinned, seeds, model, kwargs, device=device, progress=progress)
    build = lambda: _build(model, tspec, tspec.num_classes, kwargs)  # noqa: E731
    nets = [transplant(p, build, s, device) for p, s in zip(pre, seeds)]
    stage = pinned.finetune
    x, y = train.normalize(train.images), train.labels
    if pinned.mode == "finetune":
        recipe = stage.recipe("ce", stage.strategy(tspec))
        engine.train(
            None, seeds, x, y, recipe, models=nets, device=device, distributed=False,
            progress="fine-tune" if progress else False,
        )  # fmt: skip
        accs = engine.accuracy(nets, test.images, test.labels, transform=train.normalize)
    else:  # a linear classifier on the frozen features, one per seed
        from ddbench.encoders import encode

        accs = []
        for net, seed in zip(nets, seeds):
            feats = encode(net, x)
            probe = engine.train(
                lambda d=feats.shape[1]: nn.Linear(d, tspec.num_classes), [seed], feats, y,
                stage.recipe("ce", None), device=device, distributed=False,
            ).models  # fmt: skip
            test_feats = encode(net, test.images, train.normalize)
            accs += engine.accuracy(probe, test_feats, test.labels)
    nbytes = synset.nbytes() if synset is not None else {"images": 0, "labels": 0}
    return {
        "track": "transfer",
        "method": (meta.get("method") or {}).get("name", "no_pretraining"),
        "dataset": source,  # the set's dataset (the leaderboard files entries under it)
        "source": source,
        "target": target,
        "target_data": tspec.source,  # how the target's images are made (the catalogue's)
        "ipc": meta.get("ipc"),
        "num_images": len(synset) if synset is not None else 0,
        "pretrained_on": kind,
        "model": model,
        "model_kwargs": kwargs,
        "protocol": {
            "name": protocol.name,
            "hash": protocol.hash,
            "comparable": protocol.comparable,
            "mode": pinned.mode,
            "label_fraction": pinned.label_fraction,
        },
        "accuracy": engine.accuracy_summary(seeds, accs, torch.float64),
        "cost": {
            "distill_seconds": (meta.get("cost") or {}).get("wall_seconds"),
            "eval_seconds": time.perf_counter() - t0,
            "synset_bytes": nbytes["images"] + nbytes["labels"],
            "image_bytes": nbytes["images"],
            "label_bytes": nbytes["labels"],
        },
        "synset": {"path": meta.get("_path"), "sha256": meta.get("sha256")},
        "target_train_images": len(train),
        "versions": versions(),
        "device": str(device),
    }


# ----------------------------------------------------------------------------- command line


def main(args: list[str]) -> None:
    """``ddbench transfer [SET] (--pair NAME | --target DATASET) [--protocol NAME] ...``."""
    from ddbench import synset as synset_io
    from ddbench.protocol import write_result

    p = argparse.ArgumentParser(
        prog="ddbench transfer",
        description="pre-train on a set (none: the no-pre-training baseline), fine-tune on a "
        "target dataset, report its test accuracy (docs/transfer.md)",
    )
    p.add_argument(
        "synset", nargs="?", help="a .safetensors set of the source (omit: no pre-training)"
    )
    p.add_argument("--pair", help=f"a registered pair: {', '.join(sorted(PAIRS))}")
    p.add_argument("--target", help="the target dataset (default: the pair's)")
    p.add_argument("--protocol", default="transfer", help="conf/transfer_protocol/<name>.yaml")
    p.add_argument("--model", default="convnet")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the result JSON here")
    a = p.parse_args(args)
    pair = get_pair(a.pair) if a.pair else None
    target = a.target or (pair.target if pair else None)
    if target is None:
        raise DDBenchError("name the target: --pair NAME or --target DATASET")
    s = None
    if a.synset:
        s = synset_io.load(a.synset)
        s.meta["_path"] = str(a.synset)
        if pair is not None and s.meta.get("dataset") != pair.source:
            raise DDBenchError(
                f"the set is of {s.meta.get('dataset')}, pair {pair.name} pre-trains on "
                f"{pair.source}"
            )
    protocol = load_protocol(a.protocol)
    result = evaluate(
        s, protocol, target, a.model, device=a.device, progress=True,
        source=pair.source if pair else None,
    )  # fmt: skip
    if a.out:
        write_result(result, Path(a.out))
    acc = result["accuracy"]
    print(f"{result['method']} {result['source']} -> {target} ({protocol.name}, "
          f"{result['pretrained_on']}): {acc['mean']:.2f} +- {acc['std']:.2f} %")  # fmt: skip

"""The pinned evaluation protocol: train K fresh models on a set, test the final ones once.

A protocol is a named recipe (``conf/protocol/*.yaml``) with a stable hash over everything
that changes its numbers. The score is the *final-epoch* test accuracy of each model, mean
and std over the protocol's fixed seeds. Nothing is selected on the test split.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ddbench import data as ddata
from ddbench import engine
from ddbench.augment import make_augment
from ddbench.crop_labels import CropReplay, make_crop_labels
from ddbench.dbr import DBRReplay, dbr_loss, replay_crops
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.provenance import peak_memory_bytes, versions
from ddbench.recover import Committee, StudentCrop, batch_statistics, flips
from ddbench.synset import atomic_write, tensors_sha256
from ddbench.teachers import TeacherConfig, get_teacher, load_teacher, teacher_path

_log = logging.getLogger("ddbench")

# Keys that change what a protocol measures; hashed in this order.
_HASHED = (
    "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
    "milestones", "gamma", "augment", "labels", "lr_from_set", "loss", "temperature", "seeds",
)  # fmt: skip
# Keys added later: hashed only when they differ from their default, so that the hashes of
# protocols that do not use them stay what they were.
_HASHED_IF_SET = (
    "hard_weight", "mixup", "cutmix", "teacher", "per_dataset", "model", "teacher_from_set",
    "crop_label_epochs", "crop_label_dtype", "crop_label_seed", "dbr_weight",
)  # fmt: skip


@dataclass
class Protocol(engine.BaseRecipe):
    """A named, pinned evaluation recipe: the training settings of
    :class:`ddbench.engine.BaseRecipe` (``epochs`` required) and the fields below."""

    name: str = field(kw_only=True)
    # dsa (the dataset's default strategy) | none | an explicit DSA strategy | rrc: the student's
    # RandomResizedCrop (scale 0.08-1) + horizontal flip where the dataset's strategy flips
    augment: str = "dsa"
    # hard | set (the set's own labels, soft ones included) | teacher (online, every batch) |
    # crops: FKD's stored per-crop labels, made from the teacher once and replayed
    # (ddbench.crop_labels); needs augment: rrc | dbr: the set's stored DBR labels (NRR-DD,
    # ddbench.dbr), their crops replayed; needs augment: rrc and loss: dbr
    labels: str = "hard"
    lr_from_set: bool = False
    # ce | kd (KL to soft targets at ``temperature``) | dbr (ddbench.dbr.dbr_loss, labels: dbr)
    loss: str = "ce"
    temperature: float = 1.0
    hard_weight: float = 0.0  # kd: weight of the hard-label cross entropy mixed into the loss
    mixup: float = 0.0  # Beta alpha (0 = off)
    cutmix: float = 0.0  # Beta alpha (0 = off)
    teacher: dict[str, Any] | None = None  # labels=teacher: a ddbench.teachers.TeacherConfig
    # labels=teacher: the teacher(s) the set was recovered and relabelled with, as its metadata
    # names them (SRe2L, CDA, CV-DD); sets that name none get ``teacher``
    teacher_from_set: bool = False
    # labels=crops: epochs of stored crops (0: one per training epoch), their logits' dtype and
    # the relabel's seed (FKD's --fkd-seed 42: every student replays the same crops)
    crop_label_epochs: int = 0
    crop_label_dtype: str = "float16"
    crop_label_seed: int = 42
    dbr_weight: float = 1.0  # loss dbr: weight of the distance-matching term
    # fields that differ for some datasets, e.g. DC's own recipe: {mnist: {epochs: 1000, ...}}
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the architecture this recipe trains when the command line names none (a conf/model name,
    # e.g. DataDAM's own evaluation: convnet_bn); None: the command line's model (convnet)
    model: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    comparable: bool = True  # False for smoke-test recipes whose numbers mean nothing
    description: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Protocol:
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(cfg) - known)
        if extra:
            raise DDBenchError(f"protocol {cfg.get('name')!r} has unknown keys {extra}")
        p = cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()})
        if not p.seeds:
            raise DDBenchError(f"protocol {p.name!r} has no seeds")
        if p.labels not in ("hard", "set", "teacher", "crops", "dbr"):
            raise DDBenchError(
                f"protocol {p.name!r}: labels must be hard, set, teacher, crops or dbr"
            )
        if (p.labels == "dbr") != (p.loss == "dbr"):
            raise DDBenchError(f"protocol {p.name!r}: labels=dbr and loss=dbr go together")
        if p.labels == "dbr" and (p.augment != "rrc" or p.mixup > 0 or not p.dbr_weight >= 0):
            raise DDBenchError(
                f"protocol {p.name!r}: labels=dbr replays the set's RandomResizedCrop crops "
                "(augment: rrc, mixup: 0) with dbr_weight >= 0"
            )
        if p.labels in ("teacher", "crops") and p.loss != "kd":
            raise DDBenchError(f"protocol {p.name!r}: labels={p.labels} needs loss=kd")
        if p.teacher_from_set and p.labels not in ("teacher", "crops"):
            raise DDBenchError(f"protocol {p.name!r}: teacher_from_set needs labels=teacher")
        if p.labels == "crops" and (p.augment != "rrc" or p.mixup > 0):
            raise DDBenchError(
                f"protocol {p.name!r}: labels=crops stores RandomResizedCrop crops (augment: rrc) "
                "with cutmix only (mixup: 0)"
            )
        if p.crop_label_epochs < 0 or p.crop_label_dtype not in ("float16", "float32"):
            raise DDBenchError(
                f"protocol {p.name!r}: crop_label_epochs must be >= 0 and crop_label_dtype "
                "float16 or float32"
            )
        for ds, fields in p.per_dataset.items():
            bad = sorted(set(fields) - known - {"name", "per_dataset", "seeds"}) or sorted(
                set(fields) & {"name", "per_dataset", "seeds"}
            )
            if bad:
                raise DDBenchError(f"protocol {p.name!r}: per_dataset.{ds} cannot set {bad}")
        if not all(_whole(s, 0) for s in p.seeds) or len(set(p.seeds)) != len(p.seeds):
            raise DDBenchError(f"protocol {p.name!r}: seeds must be distinct whole numbers >= 0")
        for ds in ("", *p.per_dataset):
            where = f"protocol {p.name!r}" + (ds and f" ({ds})")
            p.for_dataset(ds).check(where, positive=("lr", "temperature"))
        return p

    def for_dataset(self, dataset: str | None) -> Protocol:
        """The recipe this protocol pins for ``dataset`` (its ``per_dataset`` entry applied).
        Results carry the protocol's own name and hash, which cover every entry."""
        fields = self.per_dataset.get(dataset or "", {})
        return replace(self, **fields) if fields else self

    @property
    def hash(self) -> str:
        d = asdict(self)
        defaults = {
            f.name: f.default if f.default_factory is MISSING else f.default_factory()
            for f in self.__dataclass_fields__.values()
        }
        keyed = {k: d[k] for k in _HASHED}
        keyed.update({k: d[k] for k in _HASHED_IF_SET if d[k] != defaults[k]})
        canon = json.dumps(keyed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def recipe(self, augment: str | None, lr: float | None = None) -> engine.Recipe:
        return self.to_recipe(
            augment, lr=self.lr if lr is None else lr,
            loss="ce" if self.loss == "dbr" else self.loss, temperature=self.temperature,
            hard_weight=self.hard_weight, mixup=self.mixup, cutmix=self.cutmix,
        )  # fmt: skip


def _whole(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def set_space_transform(synset_meta, train_split, zca=None):
    """A function mapping uint8 real images into the set's image space (normalised, ZCA).

    ``synset_meta``: a set's metadata, or the :class:`~ddbench.synset.SyntheticSet` itself. A ZCA
    space uses the set's stored whitening (``zca``, or the set's own ``.zca``); sets without one
    (imported, or older files) use the dataset's cached fit on the train split
    (:func:`ddbench.data.fit_zca`). ``train_split`` only gives the per-channel normalisation.
    """
    if zca is None:
        zca = getattr(synset_meta, "zca", None)
    meta = getattr(synset_meta, "meta", synset_meta)
    space = meta.get("space", {"normalized": True, "zca": False})
    if not space.get("zca"):
        zca = None
    elif zca is None:
        zca = ddata.fit_zca(train_split.spec.name, float(space.get("zca_eps", ddata.ZCA_EPS)))
    normalized = space.get("normalized", True)
    if zca is not None and not normalized:
        raise DDBenchError("a ZCA space is fitted on normalised images; this set says it is not")

    on_device: dict[str, Any] = {}  # the ZCA matrices moved once per device

    def transform(x: torch.Tensor) -> torch.Tensor:
        x = train_split.standardize(x) if normalized else x.float() / 255.0
        if zca is None:
            return x
        if str(x.device) not in on_device:
            on_device[str(x.device)] = zca.to(x.device)
        return on_device[str(x.device)](x)

    return transform


def evaluate(
    synset,
    protocol: Protocol,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    parallel: bool | str = "auto",
    progress: bool = True,
    log=None,
    partial: str | Path | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    checkpoint_seconds: float = 60.0,
    split: str = "test",
    channels_last: bool = False,
    reuse: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score ``synset`` under ``protocol``: mean/std of the final test accuracy over the seeds.

    Under ``torchrun`` each model trains data-parallel over the processes (``engine.train``);
    every process then tests the (identical) final models on the whole split, and only rank 0
    writes files (``partial``, :func:`write_result`). ``precision`` (bf16 autocast) and
    ``channels_last`` change how, not what, the models compute: they are not in the hash.

    ``model`` None: the protocol's own ``model`` (convnet when it names none).

    ``split="val"`` scores on the val split (carved from train) instead, for tuning; the result
    says so (``"split": "val"``) and must never be reported as a test score.

    ``partial``: a JSON file where each seed's accuracy is written as soon as it is known; an
    interrupted evaluation rerun with the same file, set, protocol and model skips those seeds.

    ``checkpoint``: a file where the model(s) in training are saved with their whole training
    state (optimiser, schedule position, batch-order and augmentation generators) every
    ``checkpoint_every`` epochs (0: only after the last epoch), at most once per
    ``checkpoint_seconds``; a rerun resumes them mid-seed and ends with the same accuracies as
    an uninterrupted run. The file is removed once the seeds it holds are scored; one written by
    another evaluation (set, protocol, model, precision, split) or for other seeds is ignored
    with a warning.

    ``reuse``: ``{source: result}``, earlier results (``result.json``) of this same evaluation
    with other seeds (:func:`reusable_seeds` checks it); the seeds they scored are taken from
    them instead of trained again, and the result lists them under ``"reused"``.
    """
    if split not in ("test", "val"):
        raise DDBenchError(f"split must be test or val, not {split!r}")
    meta = synset.meta
    dataset = meta.get("dataset")
    spec = ddata.get_spec(dataset)
    device = engine.pick_device(device) if not isinstance(device, torch.device) else device
    if getattr(synset, "representation", False):
        raise DDBenchError(
            "this set carries representation targets, not class labels: score it under a "
            "transfer protocol (`ddbench transfer`, docs/transfer.md)"
        )
    if synset.soft_labels and protocol.labels == "hard":
        raise DDBenchError(
            f"this set carries soft labels; protocol {protocol.name!r} trains on hard labels. "
            "Evaluate it under a protocol with labels: set (e.g. learned_lr) or kd"
        )
    logits = (meta.get("relabel") or {}).get("format") == "logits"
    if logits and protocol.labels == "set" and protocol.loss != "kd":
        raise DDBenchError(
            f"this set's soft labels are teacher logits; protocol {protocol.name!r} would read "
            "them as probabilities (loss: ce). Evaluate it under loss: kd (protocol=kd_set)"
        )
    lr = None
    if protocol.lr_from_set:
        if synset.lr is None:
            raise DDBenchError(
                f"protocol {protocol.name!r} uses the set's learned lr, but the set stores none"
            )
        lr = float(synset.lr.reshape(-1)[0])
    pinned = protocol.for_dataset(dataset)  # the hash stays the protocol's
    strategy = None
    if pinned.augment == "rrc":  # not a DSA strategy: the engine gets the callable below
        dsa = StudentCrop((0.08, 1.0), flip=flips(spec))
    else:
        if pinned.augment and pinned.augment != "none":
            strategy = spec.dsa_strategy if pinned.augment == "dsa" else pinned.augment
        dsa = make_augment(strategy)
    recipe = pinned.recipe(strategy, lr)
    recipe.precision = precision
    recipe.channels_last = bool(channels_last)
    images = synset.view_images()  # a set with a view (INFER's compensators) yields its own
    if not meta.get("space", {}).get("normalized", True):
        images = (images - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(
            1, -1, 1, 1
        )
    targets = synset.labels if protocol.labels == "set" else synset.hard_labels
    model = model or protocol.model or "convnet"
    kwargs = dict(model_kwargs or {})
    teacher, teacher_meta = None, None
    if protocol.labels in ("teacher", "crops"):
        if meta.get("space", {}).get("zca"):
            raise DDBenchError("a teacher sees normalised images; this set is in ZCA space")
        teacher, teacher_meta = load_protocol_teacher(synset, protocol, device, progress)
    t0 = time.perf_counter()  # eval_seconds: FKD's relabel pass and the students
    crop_labels = dbr = None
    if protocol.labels == "dbr":  # NRR-DD: the set's DBR labels, their crops redrawn
        storage = synset.label_storage
        if storage["format"] != "dbr" or synset.distances is None:
            raise DDBenchError(
                f"protocol {protocol.name!r} trains on the set's DBR labels; this set stores "
                f"{storage['format']} labels (make it with method=nrr_dd)"
            )
        if synset.weights is not None:
            raise DDBenchError("labels=dbr replays stored crops; this set has sample weights")
        dbr = replay_crops(images, storage, pinned.batch_size)
        recipe.mixup = recipe.cutmix = 0.0  # the stored crops are mixed already
        dsa, targets = None, torch.arange(len(images))
    if protocol.labels == "crops":  # FKD: the relabel pass once, then every seed replays it
        if synset.weights is not None:
            raise DDBenchError("labels=crops replays stored crops; this set has sample weights")
        crop_labels = make_crop_labels(
            images, teacher, epochs=pinned.crop_label_epochs or pinned.epochs,
            scale=dsa.scale, flip=dsa.flip, cutmix=pinned.cutmix, seed=pinned.crop_label_seed,
            batch_size=pinned.batch_size, dtype=pinned.crop_label_dtype, device=device,
        )  # fmt: skip
        recipe.mixup = recipe.cutmix = 0.0  # the stored crops are mixed already
        dsa, targets = None, torch.arange(len(images))

    def build():
        return create_model(model, spec.channels, spec.num_classes, spec.im_size, **kwargs)

    train_split = ddata.load_split(dataset, "train")
    test = ddata.load_split(dataset, split)
    transform = set_space_transform(synset, train_split)
    # Seeds already scored by an interrupted run of this exact evaluation (see ``partial``).
    set_sha = meta.get("sha256") or tensors_sha256(synset.tensors())  # imported sets have none
    key = hashlib.sha256(
        f"{protocol.hash}|{model}|{sorted(kwargs.items())}|{set_sha}|{precision}"
        f"{'' if split == 'test' else '|' + split}".encode()
    ).hexdigest()[:16]
    reused = {src: reusable_seeds(r, synset, protocol, model, kwargs, precision, split, device)
              for src, r in (reuse or {}).items()}  # fmt: skip
    done = {k: v for found in reused.values() for k, v in found.items()}
    done.update(_load_partial(partial, key))
    todo = [s for s in protocol.seeds if s not in done]
    # the engine decides whether the seeds train stacked; one by one, each seed's score is saved
    # (``partial``) as soon as it is known
    with torch.random.fork_rng(devices=[]):  # a probe model; the seeds' models are unchanged
        stacked = len(todo) > 1 and engine.stacks(parallel, device, build())
    groups = [todo] if stacked else [[s] for s in todo]
    losses = []
    ckpt = None if checkpoint is None else Path(checkpoint)
    for group in (g for g in groups if g):
        resume = _load_checkpoint(ckpt, key, group)
        replay = None
        if dbr is not None:
            batches = math.ceil(len(images) / min(recipe.batch_size, len(images)))
            replay = DBRReplay(dbr, synset.distances, images, synset.hard_labels,
                               models=len(group), batches=batches)  # fmt: skip
            if resume is not None:
                first = recipe.epochs if resume["group"] else int(resume["epoch"])
                replay.calls = first * len(group) * batches
            teacher = replay
        if crop_labels is not None:
            batches = math.ceil(len(images) / min(recipe.batch_size, len(images)))
            replay = CropReplay(crop_labels, images, synset.hard_labels, models=len(group),
                                batches=batches)  # fmt: skip
            if resume is not None:  # the stored crops of the epoch the training resumes at
                first = recipe.epochs if resume["group"] else int(resume["epoch"])
                replay.calls = first * len(group) * batches
            teacher = replay
        trained = engine.train(
            build, group, images, targets, recipe, device=device, lr=lr,
            weights=synset.weights, augment=dsa, parallel=parallel, teacher=teacher,
            batch_transform=None if replay is None else replay.transform,
            progress=f"evaluate {meta.get('method', {}).get('name', '?')} seed(s) {group}" if progress else False,
            checkpoint=None if ckpt is None else functools.partial(_save_checkpoint, ckpt, key),
            checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
            resume=resume, loss_fn=None if dbr is None else dbr_loss(pinned.dbr_weight),
        )  # fmt: skip
        accs_g = engine.accuracy(
            trained.models, test.images, test.labels, transform=transform, precision=precision
        )
        done.update(zip(group, accs_g))
        losses.append(trained.losses[-1] if trained.losses else None)
        _save_partial(partial, key, done)
        if ckpt is not None and engine.is_main_process():  # its seeds are scored: done with it
            ckpt.unlink(missing_ok=True)
    accs = [done[s] for s in protocol.seeds]
    eval_seconds = time.perf_counter() - t0
    reused_info = [
        {"from": src, "seeds": sorted(accs_r),
         # the earlier evaluation's time for these seeds (its time per seed)
         "eval_seconds": reuse[src]["cost"]["eval_seconds"] * len(accs_r)
         / len(reuse[src]["accuracy"]["per_seed"])}
        for src, accs_r in reused.items() if accs_r
    ]  # fmt: skip
    eval_seconds += sum(r["eval_seconds"] for r in reused_info)
    declared = meta.get("protocol")
    cross = declared is not None and declared != protocol.name
    if cross:  # a legitimate study, never a silent one
        logging.getLogger("ddbench").warning(
            "this set declares protocol %r and is scored under %r: a cross-protocol score, "
            "not the set's own (result.json says so)", declared, protocol.name,
        )  # fmt: skip
    nbytes = synset.nbytes()
    crops = None
    if crop_labels is not None:  # what a set storing its per-crop labels holds besides
        crops = {
            "crop_label_bytes": crop_labels.nbytes(max(spec.im_size)),
            "crop_label_epochs": crop_labels.epochs,
            "crop_label_dtype": pinned.crop_label_dtype,
            "crop_label_seed": pinned.crop_label_seed,
        }
        nbytes["labels"] += crops["crop_label_bytes"]
    if dbr is not None:  # the crops are redrawn from the stored seed: not stored, not counted
        e, n = dbr.partners.shape
        crops = {"replayed_crop_bytes": dbr.nbytes(max(spec.im_size)) - 4 * e * n}
    result = {
        "method": meta.get("method", {}).get("name"),
        "dataset": dataset,
        "ipc": meta.get("ipc"),
        "model": model,
        "model_kwargs": kwargs,
        "split": split,
        "protocol": {
            "name": protocol.name,
            "hash": protocol.hash,
            "comparable": protocol.comparable,
            **({"set_declares": declared, "cross_protocol": True} if cross else {}),
        },
        "accuracy": engine.accuracy_summary(protocol.seeds, accs),
        "labels": _labels_used(synset, protocol, teacher_meta, nbytes["labels"], crops),
        "cost": {
            "distill_seconds": (meta.get("cost") or {}).get("wall_seconds"),
            "eval_seconds": eval_seconds,
            "peak_memory_bytes": peak_memory_bytes(device),
            "synset_bytes": nbytes["images"] + nbytes["labels"] + nbytes["extras"],
            "image_bytes": nbytes["images"],
            "label_bytes": nbytes["labels"],
            "extra_bytes": nbytes["extras"],  # a set's extra tensors (synset.extras)
        },
        "synset": {"path": meta.get("_path"), "sha256": meta.get("sha256")},
        "versions": versions(),
        "device": str(device),
        "precision": precision,
        "train_loss_final": losses[-1] if losses else None,
    }
    if reused_info:
        result["reused"] = reused_info
    if log is not None:
        log.info(
            "%s %s ipc=%s model=%s protocol=%s: %.2f +- %.2f %% (%s) in %.0fs",
            result["method"], dataset, result["ipc"], model, protocol.name,
            result["accuracy"]["mean"], result["accuracy"]["std"],
            ", ".join(f"{a:.2f}" for a in accs), eval_seconds,
        )  # fmt: skip
    return result


def _cached_teacher(dataset: str, entry: Mapping[str, Any], device, progress: bool):
    """The cached teacher a set's metadata names (``{"key", "model"[, "config"]}``): loaded from
    the cache by model and key, or trained from its ``config`` where the set stores one."""
    if "config" in entry:
        cfg = TeacherConfig.from_config(entry["config"])
        if cfg.key(dataset) != entry.get("key"):
            raise DDBenchError(f"the set's teacher config does not give its key {entry.get('key')}")
        return get_teacher(dataset, cfg, device=device, progress=progress)
    path = teacher_path(dataset, TeacherConfig(model=entry["model"])).with_name(
        f"{entry['model']}-{entry['key']}.safetensors"
    )
    if not path.exists():
        raise DDBenchError(
            f"the set was recovered with teacher {entry['model']}-{entry['key']}, which is not in "
            "the teacher cache and the set stores no config to train it"
        )
    return load_teacher(path, device)


def load_protocol_teacher(synset, protocol: Protocol, device, progress: bool = True):
    """The teacher of a ``labels: teacher`` (online) or ``labels: crops`` (FKD's relabel)
    protocol and its description for result.json.

    With ``teacher_from_set``, a set whose ``relabel`` metadata names a teacher (SRe2L, CDA) is
    labelled by that cached teacher, and one that names a committee (CV-DD) by the committee's
    weighted logits, its members normalising with the batch's statistics where the set's
    relabel did (``bn: batch``). Any other set, and every set without ``teacher_from_set``, is
    labelled by the protocol's ``teacher``."""
    meta = synset.meta
    dataset = meta.get("dataset")
    relabel = meta.get("relabel") or {}
    if protocol.teacher_from_set and "projector" in relabel:  # HeLlO's label projector
        from ddbench.projector import projector_from_set

        return projector_from_set(synset, device, progress)
    if protocol.teacher_from_set and "teacher" in relabel:
        net, tmeta = _cached_teacher(dataset, relabel["teacher"], device, progress)
        return net, {**_describe(tmeta), "source": "set"}
    if protocol.teacher_from_set and "committee" in relabel:
        nets, described = [], []
        batch = relabel.get("bn") == "batch"
        for entry in relabel["committee"]:
            net, tmeta = _cached_teacher(dataset, entry, device, progress)
            nets.append(batch_statistics(net) if batch else net)
            described.append({**_describe(tmeta), "weight": float(entry["weight"])})
        weights = [d["weight"] for d in described]
        desc = {"source": "set", "committee": described, "bn": "batch" if batch else "running"}
        return Committee(nets, weights), desc
    if protocol.teacher is None:
        raise DDBenchError(f"protocol {protocol.name!r} has labels=teacher but no teacher")
    if "committee" in protocol.teacher:
        return _protocol_committee(dataset, dict(protocol.teacher), device, progress)
    cfg = TeacherConfig.from_config(protocol.teacher)
    net, tmeta = get_teacher(dataset, cfg, device=device, progress=progress)
    return net, {**_describe(tmeta), "source": "protocol"}


def _protocol_committee(dataset: str, node: dict[str, Any], device, progress: bool):
    """A protocol's committee teacher: ``{committee: [member, ...], temperature: T, bn: batch |
    running, <TeacherConfig keys>}``. Each member is a TeacherConfig node whose missing keys come
    from the node's own TeacherConfig keys; its weight is its ``weight``, else
    ``softmax(val_accuracy / T)`` over the members (CV-DD's relabel with its default priors)."""
    members = list(node.pop("committee") or [])
    temperature = float(node.pop("temperature", 10.0))
    bn = node.pop("bn", "batch")
    if not members or bn not in ("batch", "running") or not temperature > 0:
        raise DDBenchError(
            "a committee teacher needs members, bn: batch or running and a positive temperature"
        )
    nets, described, given = [], [], []
    for member in members:
        member = {**node, **dict(member)}
        given.append(member.pop("weight", None))
        net, tmeta = get_teacher(
            dataset, TeacherConfig.from_config(member), device=device, progress=progress
        )
        nets.append(batch_statistics(net) if bn == "batch" else net)
        described.append(_describe(tmeta))
    if all(w is None for w in given):
        acc = torch.tensor([d["val_accuracy"] for d in described], dtype=torch.float64)
        given = torch.softmax(acc / temperature, 0).tolist()
    elif any(w is None for w in given):
        raise DDBenchError("a committee teacher gives a weight to every member or to none")
    for d, w in zip(described, given):
        d["weight"] = float(w)
    desc = {"source": "protocol", "committee": described, "bn": bn}
    return Committee(nets, [d["weight"] for d in described]), desc


def _describe(teacher_meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key": teacher_meta["key"],
        "model": teacher_meta["config"]["model"],
        "val_accuracy": teacher_meta["val_accuracy"],
    }


def _labels_used(
    synset, protocol: Protocol, teacher_meta: dict | None, nbytes: int, crops: dict | None = None
) -> dict:
    """What the students were trained on: the set's hard or soft labels, a teacher online, a
    teacher's stored per-crop labels (``crops``: their bytes, epochs, dtype and seed;
    ``nbytes`` includes their bytes), or the set's DBR labels (``crops``: the bytes their
    crops would take if stored, ``replayed_crop_bytes``, not in ``nbytes``: redrawn from the
    stored seed)."""
    if protocol.labels == "dbr":
        return {
            "kind": "dbr",
            "bytes": nbytes,
            "loss": "dbr",
            "dbr_weight": protocol.dbr_weight,
            "storage": {**synset.label_storage, "dtype": str(synset.distances.dtype)[6:]},
            **(crops or {}),
        }
    if protocol.labels in ("teacher", "crops"):
        assert teacher_meta is not None
        return {
            "kind": protocol.labels,
            "bytes": nbytes,
            "loss": protocol.loss,
            "temperature": protocol.temperature,
            "hard_weight": protocol.hard_weight,
            "teacher": teacher_meta,
            **(crops or {}),
        }
    kind = "soft" if synset.soft_labels and protocol.labels == "set" else "hard"
    out = {"kind": kind, "bytes": nbytes, "loss": protocol.loss}
    if kind == "soft":  # how they are stored: dense or top-k, and in which dtype
        dtype = str(synset.labels.dtype).removeprefix("torch.")
        out["storage"] = {**synset.label_storage, "dtype": dtype}
        if protocol.loss == "kd":
            out["temperature"] = protocol.temperature
    return out


def _save_checkpoint(path: Path, key: str, state: dict) -> None:
    """Write the engine's training ``state`` of an evaluation atomically, tagged with ``key``."""
    state = {**state, "key": key}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path | None, key: str, seeds: list[int]) -> dict | None:
    """The training state in ``path`` if this evaluation (``key``) wrote it for ``seeds``;
    None (with a warning saying why) for a file of another evaluation or other seeds, or an
    unreadable one."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a training state")
    except Exception as e:  # a damaged checkpoint must not block a fresh start
        _log.warning("ignoring unreadable evaluation checkpoint %s (%s)", path, e)
        return None
    if state.get("key") != key:
        _log.warning(
            "ignoring %s: written by another evaluation (another set, protocol, model, precision "
            "or split)", path,
        )  # fmt: skip
        return None
    if state.get("seeds") != [int(s) for s in seeds]:
        _log.warning(
            "ignoring %s: it holds seed(s) %s, and this evaluation trains seed(s) %s next",
            path, state.get("seeds"), list(seeds),
        )  # fmt: skip
        return None
    at = "after the last epoch" if state.get("group") else f"at epoch {state.get('epoch')}"
    _log.info("resuming the evaluation of seed(s) %s %s (%s)", list(seeds), at, path)
    return state


def reusable_seeds(
    result: Mapping[str, Any], synset, protocol: Protocol, model: str,
    model_kwargs: Mapping[str, Any], precision: str, split: str, device,
) -> dict[int, float]:  # fmt: skip
    """The accuracies ``{seed: accuracy}`` of an earlier ``result`` that an evaluation of
    ``synset`` under ``protocol`` may take as its own, for the seeds both have: ``result``
    scored the same saved set (its sha256) under the same pinned recipe with other seeds (its
    protocol hash is this protocol's with the seeds replaced by its own), with the same model,
    model settings, precision, split and kind of device. Each seed's model is built, trained and
    tested from that seed alone (one at a time on the CPU, ``engine.stacks``), so its accuracy
    does not depend on the other seeds. Raises DDBenchError naming the first difference."""
    where = f"reuse: the result of {(result.get('synset') or {}).get('path')!r}"
    sha = synset.meta.get("sha256")
    if not sha:
        raise DDBenchError("reuse: this set has no sha256 (not a saved .safetensors set)")
    try:
        theirs = [int(p["seed"]) for p in result["accuracy"]["per_seed"]]
        if sorted(set(theirs)) != sorted(theirs) or any(s < 0 for s in theirs):
            raise ValueError("repeated or negative seeds")
        checks = (
            ("set (sha256)", result["synset"]["sha256"], sha),
            ("protocol", result["protocol"]["name"], protocol.name),
            ("recipe (protocol hash with its seeds)", result["protocol"]["hash"],
             replace(protocol, seeds=theirs).hash),
            ("model", result["model"], model),
            ("model settings", json.dumps(result["model_kwargs"], sort_keys=True),
             json.dumps(dict(model_kwargs), sort_keys=True)),
            ("precision", result["precision"], precision),
            ("split", result.get("split", "test"), split),
            ("device", torch.device(result["device"]).type, torch.device(device).type),
        )  # fmt: skip
        accs = {int(p["seed"]): float(p["accuracy"]) for p in result["accuracy"]["per_seed"]}
        float(result["cost"]["eval_seconds"])  # its share is added to this evaluation's
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DDBenchError(f"{where} is not a readable evaluation result ({e})") from e
    for what, got, want in checks:
        if got != want:
            raise DDBenchError(f"{where} has another {what}: {got!r}, here {want!r}")
    return {s: a for s, a in accs.items() if s in protocol.seeds}


def _load_partial(path: str | Path | None, key: str) -> dict[int, float]:
    if path is None or not Path(path).exists():
        return {}
    try:
        d = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    return (
        {int(s): float(a) for s, a in d.get("per_seed", {}).items()} if d.get("key") == key else {}
    )


def _save_partial(path: str | Path | None, key: str, done: dict[int, float]) -> None:
    if path is not None:
        write_result({"key": key, "per_seed": {str(s): a for s, a in done.items()}}, path)


def write_result(result: dict, path: str | Path) -> Path:
    """Write ``result.json`` atomically (under ``torchrun`` on rank 0 only: every rank holds the
    same result)."""
    if engine.is_main_process():
        text = json.dumps(result, indent=2, sort_keys=False, default=str)
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))
    return Path(path)


def protocol_config(name: str) -> dict[str, Any] | None:
    """``conf/protocol/<name>.yaml`` as shipped, composed as Hydra composes the ``protocol``
    group: the protocols named in its ``defaults`` list first, in order, then its own keys
    (``_self_``, last unless placed); None if there is no such protocol."""
    node = compose_shipped("protocol", name, "protocol")
    return None if node is None else OmegaConf.to_container(node)


def compose_shipped(group: str, name: str, what: str, seen: tuple[str, ...] = ()):
    """``conf/<group>/<name>.yaml`` as shipped (an OmegaConf node), composed as Hydra composes
    a config group: the configs its ``defaults`` list names first, in order, each composed the
    same way, then its own keys (``_self_``, last unless placed); None if there is no such
    file. ``what`` names the group's configs in the error for a defaults entry that is none."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    f = importlib.resources.files("ddbench.conf") / group / f"{name}.yaml"
    if not f.is_file():
        return None
    if name in seen:
        raise DDBenchError(f"conf/{group}: {' -> '.join((*seen, name))} is a cycle")
    own = OmegaConf.load(str(f))
    defaults = list(own.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, own)
            continue
        base = (
            compose_shipped(group, entry, what, (*seen, name)) if isinstance(entry, str) else None
        )
        if base is None:
            raise DDBenchError(
                f"conf/{group}/{name}.yaml: defaults entry {entry!r} is not a {what}"
            )
        merged = OmegaConf.merge(merged, base)
    return merged


def pinned_protocol_hash(name: str) -> str | None:
    """The hash of ``conf/protocol/<name>.yaml`` as shipped, or None if there is no such file."""
    cfg = protocol_config(name)
    return None if cfg is None else Protocol.from_config(cfg).hash

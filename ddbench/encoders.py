"""Self-supervised encoders: networks trained on a train split without its labels, cached.

The transfer track's methods need a representation of the source images that no class label
made: KRR-ST's target representations (its initial targets and its outer loss) and DP4TL's
feature mapping. The encoder is trained here with SimCLR's contrastive loss (Chen et al., ICML
2020, "A Simple Framework for Contrastive Learning of Visual Representations"): two augmented
views of each image of a batch, their projections normalised, and the cross entropy of each view
against the other ``2B - 1`` views of the batch with its partner as the positive (NT-Xent). The
loss is the engine's cross entropy over those similarities (:class:`Contrastive`), so the encoder
trains through :func:`ddbench.engine.train` like every other network.

The representation is the network's ``embed(x)`` (the features before its last linear layer);
that layer, ``classifier``, is the projection head the loss sees, dropped afterwards as in SimCLR.
Encoders are cached as teachers are (:mod:`ddbench.teachers`):
``$DDBENCH_CACHE/encoders/<dataset>/<model>-<key>.safetensors``, ``key`` hashing the dataset and
every field of :class:`EncoderConfig`; a killed training resumes from its per-epoch checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench import data, engine
from ddbench.augment import make_augment
from ddbench.cache import CachedConfig, cache_root, get_or_train, resume_state
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.provenance import versions
from ddbench.synset import atomic_write
from ddbench.teachers import load_net, save_net

log = logging.getLogger("ddbench")
SCHEMA = 1


@dataclass
class EncoderConfig(CachedConfig):
    """What an encoder is: its network, projection width and SimCLR recipe on the train split.

    Defaults: SimCLR's NT-Xent at temperature 0.5 (its CIFAR-10 setting, Chen et al. 2020,
    Appendix B.9) with Adam at 1e-3 and weight decay 1e-6, as small-scale SimCLR runs train
    without LARS; each view is the dataset's DSA strategy applied twice (two ops drawn)."""

    kind = "encoder"

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    proj_dim: int = 128  # width of the linear projection head the loss sees
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    augment: str = "dsa"  # dsa (the dataset's strategy) | a DSA strategy string
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.proj_dim < 1:
            raise DDBenchError("an encoder needs epochs >= 1, batch_size >= 2 and proj_dim >= 1")
        if not (self.temperature > 0 and self.lr > 0):
            raise DDBenchError("an encoder needs a positive temperature and lr")
        if self.augment in ("", "none"):
            raise DDBenchError("a contrastive encoder needs an augmentation (dsa or a strategy)")


class Contrastive(nn.Module):
    """The NT-Xent loss as logits: ``forward(x)`` of a batch of ``2B`` views (the first ``B`` and
    the last ``B`` are two views of the same images) gives the ``[2B, 2B]`` cosine similarities of
    their projections over ``temperature``, each view's similarity to itself masked out; the
    cross entropy against :func:`positives` is SimCLR's loss."""

    def __init__(self, net: nn.Module, temperature: float):
        super().__init__()
        self.net = net
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.net(x).float(), dim=1)
        sim = z @ z.T / self.temperature
        eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
        return sim.masked_fill(eye, -1e9)


def positives(b: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The index of each view's partner in a batch of ``2B`` views (``b = B``)."""
    idx = torch.arange(b, device=device)
    return torch.cat([idx + b, idx])


def encoder_path(dataset: str, cfg: EncoderConfig) -> Path:
    return cache_root() / "encoders" / dataset / f"{cfg.model}-{cfg.key(dataset)}.safetensors"


def _build(dataset: str, cfg: EncoderConfig) -> nn.Module:
    spec = data.get_spec(dataset)
    return create_model(cfg.model, spec.channels, cfg.proj_dim, spec.im_size, **cfg.model_kwargs)


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A cached encoder (in eval mode, its ``embed`` the representation) and its metadata."""
    return load_net(path, EncoderConfig, _build, device)


def get_encoder(
    dataset: str,
    cfg: EncoderConfig,
    *,
    device: torch.device | str = "auto",
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The cached encoder for ``(dataset, cfg)``, trained (or resumed) first if missing; the
    metadata says whether this call hit the cache (``cache_hit``)."""
    device = engine.pick_device(device) if isinstance(device, str) else device
    path = encoder_path(dataset, cfg)
    net, meta, hit = get_or_train(
        path, cfg.key(dataset), lambda p: load_encoder(p, device),
        lambda: train_encoder(dataset, cfg, device=device, progress=progress), "encoder",
    )  # fmt: skip
    if hit:
        log.info("encoder cache hit: %s", path)
    return net, {**meta, "cache_hit": hit}


def train_encoder(
    dataset: str, cfg: EncoderConfig, *, device: torch.device, progress: bool = True
) -> tuple[nn.Module, dict]:
    """Train an encoder with SimCLR's loss through the engine, checkpointing every epoch (the
    views' generator included), and store it in the cache. Labels are never read."""
    spec = data.get_spec(dataset)
    path = encoder_path(dataset, cfg)
    state_path = path.with_suffix(".train_state.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tr = data.load_split(dataset, "train")
    augment = make_augment(spec.dsa_strategy if cfg.augment == "dsa" else cfg.augment)
    views = torch.Generator().manual_seed(cfg.seed + 1)  # the views' draws, apart from the engine's
    resume = resume_state(state_path, "encoder", lambda state: views.set_state(state["views"]))
    if resume is None:  # a fresh start, whatever a damaged checkpoint left in the generator
        views.manual_seed(cfg.seed + 1)

    def two_views(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = [augment(augment(x, views), views) for _ in range(2)]
        return torch.cat(v), positives(len(x), x.device)

    t0 = time.perf_counter()
    before = float((resume or {}).get("seconds", 0.0))

    def save_state(state: dict) -> None:
        state["views"] = views.get_state()
        state["seconds"] = before + time.perf_counter() - t0
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    recipe = engine.Recipe(
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="adamw", lr=cfg.lr,
        weight_decay=cfg.weight_decay, schedule="cosine", augment=None,
    )  # fmt: skip
    result = engine.train(
        lambda: Contrastive(_build(dataset, cfg), cfg.temperature), [cfg.seed],
        tr.normalize(tr.images), torch.zeros(len(tr), dtype=torch.long), recipe, device=device,
        progress=f"encoder {dataset}/{cfg.model}" if progress else False,
        checkpoint=save_state, checkpoint_every=1, resume=resume, batch_transform=two_views,
        distributed=False,  # trained by the one process holding the cache lock
    )  # fmt: skip
    net = result.models[0].net
    meta = {
        "kind": "encoder",
        "schema": SCHEMA,
        "dataset": dataset,
        "key": cfg.key(dataset),
        "config": asdict(cfg),
        "loss_history": result.losses,
        "train_seconds": before + time.perf_counter() - t0,
        "versions": versions(),
    }
    save_net(path, net, meta)
    log.info("encoder %s: final NT-Xent %.4f -> %s", dataset, result.losses[-1], path)
    return net.eval(), meta


def encode(
    net: nn.Module, images: torch.Tensor, transform=None, batch_size: int = 500
) -> torch.Tensor:
    """The representations ``net.embed(x)`` ``[N, D]`` of ``images`` (uint8 through
    ``transform``, or already normalised floats), on the network's device, without gradients."""
    batches = engine.predict_batches(
        [net], images, transform=transform, batch_size=batch_size,
        output=lambda m, x: m.embed(x),
    )  # fmt: skip
    return torch.cat([out[0] for _, out in batches])

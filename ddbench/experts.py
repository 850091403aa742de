"""Expert trajectories (MTT and its successors): networks trained on the real data, with their
flattened parameters recorded after every epoch, trained once and cached.

A sibling of :mod:`ddbench.teachers`: per ``(dataset, model, recipe, ZCA)`` one directory
``$DDBENCH_CACHE/experts/<dataset>/<model>-<key>/`` holding ``expert_<i>.safetensors``, one file
per expert: the tensor ``trajectory [E+1, P]`` (row 0 the initial parameters, row ``e`` those after
epoch ``e``; ``P`` parameters flattened in ``named_parameters()`` order) and JSON metadata (config,
key, seed, losses). Expert ``i`` is trained by the core engine with seed ``cfg.seed + i``. Each
epoch checkpoints the engine's state and the rows collected so far (``expert_<i>.train_state.pt``),
so a killed training resumes; a flock per expert makes parallel jobs train each one once.

The recipe defaults are MTT's ``buffer.py``: SGD lr 0.01, momentum 0, weight decay 0, no lr decay,
batch 256, DSA during training (here: the dataset's DSA strategy), 50 epochs per expert.

Variants of the one trainer, as config fields (each changes the cache key only when set; see
:meth:`ExpertConfig.key`), realised by one :class:`ExpertStep` passed to the engine's ``step_fn``:

* ``sam_rho`` > 0: sharpness-aware experts (FTD's GSAM buffers): per batch, ascend to
  ``w + rho * g / ||g||`` (ASAM's ``w^2 g / ||w g||`` with ``sam_adaptive``), take the gradient
  there, return to ``w``; ``gsam_alpha`` > 0 adds GSAM's surrogate-gap step (subtract ``alpha``
  times the part of ``g`` orthogonal to the perturbed gradient);
* ``grad_penalty`` > 0: minimise ``loss + grad_penalty * ||grad loss||`` (double backward);
  ``clip_grad``: clip the gradient to this global norm before the step (AST's smooth experts);
* longer experts (DATM's late start epochs) are just ``epochs``.

    experts = get_experts("cifar10", ExpertConfig(epochs=50), n=10, device="cuda")
    flat = FlatModel(build_expert_model("cifar10", cfg))
    logits = flat(experts[0][3], x)      # the expert after epoch 3, called functionally
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench import data, engine
from ddbench.cache import CachedConfig, cache_root, lock
from ddbench.engine import pick_device
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.provenance import versions
from ddbench.synset import atomic_write, read_header

log = logging.getLogger("ddbench")
SCHEMA = 1


@dataclass
class ExpertConfig(CachedConfig):
    """What an expert is: its network, the recipe on the train split, and the image space."""

    kind = "expert"

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    augment: str = "dsa"  # none | dsa (the dataset's strategy) | a DSA strategy string
    zca: bool = False  # train on ZCA-whitened images (fit on the normalised train split)
    zca_eps: float = 0.1
    seed: int = 0  # expert i is trained with seed + i
    # variants (FTD, AST): hashed only when set, so the keys of plain experts stay as they were
    sam_rho: float = 0.0  # SAM/GSAM ascent radius; 0: plain steps
    gsam_alpha: float = 0.0  # GSAM's surrogate-gap coefficient (with sam_rho > 0)
    sam_adaptive: bool = False  # ASAM-style element-wise scaled ascent (GSAM's adaptive=True)
    clip_grad: float | None = None  # max global gradient norm; null: no clipping
    grad_penalty: float = 0.0  # weight of ||grad loss|| added to the loss; 0: none

    _HASHED_IF_SET = ("sam_rho", "gsam_alpha", "sam_adaptive", "clip_grad", "grad_penalty")

    def __post_init__(self) -> None:
        if not (self.sam_rho >= 0 and self.gsam_alpha >= 0 and self.grad_penalty >= 0):
            raise DDBenchError("experts: sam_rho, gsam_alpha and grad_penalty must be >= 0")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise DDBenchError(f"experts: clip_grad must be > 0 or null, got {self.clip_grad}")
        if (self.gsam_alpha or self.sam_adaptive) and not self.sam_rho:
            raise DDBenchError("experts: gsam_alpha and sam_adaptive need sam_rho > 0")

    @property
    def is_plain(self) -> bool:
        """No variant set: the engine's default SGD step."""
        return all(
            getattr(self, n) == self.__dataclass_fields__[n].default for n in self._HASHED_IF_SET
        )


class ExpertStep:
    """The engine ``step_fn`` of an expert variant (see the module docstring): gradient penalty,
    then SAM/GSAM, then clipping, then the optimiser's step. Returns the unperturbed loss."""

    def __init__(self, cfg: ExpertConfig):
        self.rho, self.alpha, self.adaptive = cfg.sam_rho, cfg.gsam_alpha, cfg.sam_adaptive
        self.clip, self.penalty = cfg.clip_grad, cfg.grad_penalty

    def grads(
        self, closure: Callable[[], torch.Tensor], params: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(loss, gradient of loss [+ penalty * ||grad loss||])`` at the current params."""
        loss = closure()
        if not self.penalty:
            return loss.detach(), list(torch.autograd.grad(loss, params))
        g = torch.autograd.grad(loss, params, create_graph=True)
        norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
        return loss.detach(), list(torch.autograd.grad(loss + self.penalty * norm, params))

    def __call__(
        self,
        closure: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
    ) -> torch.Tensor:
        loss, g = self.grads(closure, params)
        if self.rho > 0:
            with torch.no_grad():
                scale = [p.abs() if self.adaptive else 1.0 for p in params]
                norm = torch.sqrt(sum(((s * gi) ** 2).sum() for s, gi in zip(scale, g)))
                eps = [self.rho * s * s * gi / (norm + 1e-12) for s, gi in zip(scale, g)]
                for p, e in zip(params, eps):
                    p.add_(e)
            _, g_adv = self.grads(closure, params)
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
                if self.alpha > 0:  # GSAM: minus alpha x the part of g orthogonal to g_adv
                    inner = sum((a * b).sum() for a, b in zip(g, g_adv))
                    sq = sum((b * b).sum() for b in g_adv)
                    coef = inner / (sq + 1e-12)
                    g_adv = [b - self.alpha * (a - coef * b) for a, b in zip(g, g_adv)]
            g = g_adv
        opt.zero_grad(set_to_none=True)
        for p, gi in zip(params, g):
            p.grad = gi
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        opt.step()
        return loss


def expert_dir(dataset: str, cfg: ExpertConfig) -> Path:
    return cache_root() / "experts" / dataset / f"{cfg.model}-{cfg.key(dataset)}"


def expert_path(dataset: str, cfg: ExpertConfig, i: int) -> Path:
    return expert_dir(dataset, cfg) / f"expert_{i}.safetensors"


def build_expert_model(dataset: str, cfg: ExpertConfig) -> nn.Module:
    """A fresh network of the experts' architecture (for ``FlatModel``)."""
    spec = data.get_spec(dataset)
    return create_model(
        cfg.model, spec.channels, spec.num_classes, spec.im_size, **cfg.model_kwargs
    )


class FlatModel:
    """Call a network with its parameters given as ONE flat vector ``[P]`` (the trajectory rows):
    ``FlatModel(net)(flat, x)`` is ``net(x)`` with ``net``'s parameters replaced by ``flat``,
    differentiable w.r.t. ``flat`` (``torch.func.functional_call``). Buffers are the module's own.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[P]`` from a name -> tensor mapping (a state_dict or named_parameters)."""
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.shape != (self.num_params,):
            raise DDBenchError(
                f"expected {self.num_params} flat parameters, got {tuple(flat.shape)}"
            )
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten(flat)
        buffers = dict(self.module.named_buffers())
        return torch.func.functional_call(self.module, (params, buffers), (x,))


def load_expert(path: str | Path) -> tuple[torch.Tensor, dict]:
    """``(trajectory [E+1, P], metadata)`` of one cached expert file."""
    path = Path(path)
    meta = read_header(path) if path.exists() else None
    if meta is None or meta.get("kind") != "expert":
        raise DDBenchError(f"{path}: not a ddbench expert file")
    try:
        traj = load_file(str(path))["trajectory"]
    except (SafetensorError, OSError, KeyError) as e:
        raise DDBenchError(f"{path}: unreadable expert file ({e})") from e
    return traj, meta


def get_experts(
    dataset: str,
    cfg: ExpertConfig,
    n: int,
    device: torch.device | str = "auto",
    *,
    train: bool = True,
    progress: bool = True,
) -> list[torch.Tensor]:
    """The trajectories ``[E+1, P]`` (on CPU) of experts ``0..n-1`` for ``(dataset, cfg)``;
    the missing ones are trained (or resumed) first on ``device``, each once across processes."""
    if n < 1:
        raise DDBenchError(f"need at least one expert, got n={n}")
    device = pick_device(device) if isinstance(device, str) else device
    out = []
    for i in range(n):
        traj = _cached(dataset, cfg, i)
        if traj is None:
            if not train:
                raise DDBenchError(f"expert {i} of {dataset} {cfg} is not cached")
            # parallel jobs may all miss at once: one trains expert i, the others wait for it
            path = expert_path(dataset, cfg, i)
            with lock(path.with_suffix(".lock"), f"expert {i}"):
                traj = _cached(dataset, cfg, i)
                if traj is None:
                    traj = train_expert(dataset, cfg, i, device=device, progress=progress)
        out.append(traj)
    log.info(
        "experts: %d trajectories of %s/%s (%s)", n, dataset, cfg.model, expert_dir(dataset, cfg)
    )
    return out


def _cached(dataset: str, cfg: ExpertConfig, i: int) -> torch.Tensor | None:
    path = expert_path(dataset, cfg, i)
    if not path.exists():
        return None
    try:
        traj, meta = load_expert(path)
    except DDBenchError as e:
        log.warning("retraining expert: %s", e)
        return None
    if meta.get("key") != cfg.key(dataset) or traj.shape[0] != cfg.epochs + 1:
        log.warning("retraining expert %s: written for another config", path)
        return None
    return traj


def _images(dataset: str, cfg: ExpertConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split in the experts' image space: normalised and, with ``cfg.zca``, whitened
    by the dataset's cached ZCA (:func:`ddbench.data.fit_zca`), the one a ZCA task uses."""
    tr = data.load_split(dataset, "train", zca=cfg.zca, zca_eps=cfg.zca_eps)
    return tr.normalize(tr.images), tr.labels


def train_expert(
    dataset: str, cfg: ExpertConfig, i: int, *, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """Train expert ``i`` with the engine, recording its flat parameters after every epoch and
    checkpointing them with the engine's state; store the trajectory in the cache."""
    spec = data.get_spec(dataset)
    path = expert_path(dataset, cfg, i)
    state_path = path.with_suffix(".train_state.pt")
    seed = cfg.seed + i
    strategy = {"none": None, "dsa": spec.dsa_strategy}.get(cfg.augment, cfg.augment)
    recipe = engine.Recipe(
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.lr,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
        augment=strategy,
    )  # fmt: skip
    build: Callable[[], nn.Module] = lambda: build_expert_model(dataset, cfg)  # noqa: E731
    flat = FlatModel(build())
    resume, rows = None, None
    if state_path.exists():
        try:
            resume = torch.load(state_path, weights_only=True)
            rows = list(resume.pop("trajectory").unbind(0))
            if len(rows) != int(resume["epoch"]) + 1 and int(resume["group"]) == 0:
                raise DDBenchError("trajectory and engine state disagree")
            log.info("resuming expert %d from epoch %d (%s)", i, resume["epoch"], state_path)
        except Exception as e:  # a damaged checkpoint must not block a fresh start
            log.warning("ignoring unreadable expert checkpoint %s (%s)", state_path, e)
            resume, rows = None, None
    if rows is None:  # the initial parameters: built exactly as engine.build_models does
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rows = [flat.flatten(dict(build().named_parameters()))]
    x, y = _images(dataset, cfg)
    config_path = path.parent / "config.json"  # lets `ddbench expert list` describe unfinished ones
    if not config_path.exists():
        text = json.dumps({"dataset": dataset, "config": asdict(cfg)}, indent=1)
        atomic_write(config_path, lambda tmp: Path(tmp).write_text(text))
    t0 = time.perf_counter()
    before = float((resume or {}).get("seconds", 0.0))

    def save_state(state: dict) -> None:
        rows.append(flat.flatten(state["models"][0]))
        state["trajectory"] = torch.stack(rows)
        state["seconds"] = before + time.perf_counter() - t0
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    result = engine.train(
        build, [seed], x, y, recipe, device=device,
        progress=f"expert {i} {dataset}/{cfg.model}" if progress else False,
        checkpoint=save_state, checkpoint_every=1, resume=resume,
        step_fn=None if cfg.is_plain else ExpertStep(cfg),
        # torch.compile cannot differentiate twice: the gradient penalty trains eagerly
        compile=False if cfg.grad_penalty else "auto",
        distributed=False,  # trained by the one process holding the cache lock (see cache.lock)
    )  # fmt: skip
    traj = torch.stack(rows).contiguous()
    if traj.shape != (cfg.epochs + 1, flat.num_params):
        raise DDBenchError(f"expert {i}: trajectory of shape {tuple(traj.shape)}")
    meta = {
        "kind": "expert",
        "schema": SCHEMA,
        "dataset": dataset,
        "key": cfg.key(dataset),
        "config": asdict(cfg),
        "index": i,
        "seed": seed,
        "param_names": flat.names,
        "train_seconds": before + time.perf_counter() - t0,
        "epoch_losses": result.losses,
        "versions": versions(),
    }
    atomic_write(
        path,
        lambda tmp: save_file({"trajectory": traj}, tmp, metadata={"ddbench": json.dumps(meta)}),
    )
    state_path.unlink(missing_ok=True)
    log.info("expert %d of %s: final loss %.4f -> %s", i, dataset, result.losses[-1], path)
    return traj

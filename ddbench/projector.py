"""Image-to-label projectors: soft labels computed online from a set's own small tensors.

HeLlO (``methods/hello.py``) stores, in place of soft labels, a projector: a frozen feature
extractor that every user can rebuild (CLIP in the paper; here a pluggable extractor), plus the
few tensors that adapt it to the task, stored as the set's extras (:mod:`ddbench.synset`):

- ``projector.lora_a`` ``[r, I k k]`` and ``projector.lora_b`` ``[O, r]``: a low-rank update of
  the extractor's last convolution (weight ``W + (B A).view_as(W)``, LoRA without a scale);
- ``projector.head_weight`` ``[K, D]`` and ``projector.head_bias`` ``[K]``: a linear head over
  the globally average-pooled features (``D`` channels).

An extractor is registered by name (:func:`register_extractor`; the set's
``meta["relabel"]["projector"]["extractor"]`` names it and its arguments); the built-in
``teacher_cache`` is the convolutional trunk of a cached teacher
(:func:`ddbench.teachers.get_teacher`) trained on a dataset of the same image shape, e.g.
Fashion-MNIST's for MNIST sets. Images reach it in that dataset's normalisation. The protocol
(``labels: teacher`` with ``teacher_from_set``) rebuilds the projector with
:func:`projector_from_set` and uses it in place of a teacher on every augmented batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench import data as ddata
from ddbench.errors import DDBenchError
from ddbench.teachers import TeacherConfig, get_teacher

__all__ = [
    "EXTRACTORS", "LabelProjector", "LoRAConv2d", "PROJECTOR_ROLE", "build_extractor",
    "last_conv", "projector_from_set", "register_extractor",
]  # fmt: skip

PROJECTOR_ROLE = "label_projector"
PREFIX = "projector."
# name -> build(args, dataset, device, progress) -> (trunk, its dataset's spec, description)
EXTRACTORS: dict[str, Callable[..., tuple[nn.Module, Any, dict[str, Any]]]] = {}


def register_extractor(name: str) -> Callable:
    """Register an extractor builder ``(args, dataset, device, progress) -> (trunk, spec,
    description)``: ``trunk`` maps images normalised as ``spec`` (a
    :class:`ddbench.data.DatasetSpec`) to feature maps ``[B, D, h, w]`` and holds at least one
    ``nn.Conv2d`` (the last one is adapted); ``description`` goes into results."""

    def add(fn: Callable) -> Callable:
        if name in EXTRACTORS:
            raise DDBenchError(f"extractor {name!r} is already registered")
        EXTRACTORS[name] = fn
        return fn

    return add


@register_extractor("teacher_cache")
def cached_trunk(args: dict[str, Any], dataset: str, device, progress: bool = True):
    """The ``features`` trunk of the cached teacher ``args["teacher"]`` (a TeacherConfig node)
    of ``args["dataset"]`` (trained there on a cache miss)."""
    source = args.get("dataset")
    if not isinstance(source, str):
        raise DDBenchError("extractor teacher_cache needs a 'dataset' to take the teacher from")
    cfg = TeacherConfig.from_config(dict(args.get("teacher") or {}))
    with torch.random.fork_rng(devices=[]):  # a teacher trained on a miss seeds the global RNG
        net, meta = get_teacher(source, cfg, device=device, progress=progress)
    trunk = getattr(net, "features", None)
    if not isinstance(trunk, nn.Module):
        raise DDBenchError(f"extractor teacher_cache: {cfg.model} has no `features` trunk")
    desc = {"name": "teacher_cache", "dataset": source, "model": cfg.model, "key": meta["key"],
            "val_accuracy": meta["val_accuracy"]}  # fmt: skip
    return trunk, ddata.get_spec(source), desc


def build_extractor(args: dict[str, Any], dataset: str, device, progress: bool = True):
    """The registered extractor ``args["name"]``: ``(trunk, spec, description)``, the trunk
    frozen in eval mode. Its images must have the shape of ``dataset``'s."""
    name = args.get("name")
    if name not in EXTRACTORS:
        raise DDBenchError(f"unknown extractor {name!r} (known: {', '.join(sorted(EXTRACTORS))})")
    trunk, spec, desc = EXTRACTORS[name](args, dataset, device, progress)
    if tuple(spec.shape) != tuple(ddata.get_spec(dataset).shape):
        raise DDBenchError(
            f"extractor {name} takes {spec.name} images {spec.shape}; {dataset} images are "
            f"{ddata.get_spec(dataset).shape}"
        )
    return trunk.eval().requires_grad_(False), spec, desc


class LoRAConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` whose weight is ``W + (B A).view_as(W)``: ``A`` ``[r, I k k]``,
    ``B`` ``[O, r]``, both trainable."""

    def __init__(self, conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        out_ch, per_out = conv.weight.shape[0], conv.weight[0].numel()
        if a.shape[1] != per_out or b.shape[0] != out_ch or a.shape[0] != b.shape[1]:
            raise DDBenchError(
                f"low-rank matrices {list(a.shape)} and {list(b.shape)} do not fit a convolution "
                f"of weight {list(conv.weight.shape)}"
            )
        self.conv = conv
        self.a = nn.Parameter(a.float().clone())
        self.b = nn.Parameter(b.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        w = c.weight + (self.b @ self.a).view_as(c.weight)
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


def last_conv(trunk: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """``(parent module, attribute name, module)`` of the last ``nn.Conv2d`` of ``trunk``."""
    found = [(n, m) for n, m in trunk.named_modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise DDBenchError("the extractor has no convolution to adapt")
    name, conv = found[-1]
    parent = trunk.get_submodule(name.rpartition(".")[0]) if "." in name else trunk
    return parent, name.rpartition(".")[2], conv


class LabelProjector(nn.Module):
    """Images in the set's space -> the extractor's normalisation -> the trunk with its last
    convolution adapted (:class:`LoRAConv2d`) -> global average pooling -> linear head."""

    def __init__(self, trunk: nn.Module, source, target, tensors: dict[str, torch.Tensor]):
        super().__init__()
        parent, attr, conv = last_conv(trunk)
        setattr(parent, attr, LoRAConv2d(conv, tensors["lora_a"], tensors["lora_b"]))
        self.trunk = trunk
        w, b = tensors["head_weight"].float(), tensors["head_bias"].float()
        self.head = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)

        def column(v):
            return torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)

        # x_set = (p - m_t) / s_t  ->  x_src = (p - m_s) / s_s = x_set * s_t / s_s + (m_t - m_s) / s_s
        self.register_buffer("scale", column(target.std) / column(source.std))
        self.register_buffer(
            "shift", (column(target.mean) - column(source.mean)) / column(source.std)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x * self.scale + self.shift).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def adapted(self) -> LoRAConv2d:
        return next(m for m in self.trunk.modules() if isinstance(m, LoRAConv2d))

    def trainable(self) -> list[nn.Parameter]:
        """The stored parameters: the low-rank matrices and the head."""
        lora = self.adapted()
        return [lora.a, lora.b, self.head.weight, self.head.bias]

    def tensors(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """The set's extras (``projector.*``) in ``dtype``."""
        lora = self.adapted()
        out = {"lora_a": lora.a, "lora_b": lora.b, "head_weight": self.head.weight,
               "head_bias": self.head.bias}  # fmt: skip
        return {PREFIX + k: v.detach().cpu().to(dtype).contiguous() for k, v in out.items()}


def projector_from_set(synset, device, progress: bool = True) -> tuple[nn.Module, dict]:
    """The label projector a set stores (its ``projector.*`` extras and the extractor its
    ``meta["relabel"]["projector"]`` names), frozen in eval mode, and its description."""
    meta = synset.meta
    desc = dict((meta.get("relabel") or {}).get("projector") or {})
    if "extractor" not in desc:
        raise DDBenchError("the set names no label projector (meta['relabel']['projector'])")
    names = ("lora_a", "lora_b", "head_weight", "head_bias")
    missing = [n for n in names if PREFIX + n not in synset.extras]
    if missing:
        raise DDBenchError(f"the set's label projector lacks the extra tensor(s) {missing}")
    dataset = meta.get("dataset")
    trunk, spec, _ = build_extractor(dict(desc["extractor"]), dataset, device, progress)
    tensors = {n: synset.extras[PREFIX + n].float() for n in names}
    proj = LabelProjector(trunk, spec, ddata.get_spec(dataset), tensors).to(device)
    nbytes = sum(v.numel() * v.element_size() for k, v in synset.extras.items()
                 if k.startswith(PREFIX))  # fmt: skip
    out = {"source": "set", "projector": {**desc, "bytes": nbytes}}
    return proj.eval().requires_grad_(False), out

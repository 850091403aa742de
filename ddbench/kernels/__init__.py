"""Accelerated kernels, swapped into the plain networks of :mod:`ddbench.models`.

The networks are written with stock modules. :func:`apply` replaces, in place, those for which
this package holds a faster equivalent on CPU:

- ``nn.AvgPool2d(2, 2)`` -> :class:`~ddbench.kernels.pool.AvgPool2x2` (bf16 pooling, bit for
  bit the stock results);
- ``nn.Conv2d`` on one input channel -> :class:`~ddbench.kernels.gray_conv.GrayConv2d` (the
  weight gradient of a grayscale stem under bf16 autocast, as one GEMM);
- ``nn.GroupNorm(C, C)`` directly followed by ``nn.ReLU`` in an ``nn.Sequential`` ->
  :class:`~ddbench.kernels.norm_relu.InstanceNormReLU` and ``nn.Identity`` (instance norm +
  ReLU with a hand-written double backward, for the functional students of trajectory
  matching).

Each kernel module is a subclass of the stock module it replaces, with the same parameters
(``nn.Identity``, like ``nn.ReLU``, has none): a network's parameter order and state_dict keys
are the same either way, so flat parameter vectors, checkpoints and cached experts and teachers
load in both modes. Each decides per call: it takes its kernels only for inputs they
serve (sizes, dtypes, devices, no ``torch.func`` transform; see each module), and only once
they were compiled and checked against the stock ops in this process; otherwise it computes
what the stock module computes.

``ddbench.models.create_model`` calls :func:`apply` on every network it builds, with the mode
the caller passes or else the process's mode (:func:`set_mode`; ``auto`` unless set). The CLI
sets that mode once per job from the top-level config key ``kernels: auto | off``, so every
model of a run (the method's, the evaluation's, experts', teachers') follows one setting.
"""

from __future__ import annotations

from torch import nn

from ddbench.errors import DDBenchError
from ddbench.kernels import gray_conv, norm_relu, pool

__all__ = ["MODES", "apply", "get_mode", "set_mode"]

MODES = ("auto", "off")
_MODE = ["auto"]


def _check(mode: str) -> str:
    if mode not in MODES:
        raise DDBenchError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def set_mode(mode: str) -> str:
    """Set the mode :func:`apply` uses when given none (``auto`` | ``off``); returns the old."""
    old = _MODE[0]
    _MODE[0] = _check(mode)
    return old


def get_mode() -> str:
    """The mode :func:`apply` uses when given none."""
    return _MODE[0]


def apply(model: nn.Module, mode: str | None = None) -> nn.Module:
    """Swap ``model``'s eligible stock modules for this package's (``auto``), or leave them
    (``off``); ``None``: the process's mode (:func:`get_mode`). Returns ``model``.

    The swap changes each module's class in place (as ``torch.nn.utils.parametrize`` does), so
    no parameter is created or re-initialised and the random stream is untouched; applying it
    twice changes nothing more.
    """
    if _check(get_mode() if mode is None else mode) == "off":
        return model
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for i, (_, child) in enumerate(children):
            if pool.eligible_module(child):
                child.__class__ = pool.AvgPool2x2
            elif gray_conv.eligible_module(child):
                child.__class__ = gray_conv.GrayConv2d
            elif (
                isinstance(parent, nn.Sequential)
                and i + 1 < len(children)
                and norm_relu.eligible_pair(child, children[i + 1][1])
            ):
                child.__class__ = norm_relu.InstanceNormReLU
                setattr(parent, children[i + 1][0], nn.Identity())
    return model

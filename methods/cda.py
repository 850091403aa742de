"""CDA: curriculum data augmentation (Yin & Shen, "Dataset Distillation in Large Data Era", 2023).

SRe2L (``methods/sre2l.py``) whose random-resized-crop lower scale bound follows a curriculum
during recovery: from whole images (global views, scale 1) to small crops (local views, the
final ``crop_scale[0]``, 0.08) over the first ``milestone`` fraction of the iterations, then
fixed. The official code (VILA-Lab/SRe2L, ``CDA/recover_cda_*.py``, ``--easy2hard-mode cosine
--milestone 1`` in its README commands) anneals it with a cosine; ``linear`` and ``step`` are its
other modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ddbench.errors import DDBenchError
from ddbench.methods.sre2l import SRe2L

__all__ = ["CDA", "cda_min_scale"]

MODES = ("cosine", "linear", "step")


def cda_min_scale(
    it: int, iterations: int, low: float = 0.08, high: float = 1.0, milestone: float = 1.0,
    mode: str = "cosine",
) -> float:  # fmt: skip
    """The crop's lower scale bound at (0-based) iteration ``it``: from ``high`` down to ``low``
    over the first ``milestone * iterations`` iterations, then ``low``. ``cosine``:
    ``low + (high - low) (1 + cos(pi t)) / 2`` with ``t = it / (milestone * iterations)``;
    ``linear``: ``low + (high - low) (1 - t)``; ``step``: ``high`` until the milestone.
    (Written as ``high - ...`` so that the first iteration gets ``high`` exactly.)"""
    if mode not in MODES:
        raise DDBenchError(f"curriculum must be one of {MODES}, got {mode!r}")
    end = milestone * iterations
    if it >= end:
        return low
    t = it / end
    if mode == "step":
        return high
    if mode == "linear":
        return high - (high - low) * t
    return high - (high - low) * (1 - math.cos(math.pi * t)) / 2


class CDA(SRe2L):
    """SRe2L with CDA's curriculum on the crop scale (see the module docstring).

    Settings beyond SRe2L's: ``curriculum`` (``cosine``, ``linear`` or ``step``) and
    ``milestone`` (the fraction of the iterations over which the bound moves).
    """

    @dataclass
    class Settings(SRe2L.Settings):
        crop: Any = True  # the curriculum is on the crop: CDA crops at every image size
        curriculum: str = "cosine"  # cosine | linear | step (the bound stays until the milestone)
        milestone: float = 1.0  # fraction of the iterations over which the lower bound moves

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.curriculum not in MODES:
                raise DDBenchError(f"curriculum must be one of {MODES}, got {self.curriculum!r}")
            if not 0 <= self.milestone <= 1:
                raise DDBenchError(f"milestone must be in [0, 1], got {self.milestone}")

    name = "cda"
    recipes = None  # the authors publish CDA's settings for Tiny-ImageNet and ImageNet only

    def crop_scale_at(self, it: int) -> tuple[float, float]:
        low, high = self.crop_scale
        return cda_min_scale(it, self.iterations, low, high, self.milestone, self.curriculum), high

"""Differentiable Siamese Augmentation (DSA) and ZCA whitening.

DSA follows ``ParamDiffAug``/``DiffAugment`` of the DatasetCondensation code (Zhao & Bilen) in
mode 'S': each call draws ONE op from the strategy list, then that op's parameters per sample.
The op semantics (constants, parameter ranges, padding, clamping, affine matrices) are DC's.

Differences from DC, all in how randomness is handled, never in what an op does:

* Draws come from a CPU ``torch.Generator`` (or torch's global CPU generator when none is given),
  never the clock or the device RNG, so a seed gives the same augmentation on any device.
* Siamese use: DC re-seeds the global RNG with the same seed for the real and the synthetic call
  and copies sample 0's params to the whole batch ("batchmode"). Here :meth:`DSA.draw` with
  ``shared=True`` draws one op and one set of params (independent of the batch size) into a
  :class:`DSADraw` that can be applied to any number of batches; :meth:`DSA.pair` does exactly that
  for a (real, synthetic) pair.
* ``groups=K`` treats ``x`` as K equal groups (one per model trained in parallel); each group draws
  its own op, and every distinct op runs once on all samples that drew it.

Augmentations other than DSA are registered by name prefix (:func:`register_augment`,
:data:`AUGMENTATIONS`): ``dc:<ops>`` (DC's own, :class:`DCAugment`) and ``tiles:<f>[:flip]``
(:class:`TileCrop`, crops that keep the sub-images of a stitched image whole, with
:func:`stitch`); :func:`make_augment` looks the prefix up and falls back to DSA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.errors import DDBenchError

__all__ = [
    "AUGMENTATIONS",
    "DCAugment",
    "DEFAULT_STRATEGY",
    "OPS",
    "DSA",
    "DSADraw",
    "TileCrop",
    "ZCA",
    "default_strategy",
    "make_augment",
    "parse_strategy",
    "register_augment",
    "stitch",
]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

# ParamDiffAug constants.
PROB_FLIP = 0.5
RATIO_SCALE = 1.2
RATIO_ROTATE = 15.0  # degrees
RATIO_CROP_PAD = 0.125
RATIO_CUTOUT = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5

_NO_FLIP_DATASETS = frozenset({"mnist", "svhn", "digits"})

Params = dict[str, Tensor]


def default_strategy(dataset_name: str) -> str:
    """DC's default DSA strategy; digit datasets (MNIST, SVHN, digits) drop 'flip'."""
    name = dataset_name.strip().lower().replace("-", "_")
    if name in _NO_FLIP_DATASETS:
        return "color_crop_cutout_scale_rotate"
    return DEFAULT_STRATEGY


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split ``'op_op_...'`` into op names; ``''``/``'none'`` give no ops. Duplicates are kept
    (as in DC they weight the draw)."""
    if not isinstance(strategy, str):
        raise DDBenchError(f"DSA strategy must be a string, got {type(strategy).__name__}")
    s = strategy.strip()
    if s == "" or s.lower() == "none":
        return ()
    ops = tuple(s.split("_"))
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise DDBenchError(
            f"unknown DSA op(s) {bad} in strategy {strategy!r}; valid ops: {', '.join(OPS)} "
            "(joined by '_', e.g. 'color_crop_cutout_flip_scale_rotate'), or 'none'"
        )
    return ops


# ----------------------------------------------------------------------------------------------
# Parameter sampling (CPU generator) and op application (on x.device)
# ----------------------------------------------------------------------------------------------


def _crop_shift(size: int) -> int:
    return int(size * RATIO_CROP_PAD + 0.5)


def _cutout_size(size: int) -> int:
    return int(size * RATIO_CUTOUT + 0.5)


def sample_params(
    op: str, n: int, height: int, width: int, generator: torch.Generator | None = None
) -> Params:
    """Draw ``n`` per-sample parameter sets for ``op`` (CPU tensors of length ``n``).

    color: ``brightness`` (added), ``saturation`` and ``contrast`` (factors);
    crop: ``tx``, ``ty`` integer shifts along H and W (``out[i, j] = x[i + tx, j + ty]``, zeros
    outside); cutout: ``ox``, ``oy`` centre offsets along H and W (DC's convention); flip: ``flip``
    (bool); scale: ``sx``, ``sy``; rotate: ``angle`` (radians).
    """
    g = generator
    if op == "color":
        u = torch.rand(3, n, generator=g)
        return {
            "brightness": (u[0] - 0.5) * BRIGHTNESS,
            "saturation": u[1] * SATURATION,
            "contrast": u[2] + CONTRAST,
        }
    if op == "crop":
        sh, sw = _crop_shift(height), _crop_shift(width)
        tx = torch.randint(-sh, sh + 1, (n,), generator=g)
        ty = torch.randint(-sw, sw + 1, (n,), generator=g)
        return {"tx": tx, "ty": ty}
    if op == "cutout":
        ch, cw = _cutout_size(height), _cutout_size(width)
        ox = torch.randint(0, height + (1 - ch % 2), (n,), generator=g)
        oy = torch.randint(0, width + (1 - cw % 2), (n,), generator=g)
        return {"ox": ox, "oy": oy}
    if op == "flip":
        return {"flip": torch.rand(n, generator=g) < PROB_FLIP}
    if op == "scale":
        u = torch.rand(2, n, generator=g)
        lo = 1.0 / RATIO_SCALE
        s = u * (RATIO_SCALE - lo) + lo
        return {"sx": s[0], "sy": s[1]}
    if op == "rotate":
        u = torch.rand(n, generator=g)
        return {"angle": (u - 0.5) * 2 * RATIO_ROTATE / 180 * math.pi}
    raise DDBenchError(f"unknown DSA op {op!r}; valid ops: {', '.join(OPS)}")


def identity_params(op: str, n: int = 1) -> Params:
    """Parameters for which ``op`` leaves the images unchanged."""
    z, o = torch.zeros(n), torch.ones(n)
    zi = torch.zeros(n, dtype=torch.long)
    table: dict[str, Params] = {
        "color": {"brightness": z, "saturation": o, "contrast": o},
        "crop": {"tx": zi, "ty": zi},
        "flip": {"flip": torch.zeros(n, dtype=torch.bool)},
        "scale": {"sx": o, "sy": o},
        "rotate": {"angle": z},
    }
    if op not in table:
        raise DDBenchError(f"DSA op {op!r} has no identity parameters")
    return table[op]


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DDBenchError(f"DSA expects images of shape [B, C, H, W], got {shape}")
    if not x.is_floating_point():
        raise DDBenchError(f"DSA expects floating-point images, got dtype {x.dtype}")


def _prep(params: Mapping[str, Tensor], n: int, device: torch.device) -> Params:
    """Move params to ``device`` and broadcast length-1 (shared) params to ``n`` samples."""
    out = {}
    for k, v in params.items():
        v = v.to(device, non_blocking=True)
        if v.shape[0] == 1 and n != 1:
            v = v.expand(n)
        elif v.shape[0] != n:
            raise DDBenchError(f"DSA param {k!r} has {v.shape[0]} entries for a batch of {n}")
        out[k] = v
    return out


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def apply_op(x: Tensor, op: str, params: Mapping[str, Tensor]) -> Tensor:
    """Apply ``op`` with explicit per-sample ``params`` (length B, or 1 = shared) to ``x``."""
    _check_images(x)
    n, _, h, w = x.shape
    p = _prep(params, n, x.device)
    if op == "color":
        dt = x.dtype
        x = x + p["brightness"].to(dt).view(n, 1, 1, 1)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * p["saturation"].to(dt).view(n, 1, 1, 1) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * p["contrast"].to(dt).view(n, 1, 1, 1) + m
    if op == "crop":
        # Zero-pad by the max shift, then one gather of the shifted window (flat index).
        sh, sw = _crop_shift(h), _crop_shift(w)
        c = x.shape[1]
        xp = F.pad(x, [sw, sw, sh, sh]).reshape(n, c, -1)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + (p["tx"] + sh).view(n, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) + (p["ty"] + sw).view(n, 1, 1)
        idx = (rows * (w + 2 * sw) + cols).view(n, 1, h * w).expand(n, c, h * w)
        return xp.gather(2, idx).view(n, c, h, w)
    if op == "cutout":
        ch, cw = _cutout_size(h), _cutout_size(w)
        # DC zeroes clamp(offset - c//2 + [0, c), 0, size-1): an interval clipped to the image.
        lo_r = (p["ox"] - ch // 2).view(n, 1)
        lo_c = (p["oy"] - cw // 2).view(n, 1)
        r = torch.arange(h, device=x.device).view(1, h)
        c = torch.arange(w, device=x.device).view(1, w)
        in_r = (r >= lo_r) & (r < lo_r + ch)
        in_c = (c >= lo_c) & (c < lo_c + cw)
        keep = ~(in_r.view(n, h, 1) & in_c.view(n, 1, w))
        return x * keep.view(n, 1, h, w).to(x.dtype)
    if op == "flip":
        return torch.where(p["flip"].view(n, 1, 1, 1), x.flip(3), x)
    if op == "scale":
        sx, sy = p["sx"].to(x.dtype), p["sy"].to(x.dtype)
        z = torch.zeros_like(sx)
        theta = torch.stack([sx, z, z, z, sy, z], dim=1).view(n, 2, 3)
        return _affine(x, theta)
    if op == "rotate":
        a = p["angle"].to(x.dtype)
        cos, sin, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        # DC: [[cos, sin(-a), 0], [sin(a), cos, 0]]
        theta = torch.stack([cos, -sin, z, sin, cos, z], dim=1).view(n, 2, 3)
        return _affine(x, theta)
    raise DDBenchError(f"unknown DSA op {op!r}; valid ops: {', '.join(OPS)}")


# ----------------------------------------------------------------------------------------------
# Draws and the DSA object
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DSADraw:
    """One DSA draw: the op of each group and the parameters of every op that was drawn.

    ``params[op]`` holds the params of all groups that drew ``op``, concatenated in group order:
    ``group_size`` rows per group, or one row per group when ``shared``. A shared draw does not
    depend on the batch size and can be applied to any batch (that is how siamese pairs share
    one draw); call it like a function: ``draw(x)``.
    """

    ops: tuple[str, ...]
    params: dict[str, Params]
    shared: bool
    group_size: int | None  # None when shared

    @property
    def op(self) -> str:
        """The op of the first (or only) group."""
        return self.ops[0]

    def group_params(self, k: int) -> Params:
        """Parameters of group ``k`` (length ``group_size``, or 1 when shared)."""
        op = self.ops[k]
        j = sum(1 for o in self.ops[:k] if o == op)
        m = 1 if self.shared else self.group_size
        return {name: v[j * m : (j + 1) * m] for name, v in self.params[op].items()}

    def __call__(self, x: Tensor) -> Tensor:
        """Apply this draw to ``x`` of shape [K * B, C, H, W] (K = number of groups)."""
        _check_images(x)
        k = len(self.ops)
        if k == 0:
            return x
        n = x.shape[0]
        if n % k:
            raise DDBenchError(f"batch of {n} cannot be split into {k} equal DSA groups")
        b = n // k
        if not self.shared and b != self.group_size:
            raise DDBenchError(
                f"this DSA draw was made for groups of {self.group_size} samples, got {b}; "
                "use a shared draw to apply one draw to batches of different sizes"
            )
        distinct = list(dict.fromkeys(self.ops))
        if len(distinct) == 1:
            return apply_op(x, distinct[0], self._expand(self.params[distinct[0]], b))
        pieces, order = [], []
        ar = torch.arange(b, device=x.device)
        for op in distinct:
            groups = torch.tensor([i for i, o in enumerate(self.ops) if o == op], device=x.device)
            idx = (groups.view(-1, 1) * b + ar.view(1, -1)).reshape(-1)
            pieces.append(apply_op(x[idx], op, self._expand(self.params[op], b)))
            order.append(idx)
        inv = torch.empty(n, dtype=torch.long, device=x.device)
        inv[torch.cat(order)] = torch.arange(n, device=x.device)
        return torch.cat(pieces)[inv]

    def _expand(self, params: Params, b: int) -> Params:
        if not self.shared or b == 1:
            return params
        return {name: v.repeat_interleave(b) for name, v in params.items()}


class DSA:
    """Differentiable Siamese Augmentation, mode 'S' (one op per batch, per-sample params).

    >>> dsa = DSA("color_crop_cutout_flip_scale_rotate")
    >>> y = dsa(x, generator)                   # one op for the batch, params per sample
    >>> y = dsa(x, generator, groups=K)         # x = K groups of B; one op per group
    >>> a_real, a_syn = dsa.pair(x_real, x_syn, seed)   # siamese: same op and params for both

    ``last_draw`` holds the :class:`DSADraw` of the latest call (for inspection and tests).
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY):
        self.strategy = strategy
        self.ops: tuple[str, ...] = parse_strategy(strategy)
        self.last_draw: DSADraw | None = None

    def __repr__(self) -> str:
        return f"DSA({self.strategy!r})"

    @property
    def last_params(self) -> Params:
        """Params of the first group of the latest draw."""
        if self.last_draw is None:
            raise DDBenchError("DSA has not been called yet")
        return self.last_draw.group_params(0)

    def draw(
        self,
        n: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        *,
        shared: bool = False,
        op: str | None = None,
        groups: int = 1,
    ) -> DSADraw:
        """Draw ops and params for ``groups`` groups of ``n`` samples of size ``height x width``.

        Order of draws from ``generator``: one op index per group (all at once), then, for each
        distinct op in order of first appearance, the params of all samples that drew it.
        ``shared=True``: one param set per group (``n`` is then irrelevant).
        """
        if generator is not None and generator.device.type != "cpu":
            raise DDBenchError(
                "DSA draws need a CPU torch.Generator (params are moved to x.device)"
            )
        if groups < 1:
            raise DDBenchError(f"groups must be >= 1, got {groups}")
        if op is not None:
            if op not in OPS:
                raise DDBenchError(f"unknown DSA op {op!r}; valid ops: {', '.join(OPS)}")
            ops = (op,) * groups
        elif not self.ops:
            ops = ()
        elif len(self.ops) == 1:
            ops = self.ops * groups
        else:
            idx = torch.randint(0, len(self.ops), (groups,), generator=generator).tolist()
            ops = tuple(self.ops[i] for i in idx)
        per_group = 1 if shared else n
        params = {
            o: sample_params(o, per_group * ops.count(o), height, width, generator)
            for o in dict.fromkeys(ops)
        }
        return DSADraw(ops, params, shared, None if shared else n)

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        shared: bool = False,
        op: str | None = None,
        groups: int = 1,
    ) -> Tensor:
        """Augment ``x`` [B, C, H, W] (any value range): mode 'S' with params from ``generator``.

        ``op`` forces the op instead of drawing it. ``shared=True`` gives every sample (of a group)
        the same params (DC's batchmode). ``groups=K`` splits the batch into K equal groups, each
        with its own op and params. Differentiable w.r.t. ``x``.
        """
        _check_images(x)
        n = x.shape[0]
        if groups < 1 or n % groups:
            raise DDBenchError(f"batch of {n} cannot be split into {groups} equal DSA groups")
        d = self.draw(
            n // groups, x.shape[2], x.shape[3], generator, shared=shared, op=op, groups=groups
        )
        self.last_draw = d
        return d(x)

    def siamese(self, seed: int, height: int, width: int, *, op: str | None = None) -> DSADraw:
        """One shared draw from a CPU generator seeded with ``seed``, applicable to any batch."""
        g = torch.Generator().manual_seed(int(seed))
        d = self.draw(1, height, width, g, shared=True, op=op)
        self.last_draw = d
        return d

    def pair(
        self, x_real: Tensor, x_syn: Tensor, seed: int, *, op: str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Siamese augmentation: apply ONE draw (same op, same params for every sample of both
        batches, independent of the batch sizes) from a generator seeded with ``seed``."""
        _check_images(x_real)
        _check_images(x_syn)
        if x_real.shape[1:] != x_syn.shape[1:]:
            raise DDBenchError(
                f"siamese DSA needs images of one shape, got {tuple(x_real.shape[1:])} "
                f"and {tuple(x_syn.shape[1:])}"
            )
        d = self.siamese(seed, x_real.shape[2], x_real.shape[3], op=op)
        return d(x_real), d(x_syn)


# ----------------------------------------------------------------------------------------------
# ZCA whitening
# ----------------------------------------------------------------------------------------------


class ZCA:
    """ZCA whitening fitted on the train split (as in KIP/MTT:
    ``kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)`` on the normalised images).

    Whitening is ``(x.flatten(1) - mean) @ transform``; the inverse is
    ``x.flatten(1) @ transform_inv + mean``. Both are differentiable.
    """

    def __init__(self, mean: Tensor, transform: Tensor, transform_inv: Tensor, eps: float = 0.1):
        d = mean.numel()
        if transform.shape != (d, d) or transform_inv.shape != (d, d):
            raise DDBenchError(
                f"ZCA matrices must be [{d}, {d}], got {tuple(transform.shape)} and "
                f"{tuple(transform_inv.shape)}"
            )
        self.mean = mean.reshape(1, d)
        self.transform = transform
        self.transform_inv = transform_inv
        self.eps = float(eps)

    @classmethod
    def fit(cls, x: Tensor, eps: float = 0.1) -> ZCA:
        """Fit on ``x`` [N, C, H, W] (unbiased covariance; eigenvalues regularised by ``eps``)."""
        from kornia.enhance import zca_mean

        if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise DDBenchError("ZCA.fit expects a float tensor [N, ...] with N >= 2")
        if x.shape[0] < 2:
            raise DDBenchError(f"ZCA.fit needs at least 2 samples, got {x.shape[0]}")
        t, mean, t_inv = zca_mean(x, dim=0, unbiased=True, eps=float(eps), return_inverse=True)
        assert t_inv is not None
        return cls(mean.detach(), t.detach(), t_inv.detach(), eps)

    @property
    def num_features(self) -> int:
        return self.mean.shape[1]

    def _flat(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2 or x[0].numel() != self.num_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DDBenchError(
                f"ZCA was fitted on {self.num_features} features per sample, got input {shape}"
            )
        return x.reshape(x.shape[0], -1)

    def _mats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = {"device": x.device, "dtype": x.dtype}
        return self.mean.to(**kw), self.transform.to(**kw), self.transform_inv.to(**kw)

    def to(self, device: torch.device | str) -> ZCA:
        """Move the fitted tensors to ``device`` (avoids a copy per call)."""
        return ZCA(
            self.mean.to(device), self.transform.to(device), self.transform_inv.to(device), self.eps
        )

    def __call__(self, x: Tensor) -> Tensor:
        """Whiten ``x`` [N, ...]; same shape out."""
        mean, t, _ = self._mats(x)
        return ((self._flat(x) - mean) @ t).reshape(x.shape)

    def inverse(self, x: Tensor) -> Tensor:
        """Undo :meth:`__call__`."""
        mean, _, t_inv = self._mats(x)
        return (self._flat(x) @ t_inv + mean).reshape(x.shape)

    def state_dict(self) -> dict[str, Tensor]:
        """Contiguous CPU tensors (safetensors-ready): mean [1, D], transform, transform_inv [D, D],
        eps (0-d)."""
        return {
            "mean": self.mean.detach().cpu().contiguous(),
            "transform": self.transform.detach().cpu().contiguous(),
            "transform_inv": self.transform_inv.detach().cpu().contiguous(),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Tensor]) -> ZCA:
        missing = [k for k in ("mean", "transform", "transform_inv") if k not in d]
        if missing:
            raise DDBenchError(f"ZCA state dict lacks {missing}")
        eps = float(d["eps"]) if "eps" in d else 0.1
        return cls(d["mean"], d["transform"], d["transform_inv"], eps)


# ----------------------------------------------------------------------------- DC's own augmentation

DC_AUG_OPS = ("crop", "scale", "rotate", "noise")


class DCAugment:
    """The augmentation of DC's own evaluation (``augment`` and ``get_daparam`` of the
    DatasetCondensation code, utils.py 365-445 at 53f63a6), not DSA: for each image, one op drawn
    uniformly from the strategy (``crop_scale_rotate`` for MNIST, ``crop_noise`` for BatchNorm
    models), with DC's constants (``crop`` 4, ``scale`` 0.2, ``rotate`` 45, ``noise`` 0.001):

    * ``crop``: pad by ``crop`` pixels with each channel's batch mean, take the window at a random
      offset in ``[0, 2 crop)`` on each axis (a shift of ``-crop .. crop - 1``);
    * ``scale``: resize (nearest) to ``int(u H) x int(v H)`` with ``u, v ~ U(1 - s, 1 + s)``, centre
      it on a zero canvas and take the centre ``H x W``;
    * ``rotate``: rotate by an integer angle in ``[-rotate, rotate)`` degrees (cubic spline,
      ``scipy.ndimage.rotate`` with the canvas enlarged, filled with the mean of the channel
      means), take the centre;
    * ``noise``: add ``noise`` x N(0, 1).

    The images are handled one by one on the CPU (rotation goes through scipy), as DC's code does;
    draws come from the given ``torch.Generator``, never the global RNG or the clock.
    """

    def __init__(
        self, strategy: str, crop: int = 4, scale: float = 0.2, rotate: int = 45,
        noise: float = 0.001,
    ):  # fmt: skip
        ops = tuple(op for op in strategy.split("_") if op)
        unknown = sorted(set(ops) - set(DC_AUG_OPS))
        if not ops or unknown:
            raise DDBenchError(
                f"DC augmentation strategy {strategy!r}: unknown op(s) {unknown}; ops are "
                f"{'_'.join(DC_AUG_OPS)}"
            )
        self.strategy, self.ops = strategy, ops
        self.crop, self.scale, self.rotate, self.noise = int(crop), float(scale), int(rotate), noise

    def __repr__(self) -> str:
        return f"DCAugment({self.strategy!r})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(x)
        device, out = x.device, x.detach().float().cpu().clone()
        n, c, h, w = out.shape
        means = out.mean(dim=(0, 2, 3))  # DC: per channel, over the whole batch, before any op
        for i in range(n):
            op = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]
            out[i] = getattr(self, f"_{op}")(out[i], means, h, w, generator)
        return out.to(device, x.dtype)

    def _crop(self, img: Tensor, means: Tensor, h: int, w: int, g) -> Tensor:
        k = self.crop
        canvas = means.view(-1, 1, 1).expand(-1, h + 2 * k, w + 2 * k).clone()
        canvas[:, k : k + h, k : k + w] = img
        r, col = (int(v) for v in torch.randint(2 * k, (2,), generator=g))
        return canvas[:, r : r + h, col : col + w]

    def _scale(self, img: Tensor, means: Tensor, h: int, w: int, g) -> Tensor:
        u = 1 - self.scale + 2 * self.scale * torch.rand(2, generator=g, dtype=torch.float64)
        sh, sw = int(float(u[0]) * h), int(float(u[1]) * h)  # DC scales both sides by H
        small = F.interpolate(img[None], size=[sh, sw])[0]  # nearest, as F.interpolate's default
        m = max(sh, sw, h, w)
        canvas = img.new_zeros(img.shape[0], m, m)
        r, col = (m - sh) // 2, (m - sw) // 2
        canvas[:, r : r + sh, col : col + sw] = small
        r, col = (m - h) // 2, (m - w) // 2
        return canvas[:, r : r + h, col : col + w]

    def _rotate(self, img: Tensor, means: Tensor, h: int, w: int, g) -> Tensor:
        from scipy.ndimage import rotate  # scikit-learn's dependency; only this op needs it

        angle = int(torch.randint(-self.rotate, self.rotate, (1,), generator=g))
        big = rotate(img.numpy(), angle=angle, axes=(-2, -1), cval=float(means.mean()))
        r, col = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
        return torch.from_numpy(big[:, r : r + h, col : col + w].copy()).float()

    def _noise(self, img: Tensor, means: Tensor, h: int, w: int, g) -> Tensor:
        return img + self.noise * torch.randn(img.shape, generator=g)


# ----------------------------------------------------------------------------- stitched images


def stitch(images: Tensor, factor: int) -> Tensor:
    """Images from groups of ``factor**2`` consecutive ``images`` ``[G f^2, C, H, W]``: each
    down-scaled to ``H/f x W/f`` (bilinear with antialiasing: every output pixel a convex
    combination of input pixels, so values stay in their range) and placed row by row (tile
    ``(r, c)`` of image ``g`` is ``images[g f^2 + r f + c]``): ``[G, C, H, W]``."""
    n, c, h, w = images.shape
    if factor < 1 or n % (factor * factor) or h % factor or w % factor:
        raise DDBenchError(
            f"stitching {n} images of {h}x{w} in {factor}x{factor} grids: the count must be a "
            f"multiple of {factor * factor} and the sides multiples of {factor}"
        )
    th, tw = h // factor, w // factor
    small = images
    if factor > 1:
        small = F.interpolate(images, size=(th, tw), mode="bilinear", antialias=True)
    grid = small.reshape(n // factor**2, factor, factor, c, th, tw)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(n // factor**2, c, h, w)


class TileCrop:
    """A random crop that keeps the sub-images of stitched images (:func:`stitch`) whole:
    PCA's constrained augmentation. Per image, a rectangle of whole tiles of the ``factor x
    factor`` grid (first row and column, then how many rows and columns, uniformly; the whole
    image included) is cut out and resized back to the image size (bilinear), and mirrored with
    probability 1/2 where ``flip`` (a mirror keeps every tile whole). A tile is either wholly in
    the crop or wholly out of it. Called as ``augment(x, generator)`` by the engine; the draws
    come from the generator."""

    def __init__(self, factor: int, flip: bool = False):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise DDBenchError(f"tile crop: factor must be a whole number >= 1, got {factor!r}")
        self.factor, self.flip = factor, bool(flip)

    @classmethod
    def from_spec(cls, spec: str) -> TileCrop:
        """``"<f>"`` or ``"<f>:flip"`` (what follows ``tiles:`` in a protocol's augment)."""
        factor, _, rest = spec.partition(":")
        if not factor.isdigit() or rest not in ("", "flip"):
            raise DDBenchError(f"tile crop: expected tiles:<factor>[:flip], got tiles:{spec}")
        return cls(int(factor), rest == "flip")

    def __repr__(self) -> str:
        return f"TileCrop({self.factor}, flip={self.flip})"

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` boxes in tile units, int64 ``[n, 5]``: first row, first column, rows,
        columns, mirrored."""
        f = self.factor
        out = []
        for _ in range(n):
            r0, c0 = (int(v) for v in torch.randint(f, (2,), generator=generator))
            rows = 1 + int(torch.randint(f - r0, (1,), generator=generator))
            cols = 1 + int(torch.randint(f - c0, (1,), generator=generator))
            mirrored = self.flip and bool(torch.rand(1, generator=generator) < 0.5)
            out.append([r0, c0, rows, cols, int(mirrored)])
        return torch.tensor(out, dtype=torch.int64).view(n, 5)

    def apply(self, x: Tensor, boxes: Tensor) -> Tensor:
        """The tile boxes (:meth:`draw`) of ``x`` resized back to its size."""
        _check_images(x)
        _, _, h, w = x.shape
        if h % self.factor or w % self.factor:
            raise DDBenchError(f"tile crop: {h}x{w} images do not split into {self.factor}^2 tiles")
        th, tw = h // self.factor, w // self.factor
        out = []
        for img, (r0, c0, rows, cols, mirrored) in zip(x, boxes.tolist()):
            crop = img[None, :, r0 * th : (r0 + rows) * th, c0 * tw : (c0 + cols) * tw]
            if (rows, cols) != (self.factor, self.factor):
                crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            out.append(crop.flip(-1) if mirrored else crop)
        return torch.cat(out)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, self.draw(len(x), generator))


# ----------------------------------------------------------------------------- the registry

# name prefix -> factory of the augmentation from what follows "<prefix>:"
AUGMENTATIONS: dict[str, Callable[[str], Any]] = {}


def register_augment(prefix: str, factory: Callable[[str], Any]) -> None:
    """Make ``<prefix>:<spec>`` name the augmentation ``factory(spec)`` in a protocol's
    ``augment`` (called as ``augment(x, generator)`` by the engine)."""
    if not prefix or ":" in prefix or prefix in AUGMENTATIONS:
        raise DDBenchError(f"augmentation prefix {prefix!r} is empty, has a colon or is taken")
    AUGMENTATIONS[prefix] = factory


register_augment("dc", DCAugment)
register_augment("tiles", TileCrop.from_spec)


def make_augment(strategy: str | None) -> Any:
    """The batch augmentation a protocol names: ``<prefix>:<spec>`` for a registered one
    (:data:`AUGMENTATIONS`: ``dc:<ops>``, ``tiles:<f>[:flip]``), else a DSA strategy; None for
    none."""
    if not strategy or strategy == "none":
        return None
    prefix, sep, spec = strategy.partition(":")
    if sep and prefix in AUGMENTATIONS:
        return AUGMENTATIONS[prefix](spec)
    return DSA(strategy)

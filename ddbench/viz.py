"""Image grids of synthetic sets (``ddbench show``, wandb, the leaderboard's thumbnails)."""

from __future__ import annotations

from pathlib import Path

import torch

from ddbench.synset import SyntheticSet


def to_pixels(synset: SyntheticSet) -> torch.Tensor:
    """The images the set yields (one per label: a set with a view, such as INFER's real images
    and compensators, shows the composed images) in [0,1] pixel space (ZCA sets are min-max
    scaled per image)."""
    x = synset.view_images().float()
    space = synset.meta.get("space", {})
    if space.get("zca"):
        lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
        hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
        return (x - lo) / (hi - lo).clamp_min(1e-8)
    if space.get("normalized", True):
        mean = torch.tensor(space.get("mean", [0.0])).view(1, -1, 1, 1)
        std = torch.tensor(space.get("std", [1.0])).view(1, -1, 1, 1)
        x = x * std + mean
    return x.clamp(0, 1)


def grid(synset: SyntheticSet, max_per_class: int = 10, scale: int = 2) -> torch.Tensor:
    """The ``[C,H,W]`` image of :func:`save_grid`: one row per class (up to ``max_per_class``
    images each, blank cells where a class has fewer), white lines between the cells; a
    label-free set (representation targets) has no classes: its first images in order,
    ``max_per_class`` a row."""
    from torchvision.utils import make_grid

    x = to_pixels(synset)
    if synset.representation:  # a label-free set: its images in order, as many rows as classes
        rows = [x[: max_per_class * int(synset.meta.get("num_classes") or 10)]]
    else:
        y = synset.hard_labels
        classes = int(synset.meta.get("num_classes") or int(y.max()) + 1)
        rows = []
        for c in range(classes):
            xc = x[y == c][:max_per_class]
            pad = torch.zeros(max_per_class - len(xc), *x.shape[1:])
            rows.append(torch.cat([xc, pad]))
    out = make_grid(torch.cat(rows), nrow=max_per_class, padding=1, pad_value=1.0)
    if scale > 1:
        out = torch.nn.functional.interpolate(out[None], scale_factor=scale, mode="nearest")[0]
    return out


def save_grid(
    synset: SyntheticSet, path: str | Path, max_per_class: int = 10, scale: int = 2
) -> Path:
    """A PNG with one row per class (up to ``max_per_class`` images each)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid(synset, max_per_class, scale), path)
    return path


def save_thumbnail(synset: SyntheticSet, path: str | Path, max_per_class: int = 10) -> Path:
    """The leaderboard's thumbnail of a set: :func:`grid` at its own size (the page scales it),
    at most ``max_per_class`` images of each class, written atomically as a PNG."""
    from PIL import Image

    from ddbench.synset import atomic_write

    per_class = max(1, min(max_per_class, int(synset.meta.get("ipc") or max_per_class)))
    g = grid(synset, per_class, scale=1)
    pixels = (g.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    path = Path(path)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path

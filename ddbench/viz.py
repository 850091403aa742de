"""Image grids of synthetic sets (``ddbench show``, wandb)."""

from __future__ import annotations

from pathlib import Path

import torch

from ddbench.synset import SyntheticSet


def to_pixels(synset: SyntheticSet) -> torch.Tensor:
    """The set's images in [0,1] pixel space (ZCA sets are min-max scaled per image)."""
    x = synset.images.float()
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


def save_grid(
    synset: SyntheticSet, path: str | Path, max_per_class: int = 10, scale: int = 2
) -> Path:
    """A PNG with one row per class (up to ``max_per_class`` images each)."""
    from torchvision.utils import make_grid, save_image

    x = to_pixels(synset)
    y = synset.hard_labels
    classes = int(synset.meta.get("num_classes") or int(y.max()) + 1)
    rows = []
    for c in range(classes):
        xc = x[y == c][:max_per_class]
        pad = torch.zeros(max_per_class - len(xc), *x.shape[1:])
        rows.append(torch.cat([xc, pad]))
    grid = make_grid(torch.cat(rows), nrow=max_per_class, padding=1, pad_value=1.0)
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path

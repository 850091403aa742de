"""Export ddbench's prepared train/test splits for the authors' DatasetCondensation code.

Writes ``OUT_DIR/parity_<NAME>.pt`` (NAME = MNIST or FashionMNIST) holding float images
normalised exactly as the authors' ``utils.py get_dataset`` normalises them (ToTensor, then
``(x - mean) / std`` with its constants) and int64 labels, so both sides train on the same data.
The train split is ddbench's ``train`` split (the 10 % ``val`` carve-out excluded).

Usage: python bench/parity/export_data.py OUT_DIR [mnist|fashion_mnist ...]
"""

import sys
from pathlib import Path

import torch

from ddbench.data import get_spec, load_split

# name in the authors' code, and the mean/std constants of its get_dataset
OFFICIAL = {"mnist": ("MNIST", 0.1307, 0.3081), "fashion_mnist": ("FashionMNIST", 0.2861, 0.3530)}


def export(name: str, out_dir: Path) -> Path:
    official, mean, std = OFFICIAL[name]
    spec = get_spec(name)
    if (tuple(spec.mean), tuple(spec.std)) != ((mean,), (std,)):
        raise SystemExit(
            f"{name}: ddbench normalises with {spec.mean}/{spec.std}, not {mean}/{std}"
        )
    out = {"mean": [mean], "std": [std], "classes": list(spec.classes)}
    for split in ("train", "test"):
        ds = load_split(name, split)
        x = (ds.images.float() / 255.0 - mean) / std
        out[f"images_{split}"] = x.contiguous()
        out[f"labels_{split}"] = ds.labels.long().clone()
    path = out_dir / f"parity_{official}.pt"
    torch.save(out, path)
    return path


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or list(OFFICIAL):
        p = export(name, out_dir)
        print(f"wrote {p}")


if __name__ == "__main__":
    main()

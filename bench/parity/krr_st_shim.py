"""The local parity shim between ddbench and the authors' KRR-ST code (db-Lee/selfsup_dd).

Two halves:

- ddbench's side (:func:`export_data`, :func:`export_encoder`): the dataset's train and test
  splits as their ``get_loader`` reads them (``DIR/<name>/X_tr_<size>.pth`` ... float [0, 1]
  pixels, ``Y_*`` class indices; ddbench's train split, its val carve-out excluded), and the
  cached ddbench encoder (the target model) as a path with its config beside it.
- their side: ``official_krr_st_setup.sh`` copies this file beside ``train.py`` as
  ``ddbench_parity_shim.py``; the edits (``ddbench-parity K<n>``) call :func:`setup` (the
  dataset's shape, classes and normalisation constants for their ``get_aug``) and
  :func:`target_model` (the shared encoder in place of their Barlow Twins ResNet-18: a module
  whose forward is the encoder's representation, ``embed``, the targets ddbench's KRR-ST uses).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

# ------------------------------------------------------------------ ddbench's side


def export_data(dataset: str, out: Path) -> Path:
    """``out/<dataset>/{X,Y}_{tr,te}_<size>.pth`` from ddbench's splits, and ``meta.json``."""
    from ddbench import data

    spec = data.get_spec(dataset)
    d = Path(out) / dataset
    d.mkdir(parents=True, exist_ok=True)
    size = spec.im_size[0]
    for split, tag in (("train", "tr"), ("test", "te")):
        s = data.load_split(dataset, split)
        if not (d / f"X_{tag}_{size}.pth").exists():
            torch.save(s.images.float().div(255).contiguous(), d / f"X_{tag}_{size}.pth")
            torch.save(s.labels.long().contiguous(), d / f"Y_{tag}_{size}.pth")
    meta = {"channels": spec.channels, "size": size, "num_classes": spec.num_classes,
            "mean": list(spec.mean), "std": list(spec.std)}  # fmt: skip
    (d / "meta.json").write_text(json.dumps(meta) + "\n")
    return d


def export_encoder(dataset: str, config: dict) -> dict:
    """The cached ddbench encoder of ``config`` (an ``EncoderConfig`` node; trained once if not
    cached): ``{"path", "key", "config"}``."""
    from ddbench.encoders import EncoderConfig, encoder_path, get_encoder

    cfg = EncoderConfig(**config)
    _, meta = get_encoder(dataset, cfg, device="cpu")
    return {"path": str(encoder_path(dataset, cfg)), "key": meta["key"], "config": meta["config"]}


# ------------------------------------------------------------------ their side


def setup(args) -> None:
    """Their per-dataset constants for a ddbench dataset (``--data_name``): image size and
    shape, classes, and the normalisation constants in their ``MEAN`` / ``STD`` tables."""
    from data import augmentation

    meta = json.loads((Path(args.data_dir) / args.data_name / "meta.json").read_text())
    size = meta["size"]
    args.img_size = size
    args.channels = meta["channels"]
    augmentation.NUM_CLASSES[args.data_name] = meta["num_classes"]
    augmentation.MEAN.setdefault(size, {})[args.data_name] = tuple(meta["mean"])
    augmentation.STD.setdefault(size, {})[args.data_name] = tuple(meta["std"])


class _Embed(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.embed(x)


def target_model(path: str, device) -> nn.Module:
    """The shared ddbench encoder: its representation (``embed``) as the forward."""
    from ddbench.encoders import load_encoder

    net, _ = load_encoder(path, device)
    return _Embed(net).to(device).eval()

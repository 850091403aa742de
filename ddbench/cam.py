"""Class activation maps of a classifier, for the methods that mask or select by them (NRR-DD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.errors import DDBenchError

__all__ = ["class_activation_maps"]


def class_activation_maps(net: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The class activation map of ``classes`` on ``x`` ``[B, C, H, W]``, ``[B, H, W]`` in
    ``[0, 1]``: the contributions of each position of the last feature map to the class's logit
    (a flatten-linear head, ConvNet/VGG/AlexNet: ``sum_ch W[y, ch, h, w] f[ch, h, w]``; a
    pooled head: Zhou et al.'s CAM ``sum_ch W[y, ch] f[ch, h, w]``), upsampled bilinearly to
    the image size, ReLU, divided by each map's maximum."""
    features, head = getattr(net, "features", None), getattr(net, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(head, nn.Linear):
        raise DDBenchError(
            f"a class activation map needs a teacher with `features` and a linear `classifier` "
            f"(convnet_bn, vgg11_bn), not {type(net).__name__}"
        )
    with torch.no_grad():
        f = features(x).float()
        _, ch, h, w = f.shape
        weight = head.weight.float()[classes.to(f.device).long()]
        if head.in_features == ch * h * w:
            cam = (weight.view(-1, ch, h, w) * f).sum(1)
        elif head.in_features == ch:
            cam = torch.einsum("bc,bchw->bhw", weight, f)
        else:
            raise DDBenchError(
                f"class activation map: a classifier of {head.in_features} inputs over features "
                f"{tuple(f.shape[1:])}"
            )
        cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0].clamp_min(0)
        return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)

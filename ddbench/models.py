"""Networks of the dataset-distillation literature, built by name.

The architectures follow the official DatasetCondensation code (Zhao et al., ``networks.py``):
``convnet`` (ConvNet-3 with instance norm, the standard DD backbone) and its variants, ``mlp``,
``lenet``, ``alexnet``, ``vgg11``/``vgg11_bn``, ``resnet18``/``resnet18_bn``, plus the torchvision
ResNet-18 (``resnet18_tv``) for large images.

Every model maps ``[B, C, H, W]`` images to logits ``[B, num_classes]`` and has
``embed(x) -> [B, F]``, the features fed to its final linear layer ``model.classifier``, so that
``model.classifier(model.embed(x)) == model(x)``.

Usage::

    model = create_model("convnet", channels=3, num_classes=10, im_size=(32, 32), net_width=128)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench import kernels as _kernels
from ddbench.errors import DDBenchError

__all__ = [
    "MODELS",
    "AlexNet",
    "BasicBlock",
    "ConvNet",
    "LeNet",
    "MLP",
    "ResNet",
    "TorchvisionResNet18",
    "VGG",
    "create_model",
    "model_names",
    "register_model",
]

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {}
"""Registry: model name -> builder ``(channels, num_classes, im_size, **kwargs) -> nn.Module``."""


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(channels, num_classes, im_size, **kwargs)`` to ``MODELS``."""

    def decorator(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return decorator


def model_names() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(MODELS)


def create_model(
    name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    *,
    kernels: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` for ``channels x im_size`` inputs and ``num_classes``.

    ``kernels``: ``auto`` swaps in the accelerated modules of :mod:`ddbench.kernels` where
    eligible (same parameters, same results up to each kernel's documented rounding), ``off``
    keeps the stock modules; ``None``: the process's mode (``ddbench.kernels.set_mode``, which
    the CLI sets from the run's ``kernels`` key; ``auto`` unless set). Every network ddbench
    builds comes from here, so this is the one place the kernels are applied.

    Raises:
        DDBenchError: unknown name, bad sizes, unknown or invalid keyword arguments, an input
            size the architecture cannot process, or an unknown ``kernels`` mode.
    """
    if name not in MODELS:
        raise DDBenchError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise DDBenchError(f"model {name!r}: channels must be a positive int, got {channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DDBenchError(
            f"model {name!r}: num_classes must be a positive int, got {num_classes!r}"
        )
    size = _as_size(name, im_size)
    return _kernels.apply(MODELS[name](channels, num_classes, size, **kwargs), kernels)


# ----------------------------------------------------------------------------------- helpers


def _as_size(name: str, im_size: Any) -> tuple[int, int]:
    """Normalise ``im_size`` (an int or a pair of ints) to ``(H, W)``."""
    if isinstance(im_size, int) and not isinstance(im_size, bool):
        im_size = (im_size, im_size)
    if (
        not isinstance(im_size, Sequence)
        or isinstance(im_size, str)
        or len(im_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in im_size)
    ):
        raise DDBenchError(
            f"model {name!r}: im_size must be (height, width) of positive ints, got {im_size!r}"
        )
    return int(im_size[0]), int(im_size[1])


def _reject_kwargs(name: str, kwargs: dict[str, Any], allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise DDBenchError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; accepted options: "
            f"{accepted}"
        )


def _conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _require_positive(name: str, im_size: tuple[int, int], h: int, w: int, stage: str) -> None:
    if h < 1 or w < 1:
        raise DDBenchError(
            f"model {name!r} does not support input size {im_size[0]}x{im_size[1]}: the feature "
            f"map vanishes ({h}x{w}) {stage}; use a larger image or a shallower model"
        )


def _choice(name: str, option: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise DDBenchError(
            f"model {name!r}: {option}={value!r} is not supported; choose one of "
            f"{', '.join(choices)}"
        )
    return value


# ----------------------------------------------------------------------------------- ConvNet

NET_ACTS = ("relu", "sigmoid", "leakyrelu", "gelu")
NET_NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
NET_POOLINGS = ("avgpooling", "maxpooling", "none")
CONVNET_OPTIONS = ("net_width", "net_depth", "net_act", "net_norm", "net_pooling")


class ConvNet(nn.Module):
    """ConvNet-D of DatasetCondensation: D x [conv3x3 -> norm -> act -> pool], then a linear layer.

    With ``net_norm='instancenorm'`` (the default, ``GroupNorm(width, width)``) the model has no
    buffers and works under ``torch.func.vmap``/``functional_call``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        net_width: int = 128,
        net_depth: int = 3,
        net_act: str = "relu",
        net_norm: str = "instancenorm",
        net_pooling: str = "avgpooling",
        name: str = "convnet",
    ) -> None:
        super().__init__()
        _choice(name, "net_act", net_act, NET_ACTS)
        _choice(name, "net_norm", net_norm, NET_NORMS)
        _choice(name, "net_pooling", net_pooling, NET_POOLINGS)
        for option, value in (("net_width", net_width), ("net_depth", net_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DDBenchError(
                    f"model {name!r}: {option} must be a positive int, got {value!r}"
                )

        layers: list[nn.Module] = []
        acts: list[int] = []  # index in ``features`` of each block's activation
        in_channels, (h, w) = channels, im_size
        for d in range(net_depth):
            padding = 3 if channels == 1 and d == 0 else 1
            layers.append(nn.Conv2d(in_channels, net_width, kernel_size=3, padding=padding))
            h, w = _conv_out(h, 3, padding), _conv_out(w, 3, padding)
            _require_positive(name, im_size, h, w, f"after conv {d + 1}")
            norm = self._norm(net_norm, net_width, h, w)
            if norm is not None:
                layers.append(norm)
            acts.append(len(layers))
            layers.append(self._act(net_act))
            in_channels = net_width
            if net_pooling != "none":
                layers.append(nn.AvgPool2d(2) if net_pooling == "avgpooling" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
                _require_positive(name, im_size, h, w, f"after pooling {d + 1}")
        self.features = nn.Sequential(*layers)
        self._act_layers = frozenset(acts)
        self.feature_shape = (net_width, h, w)
        self.classifier = nn.Linear(net_width * h * w, num_classes)

    @staticmethod
    def _act(net_act: str) -> nn.Module:
        if net_act == "relu":
            return nn.ReLU()
        if net_act == "sigmoid":
            return nn.Sigmoid()
        if net_act == "leakyrelu":
            return nn.LeakyReLU(negative_slope=0.01)
        return nn.GELU()

    @staticmethod
    def _norm(net_norm: str, width: int, h: int, w: int) -> nn.Module | None:
        if net_norm == "instancenorm":
            return nn.GroupNorm(width, width, affine=True)
        if net_norm == "batchnorm":
            return nn.BatchNorm2d(width)
        if net_norm == "layernorm":
            return nn.LayerNorm([width, h, w], elementwise_affine=True)
        if net_norm == "groupnorm":
            return nn.GroupNorm(4, width, affine=True)
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features ``[B, width*h*w]``."""
        return self.features(x).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(maps, embed(x))`` in one forward pass: ``maps[d]`` is block ``d``'s activation
        output ``[B, width, h_d, w_d]`` (after conv, norm and nonlinearity, before pooling), one
        per block; the second item equals :meth:`embed`."""
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._act_layers:
                maps.append(x)
        return maps, x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _convnet_builder(name: str, fixed: dict[str, Any]) -> Builder:
    allowed = tuple(o for o in CONVNET_OPTIONS if o not in fixed)

    def build(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> ConvNet:
        _reject_kwargs(name, kwargs, allowed)
        return ConvNet(channels, num_classes, im_size, name=name, **fixed, **kwargs)

    build.__name__ = name
    build.__doc__ = f"ConvNet with {fixed or 'default settings'}; options: {', '.join(allowed)}."
    return build


for _name, _fixed in (
    ("convnet", {}),
    ("convnet_d1", {"net_depth": 1}),
    ("convnet_d2", {"net_depth": 2}),
    ("convnet_d4", {"net_depth": 4}),
    ("convnet_d5", {"net_depth": 5}),
    ("convnet_bn", {"net_norm": "batchnorm"}),
):
    register_model(_name)(_convnet_builder(_name, _fixed))


# ------------------------------------------------------------------------------- MLP / LeNet


class MLP(nn.Module):
    """Three-layer MLP: ``C*H*W -> 128 -> 128 -> num_classes`` with ReLU."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(channels * im_size[0] * im_size[1], 128)
        self.fc_2 = nn.Linear(128, 128)
        self.classifier = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the second ReLU, ``[B, 128]``."""
        out = F.relu(self.fc_1(x.flatten(1)))
        return F.relu(self.fc_2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 as in DatasetCondensation (padding 2 on 1-channel input)."""

    def __init__(
        self, channels: int, num_classes: int, im_size: tuple[int, int], name: str = "lenet"
    ) -> None:
        super().__init__()
        padding = 2 if channels == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        h, w = (_conv_out(s, 5, padding) // 2 for s in im_size)
        _require_positive(name, im_size, h, w, "after block 1")
        h, w = _conv_out(h, 5) // 2, _conv_out(w, 5) // 2
        _require_positive(name, im_size, h, w, "after block 2")
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the 84-unit hidden layer, ``[B, 84]``."""
        out = self.features(x).flatten(1)
        out = F.relu(self.fc_1(out))
        return F.relu(self.fc_2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("mlp")
def mlp(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> MLP:
    """MLP ``C*H*W -> 128 -> 128 -> num_classes``."""
    _reject_kwargs("mlp", kwargs)
    return MLP(channels, num_classes, im_size)


@register_model("lenet")
def lenet(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> LeNet:
    """LeNet-5 (DC variant)."""
    _reject_kwargs("lenet", kwargs)
    return LeNet(channels, num_classes, im_size)


# ----------------------------------------------------------------------------------- AlexNet


class AlexNet(nn.Module):
    """AlexNet of DatasetCondensation (128-192-256-192-192 channels, one linear layer)."""

    def __init__(
        self, channels: int, num_classes: int, im_size: tuple[int, int], name: str = "alexnet"
    ) -> None:
        super().__init__()
        padding = 4 if channels == 1 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, stride=1, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        h, w = im_size
        for stage, pad in enumerate((padding, 2), start=1):  # the two 5x5 conv + pool blocks
            h, w = _conv_out(h, 5, pad) // 2, _conv_out(w, 5, pad) // 2
            _require_positive(name, im_size, h, w, f"after block {stage}")
        h, w = h // 2, w // 2  # the 3x3 convs keep the size; final pool halves it
        _require_positive(name, im_size, h, w, "after the last pooling")
        self.classifier = nn.Linear(192 * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features (``192*4*4`` for 28x28x1 and 32x32x3 input)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("alexnet")
def alexnet(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> AlexNet:
    """AlexNet (DC variant)."""
    _reject_kwargs("alexnet", kwargs)
    return AlexNet(channels, num_classes, im_size)


# --------------------------------------------------------------------------------------- VGG

VGG_CFGS: dict[str, list[int | str]] = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


def _norm2d(norm: str, planes: int) -> nn.Module:
    """``instancenorm`` = ``GroupNorm(planes, planes)``; ``batchnorm`` = ``BatchNorm2d``."""
    if norm == "instancenorm":
        return nn.GroupNorm(planes, planes, affine=True)
    return nn.BatchNorm2d(planes)


class VGG(nn.Module):
    """VGG of DatasetCondensation: conv3x3 -> norm -> ReLU blocks, max pools, one linear layer."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        cfg: Sequence[int | str] = tuple(VGG_CFGS["VGG11"]),
        norm: str = "instancenorm",
        name: str = "vgg11",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, (h, w) = channels, im_size
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
            else:
                assert isinstance(v, int)
                padding = 3 if channels == 1 and i == 0 else 1
                layers += [
                    nn.Conv2d(in_channels, v, kernel_size=3, padding=padding),
                    _norm2d(norm, v),
                    nn.ReLU(),
                ]
                h, w = _conv_out(h, 3, padding), _conv_out(w, 3, padding)
                in_channels = v
            _require_positive(name, im_size, h, w, f"at layer {i + 1} of {len(cfg)}")
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))  # as in DC (identity)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features (512 for 28x28x1 and 32x32x3 input)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("vgg11")
def vgg11(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> VGG:
    """VGG11 with instance norm (DC's default ``VGG11``)."""
    _reject_kwargs("vgg11", kwargs)
    return VGG(channels, num_classes, im_size, VGG_CFGS["VGG11"], "instancenorm", "vgg11")


@register_model("vgg11_bn")
def vgg11_bn(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> VGG:
    """VGG11 with batch norm (DC's ``VGG11BN``)."""
    _reject_kwargs("vgg11_bn", kwargs)
    return VGG(channels, num_classes, im_size, VGG_CFGS["VGG11"], "batchnorm", "vgg11_bn")


# ------------------------------------------------------------------------------------ ResNet


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); 1x1 conv + norm shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm"):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = _norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                ),
                _norm2d(norm, self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of DatasetCondensation (CIFAR stem: 3x3 conv, stride 1, no max pool).

    DC uses ``F.avg_pool2d(out, 4)``, which for 32x32 input equals the global average pool used
    here; the global pool also makes 28x28 (and larger) inputs work.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        del im_size  # any size works thanks to the global pool
        self.in_planes = 64
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _norm2d(norm, 64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1, norm)
        self.layer2 = self._make_layer(128, num_blocks[1], 2, norm)
        self.layer3 = self._make_layer(256, num_blocks[2], 2, norm)
        self.layer4 = self._make_layer(512, num_blocks[3], 2, norm)
        self.classifier = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int, norm: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, norm))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled ``layer4`` output, ``[B, 512]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("resnet18")
def resnet18(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> ResNet:
    """ResNet-18 with instance norm (DC's ``ResNet18``)."""
    _reject_kwargs("resnet18", kwargs)
    return ResNet(channels, num_classes, im_size, (2, 2, 2, 2), "instancenorm")


@register_model("resnet18_bn")
def resnet18_bn(channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> ResNet:
    """ResNet-18 with batch norm (DC's ``ResNet18BN``)."""
    _reject_kwargs("resnet18_bn", kwargs)
    return ResNet(channels, num_classes, im_size, (2, 2, 2, 2), "batchnorm")


class TorchvisionResNet18(nn.Module):
    """torchvision's ImageNet-style ResNet-18 (random init, never downloads weights).

    Meant for large images (64x64 and up). ``conv1`` is rebuilt with the same kernel, stride and
    padding when ``channels != 3``. The network is kept as ``self.net``.
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
        super().__init__()
        import torchvision  # lazy: only this model needs it

        self.net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        if channels != 3:
            old = self.net.conv1
            self.net.conv1 = nn.Conv2d(
                channels,
                old.out_channels,
                kernel_size=old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=False,
            )
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (``self.net.fc``)."""
        return self.net.fc

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to ``fc``, flattened: ``[B, 512]``."""
        n = self.net
        out = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out = n.layer4(n.layer3(n.layer2(n.layer1(out))))
        return torch.flatten(n.avgpool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("resnet18_tv")
def resnet18_tv(
    channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any
) -> TorchvisionResNet18:
    """torchvision ResNet-18 (ImageNet stem) for large images; random init."""
    _reject_kwargs("resnet18_tv", kwargs)
    return TorchvisionResNet18(channels, num_classes, im_size)

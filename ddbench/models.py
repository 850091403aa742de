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

from ddbench import fused_block as _fused
from ddbench.errors import DDBenchError

__all__ = [
    "MODELS",
    "AlexNet",
    "BasicBlock",
    "ConvNet",
    "GrayConv2d",
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
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` for ``channels x im_size`` inputs and ``num_classes``.

    Raises:
        DDBenchError: unknown name, bad sizes, unknown or invalid keyword arguments, or an input
            size the architecture cannot process.
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
    return MODELS[name](channels, num_classes, size, **kwargs)


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


# ------------------------------------------------------------------------ 2x2 average pooling


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (same module, same results) with a faster bf16 path on CPU.

    PyTorch's NCHW bf16 CPU kernels for this pooling are slow: for a 256 x 128 x 32 x 32 batch
    ~50 ms forward and ~80 ms backward on 2 cores, 10-20x a copy of the tensor. For a large
    (>= 2**18 elements) contiguous bf16 CPU tensor with even height and width, outside
    ``torch.compile`` and ``torch.func`` transforms, the forward and the backward run
    Inductor-compiled kernels that read and write the bf16 bits as int32 words (two horizontal
    neighbours per word; see :func:`_pool_bits`, :func:`_upsample_bits`): ~4 ms forward and
    ~14 ms backward for that batch (``bench/pool_kernels.py``), bit for bit the stock results.
    Each is the other's adjoint, so the path stays differentiable to any order (DC's double
    backward). Anything else, or a failed compilation (no C++ compiler), takes
    ``nn.AvgPool2d``'s path. The kernels compile once per process (~10-25 s), on the first
    large tensor.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.numel() >= _FAST_POOL_MIN_NUMEL
            and x.shape[-1] % 2 == 0
            and x.shape[-2] % 2 == 0
            and x.is_contiguous()
            and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(x)
            and _pool_kernels() is not None
        ):
            return _PoolOrUpsample.apply(x, False)
        return super().forward(x)


def _bf16_pair_halves(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bf16 values packed in each int32 word, as exact fp32: (first, second) in memory
    order (little-endian: the low half first). bf16 -> fp32 is a 16-bit shift of the bits."""
    return (words << 16).view(torch.float32), (words & -65536).view(torch.float32)


def _pool_bits(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of a contiguous NCHW bf16 tensor (even H, W), summed in fp32 in the
    stock kernel's order ``((x00 + x01) + x10) + x11``, then ``/ 4`` and rounded to bf16: the
    stock result bit for bit. Reading each row as int32 words (a horizontal pair per word)
    gives Inductor contiguous, vectorisable loads."""
    n, c, h, w = x.shape
    rows = x.view(torch.int32).view(n, c, h // 2, 2, w // 2)
    x00, x01 = _bf16_pair_halves(rows[:, :, :, 0])
    x10, x11 = _bf16_pair_halves(rows[:, :, :, 1])
    return ((((x00 + x01) + x10) + x11) * 0.25).to(torch.bfloat16)


def _upsample_bits(grad: torch.Tensor) -> torch.Tensor:
    """``grad / 4`` repeated over each 2x2 window (the adjoint of 2x2 average pooling) for a
    contiguous NCHW bf16 tensor: each quarter's 16 bits doubled into one int32 word (its
    horizontal pair), then each row of words written twice."""
    n, c, h, w = grad.shape
    bits = grad.mul(0.25).view(torch.int16).to(torch.int32) & 0xFFFF
    pairs = (bits | (bits << 16)).view(torch.bfloat16)  # [n, c, h, 2w]
    return pairs[:, :, :, None, :].expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)


_POOL_KERNELS: list[tuple[Callable, Callable] | None] = []  # [] until first use
_FAST_POOL_MIN_NUMEL = 1 << 18  # smaller tensors: the stock kernel is fast enough


def _pool_kernels() -> tuple[Callable, Callable] | None:
    """Inductor-compiled (pool, upsample) kernels, built and checked against ``F.avg_pool2d``
    once per process; ``None`` where ``torch.compile`` cannot build them here."""
    if not _POOL_KERNELS:
        kernels: tuple[Callable, Callable] | None = None
        try:
            pool = torch.compile(_pool_bits, dynamic=True)
            upsample = torch.compile(_upsample_bits, dynamic=True)
            with torch.no_grad():  # no autograd graph: this may run inside a checkpointed region
                # magnitudes from bf16's subnormals to near its overflow, so that a summation
                # order other than the stock one would show; a private generator leaves the
                # global random stream alone
                g = torch.Generator().manual_seed(0)
                scale = 10.0 ** torch.randint(-40, 38, (3, 2, 6, 4), generator=g).double()
                probe = (torch.randn(3, 2, 6, 4, generator=g).double() * scale).to(torch.bfloat16)
                out = F.avg_pool2d(probe, 2)
                grad = torch.randn(out.shape, generator=g).to(torch.bfloat16)
                stock_grad = torch.ops.aten.avg_pool2d_backward(
                    grad, probe, [2, 2], [2, 2], [0, 0], False, True, None
                )
                if torch.equal(pool(probe), out) and torch.equal(upsample(grad), stock_grad):
                    kernels = (pool, upsample)
        except Exception:  # no C++ compiler, or an unsupported build: keep the stock kernels
            kernels = None
        _POOL_KERNELS.append(kernels)
    return _POOL_KERNELS[0]


class _PoolOrUpsample(torch.autograd.Function):
    """``apply(x, False)``: the compiled 2x2 average pooling; ``apply(g, True)``: its adjoint,
    the compiled upsample of ``g / 4``. The backward of each is the other, to any order."""

    @staticmethod
    def forward(x: torch.Tensor, upsample: bool) -> torch.Tensor:
        return _POOL_KERNELS[0][int(upsample)](x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.upsample = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _PoolOrUpsample.apply(grad.contiguous(), not ctx.upsample), None


class GrayConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same module, same forward bit for bit, gradients to bf16 rounding) with a
    faster weight gradient for ONE input channel under bf16 autocast on CPU.

    oneDNN's bf16 weight-gradient kernel for a single input channel (a grayscale stem) is slow:
    ~2 ms for 10 MNIST images to 55 ms for 256 on 2 cores, 2-5x the same product written as one
    GEMM, ``grad[O, N*L] @ im2col(x)[N*L, k*k]``, which is what the backward computes here (same
    bf16 inputs, fp32 accumulation; as close to the fp32 gradient as oneDNN's). The forward and
    the input gradient are the stock kernels. The backward is built from differentiable ops, so
    DC's double backward and MTT's unroll go through it. Anything else (more channels, fp32,
    a GPU, ``torch.func`` transforms) takes ``nn.Conv2d``'s path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.in_channels == 1
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and (
                torch.compiler.is_compiling()  # (dynamo cannot trace the functorch check)
                or not torch._C._functorch.is_functorch_wrapped_tensor(x)
            )
        ):
            return _GrayConvBF16.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


class _GrayConvBF16(torch.autograd.Function):
    """bf16 convolution of a 1-channel input; weight gradient as one im2col GEMM."""

    @staticmethod
    def forward(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        bf16 = torch.bfloat16
        b = None if bias is None else bias.to(bf16)
        return F.conv2d(x.to(bf16), weight.to(bf16), b, stride, padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)  # inputs, not their casts: double backward reaches them
        ctx.geometry = (stride, padding)
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bf16 = torch.bfloat16
        grad = grad.to(bf16)
        grad_x = grad_w = grad_b = None
        if need_x:
            wb = weight.to(bf16)
            grad_x = torch.nn.grad.conv2d_input(x.shape, wb, grad, stride, padding).to(x.dtype)
        if need_w:
            out_ch, _, kh, kw = weight.shape
            cols = F.unfold(x.to(bf16), (kh, kw), padding=padding, stride=stride)  # [N, kh*kw, L]
            cols_rows = cols.transpose(0, 1).reshape(kh * kw, -1)  # [kh*kw, N*L]
            if torch.compiler.is_compiling():
                # Inductor keeps conv activations channels-last: [N*L, O] is then a view, and
                # the product with few rows first is the faster GEMM (~4x for 10 images)
                grad_cols = grad.permute(0, 2, 3, 1).reshape(-1, out_ch)  # [N*L, O]
                grad_w = torch.mm(cols_rows, grad_cols).t().reshape(weight.shape)
            else:  # NCHW: [O, N*L] is one block copy
                grad_rows = grad.flatten(2).transpose(0, 1).reshape(out_ch, -1)  # [O, N*L]
                grad_w = torch.mm(grad_rows, cols_rows.t()).view(weight.shape)
            grad_w = grad_w.to(weight.dtype)
        if need_b and ctx.bias_dtype is not None:
            grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


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
            conv = GrayConv2d if in_channels == 1 else nn.Conv2d
            layers.append(conv(in_channels, net_width, kernel_size=3, padding=padding))
            h, w = _conv_out(h, 3, padding), _conv_out(w, 3, padding)
            _require_positive(name, im_size, h, w, f"after conv {d + 1}")
            norm = self._norm(net_norm, net_width, h, w)
            if norm is not None:
                layers.append(norm)
            acts.append(len(layers))
            layers.append(self._act(net_act))
            in_channels = net_width
            if net_pooling != "none":
                layers.append(AvgPool2x2() if net_pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                _require_positive(name, im_size, h, w, f"after pooling {d + 1}")
        self.features = nn.Sequential(*layers)
        self._act_layers = frozenset(acts)
        # instance norm -> ReLU, each one fused_block.NormReLU when ``fused_norm_relu`` is on
        self._norm_relu = frozenset(
            i - 1 for i in acts if net_norm == "instancenorm" and net_act == "relu"
        )
        self.fused_norm_relu = False
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
        if not self.fused_norm_relu:
            return self.features(x).flatten(1)
        skip = False
        for i, layer in enumerate(self.features):
            if skip:  # the ReLU, applied with its norm
                skip = False
            elif i in self._norm_relu and _fused.usable(x):
                x = _fused.NormReLU.apply(x, layer.weight, layer.bias, layer.eps)
                skip = True
            else:
                x = layer(x)
        return x.flatten(1)

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

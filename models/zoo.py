"""Reference teacher CNNs in PyTorch.

Every constructor in `ARCHITECTURES` takes the same keyword arguments (`num_classes`,
`in_channels`, `input_size`) so that training and benchmarks can build any of them by name. Where
the input size does not change the structure (every net here ends in global average pooling) it is
only checked against the net's total downsampling, so that a too-small input fails at build time
with a clear message instead of deep inside a forward pass.

Each convolution that is followed by BatchNorm has `bias=False` and the BN directly consumes the
convolution's output, so `export.export_onnx(fold_bn=True)` can fold every BN into its Conv and the
compiler sees plain Conv/Relu/Add/Concat/Gemm graphs, the way trained teachers are usually
delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "build",
    "demo_cnn",
    "densenet",
    "firenet",
    "load_resnet8_from_onnx",
    "mobilenetv2",
    "resnet20",
    "resnet56",
    "resnet8_mlperf",
    "vgg11",
    "vgg16",
]


def _check_input_size(arch: str, input_size: int, downsampling: int) -> None:
    if input_size < downsampling:
        raise ValueError(
            f"{arch} downsamples by {downsampling}; input_size={input_size} is too small (need >= {downsampling})"
        )


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """'Same'-padded conv without bias (the BN shift replaces it) -> BN."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


def _conv_bn_relu(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, kernel, stride, groups), act(inplace=True))


def _classifier(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pool + linear head; exports as GlobalAveragePool -> Flatten -> Gemm."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n basic blocks, 16/32/64 channels.


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, or a 1x1 conv-BN projection (option B)
    when the block changes resolution or width. Option B keeps the graph made of plain Convs,
    where option A's zero-padded strided identity would add Slice/Pad ops for pruning to handle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 16, 3)
        layers: list[nn.Module] = []
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.head = _classifier(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def resnet20(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """ResNet-20 for CIFAR (n=3): about 0.27M params and 41M MACs at 32x32x3."""
    _check_input_size("resnet20", input_size, 4)
    return CifarResNet(3, num_classes, in_channels)


def resnet56(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """ResNet-56 for CIFAR (n=9): about 0.86M params and 126M MACs at 32x32x3."""
    _check_input_size("resnet56", input_size, 4)
    return CifarResNet(9, num_classes, in_channels)


# ---------------------------------------------------------------------------------------------
# VGG with BatchNorm, CIFAR variant: the 3x3 conv stacks of Simonyan & Zisserman with a global
# average pool and a single linear layer instead of the 4096-wide ImageNet head.

_VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    def __init__(self, config: Sequence[int | str], num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, input_size
        for item in config:
            if item == "M":
                # A 28x28 input reaches 1x1 after four pools; a fifth pool would be empty, so pools
                # stop at 1x1 and the same config serves MNIST-sized and CIFAR-sized inputs.
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers.append(_conv_bn_relu(cin, int(item), 3))
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.head = _classifier(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def vgg11(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """VGG-11 with BN (CIFAR head): about 9.2M params and 153M MACs at 32x32x3."""
    return VGG(_VGG_CONFIGS["vgg11"], num_classes, in_channels, input_size)


def vgg16(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """VGG-16 with BN (CIFAR head): about 14.7M params and 313M MACs at 32x32x3."""
    return VGG(_VGG_CONFIGS["vgg16"], num_classes, in_channels, input_size)


# ---------------------------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and stride 1 in the second stage
# so that a 32x32 input ends at 4x4 rather than 1x1.

# (expansion t, output channels c, repeats n, first stride s) per stage.
_MOBILENETV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a scaled channel count to a multiple of `divisor` without losing more than 10%,
    as in the reference implementation (keeps widths friendly to vectorised kernels)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expand (omitted when t=1) -> 3x3 depthwise -> 1x1 linear projection; identity shortcut
    when the block keeps resolution and width."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1, act=nn.ReLU6))
        layers.append(_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers.append(_conv_bn(hidden, cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: float) -> None:
        super().__init__()
        cin = _make_divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, cin, 3, act=nn.ReLU6)]
        for expansion, channels, repeats, stride in _MOBILENETV2_STAGES:
            cout = _make_divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        last = _make_divisible(1280 * max(1.0, width))
        layers.append(_conv_bn_relu(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = _classifier(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mobilenetv2(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0
) -> nn.Module:
    """MobileNetV2 (CIFAR variant) with width multiplier `width`."""
    if width <= 0:
        raise ValueError(f"mobilenetv2 width must be positive, got {width}")
    _check_input_size("mobilenetv2", input_size, 8)
    return MobileNetV2(num_classes, in_channels, width)


# ---------------------------------------------------------------------------------------------
# Small DenseNet-BC-style net (Huang et al. 2017): dense blocks whose layers concatenate their
# output onto their input, and 1x1-conv + avg-pool transitions that halve channels and resolution.
# Layers are post-activation (Conv-BN-ReLU) rather than DenseNet's pre-activation BN-ReLU-Conv:
# after a concatenation a BN has several producers and could not be folded into a Conv.


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bottleneck = _conv_bn_relu(cin, 4 * growth, 1)
        self.conv = _conv_bn_relu(4 * growth, growth, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], dim=1)


class DenseNet(nn.Module):
    def __init__(
        self, layers_per_block: Sequence[int], growth: int, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        channels = 2 * growth
        modules: list[nn.Module] = [_conv_bn_relu(in_channels, channels, 3)]
        for b, n_layers in enumerate(layers_per_block):
            for _ in range(n_layers):
                modules.append(DenseLayer(channels, growth))
                channels += growth
            if b < len(layers_per_block) - 1:
                reduced = channels // 2  # compression factor 0.5 ("BC")
                modules += [_conv_bn_relu(channels, reduced, 1), nn.AvgPool2d(2)]
                channels = reduced
        self.features = nn.Sequential(*modules)
        self.head = _classifier(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def densenet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Small DenseNet-BC-style net: three dense blocks of 6 layers, growth rate 12."""
    _check_input_size("densenet", input_size, 4)
    return DenseNet((6, 6, 6), 12, num_classes, in_channels)


# ---------------------------------------------------------------------------------------------
# SqueezeNet-style net for 32x32 (Iandola et al. 2016): fire modules squeeze with a 1x1 conv, then
# expand with parallel 1x1 and 3x3 convs whose outputs are concatenated. BN after every conv makes
# it trainable from scratch in a few epochs; the classifier is a 1x1 conv + global average pool, as
# in SqueezeNet, so the class dimension lives on a Conv rather than a Gemm.


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = _conv_bn_relu(cin, squeeze, 1)
        self.expand1x1 = _conv_bn_relu(squeeze, expand, 1)
        self.expand3x3 = _conv_bn_relu(squeeze, expand, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)


class FireNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 64, 3),
            Fire(64, 16, 64),
            Fire(128, 16, 64),
            nn.MaxPool2d(2),
            Fire(128, 32, 128),
            Fire(256, 32, 128),
            nn.MaxPool2d(2),
            Fire(256, 48, 192),
            Fire(384, 64, 256),
        )
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.classifier(self.features(x)))


def firenet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """SqueezeNet-style fire net for 32x32 inputs, conv classifier."""
    _check_input_size("firenet", input_size, 4)
    return FireNet(num_classes, in_channels)


# ---------------------------------------------------------------------------------------------
# MLPerf Tiny image-classification ResNet-8 (mlcommons/tiny, benchmark/training/
# image_classification/keras_model.py): a 16-channel stem and three residual stacks of 16/32/64
# channels; the 2nd and 3rd downsample with a strided 3x3 conv and a strided 1x1 projection.


class _MlperfBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        # Keras 'same' padding of a stride-2 3x3 conv on an even input pads only bottom/right
        # (ONNX pads [0,0,1,1]); symmetric padding=1 would shift every sampled window by a pixel.
        self.pad: nn.Module = nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.Identity()
        self.conv1 = self._conv(cin, cout, stride, 0 if stride == 2 else 1, batch_norm)
        self.conv2 = self._conv(cout, cout, 1, 1, batch_norm)
        # The reference projection shortcut has no BN, so it keeps its bias in both variants.
        self.shortcut: nn.Module = nn.Identity() if stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride)

    @staticmethod
    def _conv(cin: int, cout: int, stride: int, padding: int, batch_norm: bool) -> nn.Sequential:
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, bias=not batch_norm)
        return nn.Sequential(conv, nn.BatchNorm2d(cout)) if batch_norm else nn.Sequential(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(self.pad(x))))
        return F.relu(y + self.shortcut(x))


class ResNet8MLPerf(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, batch_norm: bool, softmax: bool) -> None:
        super().__init__()
        stem_conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=not batch_norm)
        stem: list[nn.Module] = [stem_conv, nn.BatchNorm2d(16)] if batch_norm else [stem_conv]
        self.stem = nn.Sequential(*stem, nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            _MlperfBlock(16, 16, 1, batch_norm),
            _MlperfBlock(16, 32, 2, batch_norm),
            _MlperfBlock(32, 64, 2, batch_norm),
        )
        # The reference uses AveragePool(8) on the 8x8 map of a 32x32 input: the same as a global
        # average pool there, which also works for other input sizes.
        self.head = _classifier(64, num_classes)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.blocks(self.stem(x)))
        return logits.softmax(dim=1) if self.softmax else logits


def resnet8_mlperf(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    batch_norm: bool = True,
    softmax: bool = False,
) -> nn.Module:
    """MLPerf Tiny ResNet-8 (NCHW input). `batch_norm=True` matches the Keras training graph (BN
    after every 3x3 conv); `batch_norm=False` matches the BN-folded ONNX release, whose convs carry
    the folded biases (see `load_resnet8_from_onnx`). `softmax=True` returns probabilities like the
    release; the default returns logits."""
    if input_size % 4 != 0:
        raise ValueError(f"resnet8 needs an input size divisible by 4 (asymmetric 'same' pads), got {input_size}")
    return ResNet8MLPerf(num_classes, in_channels, batch_norm, softmax)


def load_resnet8_from_onnx(path: str, softmax: bool = False) -> nn.Module:
    """The MLPerf Tiny ResNet-8 release (tf2onnx, NHWC input, BN folded into Conv, MatMul+Add head)
    as a BN-free `resnet8_mlperf` taking NCHW input, with the release's weights."""
    # Imported here so that building the zoo does not need onnx.
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in weights and len(n.input) == 3]
    # Projection shortcuts are the only 1x1 convs; graph order within each kind follows the layers
    # (a different order would surface as a shape mismatch when copying).
    projections = [n for n in convs if weights[n.input[1]].shape[2:] == (1, 1)]
    mains = [n for n in convs if weights[n.input[1]].shape[2:] == (3, 3)]
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    bias_adds = [n for n in graph.node if n.op_type == "Add" and matmuls and n.input[0] == matmuls[0].output[0]]
    if len(mains) != 7 or len(projections) != 2 or len(matmuls) != 1 or len(bias_adds) != 1:
        raise ValueError(
            f"{path}: expected 7 3x3 convs, 2 1x1 convs and a MatMul+Add head, found {len(mains)}, "
            f"{len(projections)} and {len(matmuls)} MatMul: not the MLPerf Tiny ResNet-8"
        )
    matmul, bias_add = matmuls[0], bias_adds[0]

    num_classes = weights[matmul.input[1]].shape[1]
    in_channels = weights[mains[0].input[1]].shape[1]
    model = resnet8_mlperf(num_classes=num_classes, in_channels=in_channels, batch_norm=False, softmax=softmax)
    blocks = list(model.blocks)
    torch_mains = [model.stem[0]] + [conv for b in blocks for conv in (b.conv1[0], b.conv2[0])]
    torch_projections = [b.shortcut for b in blocks if isinstance(b.shortcut, nn.Conv2d)]
    with torch.no_grad():
        for node, conv in zip(mains + projections, torch_mains + torch_projections, strict=True):
            _copy_parameter(conv.weight, weights[node.input[1]], f"{path}: {node.name} weight")
            _copy_parameter(conv.bias, weights[node.input[2]], f"{path}: {node.name} bias")
        linear = model.head[2]
        # MatMul computes x @ W with W (in, out); nn.Linear stores (out, in).
        _copy_parameter(linear.weight, weights[matmul.input[1]].T, f"{path}: dense weight")
        _copy_parameter(linear.bias, weights[bias_add.input[1]], f"{path}: dense bias")
    return model.eval()


def _copy_parameter(param: torch.Tensor, value: object, what: str) -> None:
    tensor = torch.tensor(value, dtype=param.dtype)  # copies: ONNX-loaded arrays are read-only
    if tuple(tensor.shape) != tuple(param.shape):
        raise ValueError(f"{what}: shape {tuple(tensor.shape)} does not match {tuple(param.shape)}")
    param.copy_(tensor)


# ---------------------------------------------------------------------------------------------
# Demo teacher for 28x28x1 Fashion-MNIST: a VGG-like net that is deliberately wider than the task
# needs, so that the bundled demo can cut it to about a third of its MACs for under a point of
# accuracy.


def demo_cnn(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """conv32 | pool | conv64 x2 | pool | conv128 x2 | global pool | linear."""
    _check_input_size("demo_cnn", input_size, 4)
    return nn.Sequential(
        _conv_bn_relu(in_channels, 32),
        nn.MaxPool2d(2),
        _conv_bn_relu(32, 64),
        _conv_bn_relu(64, 64),
        nn.MaxPool2d(2),
        _conv_bn_relu(64, 128),
        _conv_bn_relu(128, 128),
        _classifier(128, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "mobilenetv2": mobilenetv2,
    "densenet": densenet,
    "firenet": firenet,
    # The registry builds the trainable variant (BN after each 3x3 conv, logits), like the Keras
    # reference; load_resnet8_from_onnx builds the BN-free one.
    "resnet8": resnet8_mlperf,
    "demo_cnn": demo_cnn,
}


def build(arch: str, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """The registered architecture `arch` for the given task shape."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes, in_channels=in_channels, input_size=input_size)

"""Built-in networks as `Network` data: MobileNetV1, MobileNetV2 and ResNet-18.

Each follows its canonical definition (the MobileNetV1 paper's 13 depthwise-separable blocks,
torchvision's MobileNetV2 and ResNet-18) with the ImageNet stride pattern at any input size. Every
convolution carries a fused batch norm and no bias; activations are fused into the layer they follow;
the classifier is a dense layer with bias after a global average pool. Layer names depend only on the
architecture, never on the input size, so `small_input_variant` (32x32, the accuracy proxy's input)
names its layers exactly as the full-size network does; only shapes differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

from envs.network import NETWORK_INPUT, Layer, Network, Op, Shape, conv_op, conv_output_hw

SMALL_INPUT_SIZE = 32


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never below 90% of it (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _network_name(base: str, input_size: int, num_classes: int, width: float = 1.0) -> str:
    """`base`, suffixed with whatever differs from the ImageNet default (224 input, 1000 classes, width 1)."""
    name = base if input_size == 224 else f"{base}_{input_size}"
    if width != 1.0:
        name += f"_x{width:g}"
    return name if num_classes == 1000 else f"{name}_{num_classes}cls"


def _variant_name(name: str, blocks: Sequence[object], original: Sequence[object]) -> str:
    """`name`, suffixed with a hash of the block settings where they differ from the original's."""
    if tuple(blocks) == tuple(original):
        return name
    return f"{name}-{hashlib.sha256('/'.join(map(str, blocks)).encode()).hexdigest()[:8]}"


class _Builder:
    """Appends layers in topological order, tracking each one's output shape."""

    def __init__(self, input_size: int) -> None:
        self.input_shape: Shape = (3, input_size, input_size)
        self.layers: list[Layer] = []
        self._shapes: dict[str, Shape] = {NETWORK_INPUT: self.input_shape}

    def _append(self, layer: Layer) -> str:
        self.layers.append(layer)
        self._shapes[layer.name] = layer.out_shape
        return layer.name

    def channels(self, name: str) -> int:
        """Output channels of layer `name` (or of the network input)."""
        return self._shapes[name][0]

    def conv(
        self, name: str, src: str, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
        activation: str | None = None,
    ) -> str:
        """A same-padded convolution with fused batch norm and no bias."""
        cin, h, w = self._shapes[src]
        pad = (kernel - 1) // 2
        return self._append(Layer(
            name, conv_op(cin, out_channels, kernel, stride, groups), (src,), (cin, h, w),
            (out_channels, *conv_output_hw(h, w, kernel, stride, pad)),
            kernel=(kernel, kernel), stride=(stride, stride), padding=(pad, pad), groups=groups,
            batch_norm=True, activation=activation,
        ))

    def max_pool(self, name: str, src: str, kernel: int, stride: int, padding: int) -> str:
        """Max pooling with a square window."""
        c, h, w = self._shapes[src]
        return self._append(Layer(
            name, Op.POOL, (src,), (c, h, w), (c, *conv_output_hw(h, w, kernel, stride, padding)),
            kernel=(kernel, kernel), stride=(stride, stride), padding=(padding, padding), pool="max",
        ))

    def global_avg_pool(self, name: str, src: str) -> str:
        """Average over the whole spatial extent, to (C, 1, 1)."""
        shape = self._shapes[src]
        return self._append(Layer(name, Op.POOL, (src,), shape, (shape[0], 1, 1), pool="global_avg"))

    def add(self, name: str, srcs: tuple[str, ...], activation: str | None = None) -> str:
        """Elementwise sum of equally shaped inputs."""
        shape = self._shapes[srcs[0]]
        return self._append(Layer(name, Op.ADD, srcs, shape, shape, activation=activation))

    def dense(self, name: str, src: str, out_features: int) -> str:
        """Fully connected layer with bias on the flattened input."""
        in_features = self._shapes[src][0] * self._shapes[src][1] * self._shapes[src][2]
        return self._append(Layer(name, Op.DENSE, (src,), (in_features, 1, 1), (out_features, 1, 1), bias=True))

    def build(self, name: str) -> Network:
        """The finished network."""
        return Network(name, self.input_shape, tuple(self.layers))


# (expansion t, output channels c, repeats n, first stride s), as in torchvision and the paper
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
# (output channels of the pointwise conv, stride of the depthwise conv) for the 13 blocks
_MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1),
)


def mobilenet_v1(input_size: int = 224, num_classes: int = 1000, width: float = 1.0) -> Network:
    """MobileNetV1: a 3x3/2 stem and 13 depthwise-separable blocks (`b1.dw`, `b1.pw`, ...), ReLU."""
    net = _Builder(input_size)
    x = net.conv("stem", NETWORK_INPUT, _make_divisible(32 * width), 3, stride=2, activation="relu")
    for i, (channels, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
        cin = net.channels(x)
        x = net.conv(f"b{i}.dw", x, cin, 3, stride=stride, groups=cin, activation="relu")
        x = net.conv(f"b{i}.pw", x, _make_divisible(channels * width), 1, activation="relu")
    net.dense("fc", net.global_avg_pool("pool", x), num_classes)
    return net.build(_network_name("mobilenet_v1", input_size, num_classes, width))


@dataclass(frozen=True)
class MBBlock:
    """One inverted residual: depthwise kernel size, expansion ratio, and whether it is skipped."""

    kernel: int = 3
    expansion: int = 6
    skip: bool = False

    @property
    def key(self) -> str:
        """`k3e6`, or `skip`."""
        return "skip" if self.skip else f"k{self.kernel}e{self.expansion}"


MOBILENET_V2_BLOCKS = tuple(
    MBBlock(3, expansion) for expansion, _, repeats, _ in MOBILENET_V2_SETTING for _ in range(repeats)
)
"""The 17 blocks of the original MobileNetV2: 3x3 kernels, expansion 1 in the first block and 6 after."""


def mobilenet_v2(
    input_size: int = 224, num_classes: int = 1000, width: float = 1.0, blocks: Sequence[MBBlock] = MOBILENET_V2_BLOCKS
) -> Network:
    """MobileNetV2 as in torchvision: stem, 17 inverted residuals `b1`..`b17`, 1x1 `head`, ReLU6.

    `blocks` sets each block's kernel and expansion, or skips it (only a block whose input and
    output shapes agree, i.e. not the first of a stage: its input then passes straight through)."""
    if len(blocks) != len(MOBILENET_V2_BLOCKS):
        raise ValueError(f"MobileNetV2 has {len(MOBILENET_V2_BLOCKS)} blocks, got {len(blocks)} block settings")
    net = _Builder(input_size)
    x = net.conv("stem", NETWORK_INPUT, _make_divisible(32 * width), 3, stride=2, activation="relu6")
    block = 0
    for _, channels, repeats, first_stride in MOBILENET_V2_SETTING:
        cout = _make_divisible(channels * width)
        for r in range(repeats):
            setting = blocks[block]
            block += 1
            stride = first_stride if r == 0 else 1
            cin = net.channels(x)
            if setting.skip:
                if stride != 1 or cin != cout:
                    raise ValueError(f"block b{block} changes the shape (the first of its stage): it cannot be skipped")
                continue
            hidden = round(cin * setting.expansion)
            y = x
            if setting.expansion != 1:
                y = net.conv(f"b{block}.expand", y, hidden, 1, activation="relu6")
            y = net.conv(f"b{block}.dw", y, hidden, setting.kernel, stride=stride, groups=hidden, activation="relu6")
            y = net.conv(f"b{block}.project", y, cout, 1)
            x = net.add(f"b{block}.add", (x, y)) if stride == 1 and cin == cout else y
    x = net.conv("head", x, _make_divisible(1280 * max(1.0, width)), 1, activation="relu6")
    net.dense("fc", net.global_avg_pool("pool", x), num_classes)
    name = _network_name("mobilenet_v2", input_size, num_classes, width)
    return net.build(_variant_name(name, [b.key for b in blocks], [b.key for b in MOBILENET_V2_BLOCKS]))


RESNET18_BLOCKS = (1.0,) * 8
"""Width ratio of each of ResNet-18's 8 basic blocks (the channels of its first conv); 0 drops the block."""


def resnet18(input_size: int = 224, num_classes: int = 1000, blocks: Sequence[float] = RESNET18_BLOCKS) -> Network:
    """ResNet-18 as in torchvision (names `conv1`, `layer2.0.conv1`, `layer2.0.downsample`, ...), ReLU.

    `blocks` sets each basic block's width ratio (its first conv's channels over the stage's), or
    drops it with 0 (only the second block of a stage: the depth choice)."""
    if len(blocks) != len(RESNET18_BLOCKS):
        raise ValueError(f"ResNet-18 has {len(RESNET18_BLOCKS)} blocks, got {len(blocks)} block settings")
    net = _Builder(input_size)
    x = net.conv("conv1", NETWORK_INPUT, 64, 7, stride=2, activation="relu")
    x = net.max_pool("maxpool", x, 3, 2, 1)
    for stage, channels in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            prefix = f"layer{stage}.{b}"
            ratio = blocks[2 * (stage - 1) + b]
            if ratio == 0:
                if b == 0:
                    raise ValueError(f"block {prefix} is the first of its stage: it cannot be dropped")
                continue
            stride = 2 if stage > 1 and b == 0 else 1
            y = net.conv(f"{prefix}.conv1", x, _make_divisible(channels * ratio), 3, stride=stride, activation="relu")
            y = net.conv(f"{prefix}.conv2", y, channels, 3)
            if stride != 1 or net.channels(x) != channels:
                x = net.conv(f"{prefix}.downsample", x, channels, 1, stride=stride)
            x = net.add(f"{prefix}.add", (y, x), activation="relu")
    net.dense("fc", net.global_avg_pool("avgpool", x), num_classes)
    return net.build(_variant_name(_network_name("resnet18", input_size, num_classes), blocks, RESNET18_BLOCKS))


NETWORKS: dict[str, Callable[..., Network]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_32": partial(mobilenet_v2, input_size=SMALL_INPUT_SIZE, num_classes=10),
    "resnet18": resnet18,
}


def get_network(name: str, **kwargs: int | float) -> Network:
    """The built-in network `name`, built with `kwargs` (e.g. `input_size`, `num_classes`)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](**kwargs)


def small_input_variant(name: str, num_classes: int = 10) -> Network:
    """Network `name` at 32x32 input: same layer names, channel widths and strides, smaller shapes."""
    return get_network(name, input_size=SMALL_INPUT_SIZE, num_classes=num_classes)

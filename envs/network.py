"""Networks as plain typed data: a topologically ordered list of layers with shapes.

A `Network` is what every other part of DeployGym reasons about: the search space decides which
choices a layer admits, the cost backends price a layer under a choice, the accuracy oracle builds a
torch model from it. It serialises to JSON and back without loss.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Iterable

Shape = tuple[int, int, int]  # (channels, height, width), batch 1
NETWORK_INPUT = "input"


class Op(str, Enum):
    """What a layer computes. The first four are searchable (they get a per-layer choice)."""

    CONV = "conv"  # dense or grouped convolution with a kernel larger than 1x1 (or strided 1x1)
    POINTWISE = "pointwise"  # 1x1, stride 1, groups 1 convolution (a GEMM)
    DEPTHWISE = "depthwise"  # groups == in_channels, one filter (or multiplier) per channel
    DENSE = "dense"  # fully connected on the flattened input
    POOL = "pool"  # max / avg / global_avg
    ADD = "add"  # elementwise sum of two or more inputs
    CONCAT = "concat"  # channel concatenation
    ACT = "act"  # standalone activation (activations right after a conv are fused into it)
    SCALE = "scale"  # a (C, H, W) tensor times a per-channel (C, 1, 1) one (squeeze-and-excitation)
    AFFINE = "affine"  # per-channel scale and shift: a batch norm that follows no conv (inference form)

    @property
    def searchable(self) -> bool:
        """True for layers whose deployment is chosen per layer."""
        return self in (Op.CONV, Op.POINTWISE, Op.DEPTHWISE, Op.DENSE)


ACTIVATIONS = ("relu", "relu6", "hardswish", "sigmoid", "hardsigmoid", "silu")
POOL_KINDS = ("max", "avg", "global_avg")


@dataclass(frozen=True)
class Layer:
    """One layer of a batch-1 CNN. Shapes are (C, H, W); a dense layer has (features, 1, 1).

    `inputs` name the producing layers (`"input"` is the network input). Convolutions and dense
    layers may carry a fused batch norm and a fused activation, as deployment runtimes fuse them. A
    SCALE layer reads the tensor to scale first, then the per-channel factors. `ceil_mode` (max pools
    only) rounds the output size up, as torch's `MaxPool2d(ceil_mode=True)`.
    """

    name: str
    op: Op
    inputs: tuple[str, ...]
    in_shape: Shape
    out_shape: Shape
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    bias: bool = False
    batch_norm: bool = False
    activation: str | None = None
    pool: str | None = None
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", Op(self.op))
        for name in ("in_shape", "out_shape", "kernel", "stride", "padding", "inputs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"layer {self.name!r}: activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.op is Op.POOL and self.pool not in POOL_KINDS:
            raise ValueError(f"layer {self.name!r}: pool kind {self.pool!r} is not one of {POOL_KINDS}")
        if self.ceil_mode and (self.op is not Op.POOL or self.pool != "max"):
            raise ValueError(f"layer {self.name!r}: ceil_mode is only supported on max pools")
        if self.op is Op.SCALE and len(self.inputs) != 2:
            raise ValueError(f"layer {self.name!r}: a scale reads a tensor and its per-channel factors, got {self.inputs}")
        if self.op in (Op.CONV, Op.POINTWISE, Op.DEPTHWISE):
            self._check_conv_shapes()

    def _check_conv_shapes(self) -> None:
        cin, h, w = self.in_shape
        cout, oh, ow = self.out_shape
        if cin % self.groups or cout % self.groups:
            raise ValueError(f"layer {self.name!r}: groups={self.groups} does not divide {cin}->{cout} channels")
        expect = tuple(
            (size + 2 * pad - k) // s + 1
            for size, pad, k, s in zip((h, w), self.padding, self.kernel, self.stride)
        )
        if expect != (oh, ow):
            raise ValueError(f"layer {self.name!r}: output {oh}x{ow} does not match conv arithmetic {expect}")
        if self.op is Op.DEPTHWISE and self.groups != cin:
            raise ValueError(f"layer {self.name!r}: depthwise needs groups == in_channels ({cin}), got {self.groups}")
        if self.op is Op.POINTWISE and (self.kernel != (1, 1) or self.stride != (1, 1) or self.groups != 1):
            raise ValueError(f"layer {self.name!r}: pointwise needs a 1x1 stride-1 kernel with groups 1")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def in_elements(self) -> int:
        """Elements of the (first) input tensor."""
        return math.prod(self.in_shape)

    @property
    def out_elements(self) -> int:
        """Elements of the output tensor."""
        return math.prod(self.out_shape)

    @property
    def read_elements(self) -> int:
        """Elements read from all inputs together."""
        if self.op is Op.ADD:
            return self.in_elements * len(self.inputs)
        if self.op is Op.CONCAT:
            return self.out_elements
        if self.op is Op.SCALE:
            return self.in_elements + self.in_shape[0]
        return self.in_elements

    @property
    def weight_elements(self) -> int:
        """Number of weights (bias included; a standalone batch norm's scale and shift)."""
        if self.op is Op.AFFINE:
            return 2 * self.in_shape[0]
        if self.op is Op.DENSE:
            return self.in_elements * self.out_shape[0] + (self.out_shape[0] if self.bias else 0)
        if not self.op.searchable:
            return 0
        cin, cout = self.in_shape[0], self.out_shape[0]
        kh, kw = self.kernel
        return cout * (cin // self.groups) * kh * kw + (cout if self.bias else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer as written (no fast algorithm)."""
        if self.op is Op.DENSE:
            return self.in_elements * self.out_shape[0]
        if self.op.searchable:
            kh, kw = self.kernel
            return self.out_elements * (self.in_shape[0] // self.groups) * kh * kw
        if self.op is Op.POOL:
            kh, kw = (self.in_shape[1], self.in_shape[2]) if self.pool == "global_avg" else self.kernel
            return self.out_elements * kh * kw
        return self.out_elements * max(1, len(self.inputs) - 1)

    @property
    def flops(self) -> int:
        """Floating-point operations (2 per MAC)."""
        return 2 * self.macs

    def bytes_moved(self, element_bytes: float) -> float:
        """Compulsory traffic: inputs, weights and output once each at `element_bytes` per element."""
        return (self.read_elements + self.weight_elements + self.out_elements) * element_bytes

    @cached_property
    def signature(self) -> str:
        """What determines this layer's cost, independent of its name (used as a database key; computed once)."""
        parts = [
            self.op.value,
            "x".join(map(str, self.in_shape)),
            "x".join(map(str, self.out_shape)),
            f"k{self.kernel[0]}x{self.kernel[1]}",
            f"s{self.stride[0]}x{self.stride[1]}",
            f"p{self.padding[0]}x{self.padding[1]}",
            f"g{self.groups}",
        ]
        if self.pool:
            parts.append(self.pool)
        if self.ceil_mode:
            parts.append("ceil")
        if self.op in (Op.ADD, Op.CONCAT):
            parts.append(f"n{len(self.inputs)}")
        return ":".join(parts)

    @classmethod
    def from_signature(cls, signature: str) -> "Layer":
        """A layer with the shapes a searchable layer's `signature` names (named after it; no bias,
        batch norm or activation, which the signature leaves out)."""
        try:
            op, cin, cout, kernel, stride, padding, groups = signature.split(":")
            return cls(
                signature, Op(op), (NETWORK_INPUT,), _dims(cin), _dims(cout), _dims(kernel, "k"),
                _dims(stride, "s"), _dims(padding, "p"), int(groups.removeprefix("g")),
            )
        except ValueError as err:
            raise ValueError(f"{signature!r} is not a searchable layer's signature ({err})") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["op"] = self.op.value
        if not self.ceil_mode:  # left out when off, so networks saved before it existed keep their fingerprint
            del d["ceil_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layer":
        """Inverse of `to_dict`."""
        return cls(**d)


@dataclass(frozen=True)
class Network:
    """A batch-1 CNN: input shape, layers in topological order, the last layer is the output."""

    name: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        index: dict[str, int] = {}
        for i, layer in enumerate(self.layers):
            if layer.name in index or layer.name == NETWORK_INPUT:
                raise ValueError(f"network {self.name!r}: duplicate or reserved layer name {layer.name!r}")
            for src in layer.inputs:
                if src != NETWORK_INPUT and src not in index:
                    raise ValueError(
                        f"network {self.name!r}: layer {layer.name!r} reads {src!r}, which is not an earlier layer"
                    )
            index[layer.name] = i
        object.__setattr__(self, "_index", index)
        if not self.layers:
            raise ValueError(f"network {self.name!r} has no layers")

    def __getitem__(self, name: str) -> Layer:
        return self.layers[self._index[name]]

    def producer_shape(self, name: str) -> Shape:
        """Output shape of layer `name`, or the network input shape for `"input"`."""
        return self.input_shape if name == NETWORK_INPUT else self[name].out_shape

    @property
    def searchable_layers(self) -> tuple[Layer, ...]:
        """The layers an episode walks, in order."""
        return tuple(layer for layer in self.layers if layer.op.searchable)

    def consumers(self) -> dict[str, list[str]]:
        """Map from a layer (or `"input"`) to the layers that read it."""
        users: dict[str, list[str]] = {NETWORK_INPUT: []}
        for layer in self.layers:
            users.setdefault(layer.name, [])
            for src in layer.inputs:
                users[src].append(layer.name)
        return users

    @property
    def macs(self) -> int:
        """Total multiply-accumulates."""
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_elements(self) -> int:
        """Total parameters."""
        return sum(layer.weight_elements for layer in self.layers)

    @property
    def num_classes(self) -> int:
        """Width of the output layer."""
        return self.layers[-1].out_shape[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "input_shape": list(self.input_shape), "layers": [l.to_dict() for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Network":
        """Inverse of `to_dict`."""
        return cls(d["name"], tuple(d["input_shape"]), tuple(Layer.from_dict(l) for l in d["layers"]))

    @property
    def fingerprint(self) -> str:
        """Stable hash of the structure (names included), used to key caches of trained weights."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _dims(text: str, tag: str = "") -> tuple[int, ...]:
    """`"k3x3"` with tag "k" -> (3, 3)."""
    return tuple(int(v) for v in text.removeprefix(tag).split("x"))


def conv_output_hw(h: int, w: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Spatial output size of a square convolution or pooling window."""
    return (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1


def conv_op(cin: int, cout: int, kernel: int, stride: int, groups: int) -> Op:
    """Classify a convolution as pointwise, depthwise or general conv."""
    if groups == cin and groups > 1 and cout % cin == 0:
        return Op.DEPTHWISE
    if kernel == 1 and stride == 1 and groups == 1:
        return Op.POINTWISE
    return Op.CONV


def describe(layers: Iterable[Layer]) -> str:
    """One line per layer, for error messages and summaries."""
    return "\n".join(f"{l.name:24s} {l.op.value:9s} {l.in_shape} -> {l.out_shape}" for l in layers)

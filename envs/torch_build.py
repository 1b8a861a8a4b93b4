"""Execute a `Network` in PyTorch: one submodule per layer, run in the network's topological order.

`build_module(network)` returns a `NetworkModule`. Each layer is a submodule of `NetworkModule.layers`
(an `nn.ModuleDict` keyed by a sanitised layer name); `module_for(name)` returns the `nn.Conv2d` or
`nn.Linear` of a searchable layer, which is what quantisation hooks and weight swaps act on.
Convolutions and dense layers carry their fused batch norm and activation as in the `Network`;
`fold_batch_norm` folds the batch norms into the weights, as a deployment runtime does.

Tensors between layers are always 4-D `(N, C, H, W)`; a dense layer flattens its producer and emits
`(N, features, 1, 1)`. The module's output is the last layer's tensor flattened to `(N, C*H*W)`,
i.e. the logits `(N, num_classes)` of a classifier.
"""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from envs.network import NETWORK_INPUT, Layer, Network, Op

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
}


def activation_module(name: str | None, inplace: bool = False) -> nn.Module:
    """The activation module; `inplace` only where the input is a fresh tensor nobody else reads."""
    if name is None:
        return nn.Identity()
    return nn.Sigmoid() if name == "sigmoid" else _ACTIVATIONS[name](inplace=inplace)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution that runs as a matrix product on small channels-last maps.

    On a channels-last tensor a pointwise convolution is a GEMM over (N*H*W, C); for the small maps at
    the end of a network (H*W <= `GEMM_MAX_PIXELS`) that is about three times faster on CPU than
    the convolution kernel, with the same result up to rounding order. Still an `nn.Conv2d`: hooks,
    weights and state dicts are unchanged.
    """

    GEMM_MAX_PIXELS = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h * w > self.GEMM_MAX_PIXELS or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        y = F.linear(x.permute(0, 2, 3, 1).reshape(-1, c), self.weight.view(self.out_channels, c), self.bias)
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)


class ConvLayer(nn.Module):
    """Convolution with its fused batch norm and activation (CONV, POINTWISE, DEPTHWISE)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        cin, cout = layer.in_shape[0], layer.out_shape[0]
        conv = PointwiseConv2d if layer.op is Op.POINTWISE else nn.Conv2d
        self.conv = conv(cin, cout, layer.kernel, layer.stride, layer.padding, groups=layer.groups, bias=layer.bias)
        self.bn: nn.Module = nn.BatchNorm2d(cout) if layer.batch_norm else nn.Identity()
        self.act = activation_module(layer.activation, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DenseLayer(nn.Module):
    """Fully connected layer on the flattened input, with its fused batch norm and activation."""

    def __init__(self, layer: Layer, in_features: int) -> None:
        super().__init__()
        out = layer.out_shape[0]
        self.linear = nn.Linear(in_features, out, bias=layer.bias)
        self.bn: nn.Module = nn.BatchNorm1d(out) if layer.batch_norm else nn.Identity()
        self.act = activation_module(layer.activation, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.linear(x.flatten(1))))
        return y[:, :, None, None]


class AddLayer(nn.Module):
    """Elementwise sum of all inputs, then the layer's activation."""

    def __init__(self, activation: str | None) -> None:
        super().__init__()
        self.act = activation_module(activation)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return self.act(total)


class ScaleLayer(nn.Module):
    """A tensor times per-channel factors (squeeze-and-excitation's rescale)."""

    def forward(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return x * factors


class AffineLayer(nn.Module):
    """A batch norm that follows no convolution (a per-channel affine at inference), then the layer's activation."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(layer.in_shape[0])
        self.act = activation_module(layer.activation, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConcatLayer(nn.Module):
    """Channel concatenation of all inputs."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


def _pool(layer: Layer) -> nn.Module:
    if layer.pool == "global_avg":
        return nn.AdaptiveAvgPool2d(1)
    if layer.pool == "max":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
    return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)


def _check_inputs(network: Network, layer: Layer) -> None:
    """The producers' shapes must be what the layer declares it reads."""
    shapes = [network.producer_shape(src) for src in layer.inputs]
    if not shapes:
        raise ValueError(f"layer {layer.name!r} has no inputs")
    if layer.op is Op.DENSE:
        ok = math.prod(shapes[0]) == layer.in_shape[0]
    elif layer.op is Op.CONCAT:
        ok = sum(s[0] for s in shapes) == layer.out_shape[0] and all(s[1:] == layer.out_shape[1:] for s in shapes)
    elif layer.op is Op.ADD:
        ok = all(s == layer.out_shape for s in shapes)
    elif layer.op is Op.SCALE:
        ok = shapes == [layer.in_shape, (layer.in_shape[0], 1, 1)]
    else:
        ok = shapes[0] == layer.in_shape
    if not ok:
        raise ValueError(
            f"layer {layer.name!r} ({layer.op.value}, in {layer.in_shape}, out {layer.out_shape}) "
            f"cannot read producers {dict(zip(layer.inputs, shapes))}"
        )


def _layer_module(network: Network, layer: Layer) -> nn.Module:
    _check_inputs(network, layer)
    if layer.op in (Op.CONV, Op.POINTWISE, Op.DEPTHWISE):
        return ConvLayer(layer)
    if layer.op is Op.DENSE:
        return DenseLayer(layer, layer.in_shape[0])
    if layer.op is Op.POOL:
        return _pool(layer)
    if layer.op is Op.ADD:
        return AddLayer(layer.activation)
    if layer.op is Op.CONCAT:
        return ConcatLayer()
    if layer.op is Op.SCALE:
        return ScaleLayer()
    if layer.op is Op.AFFINE:
        return AffineLayer(layer)
    return activation_module(layer.activation)


class NetworkModule(nn.Module):
    """The `Network` as an `nn.Module`; input `(N, C, H, W)` or `(C, H, W)`, output `(N, C*H*W)` of the last layer."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network
        self.layers = nn.ModuleDict()
        self._keys: dict[str, str] = {}
        for layer in network.layers:
            key = self._free_key(layer.name)
            self.layers[key] = _layer_module(network, layer)
            self._keys[layer.name] = key
        self._plan = self._execution_plan()

    def _free_key(self, name: str) -> str:
        """A ModuleDict key for `name`: no dots, no clash with another key or a module attribute."""
        base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
        key, n = base, 1
        while key in self.layers or hasattr(self.layers, key):
            key, n = f"{base}_{n}", n + 1
        return key

    def _execution_plan(self) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
        """Per layer: (name, module key, inputs, tensors no longer needed afterwards)."""
        last_use: dict[str, int] = {}
        for i, layer in enumerate(self.network.layers):
            for src in layer.inputs:
                last_use[src] = i
        output = self.network.layers[-1].name
        plan = []
        for i, layer in enumerate(self.network.layers):
            done = tuple(src for src in dict.fromkeys(layer.inputs) if last_use[src] == i and src != output)
            plan.append((layer.name, self._keys[layer.name], layer.inputs, done))
        return plan

    def key_for(self, layer_name: str) -> str:
        """The `layers` key of a layer."""
        try:
            return self._keys[layer_name]
        except KeyError:
            raise KeyError(f"network {self.network.name!r} has no layer {layer_name!r}") from None

    def layer_module(self, layer_name: str) -> nn.Module:
        """The whole submodule of a layer (e.g. a `ConvLayer` with its batch norm and activation)."""
        return self.layers[self.key_for(layer_name)]

    def module_for(self, layer_name: str) -> nn.Conv2d | nn.Linear:
        """The `nn.Conv2d` or `nn.Linear` that carries the weights of a searchable layer."""
        module = self.layer_module(layer_name)
        if isinstance(module, ConvLayer):
            return module.conv
        if isinstance(module, DenseLayer):
            return module.linear
        searchable = [layer.name for layer in self.network.searchable_layers]
        raise ValueError(f"layer {layer_name!r} is not searchable; searchable layers are {searchable}")

    def live_after_steps(self) -> list[tuple[str, ...]]:
        """For each layer in execution order, the tensors still alive once it has run."""
        live: dict[str, None] = {NETWORK_INPUT: None}
        out = []
        for name, _, _, done in self._plan:
            live[name] = None
            for src in done:
                del live[src]
            out.append(tuple(live))
        return out

    def run_steps(self, tensors: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
        """Run layers `start` to `stop - 1` (execution order) on the live `tensors`, updated and returned."""
        for name, key, inputs, done in self._plan[start:stop]:
            tensors[name] = self.layers[key](*(tensors[src] for src in inputs))
            for src in done:
                del tensors[src]
        return tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        tensors = self.run_steps({NETWORK_INPUT: x}, 0, len(self._plan))
        return tensors[self.network.layers[-1].name].flatten(1)


def build_module(network: Network) -> NetworkModule:
    """An `nn.Module` that executes `network` (freshly initialised weights)."""
    return NetworkModule(network)


def _fold_into(weights: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the preceding convolution or linear layer, in place."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = weights.bias.detach() if weights.bias is not None else torch.zeros_like(scale)
    shape = (-1,) + (1,) * (weights.weight.dim() - 1)
    weights.weight = nn.Parameter(weights.weight.detach() * scale.reshape(shape))
    weights.bias = nn.Parameter(bn.bias.detach() + (bias - bn.running_mean) * scale)


def fold_batch_norm(module: NetworkModule) -> NetworkModule:
    """A copy of `module` in eval mode with every fused batch norm folded into its weights and bias."""
    folded = copy.deepcopy(module).eval()
    for layer in folded.network.searchable_layers:
        block = folded.layer_module(layer.name)
        if isinstance(block.bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            _fold_into(folded.module_for(layer.name), block.bn)
            block.bn = nn.Identity()
    return folded

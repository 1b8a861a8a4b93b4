"""Import a CNN written as a `torch.nn.Module` into a `Network`.

The module is traced with `torch.fx.symbolic_trace` (so layers keep their module paths as names) and
its shapes come from one batch-1 forward pass (`ShapeProp`). Each graph node becomes at most one layer:
convolutions, dense layers, pools, adds and concats become layers; a batch norm directly after a conv
and an activation after a conv, dense, add or standalone batch norm (each the only reader of that
output) are fused into it; any other batch norm is a per-channel affine layer (as in pre-activation
networks); a tensor times per-channel factors (squeeze-and-excitation) is a scale layer; dropout,
identity, torchvision's stochastic depth at inference, arithmetic on shapes and the flatten before a
dense layer vanish. An adaptive average pool
is a global pool, a plain average pool when its output divides its input, or nothing when it keeps
the size (AlexNet's and VGG's at 224x224). A tensor multiplied by zero (NAS-Bench-
201's `none` op) is a zero branch: it costs nothing, and an add drops it (an add left with one input
forwards it, so `sum([x.mul(0), conv(x)])` is the conv alone). Python's `sum()` of n tensors (traced as
`0 + a + b + ...`) is n-1 two-input adds. Anything else raises `UnsupportedOpError`, naming the op and
the node, before the module is run.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from envs.network import NETWORK_INPUT, Layer, Network, Op, Shape, conv_op

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d, ReLU, ReLU6, Hardswish, Hardsigmoid, Sigmoid, SiLU, MaxPool2d (ceil_mode too), "
    "AvgPool2d, AdaptiveAvgPool2d to a size dividing its input, mean over (H, W), add (also sum() of tensors), "
    "multiplication by per-channel (1, C, 1, 1) factors, cat on channels, flatten/view/reshape before a Linear, "
    "Identity, Dropout, multiplication by 0 (a zero branch)"
)

_ACTIVATION_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu",
}
_ACTIVATION_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
    torch.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid", F.silu: "silu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_MUL_FUNCTIONS = (operator.mul, operator.imul, torch.mul)
ZERO = "<zero>"
"""The value of a zero branch (a tensor times 0): no layer produces it."""
_CAT_FUNCTIONS = (torch.cat, torch.concat)
_RESHAPE_FUNCTIONS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("flatten", "view", "reshape")
# Node kinds that forward their input's value without becoming a layer
_FORWARDING = ("pass", "reshape", "batch_norm")
_FUSE_ACTIVATION_INTO = (Op.CONV, Op.POINTWISE, Op.DEPTHWISE, Op.DENSE, Op.ADD, Op.AFFINE)
_SHAPE_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv)


class UnsupportedOpError(ValueError):
    """The module uses an op that has no `Layer` equivalent; the message names the op and the node."""

    def __init__(self, op: str, node: fx.Node, reason: str = "") -> None:
        where = node.target if node.op == "call_module" else node.name
        detail = f" ({reason})" if reason else ""
        super().__init__(f"unsupported op {op} at node {where!r}{detail}; supported: {SUPPORTED}")
        self.op = op


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A readable name for what `node` calls, e.g. `torch.nn.LSTM`, `torch.sort`, `Tensor.view`."""
    if node.op == "call_module":
        cls = type(modules[node.target])
        exported = getattr(nn, cls.__name__, None) is cls
        return f"torch.nn.{cls.__name__}" if exported else f"{cls.__module__}.{cls.__qualname__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or "?"
        return f"{module.lstrip('_')}.{getattr(node.target, '__name__', node.target)}"
    return f"{node.op} {node.target}"


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    """Argument `key` of a call, given positionally at `index` or by keyword."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    """A (height, width) pair from an int or a 2-tuple."""
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _is_global_mean(node: fx.Node) -> bool:
    """`x.mean((2, 3))` or `torch.mean(x, dim=[-2, -1])`, with or without keepdim."""
    dims = _arg(node, 1, "dim")
    return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]


def _times_zero(node: fx.Node) -> bool:
    """`x * 0`, `x.mul(0.)`, `torch.mul(x, 0)`: one tensor times the constant 0."""
    if len(node.args) != 2 or node.kwargs:
        return False
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    constants = [a for a in node.args if not isinstance(a, fx.Node)]
    return len(tensors) == 1 and constants == [0]


def _is_inference_stochastic_depth(node: fx.Node) -> bool:
    """torchvision's `stochastic_depth(x, p, mode, training=False)` (EfficientNet): the identity."""
    target = node.target
    named = getattr(target, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(target, "__module__", "")
    return named and _arg(node, 3, "training", True) is False


def _on_shapes(node: fx.Node) -> bool:
    """Arithmetic on shape values only (`channels // groups`): computes no tensor."""
    nodes = [a for a in node.args if isinstance(a, fx.Node)]
    return node.target in _SHAPE_ARITHMETIC and bool(nodes) and all(n.meta.get("kind") == "shape" for n in nodes)


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """What `node` becomes: a layer kind, a forwarding kind, or raise `UnsupportedOpError`."""
    if node.op in ("placeholder", "output"):
        return node.op
    if node.op == "get_attr":
        return "constant"
    target = node.target
    if node.op == "call_module":
        module = modules[target]
        if isinstance(module, nn.Conv2d):
            return "conv"
        if isinstance(module, nn.Linear):
            return "dense"
        if isinstance(module, nn.BatchNorm2d):
            return "batch_norm"
        if type(module) in _ACTIVATION_MODULES:
            return "activation"
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return "pool"
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return "adaptive_pool"
        if isinstance(module, _PASS_MODULES):
            return "pass"
        if isinstance(module, nn.Flatten):
            return "reshape"
    elif node.op == "call_function":
        if _on_shapes(node):
            return "shape"
        if target in _ACTIVATION_FUNCTIONS:
            return "activation"
        if target in _ADD_FUNCTIONS:
            return "add"
        if target in _MUL_FUNCTIONS:
            return "zero" if _times_zero(node) else "scale"
        if target in _CAT_FUNCTIONS:
            return "concat"
        if target in _RESHAPE_FUNCTIONS:
            return "reshape"
        if target is F.dropout or _is_inference_stochastic_depth(node):
            return "pass"
        if target is F.adaptive_avg_pool2d:
            return "adaptive_pool"
        if target is torch.mean and _is_global_mean(node):
            return "global_pool"
        if target is getattr and node.args[1] == "shape":
            return "shape"
        if target is operator.getitem and getattr(node.args[0], "meta", {}).get("kind") == "shape":
            return "shape"
    elif node.op == "call_method":
        if target in _ACTIVATION_METHODS:
            return "activation"
        if target in ("add", "add_"):
            return "add"
        if target in ("mul", "mul_"):
            return "zero" if _times_zero(node) else "scale"
        if target in _RESHAPE_METHODS:
            return "reshape"
        if target == "mean" and _is_global_mean(node):
            return "global_pool"
        if target == "size":
            return "shape"
    raise UnsupportedOpError(_op_name(node, modules), node)


def _shape(node: fx.Node) -> Shape:
    """The batch-1 (C, H, W) shape of a node's tensor; a (1, F) tensor is (F, 1, 1)."""
    dims = tuple(node.meta["tensor_meta"].shape)
    if dims[0] != 1 or len(dims) not in (2, 4):
        raise ValueError(f"node {node.name!r}: expected a (1, C, H, W) or (1, F) tensor, got {dims}")
    return (dims[1], 1, 1) if len(dims) == 2 else dims[1:]


class _Importer:
    """Walks a shape-annotated fx graph once, turning nodes into layers."""

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module], input_shape: Shape) -> None:
        self.modules = modules
        self.input_shape = input_shape
        self.layers: dict[str, Layer] = {}
        self.value: dict[fx.Node, str] = {}  # node -> layer producing its value ("input" for the network input)
        self.flattened: dict[fx.Node, fx.Node] = {}  # node -> the reshape that flattened its value
        self.layer_node: dict[str, fx.Node] = {}  # layer -> the node that created it
        for node in graph.nodes:
            getattr(self, f"_{node.meta['kind']}")(node)

    # ---- helpers ---------------------------------------------------------------------------------
    def _op(self, node: fx.Node) -> str:
        return _op_name(node, self.modules)

    def _inputs(self, node: fx.Node, allow_flat: bool = False, allow_zero: bool = False) -> list[fx.Node]:
        """The tensor-valued input nodes; a flattened value may only feed a dense layer, a zero branch an add."""
        inputs = [n for n in node.all_input_nodes if n.meta["kind"] != "shape"]
        for n in inputs:
            if self.value.get(n) == ZERO and not allow_zero:
                raise UnsupportedOpError(self._op(node), node, f"it reads {n.name!r}, a tensor that is always zero")
            if n.meta["kind"] == "constant":
                raise UnsupportedOpError(self._op(node), node, f"it reads the parameter or buffer {n.target!r}")
            if n in self.flattened and not allow_flat:
                reshape = self.flattened[n]
                raise UnsupportedOpError(self._op(reshape), reshape, "a flatten/view/reshape may only feed a Linear")
        return inputs

    def _producer_shape(self, name: str) -> Shape:
        return self.input_shape if name == NETWORK_INPUT else self.layers[name].out_shape

    def _readers(self, node: fx.Node, reader: fx.Node) -> list[fx.Node]:
        """The nodes that read `node`'s value, looking through forwarding nodes other than `reader`."""
        readers = []
        for user in node.users:
            forwards = user.meta["kind"] in _FORWARDING and user is not reader
            readers.extend(self._readers(user, reader) if forwards else [user])
        return readers

    def _fusion_target(self, node: fx.Node, ops: tuple[Op, ...]) -> Layer | None:
        """The layer `node` can be fused into: of op `ops`, nothing fused after it yet, read only by `node`."""
        (src,) = self._inputs(node)
        name = self.value[src]
        if name in (NETWORK_INPUT, ZERO) or self.layers[name].op not in ops or self.layers[name].activation:
            return None
        return self.layers[name] if self._readers(self.layer_node[name], node) == [node] else None

    def _add_layer(self, node: fx.Node, **fields: Any) -> None:
        base = str(node.target) if node.op == "call_module" else node.name
        name, k = base, 0
        while name in self.layers or name == NETWORK_INPUT:
            k += 1
            name = f"{base}_{k}"
        self.layers[name] = Layer(name=name, **fields)
        self.value[node] = name
        self.layer_node[name] = node

    def _replace(self, node: fx.Node, layer: Layer, **changes: Any) -> None:
        """Fuse `node` into `layer`."""
        self.layers[layer.name] = dataclasses.replace(layer, **changes)
        self.value[node] = layer.name

    # ---- one method per node kind ----------------------------------------------------------------
    def _placeholder(self, node: fx.Node) -> None:
        self.value[node] = NETWORK_INPUT

    def _output(self, node: fx.Node) -> None:
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise ValueError(f"the module must return a single tensor, got {result!r}")
        if self.value.get(result) != next(reversed(self.layers), None):
            raise ValueError(f"the module's output {result.name!r} is not its last layer")

    def _shape(self, node: fx.Node) -> None:
        """Shape queries (`x.size(0)`, `x.shape[0]`) feed reshapes; they compute nothing."""

    def _constant(self, node: fx.Node) -> None:
        """Parameters and buffers read as tensors; any layer reading one is rejected in `_inputs`."""

    def _pass(self, node: fx.Node) -> None:
        (src,) = self._inputs(node, allow_flat=True)
        self.value[node] = self.value[src]
        if src in self.flattened:
            self.flattened[node] = self.flattened[src]

    def _reshape(self, node: fx.Node) -> None:
        src = self._inputs(node, allow_flat=True)[0]
        dims = tuple(node.meta["tensor_meta"].shape)
        if len(dims) != 2 or dims[0] != 1:
            raise UnsupportedOpError(self._op(node), node, f"only a flatten to (1, features) is supported, got {dims}")
        self.value[node] = self.value[src]
        self.flattened[node] = self.flattened.get(src, node)

    def _conv(self, node: fx.Node) -> None:
        conv: nn.Conv2d = self.modules[node.target]
        (src,) = self._inputs(node)
        kernel, stride = _pair(conv.kernel_size), _pair(conv.stride)
        if _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
            raise UnsupportedOpError(self._op(node), node, "dilation and non-zero padding modes are not supported")
        if conv.padding == "valid":
            padding = (0, 0)
        elif conv.padding == "same":
            if any(k % 2 == 0 for k in kernel):
                raise UnsupportedOpError(self._op(node), node, "padding='same' with an even kernel is asymmetric")
            padding = (kernel[0] // 2, kernel[1] // 2)
        else:
            padding = _pair(conv.padding)
        in_shape = _shape(src)
        op = conv_op(in_shape[0], conv.out_channels, 1 if kernel == (1, 1) else max(kernel),
                     1 if stride == (1, 1) else max(stride), conv.groups)
        self._add_layer(
            node, op=op, inputs=(self.value[src],), in_shape=in_shape, out_shape=_shape(node), kernel=kernel,
            stride=stride, padding=padding, groups=conv.groups, bias=conv.bias is not None,
        )

    def _dense(self, node: fx.Node) -> None:
        linear: nn.Linear = self.modules[node.target]
        (src,) = self._inputs(node, allow_flat=True)
        if len(src.meta["tensor_meta"].shape) != 2:
            raise UnsupportedOpError(self._op(node), node, "a Linear must read a flattened (1, features) tensor")
        name = self.value[src]
        c, h, w = self._producer_shape(name)
        self._add_layer(
            node, op=Op.DENSE, inputs=(name,), in_shape=(c * h * w, 1, 1), out_shape=_shape(node),
            bias=linear.bias is not None,
        )

    def _batch_norm(self, node: fx.Node) -> None:
        conv = self._fusion_target(node, (Op.CONV, Op.POINTWISE, Op.DEPTHWISE))
        if conv is not None and not conv.batch_norm:
            self._replace(node, conv, batch_norm=True)
            return
        (src,) = self._inputs(node)
        shape = _shape(src)
        self._add_layer(node, op=Op.AFFINE, inputs=(self.value[src],), in_shape=shape, out_shape=shape)

    def _activation(self, node: fx.Node) -> None:
        if node.op == "call_module":
            kind = _ACTIVATION_MODULES[type(self.modules[node.target])]
        elif node.op == "call_function":
            kind = _ACTIVATION_FUNCTIONS[node.target]
        else:
            kind = _ACTIVATION_METHODS[node.target]
        layer = self._fusion_target(node, _FUSE_ACTIVATION_INTO)
        if layer is not None:
            self._replace(node, layer, activation=kind)
            return
        (src,) = self._inputs(node)
        shape = _shape(src)
        self._add_layer(node, op=Op.ACT, inputs=(self.value[src],), in_shape=shape, out_shape=shape, activation=kind)

    def _pool(self, node: fx.Node) -> None:
        pool: nn.MaxPool2d | nn.AvgPool2d = self.modules[node.target]
        (src,) = self._inputs(node)
        is_max = isinstance(pool, nn.MaxPool2d)
        if _pair(getattr(pool, "dilation", 1)) != (1, 1):
            raise UnsupportedOpError(self._op(node), node, "dilation is not supported")
        if pool.ceil_mode and not is_max:
            raise UnsupportedOpError(self._op(node), node, "ceil_mode is supported on max pools only")
        self._add_layer(
            node, op=Op.POOL, inputs=(self.value[src],), in_shape=_shape(src), out_shape=_shape(node),
            kernel=_pair(pool.kernel_size), stride=_pair(pool.stride or pool.kernel_size), padding=_pair(pool.padding),
            pool="max" if is_max else "avg", ceil_mode=bool(pool.ceil_mode),
        )

    def _adaptive_pool(self, node: fx.Node) -> None:
        """A global pool, an average pool with kernel = stride = input / output, or nothing at equal sizes."""
        (src,) = self._inputs(node)
        (c, h, w), (_, oh, ow) = _shape(src), _shape(node)
        if (oh, ow) == (1, 1):
            self._global_pool(node)
        elif (oh, ow) == (h, w):
            self.value[node] = self.value[src]
        elif h % oh or w % ow:
            raise UnsupportedOpError(self._op(node), node, f"output {oh}x{ow} does not divide the input {h}x{w}")
        else:
            kernel = (h // oh, w // ow)
            self._add_layer(node, op=Op.POOL, inputs=(self.value[src],), in_shape=(c, h, w), out_shape=(c, oh, ow),
                            kernel=kernel, stride=kernel, pool="avg")

    def _global_pool(self, node: fx.Node) -> None:
        (src,) = self._inputs(node)
        in_shape = _shape(src)
        self._add_layer(
            node, op=Op.POOL, inputs=(self.value[src],), in_shape=in_shape, out_shape=(in_shape[0], 1, 1),
            pool="global_avg",
        )

    def _scale(self, node: fx.Node) -> None:
        """A feature map times per-channel factors, in either order."""
        srcs = self._inputs(node)
        shapes = [tuple(n.meta["tensor_meta"].shape) for n in srcs]
        if len(srcs) != 2 or node.kwargs or len(node.args) != 2 or any(len(d) != 4 for d in shapes):
            raise UnsupportedOpError(self._op(node), node, "only a (1, C, H, W) tensor times (1, C, 1, 1) factors")
        x, factors = srcs if shapes[1][2:] == (1, 1) else srcs[::-1]
        if tuple(factors.meta["tensor_meta"].shape) != (1, _shape(x)[0], 1, 1):
            raise UnsupportedOpError(self._op(node), node, f"only a (1, C, H, W) tensor times (1, C, 1, 1) factors, got {shapes}")
        self._add_layer(node, op=Op.SCALE, inputs=(self.value[x], self.value[factors]), in_shape=_shape(x),
                        out_shape=_shape(x))

    def _zero(self, node: fx.Node) -> None:
        """A tensor times 0: a zero branch (module docstring)."""
        self._inputs(node, allow_zero=True)
        self.value[node] = ZERO

    def _add(self, node: fx.Node) -> None:
        self._inputs(node, allow_zero=True)
        srcs = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        constants = [a for a in node.args[:2] if not isinstance(a, fx.Node)]
        if constants not in ([], [0]) or _arg(node, 2, "alpha", 1) != 1:
            raise UnsupportedOpError(self._op(node), node, "only a sum of tensors is supported (no constants but sum()'s 0)")
        srcs = [n for n in srcs if self.value[n] != ZERO]
        if len(srcs) < 2:  # a zero branch or sum()'s starting 0 dropped: the add forwards what is left
            self.value[node] = self.value[srcs[0]] if srcs else ZERO
            return
        shapes = {tuple(n.meta["tensor_meta"].shape) for n in srcs}
        if len(shapes) != 1:
            raise UnsupportedOpError(self._op(node), node, f"broadcasting add of shapes {sorted(shapes)}")
        self._add_layer(
            node, op=Op.ADD, inputs=tuple(self.value[n] for n in srcs), in_shape=_shape(srcs[0]),
            out_shape=_shape(node),
        )

    def _concat(self, node: fx.Node) -> None:
        parts = list(_arg(node, 0, "tensors"))
        self._inputs(node)
        if len(parts) == 1:  # DenseNet's first layer concatenates a list of one
            self.value[node] = self.value[parts[0]]
            return
        if _arg(node, 1, "dim", 0) not in (1, -3) or len(node.meta["tensor_meta"].shape) != 4:
            raise UnsupportedOpError(self._op(node), node, "only concatenation of (1, C, H, W) tensors on channels")
        self._add_layer(
            node, op=Op.CONCAT, inputs=tuple(self.value[n] for n in parts), in_shape=_shape(parts[0]),
            out_shape=_shape(node),
        )


def import_module(module: nn.Module, input_shape: tuple[int, int, int], name: str | None = None) -> Network:
    """Trace `module` at batch-1 input `input_shape` (C, H, W) into a `Network` named `name` (default: class name)."""
    try:
        graph_module = fx.symbolic_trace(module)
    except Exception as error:  # fx raises TraceError, TypeError, NotImplementedError, ...
        raise ValueError(f"cannot trace {type(module).__name__} with torch.fx: {error}") from error
    graph_module.graph.eliminate_dead_code()
    modules = dict(graph_module.named_modules())
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"{type(module).__name__}.forward must take exactly one tensor, takes {len(placeholders)}")
    for node in graph_module.graph.nodes:
        node.meta["kind"] = _kind(node, modules)

    parameter = next(module.parameters(), torch.empty(0))
    example = torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device)
    modes = {m: m.training for m in module.modules()}
    try:
        graph_module.eval()  # batch-1 batch norm only runs in eval mode
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    finally:
        for m, training in modes.items():
            m.training = training

    importer = _Importer(graph_module.graph, modules, tuple(input_shape))
    return Network(name or type(module).__name__, tuple(input_shape), tuple(importer.layers.values()))

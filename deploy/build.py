"""A whole deployment as one TVM module: every searchable layer runs the kernel the search measured.

`network_module` chains, in a Relax function `main(image) -> logits`:
- each searchable layer as a `call_tir` of its kernel (`deploy.tvm_kernels.build_module`: the same
  scheduled TIR, algorithm, precision, schedule and threads that were timed), with the network's
  trained weights from the accuracy oracle (`LayerNumerics`): fp32 as trained, fp16 cast, int8
  quantised per output channel with the oracle's scales (int32 bias, per-channel requantisation to
  the output tensor's scale), Winograd weights transformed ahead of time;
- the non-searchable layers (pools, adds, concatenations, scales, activations, standalone batch norms
  with the oracle's trained statistics) as Relax operators in fp32, as the oracle runs them;
- the format conversions between them (fp32 <-> fp16 casts; int8 quantise at the reading layer's
  input scale, dequantise at the producer's output scale), each tensor converted once per format.
Weights are constants inside the module. The numerics are the oracle's (`envs.accuracy`), so the
module's outputs are the fake-quantised torch model's up to float rounding.

`compile_network` compiles it: the kernels stay as they were timed (opaque to fusion), and each chain
of fixed layers and conversions between two kernels fuses into one pass (e.g. dequantise both
inputs, add, ReLU, quantise for the next layer), parallel over its leading spatial loops on the
pool's threads (the cost model prices it as one streaming pass on its layer's threads: where a layer
runs on fewer threads than the pool, its fixed layers get more than priced).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Protocol

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

from deploy.tvm_kernels import HOST_TARGET, build_module, kernel_spec
from deploy.tvm_schedules import WINOGRAD, winograd_weight
from envs.accuracy import LayerNumerics
from envs.network import NETWORK_INPUT, Layer, Network, Op
from envs.space import Choice


BUILD_REVISION = 3
"""Changes whenever the module a deployment builds into does, so whole-network timings of an older build
are not reused (2: fixed layers fused and parallel; 3: one thread pool, each kernel on its own threads in it)."""


class NumericsSource(Protocol):
    """Where a build takes each searchable layer's weights and scales (the accuracy oracle), and each
    standalone batch norm's per-channel (scale, shift)."""

    def layer_numerics(self, name: str) -> LayerNumerics: ...

    def affine_numerics(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...


def kernel_arguments(layer: Layer, choice: Choice, numerics: LayerNumerics) -> list[np.ndarray]:
    """The kernel's constant arguments after the data, in call order: weight, bias[, requant]."""
    weight = numerics.weight.reshape(kernel_spec(layer, choice).inputs[1].shape) if layer.op is Op.DENSE else numerics.weight
    if choice.quant == "int8":
        scales = numerics.weight_scales.astype(np.float64)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        weight = np.clip(np.rint(weight / scales.reshape(shape)), -127, 127).astype(np.int8)
        acc_scale = numerics.input_scale * scales
        bias = np.rint(numerics.bias / acc_scale).astype(np.int32)
        extra = [np.append(acc_scale, 1.0 / numerics.output_scale).astype(np.float32)]
    else:
        dtype = np.float16 if choice.quant == "fp16" else np.float32
        weight, bias, extra = weight.astype(dtype), numerics.bias.astype(dtype), []
    if choice.algo in WINOGRAD:
        weight = winograd_weight(weight, choice.algo, choice.quant)
    return [weight, bias, *extra]


def _activation(x: relax.Expr, name: str | None) -> relax.Expr:
    if name is None:
        return x
    if name == "relu":
        return relax.op.nn.relu(x)
    if name == "relu6":
        return relax.op.clip(x, relax.prim_value(0.0), relax.prim_value(6.0))
    if name == "hardswish":
        return relax.op.multiply(x, _activation(x, "hardsigmoid"))
    if name == "sigmoid":
        return relax.op.sigmoid(x)
    if name == "hardsigmoid":
        gate = relax.op.clip(relax.op.add(x, relax.const(3.0)), relax.prim_value(0.0), relax.prim_value(6.0))
        return relax.op.divide(gate, relax.const(6.0))
    if name == "silu":
        return relax.op.multiply(x, relax.op.sigmoid(x))
    raise ValueError(f"activation {name!r} has no Relax operator here")


def _fixed_layer(layer: Layer, inputs: list[relax.Expr], numerics: NumericsSource) -> relax.Expr:
    """A non-searchable layer in fp32."""
    if layer.op is Op.POOL:
        (x,) = inputs
        if layer.pool == "global_avg":
            return relax.op.mean(x, axis=[2, 3], keepdims=True)
        if layer.pool == "max":
            return relax.op.nn.max_pool2d(x, layer.kernel, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
        return relax.op.nn.avg_pool2d(x, layer.kernel, layer.stride, layer.padding, count_include_pad=True)  # as torch's
    if layer.op is Op.ADD:
        total = inputs[0]
        for x in inputs[1:]:
            total = relax.op.add(total, x)
        return _activation(total, layer.activation)
    if layer.op is Op.CONCAT:
        return relax.op.concat(inputs, axis=1)
    if layer.op is Op.ACT:
        return _activation(inputs[0], layer.activation)
    if layer.op is Op.SCALE:
        return relax.op.multiply(*inputs)
    if layer.op is Op.AFFINE:
        scale, shift = (relax.const(v.reshape(1, -1, 1, 1).astype(np.float32)) for v in numerics.affine_numerics(layer.name))
        return _activation(relax.op.add(relax.op.multiply(inputs[0], scale), shift), layer.activation)
    raise ValueError(f"layer {layer.name!r}: {layer.op.value} is not a fixed layer")


class _Graph:
    """The tensors emitted so far, each in the formats asked for (converted once per format)."""

    def __init__(self, bb: relax.BlockBuilder, image: relax.Var) -> None:
        self.bb = bb
        self.tensors: dict[str, dict[str, relax.Expr]] = {NETWORK_INPUT: {"fp32": image}}
        self.scales: dict[str, float] = {}
        """int8 tensors: the scale they are stored at."""

    def put(self, name: str, precision: str, value: relax.Expr, scale: float | None = None) -> None:
        self.tensors[name] = {precision: self.bb.emit(value)}
        if scale is not None:
            self.scales[name] = scale

    def get(self, name: str, precision: str, scale: float | None = None) -> relax.Expr:
        """Tensor `name` in `precision` (int8: at `scale`, which must be the one it is stored at when it is int8)."""
        forms = self.tensors[name]
        if precision in forms:
            if precision == "int8" and not np.isclose(self.scales[name], scale, rtol=1e-6):
                raise ValueError(f"tensor {name!r} is int8 at scale {self.scales[name]} but is read at {scale}")
            return forms[precision]
        if "fp32" not in forms:  # dequantise or widen first
            (stored, value), = forms.items()
            if stored == "int8":
                value = relax.op.multiply(relax.op.astype(value, "float32"), relax.const(self.scales[name], "float32"))
            else:
                value = relax.op.astype(value, "float32")
            forms["fp32"] = self.bb.emit(value)
        fp32 = forms["fp32"]
        if precision == "fp16":
            forms["fp16"] = self.bb.emit(relax.op.astype(fp32, "float16"))
        elif precision == "int8":
            q = relax.op.round(relax.op.multiply(fp32, relax.const(1.0 / scale, "float32")))
            forms["int8"] = self.bb.emit(relax.op.astype(relax.op.clip(q, relax.prim_value(-128.0), relax.prim_value(127.0)), "int8"))
            self.scales[name] = scale
        return forms[precision]


def layer_threads(network: Network, choices: Mapping[str, Choice]) -> dict[str, int]:
    """The thread count every layer runs on, as the search priced it (`deploy.deployment.Assembler`):
    a searchable layer its choice's, the conversions into it too; a fixed layer its first input's
    (the network's input: 1)."""
    threads = {NETWORK_INPUT: 1}
    for layer in network.layers:
        choice = choices.get(layer.name) if layer.op.searchable else None
        threads[layer.name] = getattr(choice.dataflow, "threads", 1) if choice else threads[layer.inputs[0]]
    del threads[NETWORK_INPUT]
    return threads


def _set_threads(count: int) -> relax.Call:
    """The runtime call that sizes the thread pool at `count` workers (capped by `TVM_NUM_THREADS`, which a
    runner sets). Made once a run: a switch of the pool's size costs milliseconds (~3.5 ms on this host,
    build revision 2 switched between runs of layers on different thread counts)."""
    return relax.Call(relax.ExternFunc("runtime.config_threadpool"), [relax.prim_value(1), relax.prim_value(count)],
                      ty_args=[relax.ObjectType()])


def on_threads(kernel: tirx.PrimFunc, threads: int, pool: int) -> tirx.PrimFunc:
    """`kernel` as it ran when timed on `threads` threads, inside a pool of `pool` workers: unchanged when
    they are equal; otherwise each parallel loop longer than `threads` is split in two, the outer of
    `threads` iterations parallel (TVM hands a parallel loop's iterations to the pool's workers in
    contiguous chunks, so `threads` of them get work, as when timed), the inner serial; on 1 thread no
    loop is parallel (the kernel runs on the calling thread, as the pool of 1 it was timed in runs it)."""
    if threads >= pool:
        return kernel
    # without the primitives' checks: a loop the kernel's schedule made parallel before it nested its
    # reduction under it fails the "compact dataflow" check now, though its outer part is as safe
    sch = s_tir.Schedule(tvm.IRModule({"main": kernel}), enable_check=False)
    while (loop := _parallel_loop_longer_than(sch, threads if threads > 1 else 0)) is not None:
        outer, _ = sch.split(loop, [threads, None])  # the split loops are serial
        if threads > 1:
            sch.parallel(outer)
    return sch.mod["main"]


def _parallel_loop_longer_than(sch: s_tir.Schedule, extent: int) -> Any:
    """A parallel loop of `sch` with more than `extent` iterations (None when there is none)."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    while blocks:
        block = blocks.pop()
        for loop in sch.get_loops(block):
            found = sch.get(loop)
            if found.kind == tirx.ForKind.PARALLEL and int(found.extent) > extent:
                return loop
        blocks.extend(sch.get_child_blocks(block))
    return None


def network_module(network: Network, choices: Mapping[str, Choice], numerics: NumericsSource) -> tvm.IRModule:
    """The Relax module `main(image (1, C, H, W) fp32) -> logits (1, classes) fp32` of a deployment.

    The thread pool is sized once, at the most threads any layer runs on; each kernel keeps to its own
    thread count within it (`on_threads`)."""
    missing = [layer.name for layer in network.searchable_layers if layer.name not in choices]
    if missing:
        raise ValueError(f"deployment of {network.name!r} has no choice for layer(s) {missing}")
    threads = layer_threads(network, choices)
    pool = max(threads.values())
    bb = relax.BlockBuilder()
    image = relax.Var("image", relax.TensorType((1, *network.layers[0].in_shape), "float32"))
    with bb.function("main", [image], pure=False):
        graph = _Graph(bb, image)
        bb.emit(_set_threads(pool))
        with bb.dataflow():
            for layer in network.layers:
                _emit_layer(bb, graph, layer, choices.get(layer.name), numerics, threads[layer.name], pool)
            out = bb.emit_output(relax.op.reshape(graph.get(network.layers[-1].name, "fp32"), (1, -1)))
        bb.emit_func_output(out)
    return bb.get()


def _emit_layer(bb: relax.BlockBuilder, graph: "_Graph", layer: Layer, choice: Choice | None, numerics: NumericsSource,
                threads: int, pool: int) -> None:
    """One layer into the dataflow block: a fixed layer in fp32; a searchable one as its kernel on its
    `threads` of the `pool`, after the conversions of its input."""
    if not layer.op.searchable:
        graph.put(layer.name, "fp32", _fixed_layer(layer, [graph.get(src, "fp32") for src in layer.inputs], numerics))
        return
    spec = kernel_spec(layer, choice)
    values = numerics.layer_numerics(layer.name)
    (source,) = layer.inputs
    data = graph.get(source, choice.quant, values.input_scale)
    if layer.op is Op.DENSE:  # flattens its producer
        data = bb.emit(relax.op.reshape(data, spec.inputs[0].shape))
    kernel = on_threads(build_module(layer, choice)["main"], threads, pool)
    kernel = kernel.with_attrs({"global_symbol": kernel_symbol(layer.name), "op_pattern": OPAQUE})
    function = bb.add_func(kernel, kernel_symbol(layer.name))
    arguments = [data, *(relax.const(a) for a in kernel_arguments(layer, choice, values))]
    out = relax.call_tir(function, arguments, relax.TensorType(spec.output.shape, spec.output.dtype))
    graph.put(layer.name, choice.quant, out, values.output_scale if choice.quant == "int8" else None)


def compile_network(module: tvm.IRModule, target: dict[str, Any] | str) -> Any:
    """`tvm.compile` a `network_module` for `target` (`fuse_fixed_layers`, then Relax's CPU lowering); the Executable."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tvm_target = tvm.target.Target(target)
    lowered = fuse_fixed_layers(module, tvm_target)
    with tvm_target:
        rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))
    return tvm.compile(lowered, target=tvm_target, relax_pipeline=rest)


def fuse_fixed_layers(module: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """A `network_module` with its Relax operators legalised for `target` and fused between the kernels,
    each fused function parallel over its leading spatial loops (module docstring)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with target, tvm.transform.PassContext(opt_level=2):  # FuseOps fuses from level 1
        passes = cpu.library_dispatch_passes(target) + cpu.legalize_passes(target) + [_parallel_fixed_layers]
        return tvm.transform.Sequential(passes)(module)


OPAQUE = 8
"""Relax's `op_pattern` for an opaque function: FuseOps leaves the timed kernels alone."""


@tvm.transform.module_pass(opt_level=0)
def _parallel_fixed_layers(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every PrimFunc but the kernels: producers inlined into their readers, then each remaining
    block's leading spatial loops fused and parallel."""
    for var, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or var.name_hint.startswith("k_"):
            continue
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        for block in sch.get_child_blocks(sch.get_sblock("root"))[:-1]:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:  # a reduction (mean, pool) or a tensor read twice: it stays a loop nest
                pass
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            _parallel_spatial(sch, block)
        mod[var] = sch.mod["main"]
    return mod


def _parallel_spatial(sch: s_tir.Schedule, block: Any) -> None:
    """Fuse `block`'s leading spatial loops (one loop per block axis, as operators legalise) and make them parallel."""
    loops = sch.get_loops(block)
    axes = sch.get(block).iter_vars
    if len(loops) != len(axes):
        return
    spatial = list(itertools.takewhile(lambda pair: pair[1].iter_type == tirx.IterVar.DataPar, zip(loops, axes)))
    if spatial:
        sch.parallel(sch.fuse(*(loop for loop, _ in spatial)) if len(spatial) > 1 else spatial[0][0])


def host_logits(network: Network, choices: Mapping[str, Choice], numerics: NumericsSource, images: np.ndarray) -> np.ndarray:
    """Build the deployment for this machine and run it on `images` (N, C, H, W), one at a time: (N, classes)."""
    executable = compile_network(network_module(network, choices, numerics), HOST_TARGET)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    images = np.ascontiguousarray(images, np.float32)
    return np.stack([vm["main"](tvm.runtime.tensor(images[i : i + 1])).numpy()[0] for i in range(len(images))])


def kernel_symbol(layer_name: str) -> str:
    """A C symbol for a layer's kernel."""
    return "k_" + "".join(c if c.isalnum() else "_" for c in layer_name)


def module_memory(module: tvm.IRModule) -> dict[str, int]:
    """What a deployment's module holds in memory, computed from its `main`: the weights (every
    constant, once) and the peak of the intermediate tensors alive at once (the image included; a
    tensor lives from its binding to its last use; a renaming binding is the same tensor), in bytes."""
    main = module["main"]
    weights: dict[Any, int] = {}
    root: dict[Any, Any] = {}
    size = {main.params[0]: _tensor_bytes(main.params[0].ty)}
    born = {main.params[0]: 0}
    last = {main.params[0]: 0}

    def visit(expr: Any, at: int) -> None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            weights[expr] = _tensor_bytes(expr.ty)
        elif isinstance(expr, relax.Var):
            last[root.get(expr, expr)] = at
        elif isinstance(expr, (relax.Call, relax.Tuple)):
            for part in expr.args if isinstance(expr, relax.Call) else expr.fields:
                visit(part, at)

    bindings = [b for block in main.body.blocks for b in block.bindings]
    for at, binding in enumerate(bindings, start=1):
        if isinstance(binding.value, relax.Var):  # a dataflow output: the tensor it names
            root[binding.var] = root.get(binding.value, binding.value)
            continue
        visit(binding.value, at)
        size[binding.var], born[binding.var], last[binding.var] = _tensor_bytes(binding.var.ty), at, at
    visit(main.body.body, len(bindings) + 1)
    peak = max(sum(size[v] for v in size if born[v] <= at <= last[v]) for at in range(len(bindings) + 2))
    return {"weights_bytes": sum(weights.values()), "peak_activation_bytes": peak,
            "total_bytes": sum(weights.values()) + peak}


def _tensor_bytes(ty: Any) -> int:
    """Bytes of a tensor type (0 for anything else, e.g. the thread-pool calls' results)."""
    shape, dtype = getattr(ty, "shape", None), getattr(ty, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return int(np.prod([int(d) for d in shape])) * np.dtype(str(dtype)).itemsize

"""One real TVM kernel per (layer, quantization, algorithm, CPU schedule): specs, module, torch check.

A kernel is one PrimFunc "main" taking its inputs then its output, all NCHW, batch 1:
- data (1, C, H, W); weight (Cout, Cin/groups, kh, kw), for a dense layer (Cout, C*H*W), for
  Winograd the pre-transformed U = G g G^T of shape (alpha, alpha, Cin, Cout) (see
  `deploy.tvm_schedules.winograd_weight`); bias (Cout,); output (1, Cout, OH, OW).
- fp32: everything float32. fp16: float16 data, weights, bias and output, fp32 arithmetic (cast on
  load). int8: int8 data and weights, int32 accumulation and bias, then one more input `requant`
  = (s_acc[0], ..., s_acc[Cout-1], 1/s_out) float32 and the output q = clamp(rint(act((acc[o] +
  bias[o]) * s_acc[o]) / s_out), -128, 127) in int8: s_acc[o] = s_in * s_w[o] for weights quantised
  per output channel (as ncnn and TFLite do); the activation acts on real values, before
  requantisation. int8 Winograd
  transforms in int16 (V, U) and int32 (M, output transform), exactly
  (`deploy.tvm_schedules.Winograd`; the int32 output transform holds L^2 * acc, L = 2 for F2, 24 for
  F4, so F4 needs |acc| < 2^31 / 576, about 3.7e6, which realistic int8 layers stay far below).
The layer's padding, stride, groups, bias and fused activation are inside the kernel. The bias is
always an input; `random_arrays` makes it zero for a layer with neither a bias nor a batch norm (a
folded batch norm leaves a bias).

`build_module` is target-independent; `check_kernel` compiles for this machine (`HOST_TARGET`) and
compares one run with torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import te

from deploy.tvm_schedules import PRECISIONS, WINOGRAD, WINOGRAD_WEIGHT_DTYPE, kernel_module, winograd_weight
from envs.network import Layer, Op
from envs.space import BASE_ARCH, Choice, InvalidChoice, why_invalid
from envs.torch_build import activation_module

HOST_TARGET: dict = {
    "kind": "llvm",
    "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
    "num-cores": os.cpu_count(),
}
"""This machine as a TVM target (what `check_kernel` compiles for)."""

TOLERANCE: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-4),
    "fp16": (1e-2, 2.5e-2),
    "int8": (0.0, 1.0),
}
"""(rtol, atol) against the float64 torch reference, on outputs of order 1. fp16 is set by Winograd
F(4x4): its fp16 U loses about 1% (max 0.012 seen); the other fp16 kernels stay within 2e-3. int8: at
most 1 LSB off (the reference replays the kernel's float32 requantisation, so it is exact in practice)."""


class KernelCheckError(ValueError):
    """A kernel's output disagrees with the torch reference."""


@dataclass(frozen=True)
class TensorSpec:
    """One kernel argument: name, shape and element type."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class KernelSpec:
    """A kernel's signature: inputs in call order (data, weight, bias[, requant]) and the output."""

    layer: Layer
    choice: Choice
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec


def supported(layer: Layer, choice: Choice) -> str | None:
    """None if `choice` has a kernel for `layer`, else the reason."""
    if choice.arch != BASE_ARCH:
        return f"architecture variant {choice.arch!r} has no TVM kernel (only {BASE_ARCH!r})"
    return why_invalid(layer, choice.quant, choice.algo)


def kernel_spec(layer: Layer, choice: Choice) -> KernelSpec:
    """Argument shapes and types of the kernel; raises InvalidChoice (a ValueError) naming the reason."""
    reason = supported(layer, choice)
    if reason is not None:
        raise InvalidChoice(f"layer {layer.name!r}, choice {choice.key}: {reason}")
    prec = PRECISIONS[choice.quant]
    cin, h, w = layer.in_shape
    cout = layer.out_shape[0]
    if layer.op is Op.DENSE:
        weight = TensorSpec("weight", (cout, cin * h * w), prec.storage)
    elif choice.algo in WINOGRAD:
        a = WINOGRAD[choice.algo].alpha
        weight = TensorSpec("winograd_weight", (a, a, cin, cout), WINOGRAD_WEIGHT_DTYPE[choice.quant])
    else:
        weight = TensorSpec("weight", (cout, cin // layer.groups, *layer.kernel), prec.storage)
    inputs = [TensorSpec("data", (1, cin, h, w), prec.storage), weight, TensorSpec("bias", (cout,), prec.bias)]
    if choice.quant == "int8":
        inputs.append(TensorSpec("requant", (cout + 1,), "float32"))
    return KernelSpec(layer, choice, tuple(inputs), TensorSpec("output", (1, *layer.out_shape), prec.storage))


def build_module(layer: Layer, choice: Choice) -> tvm.IRModule:
    """The scheduled, target-independent module: one PrimFunc "main"(inputs..., output)."""
    spec = kernel_spec(layer, choice)
    inputs = [te.placeholder(t.shape, t.dtype, name=t.name) for t in spec.inputs]
    return kernel_module(layer, choice.quant, choice.algo, choice.dataflow, inputs)


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    return activation_module(activation)(x)


def _accumulate(layer: Layer, data: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The layer without bias or activation, in float64 with torch (exact for int8 operands)."""
    x, w = torch.from_numpy(data.astype(np.float64)), torch.from_numpy(weight.astype(np.float64))
    if layer.op is Op.DENSE:
        y = F.linear(x.reshape(1, -1), w).reshape(1, -1, 1, 1)
    else:
        y = F.conv2d(x, w, None, layer.stride, layer.padding, groups=layer.groups)
    return y.numpy()


def random_arrays(spec: KernelSpec, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Random inputs in call order (Winograd weight transformed from a random raw weight) and the
    expected output from torch in float64, cast or requantised like the kernel."""
    layer, quant = spec.layer, spec.choice.quant
    prec = PRECISIONS[quant]
    data_shape, bias_shape, out = spec.inputs[0].shape, spec.inputs[2].shape, spec.output
    cout, cin = layer.out_shape[0], layer.in_shape[0]
    raw_shape = (cout, layer.in_elements) if layer.op is Op.DENSE else (cout, cin // layer.groups, *layer.kernel)
    has_bias = layer.bias or layer.batch_norm
    if quant == "int8":
        data = rng.integers(-128, 128, data_shape).astype(np.int8)
        raw = rng.integers(-128, 128, raw_shape).astype(np.int8)
        acc = _accumulate(layer, data, raw)
        spread = max(float(acc.std()), 1.0)
        bias = rng.integers(-int(spread), int(spread) + 1, bias_shape) if has_bias else np.zeros(bias_shape)
        bias = bias.astype(np.int32)
        per_channel = 3.0 / spread * rng.uniform(0.5, 2.0, cout)  # as per-channel weight scales make it
        requant = np.append(per_channel, 127.0 / 8.0).astype(np.float32)
        real = (acc + bias.reshape(1, -1, 1, 1)).astype(np.float32) * requant[:-1].reshape(1, -1, 1, 1)
        real = _activate(torch.from_numpy(real), layer.activation).numpy()
        expected = np.clip(np.rint(real * requant[-1]), -128, 127).astype(np.int8)
        extra = [requant]
    else:
        fan_in = int(np.prod(raw_shape[1:]))
        data = rng.standard_normal(data_shape).astype(prec.storage)
        raw = (rng.standard_normal(raw_shape) / np.sqrt(fan_in)).astype(prec.storage)
        bias = (0.5 * rng.standard_normal(bias_shape) if has_bias else np.zeros(bias_shape)).astype(prec.bias)
        acc = _accumulate(layer, data, raw) + bias.astype(np.float64).reshape(1, -1, 1, 1)
        expected = _activate(torch.from_numpy(acc), layer.activation).numpy().astype(out.dtype)
        extra = []
    weight = winograd_weight(raw, spec.choice.algo, quant) if spec.choice.algo in WINOGRAD else raw
    return [data, weight, bias, *extra], expected


def check_kernel(layer: Layer, choice: Choice, seed: int = 0) -> None:
    """Compile for this machine, run once on random data, compare with torch; KernelCheckError if off."""
    spec = kernel_spec(layer, choice)
    ex = tvm.compile(build_module(layer, choice), target=tvm.target.Target(HOST_TARGET))
    inputs, expected = random_arrays(spec, np.random.default_rng(seed))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    result = tvm.runtime.empty(spec.output.shape, spec.output.dtype, dev)
    ex["main"](*args, result)
    got, want = result.numpy().astype(np.float64), expected.astype(np.float64)
    rtol, atol = TOLERANCE[choice.quant]
    error = np.abs(got - want)
    if not np.all(error <= atol + rtol * np.abs(want)):
        raise KernelCheckError(
            f"layer {layer.name!r} ({layer.signature}), choice {choice.key}: max abs error {error.max():.3g} "
            f"(max relative {float((error / np.maximum(np.abs(want), 1e-12)).max()):.3g}) exceeds rtol={rtol}, atol={atol}"
        )

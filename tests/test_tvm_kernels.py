"""TVM kernels: every algorithm x precision against torch, cross-compilation, coverage of a real network."""

from __future__ import annotations

import itertools
import tarfile

import numpy as np
import pytest

import tvm

from deploy import tvm_kernels
from deploy.tvm_kernels import (
    KernelCheckError,
    build_module,
    check_kernel,
    kernel_spec,
    supported,
)
from envs.network import Layer, Op
from envs.space import AXES, ORDERS, QUANTS, TILES, Choice, CpuSchedule, SearchSpace, cpu_schedules

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}
DATAFLOWS = [CpuSchedule(*x) for x in itertools.product(TILES, ORDERS, AXES, AXES)]


def _conv(name, cin, hw, cout, out_hw, k=3, s=1, p=1, groups=1, op=Op.CONV, **kw) -> Layer:
    return Layer(name, op, ("input",), (cin, *hw), (cout, *out_hw), (k, k), (s, s), (p, p), groups=groups, **kw)


LAYERS = {
    "conv3x3_s1": _conv("conv3x3_s1", 8, (10, 10), 16, (10, 10), bias=True, activation="relu"),
    "conv3x3_s2": _conv("conv3x3_s2", 8, (11, 9), 16, (6, 5), s=2, activation="relu6"),
    "conv_nonsquare": _conv("conv_nonsquare", 12, (9, 13), 24, (9, 13), batch_norm=True, activation="hardswish"),
    "pointwise": _conv("pointwise", 16, (7, 7), 24, (7, 7), k=1, p=0, op=Op.POINTWISE, batch_norm=True),
    "grouped": _conv("grouped", 8, (8, 8), 16, (8, 8), groups=4, bias=True, activation="relu"),
    "depthwise_s1": _conv("depthwise_s1", 16, (9, 9), 16, (9, 9), groups=16, op=Op.DEPTHWISE, activation="relu6"),
    "depthwise_s2": _conv("depthwise_s2", 16, (10, 10), 16, (5, 5), s=2, groups=16, op=Op.DEPTHWISE, batch_norm=True),
    "depthwise_x2": _conv("depthwise_x2", 8, (6, 6), 16, (6, 6), groups=8, op=Op.DEPTHWISE, activation="sigmoid"),
    "dense": Layer("dense", Op.DENSE, ("input",), (32, 1, 1), (10, 1, 1), bias=True),
}
FAMILIES = {
    "conv3x3_s1": ("direct", "im2col", "winograd_f2", "winograd_f4"),
    "conv3x3_s2": ("direct", "im2col"),
    "conv_nonsquare": ("direct", "im2col", "winograd_f2", "winograd_f4"),
    "pointwise": ("direct", "im2col"),
    "grouped": ("direct", "im2col"),
    "depthwise_s1": ("depthwise", "direct", "im2col"),
    "depthwise_s2": ("depthwise", "direct"),
    "depthwise_x2": ("depthwise",),
    "dense": ("direct", "im2col"),
}
CASES = [(name, algo, quant) for name, algos in FAMILIES.items() for algo in algos for quant in QUANTS]


@pytest.mark.parametrize("index", range(len(CASES)), ids=["-".join(c) for c in CASES])
def test_kernel_matches_torch(index: int) -> None:
    name, algo, quant = CASES[index]
    for df in (DATAFLOWS[(2 * index) % len(DATAFLOWS)], DATAFLOWS[(2 * index + 7) % len(DATAFLOWS)]):
        check_kernel(LAYERS[name], Choice(quant, algo, df), seed=index)


def test_cases_cover_every_dataflow_field() -> None:
    used = {DATAFLOWS[(2 * i + j) % len(DATAFLOWS)] for i in range(len(CASES)) for j in (0, 7)}
    for field, values in (("tile", TILES), ("order", ORDERS), ("vec", AXES), ("par", AXES)):
        assert {getattr(d, field) for d in used} == set(values)


def test_threads_are_not_in_the_module() -> None:
    layer = LAYERS["conv3x3_s1"]
    one, four = (build_module(layer, Choice("fp32", "direct", CpuSchedule(threads=t))) for t in (1, 4))
    tvm.ir.assert_structural_equal(one, four)


@pytest.mark.parametrize("quant", QUANTS)
def test_cross_compiles_to_aarch64(quant: str, tmp_path) -> None:
    kernels = [("conv3x3_s1", a) for a in ("direct", "im2col", "winograd_f2", "winograd_f4")]
    kernels += [("depthwise_s1", "depthwise"), ("dense", "direct")]
    for i, (name, algo) in enumerate(kernels):
        ex = tvm.compile(build_module(LAYERS[name], Choice(quant, algo, DATAFLOWS[i])), target=tvm.target.Target(A72))
        path = tmp_path / f"{algo}.tar"
        ex.export_library(str(path))
        with tarfile.open(path) as tar:
            objects = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".o")]
        assert objects, f"{algo}/{quant}: no object file in the exported tar"
        for obj in objects:
            assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == 183, f"{algo}/{quant}"


def test_every_mobilenet_v2_choice_has_a_kernel(mobilenet_v2) -> None:
    space = SearchSpace(cpu_schedules(4))
    layers = {layer.signature: layer for layer in mobilenet_v2.searchable_layers}
    built = 0
    for i, layer in enumerate(layers.values()):
        choices = space.valid_choices(layer)
        for choice in choices:
            assert supported(layer, choice) is None, (layer.name, choice.key)
            spec = kernel_spec(layer, choice)
            assert spec.inputs[0].shape == (1, *layer.in_shape) and spec.output.shape == (1, *layer.out_shape)
        for choice in choices[i % 7 :: 97]:  # a sample across algorithms, precisions and dataflows
            assert build_module(layer, choice)["main"] is not None
            built += 1
    assert built > 100


@pytest.mark.parametrize(
    "name, choice",
    [
        ("b1.dw", Choice("fp32", "depthwise", CpuSchedule("8x8", "weight_outer", "spatial", "spatial", 4))),
        ("b2.expand", Choice("int8", "im2col", CpuSchedule("4x16", "input_outer", "spatial", "oc", 4))),
        ("fc", Choice("fp16", "direct", CpuSchedule("16x4", "weight_outer", "spatial", "oc", 4))),
    ],
)
def test_full_size_layers_match_torch(mobilenet_v2, name: str, choice: Choice) -> None:
    check_kernel(mobilenet_v2[name], choice)


def test_invalid_choice_names_the_reason() -> None:
    layer = LAYERS["depthwise_s1"]
    choice = Choice("fp32", "winograd_f2", CpuSchedule())
    reason = supported(layer, choice)
    assert reason is not None and "Winograd" in reason
    with pytest.raises(ValueError, match="Winograd needs a dense"):
        kernel_spec(layer, choice)
    with pytest.raises(ValueError, match="Winograd needs a dense"):
        build_module(layer, choice)
    assert "architecture" in supported(layer, Choice("fp32", "direct", CpuSchedule(), arch="slim"))


def test_mismatch_raises_kernel_check_error(monkeypatch) -> None:
    honest = tvm_kernels.random_arrays

    def off_by_one(spec, rng):
        inputs, expected = honest(spec, rng)
        return inputs, expected + np.ones_like(expected)

    monkeypatch.setattr(tvm_kernels, "random_arrays", off_by_one)
    layer, choice = LAYERS["pointwise"], Choice("fp32", "im2col", CpuSchedule())
    with pytest.raises(KernelCheckError, match=r"pointwise.*fp32/im2col.*max abs error 1"):
        check_kernel(layer, choice)

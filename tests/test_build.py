"""A whole deployment built as one TVM module computes what the accuracy oracle simulates."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.build import host_logits, network_module
from deploy.targets import get_target
from envs.network import Layer, Op

IMAGES = 40


def _deployment(network, quant: str | None, seed: int) -> dict:
    """A random valid choice per searchable layer (of one precision when `quant` is given)."""
    space = get_target("host").search_space()
    rng = np.random.default_rng(seed)
    choices = {}
    for layer in network.searchable_layers:
        valid = [c for c in space.valid_choices(layer) if quant in (None, c.quant)]
        choices[layer.name] = valid[rng.integers(len(valid))]
    return choices


@pytest.mark.parametrize("quant, seed", [("fp32", 0), ("fp16", 1), ("int8", 2), ("int8", 3), (None, 4), (None, 5)])
def test_built_network_matches_the_oracles_fake_quantised_model(tiny, tiny_oracle, quant, seed):
    choices = _deployment(tiny, quant, seed)
    got = host_logits(tiny, choices, tiny_oracle, tiny_oracle.dataset.x_test[:IMAGES].numpy())
    want = tiny_oracle.logits([choices[name].quant for name in tiny_oracle.layer_names]).numpy()[:IMAGES]
    last = choices[tiny.layers[-1].name].quant
    if last == "int8":  # rounding order may flip an int8 value by one step: at most one step of the logits
        tolerance = tiny_oracle.layer_numerics(tiny.layers[-1].name).output_scale * 1.0001
    else:
        tolerance = {"fp32": 1e-4, "fp16": 2e-3}[last] * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= tolerance
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.99


def test_a_deployment_missing_a_layer_is_refused_by_name(tiny, tiny_oracle):
    choices = _deployment(tiny, "fp32", 0)
    del choices["dw"]
    with pytest.raises(ValueError, match=r"no choice for layer\(s\) \['dw'\]"):
        network_module(tiny, choices, tiny_oracle)


def test_each_layer_runs_on_the_thread_count_it_chose_in_one_pool(tiny, tiny_oracle):
    """The module sizes the pool once, at the most threads a layer runs on; a 1-thread kernel has no
    parallel loop, a kernel on the pool's count keeps the loops it was timed with."""
    import tvm
    from tvm import relax

    from deploy.build import compile_network, layer_threads
    from deploy.tvm_kernels import HOST_TARGET

    space = get_target("host").search_space()
    names = [layer.name for layer in tiny.searchable_layers]
    wanted = {name: 2 if i % 2 else 1 for i, name in enumerate(names)}
    choices = {layer.name: next(c for c in space.valid_choices(layer) if c.quant == "fp32" and c.dataflow.threads == wanted[layer.name])
               for layer in tiny.searchable_layers}
    per_layer = layer_threads(tiny, choices)
    assert all(per_layer[name] == wanted[name] for name in names)
    module = network_module(tiny, choices, tiny_oracle)
    assert module["main"].script().count("runtime.config_threadpool") == 1
    for name in names:
        kernel = module["k_" + name].script()
        assert ("T.parallel(" in kernel) == (wanted[name] == 2), name
    vm = relax.VirtualMachine(compile_network(module, HOST_TARGET), tvm.cpu())
    configure, pool_size = tvm.get_global_func("runtime.config_threadpool"), tvm.get_global_func("runtime.NumThreads")
    configure(1, 2)
    two = pool_size()  # 2, or fewer where TVM_NUM_THREADS caps the pool
    configure(1, 1)  # another count: the module must set its own
    got = vm["main"](tvm.runtime.tensor(tiny_oracle.dataset.x_test[:1].numpy())).numpy()
    assert pool_size() == two
    want = host_logits(tiny, {n: choices[n] for n in names}, tiny_oracle, tiny_oracle.dataset.x_test[:1].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


LAYERS = {
    "conv": Layer("c", Op.CONV, ("input",), (16, 14, 14), (32, 14, 14), (3, 3), (1, 1), (1, 1)),
    "depthwise": Layer("d", Op.DEPTHWISE, ("input",), (32, 14, 14), (32, 7, 7), (3, 3), (2, 2), (1, 1), groups=32),
    "pointwise": Layer("p", Op.POINTWISE, ("input",), (32, 7, 7), (64, 7, 7)),
    "dense": Layer("f", Op.DENSE, ("input",), (64, 1, 1), (10, 1, 1), bias=True),
}


@pytest.mark.parametrize("kind, quant, algo", [("conv", "fp32", "im2col"), ("conv", "int8", "winograd_f4"), ("conv", "fp16", "direct"),
                                               ("depthwise", "int8", "depthwise"), ("pointwise", "fp32", "direct"), ("dense", "fp32", "im2col")])
def test_a_kernel_keeps_to_its_threads_inside_a_larger_pool(kind, quant, algo):
    """On 2 of a pool of 4 every parallel loop has at most 2 iterations; on 1, none is parallel; the
    results are the kernel's, bit for bit."""
    import tvm

    from deploy.build import on_threads
    from deploy.tvm_kernels import HOST_TARGET, build_module, kernel_spec

    layer = LAYERS[kind]
    space = get_target("cortex-a72").search_space()
    choice = next(c for c in space.valid_choices(layer) if c.quant == quant and c.algo == algo and c.dataflow.threads == 4)
    kernel = build_module(layer, choice)["main"]
    assert on_threads(kernel, 4, 4).same_as(kernel)
    two, one = on_threads(kernel, 2, 4).script(), on_threads(kernel, 1, 4).script()
    assert "T.parallel(" in kernel.script() and "T.parallel(" not in one
    assert all(int(line.split("T.parallel(")[1].split(")")[0]) <= 2 for line in two.splitlines() if "T.parallel(" in line)
    spec = kernel_spec(layer, choice)
    rng = np.random.default_rng(0)
    inputs = [(rng.integers(-8, 8, a.shape) if a.dtype.startswith("int") else rng.uniform(-1, 1, a.shape)).astype(a.dtype)
              for a in spec.inputs]
    outs = []
    for variant in (kernel, on_threads(kernel, 2, 4), on_threads(kernel, 1, 4)):
        executable = tvm.compile(tvm.IRModule({"main": variant}), target=tvm.target.Target(HOST_TARGET))
        out = tvm.runtime.tensor(np.zeros(spec.output.shape, spec.output.dtype))
        executable["main"](*(tvm.runtime.tensor(x) for x in inputs), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


def test_fixed_layers_between_kernels_fuse_into_one_parallel_pass(tiny, tiny_oracle):
    """All int8: the residual add dequantises both int8 inputs, adds and quantises for the next kernel in
    one pass (no fp32 tensor of its shape is ever written), and every non-kernel function is parallel."""
    import tvm

    from deploy.build import fuse_fixed_layers
    from deploy.tvm_kernels import HOST_TARGET

    space = get_target("host").search_space()
    choices = {layer.name: next(c for c in space.valid_choices(layer) if c.quant == "int8" and c.dataflow.threads == 2)
               for layer in tiny.searchable_layers}
    fused = fuse_fixed_layers(network_module(tiny, choices, tiny_oracle), tvm.target.Target(HOST_TARGET))
    main = fused["main"].script()
    add = tiny["add"]
    assert main.count(f"R.Tensor((1, {', '.join(map(str, add.out_shape))}), dtype=\"float32\")") == 0
    assert main.count(f"R.Tensor((1, {', '.join(map(str, add.out_shape))}), dtype=\"int8\")") == 4  # stem, dw, pw, add
    helpers = {gv.name_hint: f for gv, f in fused.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.startswith("k_")}
    assert helpers and all("T.parallel" in f.script() for f in helpers.values())


def test_module_memory_counts_every_weight_once_and_the_peak_of_live_tensors(tiny, tiny_oracle):
    from deploy.build import module_memory

    space = get_target("host").search_space()

    def uniform(quant: str) -> dict:
        return {layer.name: next(c for c in space.valid_choices(layer) if c.quant == quant and c.algo in ("im2col", "depthwise"))
                for layer in tiny.searchable_layers}

    fp32, int8 = (module_memory(network_module(tiny, uniform(q), tiny_oracle)) for q in ("fp32", "int8"))
    params = [tiny_oracle.layer_numerics(layer.name) for layer in tiny.searchable_layers]
    assert fp32["weights_bytes"] == sum(4 * (p.weight.size + p.bias.size) for p in params)
    kernels = sum(p.weight.size + 4 * p.bias.size + 4 * (p.bias.size + 1) for p in params)  # int8, int32, requant fp32
    conversions = 2 * 4 * len(tiny.layers)  # at most a quantise and a dequantise scale per tensor, fp32 scalars
    assert kernels < int8["weights_bytes"] <= kernels + conversions
    largest = max(4 * (layer.in_elements + layer.out_elements) for layer in tiny.layers)
    assert largest <= fp32["peak_activation_bytes"] <= 4 * sum(layer.out_elements for layer in tiny.layers) + 4 * tiny.layers[0].in_elements
    assert int8["total_bytes"] < fp32["total_bytes"] == fp32["weights_bytes"] + fp32["peak_activation_bytes"]


@pytest.fixture(scope="module")
def blocks():
    """SiLU, squeeze-and-excitation, a pre-activation batch norm, a ceil-mode max pool, an adaptive pool."""
    from envs.torch_import import import_module
    from tests.test_torch_import import TorchvisionStyleBlocks

    return import_module(TorchvisionStyleBlocks(), (3, 16, 16))


@pytest.mark.parametrize("quant, seed", [("fp32", 0), ("int8", 1)])
def test_newer_ops_build_to_what_the_oracle_computes(blocks, quant, seed):
    """Scale, affine (with the oracle's trained statistics), ceil-mode pools and the SiLU/Hardsigmoid
    epilogues built into one module compute the oracle's logits."""
    from envs.accuracy import oracle_for

    oracle = oracle_for(blocks, epochs=3)
    choices = _deployment(blocks, quant, seed)
    got = host_logits(blocks, choices, oracle, oracle.dataset.x_test[:IMAGES].numpy())
    want = oracle.logits([choices[name].quant for name in oracle.layer_names]).numpy()[:IMAGES]
    scale, shift = oracle.affine_numerics("norm")
    assert scale.shape == shift.shape == (16,) and not np.allclose(shift, 0)  # trained statistics, not the initial ones
    if quant == "int8":
        tolerance = oracle.layer_numerics(blocks.layers[-1].name).output_scale * 1.0001
    else:
        tolerance = 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= tolerance
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.99

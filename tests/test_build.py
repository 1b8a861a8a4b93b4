"""A whole deployment built as one TVM module computes what the accuracy oracle simulates."""

from __future__ import annotations

import os

import numpy as np
import pytest

from deploy.build import host_logits, network_module
from deploy.targets import get_target

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


def test_each_layer_runs_on_the_thread_count_it_chose(tiny, tiny_oracle):
    """The module switches the runtime's pool wherever the thread count changes, and only there."""
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
    runs = 1 + sum(a != b for a, b in zip([per_layer[l.name] for l in tiny.layers], [per_layer[l.name] for l in tiny.layers][1:]))
    module = network_module(tiny, choices, tiny_oracle)
    assert module["main"].script().count("runtime.config_threadpool") == runs
    vm = relax.VirtualMachine(compile_network(module, HOST_TARGET), tvm.cpu())
    last = per_layer[tiny.layers[-1].name]
    tvm.get_global_func("runtime.config_threadpool")(1, 3 - last)  # the other count: the module must set it
    vm["main"](tvm.runtime.tensor(tiny_oracle.dataset.x_test[:1].numpy()))
    assert tvm.get_global_func("runtime.NumThreads")() == min(last, os.cpu_count())


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

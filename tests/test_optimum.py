"""`deploy.optimum.best_choices`: the exact fastest deployment, checked against brute force on small
networks with skip connections (an add reading the skip first, as MobileNetV2's; and the main path
first, with a downsampling branch, as ResNet's)."""

from __future__ import annotations

import itertools
from typing import Callable

import pytest

from deploy.deployment import evaluate
from deploy import optimum as optimum_module
from deploy.optimum import best_choices, optimum
from envs.network import Layer, Network, Op
from envs.space import Choice


def conv(name: str, src: str, cin: int, cout: int, size: int, k: int = 1, stride: int = 1, groups: int = 1, op: Op = Op.POINTWISE) -> Layer:
    out = (size + 2 * (k // 2) - k) // stride + 1
    return Layer(name, op, (src,), (cin, size, size), (cout, out, out), (k, k), (stride, stride), (k // 2, k // 2), groups, batch_norm=True)


def inverted_residual() -> Network:
    """stem -> expand -> project -> add(stem, project) -> head: the add runs in the skip's format (the
    dynamic program over the chain alone, which priced it in the project's, picks a deployment 9% slower)."""
    return Network("ir", (3, 8, 8), (
        conv("stem", "input", 3, 64, 8, k=3, op=Op.CONV),
        conv("expand", "stem", 64, 384, 8),
        conv("project", "expand", 384, 64, 8),
        Layer("add", Op.ADD, ("stem", "project"), (64, 8, 8), (64, 8, 8)),
        conv("head", "add", 64, 128, 8),
    ))


def basic_block() -> Network:
    """stem -> c1 -> c2; downsample(stem); add(c2, downsample): the stem's tensor waits across c1 and c2."""
    return Network("bb", (3, 16, 16), (
        conv("stem", "input", 3, 16, 16, k=3, op=Op.CONV),
        conv("c1", "stem", 16, 32, 16, k=3, stride=2, op=Op.CONV),
        conv("c2", "c1", 32, 32, 8, k=3, op=Op.CONV),
        conv("downsample", "stem", 16, 32, 16, stride=2, op=Op.CONV),
        Layer("add", Op.ADD, ("c2", "downsample"), (32, 8, 8), (32, 8, 8), activation="relu"),
    ))


def pooled_skip() -> Network:
    """stem -> pool(stem) -> c1; add(pool, c1); add(that, stem): the pool and both adds run in the stem's
    format, so the last add reads two tensors in one state (a NAS-Bench-201-style cell)."""
    return Network("ps", (3, 8, 8), (
        conv("stem", "input", 3, 16, 8, k=3, op=Op.CONV),
        Layer("pool", Op.POOL, ("stem",), (16, 8, 8), (16, 8, 8), (3, 3), (1, 1), (1, 1), pool="avg"),
        conv("c1", "pool", 16, 16, 8, k=3, op=Op.CONV),
        Layer("add1", Op.ADD, ("pool", "c1"), (16, 8, 8), (16, 8, 8)),
        Layer("add2", Op.ADD, ("add1", "stem"), (16, 8, 8), (16, 8, 8)),
        conv("head", "add2", 16, 32, 8),
    ))


def few_choices(choice: Choice) -> bool:
    """Two precisions, both layouts, one or four threads, one schedule otherwise: 8 states, few choices."""
    d = choice.dataflow
    return choice.quant in ("fp32", "int8") and d.threads in (1, 4) and (d.tile, d.order, d.vec, d.par) == ("8x8", "weight_outer", "oc", "oc")


def brute_force(network: Network, table, allow: Callable[[Choice, Layer], bool]) -> float:
    """The least latency over every combination of the choices `allow` admits for each layer."""
    options = [[c for c in table.space.valid_choices(layer) if allow(c, layer)] for layer in network.searchable_layers]
    names = [layer.name for layer in network.searchable_layers]
    return min(evaluate(network, dict(zip(names, combo)), table).latency_ms for combo in itertools.product(*options))


@pytest.mark.parametrize("network", [inverted_residual(), basic_block(), pooled_skip()],
                         ids=["skip-first", "main-path-first", "two-inputs-one-state"])
def test_equals_brute_force_on_networks_with_skips(network, a72_table):
    exact = evaluate(network, best_choices(network, a72_table, few_choices), a72_table).latency_ms
    assert exact == pytest.approx(brute_force(network, a72_table, lambda c, _: few_choices(c)), rel=1e-12)


def test_precisions_are_kept_and_the_result_is_the_fastest_with_them(a72_table):
    network = basic_block()
    precisions = {"stem": "fp32", "c1": "int8", "c2": "int8", "downsample": "fp32"}
    chosen = best_choices(network, a72_table, few_choices, precisions)
    assert {name: c.quant for name, c in chosen.items()} == precisions
    brute = brute_force(network, a72_table, lambda c, layer: few_choices(c) and c.quant == precisions[layer.name])
    assert evaluate(network, chosen, a72_table).latency_ms == pytest.approx(brute, rel=1e-12)


def test_mobilenet_v2_minimum_and_uniform_precisions(mobilenet_v2, a72_table):
    """The whole network's exact minimum is no slower than any uniform precision's exact minimum."""
    fastest = evaluate(mobilenet_v2, best_choices(mobilenet_v2, a72_table), a72_table).latency_ms
    for quant in ("fp32", "fp16", "int8"):
        names = {l.name: quant for l in mobilenet_v2.searchable_layers}
        uniform = evaluate(mobilenet_v2, best_choices(mobilenet_v2, a72_table, precisions=names), a72_table).latency_ms
        assert fastest <= uniform + 1e-9


def test_nothing_admitted_is_an_error(a72_table):
    with pytest.raises(ValueError, match="no admitted deployment"):
        best_choices(inverted_residual(), a72_table, lambda c: c.algo == "winograd_f4")


def dense_block() -> Network:
    """A DenseNet block: each conv reads the concatenation of every tensor before it, so the stem's,
    c1's and c2's tensors are all live at once."""
    return Network("db", (3, 8, 8), (
        conv("stem", "input", 3, 16, 8, k=3, op=Op.CONV),
        conv("c1", "stem", 16, 8, 8, k=3, op=Op.CONV),
        Layer("cat1", Op.CONCAT, ("stem", "c1"), (16, 8, 8), (24, 8, 8)),
        conv("c2", "cat1", 24, 8, 8, k=3, op=Op.CONV),
        Layer("cat2", Op.CONCAT, ("stem", "c1", "c2"), (16, 8, 8), (32, 8, 8)),
        conv("c3", "cat2", 32, 8, 8),
    ))


def test_many_live_tensors_are_pinned_greedily_and_the_result_says_it_is_not_exact(a72_table, monkeypatch):
    network = dense_block()
    brute = brute_force(network, a72_table, lambda c, _: few_choices(c))
    exact = optimum(network, a72_table, few_choices)
    assert exact.exact and evaluate(network, exact.choices, a72_table).latency_ms == pytest.approx(brute, rel=1e-12)
    states = len(a72_table.states()[0])
    monkeypatch.setattr(optimum_module, "MAX_TABLE_ENTRIES", states**2)  # room for two live tensors only
    greedy = optimum(network, a72_table, few_choices)
    assert not greedy.exact and set(greedy.choices) == {layer.name for layer in network.searchable_layers}
    assert brute - 1e-9 <= evaluate(network, greedy.choices, a72_table).latency_ms <= 1.5 * brute

"""The analytical Cortex-A72 model: physical behaviour that must hold whatever the calibration."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.cost import TensorFormat
from deploy.cpu_model import CpuModelParams
from envs.network import Layer, Op
from envs.space import Choice, CpuSchedule

CONV = Layer("c", Op.CONV, ("input",), (64, 56, 56), (64, 56, 56), (3, 3), (1, 1), (1, 1))
PW = Layer("p", Op.POINTWISE, ("input",), (96, 28, 28), (576, 28, 28))
DW = Layer("d", Op.DEPTHWISE, ("input",), (144, 56, 56), (144, 28, 28), (3, 3), (2, 2), (1, 1), groups=144)


def best(model, space, layer, quant=None, algo=None, threads=None) -> float:
    choices = [
        c
        for c in space.valid_choices(layer)
        if (quant is None or c.quant == quant)
        and (algo is None or c.algo == algo)
        and (threads is None or c.dataflow.threads == threads)
    ]
    return min(c.latency_ms for c in model.layer_costs(layer, choices))


def test_every_cost_is_positive_finite_and_says_modelled(a72, a72_space):
    model = a72.model()
    for layer in (CONV, PW, DW):
        costs = model.layer_costs(layer, a72_space.valid_choices(layer))
        lat = np.array([c.latency_ms for c in costs])
        assert np.isfinite(lat).all() and (lat > 0).all()
        assert all(c.provenance == "modelled:cortex-a72-model@2" for c in costs)
        assert all(c.energy_mj and c.energy_mj > 0 for c in costs)
        # the schedule matters: best and worst dataflow of one algorithm differ by well over 1.5x
        direct = [c.latency_ms for c, ch in zip(costs, a72_space.valid_choices(layer)) if ch.algo == "direct"]
        assert max(direct) / min(direct) > 1.5


def test_winograd_beats_direct_on_3x3_and_f4_transforms_weights_bigger(a72, a72_space):
    model = a72.model()
    assert best(model, a72_space, CONV, "fp32", "winograd_f4", 1) < best(model, a72_space, CONV, "fp32", "direct", 1)
    _, mem_f4 = model.price(CONV, "fp32", "winograd_f4", a72_space.dataflows[:1])
    _, mem_direct = model.price(CONV, "fp32", "direct", a72_space.dataflows[:1])
    assert mem_f4 > 3 * mem_direct  # 36/9 transformed weights plus transform buffers


def test_depthwise_kernel_beats_blas_im2col_on_depthwise_layers(a72, a72_space):
    """Stride 1: the im2col buffer is 9x the input. (At stride 2 it shrinks 4x and the gap narrows.)"""
    model = a72.model()
    layer = Layer("d1", Op.DEPTHWISE, ("input",), (144, 56, 56), (144, 56, 56), (3, 3), (1, 1), (1, 1), groups=144)
    for threads in (1, 4):
        im2col = best(model, a72_space, layer, "fp32", "im2col", threads)
        assert im2col > 3 * best(model, a72_space, layer, "fp32", "depthwise", threads)
    assert best(model, a72_space, DW, "fp32", "im2col") > best(model, a72_space, DW, "fp32", "depthwise")


def test_int8_faster_and_fp16_smaller_than_fp32_on_a_pointwise_layer(a72, a72_space):
    model = a72.model()
    assert best(model, a72_space, PW, "int8") < best(model, a72_space, PW, "fp32")
    _, mem16 = model.price(PW, "fp16", "direct", a72_space.dataflows[:1])
    _, mem32 = model.price(PW, "fp32", "direct", a72_space.dataflows[:1])
    assert mem16 == pytest.approx(mem32 / 2)


def test_threads_help_big_layers_but_not_tiny_ones(a72, a72_space):
    """The Pi 4 scales 1.29x (ResNet-18) to 2.0x (MobileNetV1) from 1 to 4 threads (public ncnn figures)."""
    model = a72.model()
    speedup = best(model, a72_space, CONV, "fp32", threads=1) / best(model, a72_space, CONV, "fp32", threads=4)
    assert 1.2 < speedup < 4.0
    tiny = Layer("t", Op.DENSE, ("input",), (16, 1, 1), (10, 1, 1), bias=True)
    assert best(model, a72_space, tiny, "fp32", threads=1) < best(model, a72_space, tiny, "fp32", threads=4)


def _thread_ratios(model, space, network) -> tuple[np.ndarray, dict[int, int]]:
    """Per searchable layer: best 4-thread over best 1-thread latency, and how many layers each thread count wins."""
    ratios, wins = [], {}
    for layer in network.searchable_layers:
        by_threads = {t: best(model, space, layer, threads=t) for t in (1, 2, 4)}
        ratios.append(by_threads[4] / by_threads[1])
        winner = min(by_threads, key=by_threads.get)
        wins[winner] = wins.get(winner, 0) + 1
    return np.array(ratios), wins


def test_threads_are_chosen_per_layer_on_small_inputs(a72, a72_space):
    """MobileNetV2 on 32x32 images: a layer's fork/join is microseconds (measured, `deploy.fork_join`), so 4
    threads are never much slower than 1 (at most 3 fork/joins of 4 threads per phase), and the best count
    differs from layer to layer."""
    from envs.zoo import get_network

    model = a72.model()
    ratios, wins = _thread_ratios(model, a72_space, get_network("mobilenet_v2_32"))
    assert np.median(ratios) < 1.1
    per_phase_ms = 3 * model.params.fork_join_us * 1e-3
    for layer, ratio in zip(get_network("mobilenet_v2_32").searchable_layers, ratios):
        one = best(model, a72_space, layer, threads=1)
        assert ratio * one <= one + 4 * per_phase_ms, layer.name  # a layer has at most 4 parallel phases
    assert set(wins) == {1, 2, 4}


def test_four_threads_win_nearly_every_layer_at_224(a72, a72_space):
    from envs.zoo import get_network

    _, wins = _thread_ratios(a72.model(), a72_space, get_network("mobilenet_v2"))
    assert wins.get(4, 0) >= 0.9 * sum(wins.values())


def test_load_imbalance_over_the_parallel_axis(a72):
    """7 output rows over 4 threads: parallel over 576 channels wins over parallel over rows."""
    model = a72.model()
    layer = Layer("l", Op.POINTWISE, ("input",), (160, 7, 7), (960, 7, 7))
    over_rows, over_channels = (
        model.price(layer, "fp32", "direct", [CpuSchedule("8x8", "weight_outer", "oc", par, 4)])[0][0]
        for par in ("spatial", "oc")
    )
    assert over_channels < over_rows


def test_conversions_cost_nothing_between_equal_formats(a72):
    model = a72.model()
    fp32 = TensorFormat("fp32", "NCHWc")
    assert model.conversion_cost(10_000, fp32, fp32, 1).latency_ms == 0.0
    assert model.conversion_cost(10_000, fp32, TensorFormat("int8", "NCHWc"), 1).latency_ms > 0.0
    assert model.conversion_cost(10_000, fp32, TensorFormat("fp32", "NCHW"), 1).latency_ms > 0.0


def test_fingerprint_follows_parameters(a72):
    model = a72.model()
    other = model.with_params(CpuModelParams(eta=0.123), "test")
    assert model.fingerprint() != other.fingerprint()
    assert model.fingerprint() == a72.model().fingerprint()


def test_io_format_follows_algorithm(a72):
    model = a72.model()
    sched = CpuSchedule()
    assert model.io_format(Choice("int8", "im2col", sched)) == TensorFormat("int8", "NCHW")
    assert model.io_format(Choice("fp16", "winograd_f2", sched)) == TensorFormat("fp16", "NCHWc")

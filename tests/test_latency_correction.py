"""Layer-adaptive latency correction: per-class factors of a model, recovered from measured layers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploy.calibration import LayerSample
from deploy.cost_table import CostTable
from deploy.latency_correction import PRIOR, CorrectedBackend, fit_correction
from deploy.targets import get_target
from envs.network import Op
from envs.zoo import get_network

MODEL = get_target("cortex-a72").model()
SPACE = get_target("cortex-a72").search_space()


def _planted(layer, choice) -> float:
    """A device that runs int8 3x slower than the model says, and 2-thread depthwise layers 2x faster."""
    factor = 3.0 if choice.quant == "int8" else 1.0
    if layer.op is Op.DEPTHWISE and choice.dataflow.threads == 2:
        factor *= 0.5
    return factor


def _samples(count: int, seed: int = 0) -> list[LayerSample]:
    rng = np.random.default_rng(seed)
    layers = get_network("mobilenet_v2_32").searchable_layers
    out = []
    for _ in range(count):
        layer = layers[rng.integers(len(layers))]
        choices = SPACE.valid_choices(layer)
        choice = choices[rng.integers(len(choices))]
        modelled = MODEL.layer_costs(layer, [choice])[0].latency_ms
        out.append(LayerSample(layer, choice, modelled * _planted(layer, choice)))
    return out


def test_fit_recovers_planted_class_factors_on_layers_it_never_saw():
    correction = fit_correction(MODEL, _samples(2000))
    corrected = CorrectedBackend(MODEL, correction)
    for sample in _samples(100, seed=1):
        got = corrected.layer_costs(sample.layer, [sample.choice])[0].latency_ms
        assert got == pytest.approx(sample.latency_ms, rel=0.12)
    assert correction.samples == 2000


def test_a_class_with_few_samples_is_shrunk_towards_its_parent():
    samples = _samples(400)
    fp32 = [s for s in samples if s.choice.quant == "fp32" and s.layer.op is not Op.DEPTHWISE][:30]  # residual 0
    int8 = [s for s in samples if s.choice.quant == "int8" and s.layer.op is not Op.DEPTHWISE][:1]  # residual log 3
    correction = fit_correction(MODEL, fp32 + int8)
    root = math.log(3.0) / 31
    assert correction.log_factors["all"] == pytest.approx(root)
    assert correction.log_factors["int8"] == pytest.approx(root + (math.log(3.0) - root) / (1 + PRIOR))
    assert correction.log_factors["fp32"] == pytest.approx(root + (0 - root) * 30 / (30 + PRIOR))
    assert 1.0 < correction.factor(int8[0].layer, int8[0].choice) < 3.0  # one layer is not taken at its word


def test_measured_costs_are_kept_and_move_the_fingerprint():
    samples = _samples(50)
    correction = fit_correction(MODEL, samples)
    layer, choice = samples[0].layer, samples[0].choice
    measured = MODEL.layer_costs(layer, [choice])[0].__class__(0.123, 0, "measured:test")
    plain = CorrectedBackend(MODEL, correction)
    known = CorrectedBackend(MODEL, correction, {(layer.signature, choice.key): measured})
    assert known.layer_costs(layer, [choice])[0] is measured
    assert plain.layer_costs(layer, [choice])[0].provenance.startswith(MODEL.provenance + "+corrected:")
    assert known.fingerprint() != plain.fingerprint() != MODEL.fingerprint()
    table = CostTable(known, SPACE)  # batch-friendly: a whole layer at once
    assert table.cost(layer, choice).latency_ms == 0.123


def test_no_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="no measured layers"):
        fit_correction(MODEL, [])

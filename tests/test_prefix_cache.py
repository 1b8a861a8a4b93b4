"""Resuming held-out evaluation from cached activations gives exactly the full forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import zoo
from envs.accuracy import AccuracyOracle, digits_dataset
from envs.prefix_cache import PrefixCache
from envs.space import QUANTS


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> AccuracyOracle:
    """MobileNetV2 at 32x32 with the weights the package ships (nothing to train)."""
    net = zoo.small_input_variant("mobilenet_v2")
    return AccuracyOracle(net, digits_dataset(32), cache_dir=tmp_path_factory.mktemp("acc"))


def full_forward(oracle: AccuracyOracle, key: tuple[str, ...]) -> torch.Tensor:
    for quantizer, precision in zip(oracle._quantizers, key):
        quantizer.set_precision(precision)
    with torch.inference_mode():
        return torch.cat([oracle._model(x) for x in oracle._prefix_cache.batches])


def test_checkpoints_sit_at_block_boundaries(oracle):
    cache = oracle._prefix_cache
    order = [layer.name for layer in oracle.network.layers]
    after = {order[position - 1] for position, _ in cache.checkpoints}
    assert {"b1.project", "b2.project", "b3.add", "b16.add", "b17.project"} <= after
    assert not any(name.endswith("expand") or name.endswith(".dw") for name in after)
    assert [n for _, n in cache.checkpoints] == sorted(n for _, n in cache.checkpoints)


def test_shared_prefixes_resume_and_match_the_full_pass_exactly(oracle):
    rng = np.random.default_rng(0)
    n = len(oracle.layer_names)
    base = tuple(rng.choice(QUANTS, n))
    cache = oracle._prefix_cache
    layers, batches = len(oracle.network.layers), len(cache.batches)
    assert torch.equal(oracle.logits(base), full_forward(oracle, base))
    assert cache.cached_bytes == 0  # a prefix seen once is only noted
    assert torch.equal(oracle.logits(base), full_forward(oracle, base))
    assert cache.cached_bytes > 0  # seen twice: its activations are kept
    assert not cache.copy_on_resume  # the oracle's layers after a checkpoint round a copy of their input
    seen = [base]
    for depth in (0, 1, 5, 20, n - 2, n - 1):
        variant = base[:depth] + tuple(rng.choice(QUANTS, n - depth))
        variant = variant if variant != base else base[:-1] + (QUANTS[(QUANTS.index(base[-1]) + 1) % 3],)
        before = cache.layers_run
        got = oracle.logits(variant)
        assert torch.equal(got, full_forward(oracle, variant)), depth
        # resumed from the deepest checkpoint whose prefix an earlier query shares
        resume = max([p for p, k in cache.checkpoints for key in seen if variant[:k] == key[:k]], default=0)
        assert cache.layers_run - before == (layers - resume) * batches, depth
        if depth >= cache.checkpoints[0][1]:
            assert resume > 0
    assert torch.equal(oracle.logits(base), full_forward(oracle, base))  # the cache was not corrupted


def test_budget_bounds_the_cached_activations(oracle):
    batches = oracle._prefix_cache.batches
    small = PrefixCache(oracle._model, batches, budget_bytes=3 * 2**20)
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        for _ in range(6):
            key = tuple(rng.choice(QUANTS, len(oracle.layer_names)))
            for quantizer, precision in zip(oracle._quantizers, key):
                quantizer.set_precision(precision)
            for _ in range(2):  # the second sighting keeps what fits
                assert torch.equal(small.run(key), full_forward(oracle, key))
            assert 0 < small.cached_bytes <= 3 * 2**20

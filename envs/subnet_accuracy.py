"""The accuracy oracle of architecture search: held-out accuracy of any sub-network of a trained supernet.

A query names an architecture (a setting of every block) and one precision per searchable layer of
that sub-network. The sub-network is extracted with the supernet's weights, its batch-norm
statistics are recalibrated on `RECALIBRATION_IMAGES` training images, and it is then scored exactly
as a fixed network is (`envs.accuracy.AccuracyOracle`: batch norm folded, per-layer fake quant,
held-out top-1 minus the KL divergence from the fp32 sub-network). Results are cached by
(architecture, precisions), in memory and optionally in the measurement database; the prepared
oracles of the `KEPT` most recent architectures stay in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from envs.accuracy import (
    ACCURACY_SIGNAL,
    FAKE_QUANT_SCHEME,
    AccuracyOracle,
    CachedAccuracies,
    Dataset,
    Fidelity,
    shifted_digits_dataset,
    digits_dataset,
    image_folder_dataset,
)
from envs.arch_space import arch_space_for
from envs.network import Network
from envs.supernet import Supernet
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS, RECALIBRATION_IMAGES, spec_for, train_supernet
from envs.torch_build import NetworkModule
from envs.zoo import SMALL_INPUT_SIZE

KEPT = 8
"""Sub-network oracles kept in memory (least recently used dropped first)."""
SUBNET_PREFIX_BUDGET_BYTES = 64 * 2**20
"""Activation memory each kept sub-network oracle may hold for prefix reuse."""


class SupernetOracle(CachedAccuracies):
    """Held-out accuracy of sub-network `blocks` of `supernet` with one precision per searchable layer.

    Args:
        supernet: a trained supernet (`envs.supernet_training.train_supernet`).
        dataset: the data it was trained on (training images recalibrate batch norm; held-out images score).
        weights_id: names the supernet's weights (its `SupernetSpec.key`); part of the cache key.
        calibration_batches: training batches that calibrate int8 input ranges.
    """

    def __init__(self, supernet: Supernet, dataset: Dataset, weights_id: str, calibration_batches: int = 4) -> None:
        self.supernet = supernet.eval()
        self.space = supernet.space
        self.dataset = dataset
        self.weights_id = weights_id
        self.calibration_batches = calibration_batches
        self.provenance = f"measured:heldout/{dataset.name}@{len(dataset.y_test)}/supernet"
        self.key = f"{weights_id}-recal{RECALIBRATION_IMAGES}-{FAKE_QUANT_SCHEME}-cal{calibration_batches}-{ACCURACY_SIGNAL}"
        self._oracles: OrderedDict[tuple, AccuracyOracle] = OrderedDict()
        self._init_cache()

    def standalone(self, blocks: tuple) -> NetworkModule:
        """Sub-network `blocks` as a standalone torch model: the supernet's weights, batch norm recalibrated."""
        return self.supernet.extract(tuple(blocks), self.dataset.x_train[:RECALIBRATION_IMAGES])

    def oracle(self, blocks: tuple) -> AccuracyOracle:
        """The fixed-network oracle of sub-network `blocks` (prepared on first use, kept while recent)."""
        blocks = tuple(blocks)
        oracle = self._oracles.get(blocks)
        if oracle is not None:
            self._oracles.move_to_end(blocks)
            return oracle
        module = self.standalone(blocks)
        oracle = AccuracyOracle(
            module.network, self.dataset, calibration_batches=self.calibration_batches, trained=module,
            weights_id=f"{self.weights_id}-{'_'.join(self.space.labels(blocks))}",
            prefix_budget_bytes=SUBNET_PREFIX_BUDGET_BYTES,
        )
        self._oracles[blocks] = oracle
        if len(self._oracles) > KEPT:
            self._oracles.popitem(last=False)
        return oracle

    def accuracy(self, precisions: Sequence[str], blocks: tuple | None = None) -> float:
        """Accuracy in [0, 1] of sub-network `blocks` (default: the original network) with one precision
        per searchable layer of it (its fp32 held-out top-1 minus the KL of the deployment from it, as
        `AccuracyOracle.accuracy`), cached by (architecture, precisions)."""
        blocks = self.space.ORIGINAL if blocks is None else tuple(blocks)
        key = self.space.labels(blocks) + tuple(precisions)
        cached = self._cached(key)  # only checked queries are ever stored
        if cached is not None:
            return cached
        self.space.check(blocks)
        return self._remember(key, self.oracle(blocks).accuracy(precisions))

    def measure(self, precisions: Sequence[str], blocks: tuple | None = None) -> Fidelity:
        """Accuracy, held-out top-1, KL divergence and SQNR of sub-network `blocks` (default: the
        original network) deployed with `precisions` (never cached)."""
        blocks = self.space.ORIGINAL if blocks is None else tuple(blocks)
        self.space.check(blocks)
        return self.oracle(blocks).measure(precisions)

    @property
    def baseline_accuracy(self) -> float:
        """Accuracy of the original network with every layer in fp32."""
        layers = self.supernet.subnetwork(self.space.ORIGINAL).searchable_layers
        return self.accuracy(("fp32",) * len(layers))


PROXIES = ("shifted-digits", "digits")
"""Built-in proxy data sets of the supernet: the first is the default (see `proxy_dataset`)."""


def proxy_dataset(proxy: str = PROXIES[0], image_folder: str | Path | None = None) -> Dataset:
    """The supernet's training data at 32x32: a user's `image_folder`, or a built-in proxy made from
    scikit-learn's digits: `shifted-digits` (default; where network capacity and receptive field
    change accuracy) or `digits` (plain, resized: nearly every sub-network scores the same)."""
    if image_folder is not None:
        return image_folder_dataset(image_folder, SMALL_INPUT_SIZE)
    if proxy == "digits":
        return digits_dataset(SMALL_INPUT_SIZE)
    if proxy == "shifted-digits":
        return shifted_digits_dataset(SMALL_INPUT_SIZE)
    raise ValueError(f"unknown proxy data set {proxy!r}; valid: {', '.join(PROXIES)}")


def supernet_oracle_for(
    network: Network,
    image_folder: str | Path | None = None,
    epochs: int = DEFAULT_SUPERNET_EPOCHS,
    cache_dir: Path | None = None,
    restart: bool = False,
    proxy: str = PROXIES[0],
) -> SupernetOracle:
    """The architecture-search oracle of a built-in network: its space's supernet at 32x32, trained on
    `proxy_dataset(proxy, image_folder)` the first time (a progress bar shows it) and cached.
    A corrupt cached supernet raises `SupernetCheckpointError` unless `restart`."""
    space = arch_space_for(network.name)
    dataset = proxy_dataset(proxy, image_folder)
    supernet, _ = train_supernet(space, dataset, epochs, cache_dir=cache_dir, restart=restart)
    return SupernetOracle(supernet, dataset, spec_for(space, dataset, epochs).key)

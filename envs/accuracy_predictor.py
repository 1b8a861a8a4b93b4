"""An accuracy predictor for architecture search, trained on sub-networks the supernet oracle measured.

Features of a query: per block, the one-hot of its option and the fractions of its layers in fp16 and
in int8; the precision one-hot of every layer outside the blocks (stem, head, classifier). The
model is ridge regression (scikit-learn): trained on 300 measured MobileNetV2 sub-networks it ranked
100 others with Spearman 0.82 (`benchmarks/accuracy_predictor.py`), where a 64x64 MLP did not rank
them at all (0.07): the accuracies span a few points only, and a linear model of per-block effects
fits them best. `fit_predictor` measures sampled
(architecture, precisions) pairs with the oracle, trains on most of them and reports, on the rest,
the Spearman and Kendall rank correlations with measured accuracy. The predictor is an oracle
itself (`PredictedAccuracy`, provenance `predicted:...`), used only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.linear_model import Ridge

from envs.arch_space import ArchSpace
from envs.space import QUANTS
from envs.subnet_accuracy import SupernetOracle

RIDGE_ALPHA = 5.0


def features(space: ArchSpace, outside: Sequence[str], blocks: tuple, layer_names: Sequence[str], precisions: Sequence[str]) -> np.ndarray:
    """The feature vector of a query (see the module docstring); `outside` names the layers outside blocks."""
    per_block = np.zeros((space.blocks, len(space.OPTIONS) + 2))
    counts = np.zeros(space.blocks)
    rest = np.zeros((len(outside), len(QUANTS)))
    for name, precision in zip(layer_names, precisions):
        block = space.block_of(name)
        if block is None:
            rest[outside.index(name), QUANTS.index(precision)] = 1.0
            continue
        counts[block] += 1
        per_block[block, -2] += precision == "fp16"
        per_block[block, -1] += precision == "int8"
    per_block[:, -2:] /= np.maximum(counts, 1)[:, None]
    for block, option in enumerate(blocks):
        if option in space.OPTIONS:  # a fixed block (MobileNetV2's first) has no option to encode
            per_block[block, space.OPTIONS.index(option)] = 1.0
    return np.concatenate([per_block.ravel(), rest.ravel()])


@dataclass
class PredictorReport:
    """How well the predictor ranks sub-networks it was not trained on."""

    samples: int
    held_out: int
    spearman: float
    kendall: float
    mean_abs_error: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(vars(self))


class PredictedAccuracy:
    """An accuracy oracle that predicts instead of measuring (`ArchAccuracy` of `envs.env`)."""

    def __init__(self, oracle: SupernetOracle, model, report: PredictorReport) -> None:
        self.oracle = oracle
        self.space = oracle.space
        self.model = model
        self.report = report
        self.provenance = f"predicted:ridge@{report.samples}/spearman={report.spearman:.2f}/{oracle.provenance}"
        original = oracle.supernet.subnetwork(self.space.ORIGINAL)
        self.outside = [l.name for l in original.searchable_layers if self.space.block_of(l.name) is None]
        """the layers outside every block, in the order of their features (stem, head, classifier)"""

    @property
    def baseline_accuracy(self) -> float:
        """The measured accuracy of the original network in fp32 (the reference stays measured)."""
        return self.oracle.baseline_accuracy

    def accuracy(self, precisions: Sequence[str], blocks: tuple | None = None) -> float:
        """Predicted held-out accuracy of `blocks` with one precision per searchable layer, in [0, 1]."""
        blocks = self.space.ORIGINAL if blocks is None else tuple(blocks)
        names = [l.name for l in self.oracle.supernet.subnetwork(blocks).searchable_layers]
        if len(names) != len(precisions):
            raise ValueError(f"expected {len(names)} precisions for this architecture, got {len(precisions)}")
        x = features(self.space, self.outside, blocks, names, precisions)
        return float(np.clip(self.model.predict(x[None])[0], 0.0, 1.0))


def sample_query(space: ArchSpace, oracle: SupernetOracle, rng: np.random.Generator) -> tuple[tuple, list[str], list[str]]:
    """A random architecture with random per-layer precisions (half the time one precision for all)."""
    blocks = space.sample(rng)
    names = [l.name for l in oracle.supernet.subnetwork(blocks).searchable_layers]
    if rng.random() < 0.5:
        precisions = [QUANTS[rng.integers(len(QUANTS))]] * len(names)
    else:
        precisions = [QUANTS[i] for i in rng.integers(len(QUANTS), size=len(names))]
    return blocks, names, precisions


def fit_predictor(oracle: SupernetOracle, samples: int = 300, held_out: float = 0.25, seed: int = 0) -> PredictedAccuracy:
    """Measure `samples` random queries with `oracle`, fit the model on the first (1 - held_out) of them
    and rank the rest; returns the predictor with its report."""
    if samples < 8 or not 0 < held_out < 1:
        raise ValueError(f"need at least 8 samples and 0 < held_out < 1, got {samples} and {held_out}")
    space = oracle.space
    rng = np.random.default_rng(seed)
    original = oracle.supernet.subnetwork(space.ORIGINAL)
    outside = [l.name for l in original.searchable_layers if space.block_of(l.name) is None]
    x, y = [], []
    for _ in range(samples):
        blocks, names, precisions = sample_query(space, oracle, rng)
        x.append(features(space, outside, blocks, names, precisions))
        y.append(oracle.accuracy(precisions, blocks))
    x, y = np.array(x), np.array(y)
    split = int(round(samples * (1 - held_out)))
    model = Ridge(alpha=RIDGE_ALPHA)
    model.fit(x[:split], y[:split])
    predicted = model.predict(x[split:])
    report = PredictorReport(
        samples, samples - split, float(spearmanr(predicted, y[split:]).statistic),
        float(kendalltau(predicted, y[split:]).statistic), float(np.abs(predicted - y[split:]).mean()),
    )
    return PredictedAccuracy(oracle, model, report)

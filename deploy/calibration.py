"""Calibrating a CPU latency model against whole-network reference latencies.

A reference is a published (or measured) latency of a network with every layer in one precision at a
thread limit. The model's prediction for it is its own best per-layer deployment under the same
constraints (the runtime that produced the figure is assumed near-best for its precision). Only a
few parameters are fitted, each bounded to a physically plausible range, in log space; leave-one-out
refits tell how well the model predicts a figure it was not fitted on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

from deploy.cost_table import CostTable
from deploy.db import MeasurementDB
from deploy.cpu_model import CpuLatencyModel, CpuModelParams
from deploy.deployment import evaluate
from deploy.optimum import best_choices
from envs.network import Layer, Network
from envs.space import Choice, SearchSpace


@dataclass(frozen=True)
class Reference:
    """A whole-network latency at batch 1: every layer in `quant`, run on `threads` threads."""

    network: str
    quant: str
    threads: int
    latency_ms: float
    source: str

    @property
    def label(self) -> str:
        """Short human label."""
        return f"{self.network} {self.quant} {self.threads}T"

    def admits(self, choice: Choice) -> bool:
        """Whether a choice runs like the reference runtime: its precision, its thread count on every layer."""
        return choice.quant == self.quant and choice.dataflow.threads == self.threads


PI4_REFERENCES: tuple[Reference, ...] = (
    Reference("mobilenet_v1", "fp32", 4, 72.1, "ncnn benchmark, Raspberry Pi 4"),
    Reference("mobilenet_v2", "fp32", 4, 72.6, "ncnn benchmark, Raspberry Pi 4"),
    Reference("resnet18", "fp32", 4, 176.2, "ncnn benchmark, Raspberry Pi 4"),
    Reference("mobilenet_v1", "fp32", 1, 145.9, "ncnn benchmark, Raspberry Pi 4"),
    Reference("mobilenet_v2", "fp32", 1, 110.1, "ncnn benchmark, Raspberry Pi 4"),
    Reference("resnet18", "fp32", 1, 226.5, "ncnn benchmark, Raspberry Pi 4"),
    Reference("mobilenet_v1", "int8", 4, 40.3, "ncnn benchmark, Raspberry Pi 4"),
    Reference("resnet18", "int8", 4, 98.0, "ncnn benchmark, Raspberry Pi 4"),
    Reference("mobilenet_v2", "int8", 4, 34.4, "TVM int8, tuned, Raspberry Pi 4"),
)

FITTED: dict[str, tuple[float, float]] = {
    "eta": (0.15, 1.0),
    "dram_core_gbps": (1.0, 5.0),
    "l2_bytes_per_cycle": (2.0, 32.0),
    "l2_contention": (1e-3, 1.5),
    "allcore_clock": (0.4, 1.0),
    "dram_fraction": (0.3, 1.0),
}
"""Parameters fitted, with their plausible ranges; the others keep their documented defaults."""
LAYER_FITTED: dict[str, tuple[float, float]] = {**FITTED, "layer_us": (0.5, 500.0)}
"""Parameters fitted to per-layer measurements: also the fixed cost of launching a layer, which
layers timed one by one show (the tiniest ones are little else) and whole-network figures do not."""


def predict(
    model: CpuLatencyModel, space: SearchSpace, networks: dict[str, Network], refs: Sequence[Reference]
) -> list[float]:
    """The model's best constrained deployment latency (ms) for each reference."""
    table = CostTable(model, space)
    out = []
    for ref in refs:
        network = networks[ref.network]
        choices = best_choices(network, table, ref.admits)
        out.append(evaluate(network, choices, table).latency_ms)
    return out


def _log_errors(
    model: CpuLatencyModel, space: SearchSpace, networks: dict[str, Network], refs: Sequence[Reference]
) -> np.ndarray:
    predicted = predict(model, space, networks, refs)
    return np.log(np.array(predicted)) - np.log(np.array([r.latency_ms for r in refs]))


def _fit_bounded(
    model: CpuLatencyModel,
    start: CpuModelParams,
    error: Callable[[CpuLatencyModel], float],
    max_evals: int,
    progress: Callable[[int, float], None] | None = None,
    ranges: dict[str, tuple[float, float]] = FITTED,
) -> CpuModelParams:
    """The parameters in `ranges` (from `start`, in log space, within their ranges) minimising `error`."""
    names = list(ranges)
    lo = np.log([ranges[n][0] for n in names])
    hi = np.log([ranges[n][1] for n in names])
    x0 = np.clip(np.log([max(getattr(start, n), 1e-3) for n in names]), lo, hi)
    evals = 0

    def params_of(x: np.ndarray) -> CpuModelParams:
        return replace(start, **{n: float(math.exp(v)) for n, v in zip(names, np.clip(x, lo, hi))})

    def loss(x: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        value = error(model.with_params(params_of(x), "fitting"))
        if progress:
            progress(evals, value)
        return value

    result = minimize(loss, x0, method="Powell", bounds=list(zip(lo, hi)), options={"maxfev": max_evals, "xtol": 1e-2, "ftol": 1e-4})
    return params_of(result.x)


def fit(
    model: CpuLatencyModel,
    space: SearchSpace,
    networks: dict[str, Network],
    refs: Sequence[Reference],
    start: CpuModelParams | None = None,
    max_evals: int = 200,
    progress: Callable[[int, float], None] | None = None,
) -> CpuModelParams:
    """Parameters minimising the L4 norm of the log errors over `refs` (bounded, derivative-free).

    The 4-norm sits between least squares and minimax: it keeps the worst figure close without
    letting one outlier decide everything.
    """

    def error(candidate: CpuLatencyModel) -> float:
        return float(np.mean(_log_errors(candidate, space, networks, refs) ** 4) ** 0.25)

    return _fit_bounded(model, start or model.params, error, max_evals, progress)


@dataclass(frozen=True)
class LayerSample:
    """One measured layer: what ran, and its median latency on the device."""

    layer: Layer
    choice: Choice
    latency_ms: float


def measured_samples(db: MeasurementDB, fingerprint: str) -> list[LayerSample]:
    """Every measured (not modelled) searchable-layer cost stored under `fingerprint`."""
    rows = db.export_rows(fingerprint)
    return [
        LayerSample(Layer.from_signature(sig), Choice.from_key(key), cost.latency_ms)
        for sig, key, cost in rows
        if cost.provenance.startswith("measured:")
    ]


def _layer_log_errors(model: CpuLatencyModel, samples: Sequence[LayerSample]) -> np.ndarray:
    predicted = [model.layer_costs(s.layer, [s.choice])[0].latency_ms for s in samples]
    return np.log(predicted) - np.log([s.latency_ms for s in samples])


def fit_to_layers(model: CpuLatencyModel, samples: Sequence[LayerSample], max_evals: int = 300) -> CpuModelParams:
    """The `LAYER_FITTED` parameters minimising the RMS log error of the model's per-layer predictions
    (bounded, as `fit`)."""
    if not samples:
        raise ValueError("no measured layers to fit to")

    def error(candidate: CpuLatencyModel) -> float:
        return float(np.sqrt(np.mean(_layer_log_errors(candidate, samples) ** 2)))

    return _fit_bounded(model, model.params, error, max_evals, ranges=LAYER_FITTED)


def layer_error_summary(model: CpuLatencyModel, samples: Sequence[LayerSample]) -> dict[str, float]:
    """How well the model predicts measured layers: the RMS log error (what `fit_to_layers` minimises),
    median and 90th-percentile |relative error|, and the Spearman rank correlation (what a search needs
    most: the right order of choices)."""
    log_errors = _layer_log_errors(model, samples)
    errors = np.abs(np.exp(log_errors) - 1)
    predicted = [model.layer_costs(s.layer, [s.choice])[0].latency_ms for s in samples]
    return {
        "samples": len(samples),
        "rms_log_error": round(float(np.sqrt(np.mean(log_errors**2))), 4),
        "median_abs_error": round(float(np.median(errors)), 4),
        "p90_abs_error": round(float(np.percentile(errors, 90)), 4),
        "spearman": round(float(spearmanr(predicted, [s.latency_ms for s in samples]).statistic), 4),
    }


def report(
    model: CpuLatencyModel, space: SearchSpace, networks: dict[str, Network], refs: Sequence[Reference]
) -> list[dict]:
    """Per reference: the figure, the model's prediction and the relative error."""
    predicted = predict(model, space, networks, refs)
    return [
        {
            "reference": r.label,
            "source": r.source,
            "public_ms": r.latency_ms,
            "modelled_ms": round(float(p), 2),
            "error": round(float(p) / r.latency_ms - 1, 4),
        }
        for r, p in zip(refs, predicted)
    ]


def calibration_record(params: CpuModelParams, fitted_on: Sequence[Reference], loo: list[dict] | None) -> dict:
    """What the calibration file stores: parameters, the references, and leave-one-out errors."""
    return {
        "params": asdict(params),
        "fitted": list(FITTED),
        "references": [asdict(r) for r in fitted_on],
        "leave_one_out": loo,
    }

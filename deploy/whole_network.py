"""Whole-network latency: sampled deployments measured end to end, and the layer-adaptive correction
(Zeng et al., ASP-DAC 2020) that makes a deployment's summed per-layer costs predict it.

A deployment's cost table sums kernels timed alone, pools and adds and conversions as modelled; the
network built as one module (`deploy.build`) runs them back to back, with the runtime dispatching
each call, caches warm or cold from the layer before, and a thread pool sized for the busiest layer.
`fit_network_correction` fits, from whole-network measurements, the form

    measured ≈ Σ_classes a_c · (summed latency of the class's searchable layers)
               + a_fixed · (pools, adds, concatenations) + a_conv · (conversions)

with one factor per class of kernel (op and precision: `kernel_kind`), by bounded least squares on
relative errors, each factor pulled towards 1 by pseudo-samples (`PRIOR`), so a class the samples say
little about stays near its kernels' own numbers. There is no per-network or per-layer constant: within
one network it cannot be told from the fixed layers, and it would not carry over to another network.
The result is a `LatencyCorrection`: a cost table with it (`CostTable(correction=...)`) gives the
corrected sum layer by layer, so the search optimises what the network measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deploy.deployment import NetworkCost
from deploy.latency_correction import LatencyCorrection
from envs.network import Layer, Network
from envs.space import ALGORITHMS, Choice, SearchSpace

PRIOR = 0.1
"""Weight of the pull of each factor towards 1 (no correction), as a fraction of the samples' weight:
what separates factors the samples cannot (e.g. two networks' pools, adds and dispatch, each nearly
constant within a network)."""
MIN_SHARE = 0.02
"""A class's pull towards 1 is as strong as for a class that is at least this share of the latency: a
class too small to move the totals keeps its kernels' own numbers."""
FACTOR_BOUNDS = (0.1, 10.0)
"""A class's factor is kept within these: a kernel is not 10x off its own measurement."""
MIN_LAYER_SHAPES = 3
"""Distinct layer shapes a kind of layer must be sampled in to get a factor of its own."""
POOL = 2
"""Choices a sampled deployment's layer draws from, per layer shape, precision and thread count."""


@dataclass(frozen=True)
class NetworkSample:
    """One deployment measured as a whole network, beside its cost table's sum of layers."""

    network: Network
    choices: Mapping[str, Choice]
    priced: NetworkCost
    measured_ms: float


def deployment_digest(choices: Mapping[str, Choice]) -> str:
    """A short hash naming a deployment (its layers' choice keys)."""
    blob = json.dumps(sorted((name, c.key) for name, c in choices.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measurement_key(choices: Mapping[str, Choice]) -> str:
    """What a whole-network measurement of a deployment is stored under: the deployment and the
    build revision (`deploy.build.BUILD_REVISION`: a changed build makes old timings stale)."""
    from deploy.build import BUILD_REVISION

    return f"{deployment_digest(choices)}/build{BUILD_REVISION}"


def sample_deployments(network: Network, space: SearchSpace, count: int, seed: int, pool: int = POOL) -> list[dict[str, Choice]]:
    """`count` deployments spread over the space: each draws a precision theme (one of the space's
    precisions for every layer, or each layer its own) and a thread count (one for every layer, or
    each layer its own); every layer then takes one of `pool` choices drawn once per layer shape,
    precision and thread count (so the samples share kernels: measuring them costs less)."""
    rng = np.random.default_rng(seed)
    quants = sorted({q for q, _ in space.quant_algos})
    thread_counts = sorted({getattr(d, "threads", 1) for d in space.dataflows})
    pools: dict[tuple[str, str, int], list[Choice]] = {}
    for layer in network.searchable_layers:
        for quant in quants:
            for threads in thread_counts:
                key = (layer.signature, quant, threads)
                if key not in pools:
                    valid = [c for c in space.valid_choices(layer) if c.quant == quant and getattr(c.dataflow, "threads", 1) == threads]
                    pools[key] = [valid[i] for i in rng.permutation(len(valid))[:pool]]

    def theme(options: list) -> object:
        """One of `options` for every layer, or None (each layer its own), equally likely."""
        pick = int(rng.integers(len(options) + 1))
        return None if pick == len(options) else options[pick]

    out = []
    for _ in range(count):
        quant, threads = theme(quants), theme(thread_counts)
        choices = {}
        for layer in network.searchable_layers:
            options = [c for q in quants for t in thread_counts if quant in (None, q) and threads in (None, t)
                       for c in pools[(layer.signature, q, t)]]
            choices[layer.name] = options[rng.integers(len(options))]
        out.append(choices)
    return out


def kernel_kind(layer: Layer, choice: Choice) -> str:
    """The class a whole-network correction fits a factor to: op and precision."""
    return f"{layer.op.name}/{choice.quant}"


def features(network: Network, cost: NetworkCost) -> dict[str, float]:
    """What the correction's form weighs: summed ms per kernel class, of fixed layers and of conversions."""
    out: dict[str, float] = {"fixed": 0.0, "conversion": cost.conversion_ms}  # the output's included
    for part in cost.layers:
        if part.choice is None:
            out["fixed"] += part.latency_ms
        else:
            key = kernel_kind(network[part.name], part.choice)
            out[key] = out.get(key, 0.0) + part.latency_ms
    return out


def fit_network_correction(samples: Sequence[NetworkSample], fitted_to: str, prior: float = PRIOR) -> LatencyCorrection:
    """The correction that makes the samples' sums of layers predict their measured latency (module
    docstring), fitted twice: per precision with every factor pulled towards 1, then per kind (op and
    precision) with each pulled towards its precision's factor. A kind seen in fewer than
    `MIN_LAYER_SHAPES` layer shapes gets no factor of its own (what one layer shows is that layer's:
    MobileNetV2's only plain convolution is its stem, which reads the image): its precision's."""
    if not samples:
        raise ValueError("no whole-network measurements to fit a latency correction to")
    rows = [features(s.network, s.priced) for s in samples]
    measured = np.array([s.measured_ms for s in samples])
    shapes: dict[str, set[str]] = {}
    for s in samples:
        for part in s.priced.layers:
            if part.choice is not None:
                layer = s.network[part.name]
                shapes.setdefault(kernel_kind(layer, part.choice), set()).add(layer.signature)
    quant_of = {kind: kind.split("/")[1] for kind in shapes}
    quants = sorted(set(quant_of.values()))
    by_quant = [{quant: sum(v for k, v in r.items() if quant_of.get(k) == quant) for quant in quants} | r for r in rows]
    coarse = _bounded_fit(by_quant, measured, [*quants, "fixed", "conversion"], {}, {}, prior)
    kinds = sorted(k for k, seen in shapes.items() if len(seen) >= MIN_LAYER_SHAPES)
    held = {k: coarse[quant_of[k]] for k in shapes if k not in kinds}
    fine = _bounded_fit(rows, measured, [*kinds, "fixed", "conversion"],
                        {kind: coarse[quant_of[kind]] for kind in kinds} | coarse, held, prior)
    log_factors = {"all": float(np.mean([math.log(coarse[q]) for q in quants])) if quants else 0.0}
    log_factors |= {quant: math.log(coarse[quant]) for quant in quants}  # any other kind: its precision's
    for kind in kinds:  # each kind's factor on every algorithm's class
        for algo in ALGORITHMS:
            log_factors[f"{kind}/{algo}"] = math.log(fine[kind])
    return LatencyCorrection(
        log_factors, len(samples), fixed_log_factor=math.log(fine["fixed"]),
        conversion_log_factor=math.log(fine["conversion"]), fitted_to=fitted_to,
    )


def _bounded_fit(rows: Sequence[Mapping[str, float]], measured: np.ndarray, columns: list[str],
                 parents: Mapping[str, float], held: Mapping[str, float], prior: float) -> dict[str, float]:
    """Factors of `columns` (each row: summed ms per column) minimising relative error to `measured`,
    with the columns in `held` at the factors given there, within `FACTOR_BOUNDS`, each pulled towards
    its parent's (default 1) with weight `prior` x the samples' at the column's share (at least
    `MIN_SHARE`) of the latency."""
    from scipy.optimize import lsq_linear

    x = np.array([[r.get(c, 0.0) for c in columns] for r in rows]) / measured[:, None]
    rest = np.array([sum(r.get(c, 0.0) * f for c, f in held.items()) for r in rows]) / measured
    shares = np.maximum(x.mean(axis=0), MIN_SHARE)
    weight = math.sqrt(prior * len(rows)) * shares
    targets = np.array([parents.get(c, 1.0) for c in columns])
    a = np.vstack([x, np.diag(weight)])
    b = np.concatenate([1.0 - rest, weight * targets])
    return dict(zip(columns, lsq_linear(a, b, bounds=FACTOR_BOUNDS).x))


def corrected_sum(correction: LatencyCorrection, network: Network, cost: NetworkCost) -> float:
    """The deployment's sum of layers with `correction` applied to each part (what a cost table with the
    correction sums)."""
    total = cost.conversion_ms * math.exp(correction.conversion_log_factor)
    for part in cost.layers:
        if part.choice is None:
            total += part.latency_ms * math.exp(correction.fixed_log_factor)
        else:
            total += part.latency_ms * correction.factor(network[part.name], part.choice)
    return total


def prediction_errors(samples: Sequence[NetworkSample], correction: LatencyCorrection | None) -> dict[str, Any]:
    """How well the sum of layers (corrected, when given) predicts the measured latency: median and
    largest absolute error in percent, mean signed error, Spearman rank correlation."""
    measured = np.array([s.measured_ms for s in samples])
    predicted = np.array([
        s.priced.latency_ms if correction is None else corrected_sum(correction, s.network, s.priced) for s in samples
    ])
    return _errors(predicted, measured)


def _errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """Median, largest and mean error of `predicted` in percent of `measured`, and their Spearman."""
    from scipy.stats import spearmanr

    errors = 100 * (predicted / measured - 1)
    rho = float(spearmanr(predicted, measured).statistic) if len(measured) > 2 else None
    return {"samples": len(measured), "median_abs_error_percent": float(np.median(np.abs(errors))),
            "max_abs_error_percent": float(np.abs(errors).max()), "mean_error_percent": float(errors.mean()),
            "spearman": rho}


def leave_one_network_out(samples: Sequence[NetworkSample], fitted_to: str) -> dict[str, dict[str, Any]]:
    """For every network: the correction fitted on the others' samples, and the errors on its own before and after."""
    names = sorted({s.network.name for s in samples})
    if len(names) < 2:
        raise ValueError("leave-one-network-out needs samples of at least two networks")
    out = {}
    for name in names:
        held = [s for s in samples if s.network.name == name]
        correction = fit_network_correction([s for s in samples if s.network.name != name], fitted_to)
        out[name] = {"uncorrected": prediction_errors(held, None), "corrected": prediction_errors(held, correction),
                     "correction": correction.to_dict()}
    return out


def cross_validated(samples: Sequence[NetworkSample], fitted_to: str, folds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Errors on held-out deployments: the samples split at random into `folds`, each predicted by the
    correction fitted on the others; the errors over all of them, before and after."""
    if len(samples) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} samples, not {len(samples)}")
    order = np.random.default_rng(seed).permutation(len(samples))
    predicted: list[LatencyCorrection] = [None] * len(samples)  # type: ignore[list-item]
    for fold in range(folds):
        held = set(order[fold::folds].tolist())
        correction = fit_network_correction([s for i, s in enumerate(samples) if i not in held], fitted_to)
        for i in held:
            predicted[i] = correction
    measured = np.array([s.measured_ms for s in samples])
    corrected = np.array([corrected_sum(c, s.network, s.priced) for c, s in zip(predicted, samples)])
    return {"folds": folds, "uncorrected": prediction_errors(samples, None),
            "corrected": _errors(corrected, measured)}


def measure_paired(deployments: Sequence[tuple[Network, Mapping[str, Choice], Any]], table, target: str, device, settings,
                   rounds: int = 1, in_network: bool = False) -> list[dict[str, Any]]:
    """Each deployment's (network, choices, numerics) kernels timed again on the table's device, then
    the whole networks right after (`measure_networks`, together, in `rounds` turns): per deployment
    the measurement with `kernels_ms` (each searchable layer's fresh time) and `kernel_drift_percent`
    (median change of those against the table's), and with `in_network` "layers_ms" (`measure_networks`). Paired so, a machine whose speed drifts between the
    table's timings and the network's cannot pass for a correction: on a shared machine the two
    drifted 10-50% apart within a run."""
    from deploy.cost import Cost

    fresh_kernels = []
    for network, choices, _ in deployments:
        names = [layer.name for layer in network.searchable_layers]
        fresh = table.backend.price_many([(network[n], choices[n]) for n in names])
        failed = next((c for c in fresh if not isinstance(c, Cost)), None)  # a CostUnavailable in its place
        if failed is not None:
            raise failed
        fresh_kernels.append({n: c.latency_ms for n, c in zip(names, fresh)})
    out = []
    for (network, choices, _), kernels_ms, measured in zip(deployments, fresh_kernels,
                                                           measure_networks(deployments, target, device, settings, rounds, in_network)):
        drift = [abs(ms / table.cost(network[n], choices[n]).latency_ms - 1) for n, ms in kernels_ms.items()]
        out.append({**measured, "kernels_ms": kernels_ms, "kernel_drift_percent": 100 * float(np.median(drift))})
    return out


def priced_as_measured(network: Network, choices: Mapping[str, Choice], table, measured: Mapping[str, Any]) -> NetworkCost:
    """The deployment priced by `table`, each searchable layer at the time its kernel took right
    before the network was timed (`measure_paired`'s `kernels_ms`) where the measurement has them."""
    from deploy.deployment import evaluate

    cost = evaluate(network, choices, table)
    fresh = measured.get("kernels_ms")
    if not fresh:
        return cost
    layers = tuple(replace(part, latency_ms=fresh[part.name]) if part.choice is not None else part for part in cost.layers)
    change = sum(new.latency_ms - old.latency_ms for new, old in zip(layers, cost.layers))
    return replace(cost, latency_ms=cost.latency_ms + change, layers=layers)


def measured_whole_networks(deployments: Sequence[tuple[Network, Mapping[str, Choice]]], table, target: str, device,
                            settings, rounds: int = 1, in_network: bool = False) -> list[dict[str, Any]]:
    """`measure_paired` of the deployments (network, choices) with seeded weights, through the table's
    database: a deployment measured before on this device is read back, the others are built and timed
    together, in `rounds` turns, and stored. With `in_network`, on this machine, a stored measurement
    without "layers_ms" (timed before they were kept) is timed again and replaced."""
    from deploy.artifact import SeededNumerics

    keys = [measurement_key(choices) for _, choices in deployments]
    stored = [table.db.network_measurement(table.fingerprint, network.fingerprint, key) if table.db else None
              for (network, _), key in zip(deployments, keys)]
    stale = in_network and device.kind == "local"
    missing = [i for i, m in enumerate(stored) if m is None or (stale and "layers_ms" not in m)]
    if missing:
        todo = [(deployments[i][0], deployments[i][1], SeededNumerics(deployments[i][0])) for i in missing]
        for i, measured in zip(missing, measure_paired(todo, table, target, device, settings, rounds, in_network)):
            if table.db:  # replacing only a stale row: a new one is first writer wins
                network, choices = deployments[i]
                table.db.put_network(table.fingerprint, network.fingerprint, keys[i], {n: c.to_dict() for n, c in choices.items()}, measured,
                                     replace=stored[i] is not None)
            stored[i] = measured
    return stored


def measure_networks(deployments: Sequence[tuple[Network, Mapping[str, Choice], Any]], target: str, device, settings,
                     rounds: int = 1, in_network: bool = False) -> list[dict[str, Any]]:
    """Build each deployment (network, choices, numerics) for `target` as one library and time them on
    `device` together, in `rounds` turns (`validation.time_libraries`): per deployment its latency in ms
    with the device's drift taken out, interquartile range, repeats, the pool's thread count, provenance
    and, timed with others, the group they share; with `in_network`, on this machine, also "layers_ms"
    (`in_network_layers` of the runtime's per-call times, `time_libraries`' call_profile)."""
    from deploy.artifact import compile_library, threads_of
    from deploy.targets import get_target
    from deploy.validation import time_libraries

    cpu = get_target(target)
    with tempfile.TemporaryDirectory() as folder:
        libraries = []
        for i, (network, choices, numerics) in enumerate(deployments):
            library = Path(folder) / f"{i}-{deployment_digest(choices)}.so"
            compile_library(network, choices, numerics, target, library)
            libraries.append((library, (1, *network.layers[0].in_shape), threads_of(choices, cpu)))
        measured = time_libraries(libraries, device, settings, rounds, call_profile=in_network)
    return [{k: v for k, v in m.items() if k != "calls"} | ({"layers_ms": in_network_layers(network, m["calls"])} if "calls" in m else {})
            for (network, _, _), m in zip(deployments, measured)]


NETWORK_INPUT_CALLS = "(input)"
"""Where `in_network_layers` puts the calls made before the first kernel (the image's conversion)."""


def in_network_layers(network: Network, calls: Sequence[Sequence[Any]]) -> dict[str, float]:
    """Where a built network's time went, per searchable layer: its kernel's call and every call after it
    up to the next kernel (the fused fixed layers and conversions that follow it, runtime builtins), in
    ms, from `time_libraries`' "calls" (in call order). Calls before the first kernel go to
    `NETWORK_INPUT_CALLS`. So a layer holds the conversion into the *next* kernel (the cost table charges
    a conversion to the layer it feeds), and in a block with a branch the last kernel called holds the
    add (ResNet: conv1, conv2, the shortcut's downsample, then the add); a block's total holds the
    conversion into the next block instead of the one into its own first kernel, and the last block
    holds the head's pooling (~0.01 ms here)."""
    from deploy.build import kernel_symbol

    layer_of = {kernel_symbol(layer.name): layer.name for layer in network.searchable_layers}
    current, out = NETWORK_INPUT_CALLS, {}
    for function, ms in calls:
        current = layer_of.get(function, current)
        out[current] = out.get(current, 0.0) + float(ms)
    missing = sorted(set(layer_of.values()) - set(out))
    if missing:
        raise ValueError(f"network {network.name!r}: no call of the kernels of {missing} in its profile: not this network's")
    return out

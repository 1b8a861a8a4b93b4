"""Layer-adaptive latency correction (Zeng et al., ASP-DAC 2020): a latency model corrected, per
class of layer, by what was measured on the device.

A model that is not calibrated to a device can rank choices wrongly in a way that a few global
parameters cannot fix (on this x86 host the uncorrected host model ranked one layer's measured
choices no better than chance, within-layer Spearman -0.02; 0.27 after this correction fitted to 100
of them: benchmarks/README.md). The correction multiplies the model's latency of a
layer by a factor per class: (op, precision, algorithm, schedule), estimated as the mean log ratio
measured / modelled of that class's measured layers, shrunk towards its parent class (op, precision,
algorithm, threads), then (op, precision, algorithm), then (precision), then all layers, by `PRIOR`
pseudo-samples. A class never measured takes its nearest measured ancestor's factor.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deploy.calibration import LayerSample
from deploy.cost import Cost, CostBackend, TensorFormat
from envs.network import Layer
from envs.space import Choice

PRIOR = 3.0
"""Pseudo-samples of the parent class's factor in each class's estimate."""


def layer_class(layer: Layer, choice: Choice) -> str:
    """The class a measured layer informs most: op, precision, algorithm and threads."""
    return f"{layer.op.name}/{choice.quant}/{choice.algo}/{choice.dataflow.threads}T"


def algorithm_class(layer: Layer, choice: Choice) -> str:
    """The kernel's kind: op, precision and algorithm (the level a whole-network correction fits)."""
    return f"{layer.op.name}/{choice.quant}/{choice.algo}"


_LEVELS: tuple[Callable[[Layer, Choice], str], ...] = (
    lambda layer, choice: "all",
    lambda layer, choice: choice.quant,
    algorithm_class,
    layer_class,
    lambda layer, choice: f"{layer.op.name}/{choice.quant}/{choice.algo}/{choice.dataflow.key}",
)
"""Class keys from the coarsest to the finest (the schedule on that op, precision and algorithm last);
each class lies inside one class of the level before."""


@dataclass(frozen=True)
class LatencyCorrection:
    """Per-class log factors (measured / modelled latency) and how many measurements they come from.

    A correction fitted to whole networks (`deploy.whole_network.fit_network_correction`) also scales
    the layers the search does not choose (`fixed_log_factor`: pools, adds, concatenations) and the
    format conversions (`conversion_log_factor`)."""

    log_factors: dict[str, float]
    samples: int
    fixed_log_factor: float = 0.0
    conversion_log_factor: float = 0.0
    fitted_to: str = "layers"
    """What it was fitted to: measured layers, or whole networks (with their device)."""

    def factor(self, layer: Layer, choice: Choice) -> float:
        """The multiplier for this layer and choice: its finest measured class's factor."""
        for level in reversed(_LEVELS):
            value = self.log_factors.get(level(layer, choice))
            if value is not None:
                return math.exp(value)
        return 1.0

    def layer_cost(self, layer: Layer, choice: Choice, cost: Cost) -> Cost:
        """A searchable layer's cost corrected."""
        return self._scaled(cost, self.factor(layer, choice))

    def fixed_cost(self, cost: Cost) -> Cost:
        """A non-searchable layer's cost corrected."""
        return self._scaled(cost, math.exp(self.fixed_log_factor))

    def conversion_cost(self, cost: Cost) -> Cost:
        """A format conversion's cost corrected."""
        return self._scaled(cost, math.exp(self.conversion_log_factor))

    def _scaled(self, cost: Cost, factor: float) -> Cost:
        if factor == 1.0:
            return cost
        energy = None if cost.energy_mj is None else cost.energy_mj * factor
        return replace(cost, latency_ms=cost.latency_ms * factor, energy_mj=energy,
                       provenance=f"{cost.provenance}+corrected:{self.digest}")

    @property
    def digest(self) -> str:
        """Short hash of the correction (part of a corrected backend's fingerprint)."""
        blob = json.dumps([sorted((k, round(v, 6)) for k, v in self.log_factors.items()),
                           round(self.fixed_log_factor, 6), round(self.conversion_log_factor, 6)])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyCorrection":
        """Inverse of `to_dict`; ValueError naming what is missing."""
        missing = {"log_factors", "samples"} - set(d)
        if missing:
            raise ValueError(f"not a latency correction: no {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def fit_correction(model: CostBackend, samples: Sequence[LayerSample], prior: float = PRIOR) -> LatencyCorrection:
    """The correction of `model` that its measured `samples` imply (see the module docstring)."""
    if not samples:
        raise ValueError("no measured layers to fit a latency correction to")
    residuals = [
        math.log(s.latency_ms) - math.log(model.layer_costs(s.layer, [s.choice])[0].latency_ms) for s in samples
    ]
    parents = [0.0] * len(samples)
    log_factors: dict[str, float] = {}
    for depth, level in enumerate(_LEVELS):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            groups[level(s.layer, s.choice)].append(i)
        weight = 0.0 if depth == 0 else prior
        for key, members in groups.items():
            parent = parents[members[0]]
            log_factors[key] = parent + sum(residuals[i] - parent for i in members) / (len(members) + weight)
        parents = [log_factors[level(s.layer, s.choice)] for s in samples]
    return LatencyCorrection(log_factors, len(samples))


class CorrectedBackend:
    """A batch-friendly backend (a latency model) whose costs are corrected by a `LatencyCorrection`,
    except where a measurement is given (`measured`, keyed by layer signature and choice key: that
    cost is returned as it is)."""

    def __init__(
        self, model: CostBackend, correction: LatencyCorrection, measured: Mapping[tuple[str, str], Cost] | None = None
    ) -> None:
        self.model = model
        self.correction = correction
        self.measured = dict(measured or {})
        self.provenance = f"{model.provenance}+corrected:{correction.digest}"
        self.batch_friendly = model.batch_friendly

    def fingerprint(self) -> str:
        """The model's fingerprint, the correction's digest and the measurements' (a hash of their keys and values)."""
        blob = json.dumps(sorted((*k, round(c.latency_ms, 9)) for k, c in self.measured.items()))
        return f"{self.model.fingerprint()}+corrected:{self.correction.digest}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def layer_costs(self, layer: Layer, choices: Sequence[Choice]) -> list[Cost]:
        """The measured cost where there is one, else the model's corrected."""
        return [
            self.measured.get((layer.signature, choice.key)) or self.correction.layer_cost(layer, choice, cost)
            for choice, cost in zip(choices, self.model.layer_costs(layer, choices))
        ]

    def io_format(self, choice: Choice) -> TensorFormat:
        """As the model."""
        return self.model.io_format(choice)

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int) -> Cost:
        """The model's, corrected."""
        return self.correction.fixed_cost(self.model.fixed_layer_cost(layer, fmt, threads))

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int) -> Cost:
        """The model's, corrected."""
        return self.correction.conversion_cost(self.model.conversion_cost(elements, src, dst, threads))


CORRECTION_SCHEMA = "deploygym.latency-correction/1"


def correction_document(correction: LatencyCorrection, target: str, fingerprint: str, **provenance: Any) -> dict[str, Any]:
    """A correction file's content: the correction, the target and cost table (`fingerprint`) it corrects,
    and where it came from (`provenance`: device, samples, fit errors, command...)."""
    return {"schema": CORRECTION_SCHEMA, "target": target, "fingerprint": fingerprint,
            "correction": correction.to_dict(), **provenance}


def load_correction(path: str | Path, target: str, fingerprint: str) -> LatencyCorrection:
    """The correction in file `path`, checked to be for `target`'s cost table `fingerprint`;
    ValueError naming the file and the mismatch."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a latency correction ({err})") from None
    if not isinstance(document, dict) or document.get("schema") != CORRECTION_SCHEMA:
        raise ValueError(f"{path}: not a latency correction file (schema {CORRECTION_SCHEMA!r})")
    if document["target"] != target or document["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path}: fitted to target {document['target']!r} with costs {document['fingerprint']!r}; "
            f"this run prices {target!r} with {fingerprint!r}"
        )
    try:
        return LatencyCorrection.from_dict(document["correction"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None

"""What a cost backend returns, and the protocol every backend (model, TVM, NPU simulator) follows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

from envs.network import Layer
from envs.space import Choice


class CostUnavailable(RuntimeError):
    """A backend could not price a choice (a failed compile, an unreachable board); the message says why."""


class ChoiceRejected(CostUnavailable):
    """A choice the backend will never price for this layer (its kernel disagrees with the reference)."""


@dataclass(frozen=True)
class Cost:
    """The price of one layer (or conversion) under one choice, with where the number came from.

    `provenance` is `measured:<device>`, `modelled:<model>@<version>` or `simulated:<tool>@<version>`.
    Measured costs also carry `repeats` and `spread_ms` (interquartile range of the repeats).
    """

    latency_ms: float
    memory_bytes: int
    provenance: str
    energy_mj: float | None = None
    spread_ms: float = 0.0
    repeats: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cost":
        """Inverse of `to_dict`."""
        return cls(**d)


@dataclass(frozen=True)
class TensorFormat:
    """How an activation tensor is stored between layers: precision and memory layout."""

    quant: str
    layout: str


NETWORK_IO_FORMAT = TensorFormat("fp32", "NCHW")
"""Images come in, and logits go out, as fp32 NCHW."""


class CostBackend(Protocol):
    """Prices layers for one target. Implementations: modelled, measured (TVM), simulated (NPU).

    A backend for which many separate choices cost much (measuring, simulating) may also offer
    `price_many(pairs: Sequence[tuple[Layer, Choice]]) -> list[Cost | CostUnavailable]`, which prices
    (layer, choice) pairs of different layers together; `CostTable.prefetch` uses it.
    """

    provenance: str
    """Provenance string stamped on every Cost this backend returns."""
    batch_friendly: bool
    """True when pricing all of a layer's choices at once is cheap (a model); False when each costs
    a measurement or a simulation, so callers should ask only for what they need."""

    def fingerprint(self) -> str:
        """Everything that would change the numbers (device, target string, threads, versions)."""
        ...

    def layer_costs(self, layer: Layer, choices: Sequence[Choice]) -> list[Cost]:
        """Cost of each valid choice for a searchable layer."""
        ...

    def io_format(self, choice: Choice) -> TensorFormat:
        """The activation format a layer deployed with `choice` reads and writes."""
        ...

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int) -> Cost:
        """Cost of a non-searchable layer (pool, add, concat, activation) working in `fmt`."""
        ...

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int) -> Cost:
        """Cost of converting a tensor of `elements` between two formats (zero when equal)."""
        ...


class PerChoiceBackend:
    """Shared by backends for which each choice is a separate measurement or simulation: `layer_costs`
    prices through the subclass's `price_many` and raises the first failure; layers that are not
    searched, and format conversions, are priced by the subclass's `model` (and say so)."""

    model: CostBackend

    def price_many(self, pairs: Sequence[tuple[Layer, Choice]]) -> list[Cost | CostUnavailable]:
        """Price (layer, choice) pairs together; a failure is returned in its place."""
        raise NotImplementedError

    def layer_costs(self, layer: Layer, choices: Sequence[Choice]) -> list[Cost]:
        """Cost of each choice (see `price_many`); the first failure is raised."""
        results = self.price_many([(layer, choice) for choice in choices])
        for result in results:
            if isinstance(result, CostUnavailable):
                raise result
        return results  # type: ignore[return-value]

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int) -> Cost:
        """Pools, adds and other non-searched layers, from the model."""
        return self.model.fixed_layer_cost(layer, fmt, threads)

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int) -> Cost:
        """Format conversions, from the model."""
        return self.model.conversion_cost(elements, src, dst, threads)

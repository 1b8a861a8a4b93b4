"""Network-level cost of a per-layer deployment: layers, the layers between them, and conversions.

Neighbouring layers that store activations differently (precision or layout) pay a conversion pass;
non-searchable layers (pooling, add, concat, activations) run in the format of their first input.
The images enter, and the logits leave, as fp32 NCHW.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

from deploy.cost import NETWORK_IO_FORMAT, ChoiceRejected, TensorFormat
from deploy.cost_table import CostTable
from envs.network import NETWORK_INPUT, Layer, Network
from envs.space import QUANT_BYTES, Choice


@dataclass(frozen=True)
class LayerCost:
    """One layer's share of a network's cost."""

    name: str
    choice: Choice | None
    latency_ms: float
    conversion_ms: float
    memory_bytes: int
    energy_mj: float | None
    provenance: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["choice"] = self.choice.to_dict() if self.choice else None
        return d


@dataclass(frozen=True)
class NetworkCost:
    """Totals of a deployment. `memory_bytes` = per-layer weights and workspaces + peak activations;
    `energy_mj` is None unless every part of the deployment has an energy."""

    latency_ms: float
    conversion_ms: float
    memory_bytes: int
    energy_mj: float | None
    layers: tuple[LayerCost, ...]

    @property
    def provenance(self) -> tuple[str, ...]:
        """Distinct provenances of the numbers summed."""
        return tuple(sorted({l.provenance for l in self.layers}))


class Assembler:
    """Prices a network layer by layer as the choices of its searchable layers arrive, in order.

    Each `add(choice)` prices the next searchable layer, the conversions into it, and the
    non-searchable layers up to the next searchable one; the last `add` also converts the output.
    """

    def __init__(self, network: Network, table: CostTable) -> None:
        self.network = network
        self.table = table
        self.segments = self._segments(network)
        self.reset()

    @staticmethod
    def _segments(network: Network) -> list[list[Layer]]:
        """Every searchable layer with the non-searchable layers that follow it."""
        segments: list[list[Layer]] = []
        leading: list[Layer] = []
        for layer in network.layers:
            if layer.op.searchable:
                segments.append([layer])
            elif segments:
                segments[-1].append(layer)
            else:
                leading.append(layer)
        if leading:
            names = ", ".join(l.name for l in leading)
            raise ValueError(f"network {network.name!r}: layers before the first searchable layer ({names}) are not supported")
        return segments

    def rebase(self, network: Network) -> None:
        """Continue the deployment on `network`, whose layers so far are those priced (architecture
        search changes the blocks not yet reached). Only the layers after the last priced searchable
        layer may differ: where dropping the blocks that followed it brings new layers right after
        it (ResNet-18's pooling once its last block is dropped), they are priced now."""
        if self.done:
            raise ValueError("the deployment is complete: there is nothing left to rebase")
        segments = self._segments(network)
        priced = self.segments[: self.step]
        same = segments[: self.step]
        if same:  # the last priced segment may have grown
            same = same[:-1] + [same[-1][: len(priced[-1])]]
        if same != priced:
            raise ValueError(f"network {network.name!r} does not begin with the {self.step} layers priced so far")
        self.network, self.segments = network, segments
        if priced:
            self._price_following(segments[self.step - 1][len(priced[-1]) :])

    def reset(self) -> None:
        """Start a new deployment."""
        self.step = 0
        self.latency_ms = 0.0
        self.conversion_ms = 0.0
        self.energy_mj: float | None = 0.0  # None once a part has no energy (e.g. a measured kernel)
        self.layers: list[LayerCost] = []
        self._formats: dict[str, tuple[TensorFormat, int]] = {NETWORK_INPUT: (NETWORK_IO_FORMAT, 1)}
        self._peak_activation = 0.0

    def format_of(self, tensor: str) -> tuple[TensorFormat, int] | None:
        """The (format, threads) a tensor priced so far is stored in (None if not produced yet)."""
        return self._formats.get(tensor)

    @property
    def done(self) -> bool:
        """True once every searchable layer has a choice."""
        return self.step == len(self.segments)

    def add(self, choice: Choice) -> float:
        """Price the next searchable layer under `choice` (already validated); returns the ms added."""
        before = self.latency_ms
        head, *rest = self.segments[self.step]
        fmt = self.table.io_format(choice)
        threads = choice.dataflow.threads
        cost = self.table.cost(head, choice)
        self._record(head, choice, cost, fmt, threads)
        self.step += 1
        self._price_following(rest)
        return self.latency_ms - before

    def added_by(self, choice: Choice) -> float:
        """The ms `add(choice)` would add, without adding it."""
        saved = (self.step, self.latency_ms, self.conversion_ms, self.energy_mj, len(self.layers), dict(self._formats), self._peak_activation)
        try:
            return self.add(choice)
        finally:
            self.step, self.latency_ms, self.conversion_ms, self.energy_mj, kept, self._formats, self._peak_activation = saved
            del self.layers[kept:]

    def fastest_next(self, admitted: np.ndarray) -> Choice:
        """The choice among `admitted` (a mask over `table.choices`) that adds the least latency at the
        next searchable layer: its own, the conversions into it and the layers up to the next one.

        The fastest choice of each output format and thread count (`CostTable.states`; by the table's
        latency array, which on a measuring target holds its estimates until measured) is priced in
        place; choices the backend rejects are skipped. ChoiceRejected if nothing admitted is left."""
        head = self.segments[self.step][0]
        states, state_of = self.table.states()
        admitted = admitted.copy()
        while True:
            latency = np.where(admitted, self.table.latency_array(head)[0], np.nan)
            best: tuple[float, Choice] | None = None
            try:
                for index in fastest_per_state(latency, state_of, len(states)):
                    if index >= 0:
                        added = self.added_by(self.table.choices[index])
                        if best is None or added < best[0]:
                            best = (added, self.table.choices[index])
            except ChoiceRejected:
                admitted[index] = False
                continue
            if best is None:
                raise ChoiceRejected(f"layer {head.name!r}: no admitted choice can deploy it")
            return best[1]

    def _price_following(self, layers: list[Layer]) -> None:
        """Price non-searchable layers, each in the format of its first input; and, once every
        searchable layer has a choice, the conversion of the output."""
        for layer in layers:
            fmt, threads = self._formats[layer.inputs[0]]
            self._record(layer, None, self.table.fixed_layer_cost(layer, fmt, threads), fmt, threads)
        if self.done:
            last = self.network.layers[-1]
            out_fmt, out_threads = self._formats[last.name]
            tail = self.table.conversion_cost(last.out_elements, out_fmt, NETWORK_IO_FORMAT, out_threads)
            self.conversion_ms += tail.latency_ms
            self.latency_ms += tail.latency_ms
            self._add_energy(tail.energy_mj)

    def _record(self, layer: Layer, choice: Choice | None, cost, fmt: TensorFormat, threads: int) -> None:
        conversion = 0.0
        for src in layer.inputs:
            src_fmt, _ = self._formats[src]
            elements = int(np.prod(self.network.producer_shape(src)))
            converted = self.table.conversion_cost(elements, src_fmt, fmt, threads)
            conversion += converted.latency_ms
            self._add_energy(converted.energy_mj)
        self._formats[layer.name] = (fmt, threads)
        self.latency_ms += cost.latency_ms + conversion
        self.conversion_ms += conversion
        self._add_energy(cost.energy_mj)
        bytes_per = QUANT_BYTES[fmt.quant]
        self._peak_activation = max(self._peak_activation, (layer.in_elements + layer.out_elements) * bytes_per)
        self.layers.append(LayerCost(layer.name, choice, cost.latency_ms, conversion, cost.memory_bytes, cost.energy_mj, cost.provenance))

    def _add_energy(self, energy_mj: float | None) -> None:
        """Energy of a part of the deployment (a part without one leaves the total unknown)."""
        self.energy_mj = None if energy_mj is None or self.energy_mj is None else self.energy_mj + energy_mj

    def result(self) -> NetworkCost:
        """Totals of the (complete) deployment."""
        if not self.done:
            raise ValueError(f"deployment incomplete: {self.step} of {len(self.segments)} searchable layers chosen")
        memory = sum(l.memory_bytes for l in self.layers) + int(self._peak_activation)
        return NetworkCost(self.latency_ms, self.conversion_ms, memory, self.energy_mj, tuple(self.layers))


def evaluate(network: Network, choices: Mapping[str, Choice], table: CostTable) -> NetworkCost:
    """Cost of a complete deployment (one choice per searchable layer, by layer name)."""
    missing = [l.name for l in network.searchable_layers if l.name not in choices]
    if missing:
        raise ValueError(f"deployment of {network.name!r} has no choice for layer(s) {missing}")
    assembler = Assembler(network, table)
    for layer in network.searchable_layers:
        table.space.check(layer, choices[layer.name])
        assembler.add(choices[layer.name])
    return assembler.result()


def uniform_choices(network: Network, pick: Callable[[Layer], Choice]) -> dict[str, Choice]:
    """A deployment that applies `pick` to every searchable layer."""
    return {layer.name: pick(layer) for layer in network.searchable_layers}


def fastest_per_state(latency_ms: np.ndarray, state_of: np.ndarray, n_states: int) -> np.ndarray:
    """Per state (`CostTable.states`), the index of its fastest choice with a finite latency; -1 where none."""
    best = np.full(n_states, -1)
    for s in range(n_states):
        candidates = np.where((state_of == s) & ~np.isnan(latency_ms))[0]
        if len(candidates):
            best[s] = candidates[np.argmin(latency_ms[candidates])]
    return best

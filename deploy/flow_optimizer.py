"""FlowOptimizer: the best dataflow of each layer, among all the target offers, by latency, energy or EDP.

As in FlowOptimizer (Lee et al., TODAES 2022), the dataflow is chosen per operator rather than fixed
for the whole accelerator. `best_dataflow` picks it for one layer and precision (the environment's
`dataflow="latency"|"energy"|"edp"` modes use it, so the agent chooses only the other levels); `best_dataflows` does it
for a whole network at once, pricing every layer's dataflows together (in parallel on a simulator).
"""

from __future__ import annotations

from dataclasses import dataclass

from deploy.cost import ChoiceRejected, Cost
from deploy.cost_table import CostTable
from envs.network import Layer, Network
from envs.space import Choice

CRITERIA = ("latency", "energy", "edp")


def score(cost: Cost, criterion: str) -> float:
    """What `criterion` minimises: latency, energy, or their product (energy-delay product)."""
    if criterion == "latency":
        return cost.latency_ms
    if cost.energy_mj is None:
        raise ValueError(f"criterion {criterion!r} needs energy, and {cost.provenance} gives none")
    return cost.energy_mj if criterion == "energy" else cost.energy_mj * cost.latency_ms


def _check(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r} is not one of {CRITERIA}")


def best_dataflow(costs: CostTable, layer: Layer, choice: Choice, criterion: str = "latency") -> Choice:
    """`choice` with the dataflow that minimises `criterion` for the layer (its other levels kept).

    Every dataflow is priced (in one batch on a simulator); ones the backend rejects are skipped;
    ChoiceRejected if none is left."""
    _check(criterion)
    candidates = [Choice(choice.quant, choice.algo, d, choice.arch) for d in costs.space.dataflows]
    costs.prefetch([(layer, c) for c in candidates])
    best: tuple[float, Choice] | None = None
    for candidate in candidates:
        try:
            value = score(costs.cost(layer, candidate), criterion)
        except ChoiceRejected:
            continue
        if best is None or value < best[0]:
            best = (value, candidate)
    if best is None:
        raise ChoiceRejected(f"layer {layer.name!r}: no dataflow can deploy it in {choice.quant} {choice.algo}")
    return best[1]


@dataclass(frozen=True)
class LayerDataflow:
    """The best dataflow of one layer and what it costs, next to the target's fixed dataflow."""

    layer: str
    choice: Choice
    cost: Cost
    fixed_cost: Cost


def best_dataflows(network: Network, costs: CostTable, quant: str, criterion: str = "latency") -> list[LayerDataflow]:
    """For each searchable layer computed directly in `quant`, the best dataflow by `criterion` and the
    cost of the target's own (baseline) dataflow for comparison."""
    _check(criterion)
    fixed = costs.space.baseline_choice()
    base = Choice(quant, "direct", fixed.dataflow, fixed.arch)
    pairs = [(layer, Choice(quant, "direct", d)) for layer in network.searchable_layers for d in costs.space.dataflows]
    costs.prefetch(pairs)
    out = []
    for layer in network.searchable_layers:
        choice = best_dataflow(costs, layer, base, criterion)
        out.append(LayerDataflow(layer.name, choice, costs.cost(layer, choice), costs.cost(layer, base)))
    return out

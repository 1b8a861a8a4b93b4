"""Latency of any network on a target under a given deployment, or its best per-layer one.

The public entry point to the target's latency model for users who do not search: a built-in network
name, a `Network`, or any CNN `torch.nn.Module` (imported with `envs.torch_import`), priced layer by
layer with conversions. The numbers are modelled (nothing is compiled or timed) unless a measurement
database holds measurements or simulations of the target's layers, and the result says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from deploy.cost_table import CostTable
from deploy.deployment import LayerCost, evaluate
from deploy.optimum import best_choices
from deploy.targets import get_target
from envs import zoo
from envs.network import Network
from envs.space import QUANTS, Choice

if TYPE_CHECKING:
    from torch import nn

    from deploy.db import MeasurementDB


@dataclass(frozen=True)
class LatencyEstimate:
    """A network's cost on a target under one deployment, with where every number came from."""

    network: str
    target: str
    latency_ms: float
    conversion_ms: float
    memory_bytes: int
    energy_mj: float | None
    provenance: tuple[str, ...]
    choices: dict[str, Choice]
    layers: tuple[LayerCost, ...]

    @property
    def measured(self) -> bool:
        """True only if every number was measured on a device (False for a modelled estimate)."""
        return all(p.startswith("measured:") for p in self.provenance)

    def summary(self) -> str:
        """One line: latency, memory and where the numbers came from."""
        kind = "measured" if self.measured else "not measured"
        return (
            f"{self.network} on {self.target}: {self.latency_ms:.2f} ms "
            f"(conversions {self.conversion_ms:.2f} ms), {self.memory_bytes / 1e6:.2f} MB; "
            f"{kind}: {', '.join(self.provenance)}"
        )


def _as_network(network: "str | Network | nn.Module", input_shape: tuple[int, int, int] | None) -> Network:
    if isinstance(network, Network):
        return network
    if isinstance(network, str):
        return zoo.get_network(network)
    if input_shape is None:
        raise ValueError(f"a torch module ({type(network).__name__}) needs input_shape=(C, H, W) to be imported")
    from envs.torch_import import import_module

    return import_module(network, input_shape)


def estimate_latency(
    network: "str | Network | nn.Module",
    target: str = "cortex-a72",
    choices: Mapping[str, Choice] | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    quant: str | None = None,
    threads: int | None = None,
    db: "MeasurementDB | None" = None,
) -> LatencyEstimate:
    """Price `network` on `target` (batch 1).

    Args:
        network: built-in network name, a `Network`, or a CNN `torch.nn.Module`.
        target: registered target name.
        choices: one choice per searchable layer (by layer name), e.g. `load_deployment(path).choices`;
            None prices the target's best per-layer deployment.
        input_shape: (C, H, W) for a torch module.
        quant: with `choices=None`, restrict the best deployment to this precision on every layer.
        threads: with `choices=None`, restrict every layer to this thread count.
        db: a measurement database: what was measured or simulated on this target there is used
            before the model (each layer's provenance says which).
    """
    net = _as_network(network, input_shape)
    tgt = get_target(target)
    space = tgt.search_space()
    earlier = [fp for fp in (db.fingerprints_of(tgt.name) if db is not None else []) if not fp.startswith("modelled:")]
    table = CostTable(tgt.model(), space, db, measured=earlier)
    if choices is None:
        if quant is not None and quant not in QUANTS:
            raise ValueError(f"quant {quant!r} is not one of {QUANTS}")
        offered = sorted({d.threads for d in space.dataflows})
        if threads is not None and threads not in offered:
            raise ValueError(f"threads={threads} is not offered by {target}; valid: {offered}")
        choices = best_choices(
            net,
            table,
            lambda c: (quant is None or c.quant == quant) and (threads is None or c.dataflow.threads == threads),
        )
    cost = evaluate(net, choices, table)
    return LatencyEstimate(
        net.name, target, cost.latency_ms, cost.conversion_ms, cost.memory_bytes, cost.energy_mj,
        cost.provenance, dict(choices), cost.layers,
    )

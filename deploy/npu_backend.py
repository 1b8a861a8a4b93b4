"""Simulated costs of NPU layers: ZigZag runs each (layer, precision, dataflow) in worker processes.

Latency is ZigZag's cycle count at the NPU's clock, energy its total in mJ, both stamped
`simulated:zigzag@<version>`; `cycles` and `utilization` recover the figures ZigZag reported. A layer
ZigZag cannot map under a choice raises `ChoiceRejected` (the environment then masks that precision
for layers of that shape) and is remembered, so it is never simulated twice. Pools, adds and
conversions are priced by the NPU's roofline model and say so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Sequence

from deploy.cost import ChoiceRejected, Cost, CostUnavailable, PerChoiceBackend, TensorFormat
from deploy.npu_hardware import NpuSpec
from deploy.npu_model import NpuRooflineModel, memory_bytes
from deploy.workers import MeasurementError, Pool, WorkerPool
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings, simulate
from envs.network import Layer
from envs.space import Choice


class ZigZagBackend(PerChoiceBackend):
    """NPU costs simulated by ZigZag.

    Args:
        spec: the NPU.
        settings: ZigZag's search depth and criterion, and the time a simulation may take.
        workers: simulation processes (default: this machine's cores).
        pool: worker processes shared with other backends (then `workers` is unused and `close`
            leaves the pool to its owner).
    """

    batch_friendly = False
    prices_all_quickly = True
    """Every choice of a whole network simulates in well under a minute on 2 cores (MobileNetV2: 496
    simulations in ~25 s), so callers may price them all up front (the fastest deployment)."""

    def __init__(self, spec: NpuSpec, settings: SimulationSettings = SimulationSettings(), workers: int | None = None,
                 pool: Pool | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.model = NpuRooflineModel(spec)
        self.provenance = f"simulated:zigzag@{ZIGZAG_VERSION}"
        self.simulations = 0
        """ZigZag runs so far (what the measurement database saves shows here)."""
        self._workers = workers
        self._pool: Pool | None = pool
        self._owns_pool = pool is None
        self._unmappable: dict[tuple[str, str], ChoiceRejected] = {}

    def fingerprint(self) -> str:
        """ZigZag's version, the NPU's hardware and the search depth and criterion: what changes a number
        (not the timeout or retries)."""
        blob = json.dumps({"hardware": self.spec.hardware, "search": self.settings.key}, sort_keys=True)
        return f"{self.provenance}:{self.spec.name}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


    def price_many(self, pairs: Sequence[tuple[Layer, Choice]]) -> list[Cost | CostUnavailable]:
        """Simulate (layer, choice) pairs in the worker processes; a failure is returned in its place."""
        results: list[Cost | CostUnavailable | None] = [self._unmappable.get((l.signature, c.key)) for l, c in pairs]
        todo = [i for i, r in enumerate(results) if r is None]
        if self._pool is None and todo:
            self._pool = WorkerPool("zigzag", self._workers)
        calls = [(pairs[i][0].to_dict(), pairs[i][1].to_dict(), self.spec.to_dict(), asdict(self.settings)) for i in todo]
        outcomes = self._pool.map(simulate, calls, self.settings.timeout_s, self.settings.retries, "ZigZag simulation") if todo else []
        self.simulations += len(todo)
        for i, outcome in zip(todo, outcomes):
            layer, choice = pairs[i]
            if isinstance(outcome, MeasurementError):
                if "UnmappableLayer" in str(outcome):
                    results[i] = self._unmappable[(layer.signature, choice.key)] = ChoiceRejected(str(outcome))
                else:
                    results[i] = outcome
                continue
            results[i] = Cost(
                self.spec.latency_ms(outcome["cycles"]), memory_bytes(layer, choice.quant), self.provenance,
                outcome["energy_pj"] * 1e-9,
            )
        return results  # type: ignore[return-value]

    def cycles(self, cost: Cost) -> float:
        """Clock cycles of a simulated latency."""
        return self.spec.cycles(cost.latency_ms)

    def utilization(self, layer: Layer, cost: Cost) -> float:
        """Fraction of the PE array's MAC slots used over the layer's cycles."""
        return layer.macs / (self.spec.rows * self.spec.cols * self.cycles(cost))

    def figures(self, layer: Layer, cost: Cost) -> dict[str, float]:
        """What ZigZag reported beyond latency and energy: cycles and MAC utilisation."""
        return {"cycles": self.cycles(cost), "utilization": self.utilization(layer, cost)}

    def io_format(self, choice: Choice) -> TensorFormat:
        """Activations are stored in the layer's precision, channels last."""
        return self.model.io_format(choice)



    def close(self) -> None:
        """Stop the simulation workers (unless they are shared)."""
        if self._pool is not None and self._owns_pool:
            self._pool.close()
            self._pool = None

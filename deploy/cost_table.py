"""Where the search gets its costs: memory first, then the measurement database, then the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deploy.cost import Cost, CostBackend, TensorFormat
from envs.network import Layer
from envs.space import Choice, SearchSpace

if TYPE_CHECKING:
    from deploy.db import MeasurementDB


class CostTable:
    """Costs of a network's layers for one target, computed once and reused.

    Every cost the backend produces lands in the database (when one is given) before it is used; a
    layer already in the database is read back in one query and never recomputed.

    Args:
        backend: prices layers for the target.
        space: the search space (decides which choices are valid).
        db: optional measurement database shared across runs and processes.
    """

    def __init__(self, backend: CostBackend, space: SearchSpace, db: "MeasurementDB | None" = None) -> None:
        self.backend = backend
        self.space = space
        self.db = db
        self.fingerprint = backend.fingerprint()
        self._layers: dict[str, dict[str, Cost]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._fixed: dict[tuple, Cost] = {}
        self.backend_calls = 0

    def layer_costs(self, layer: Layer) -> dict[str, Cost]:
        """Costs of every valid choice of a layer, keyed by `Choice.key` (batch-friendly backends)."""
        known = self._load(layer)
        missing = [c for c in self.space.valid_choices(layer) if c.key not in known]
        if missing:
            self._compute(layer, missing)
        return known

    def cost(self, layer: Layer, choice: Choice) -> Cost:
        """Cost of one valid choice."""
        known = self._load(layer)
        hit = known.get(choice.key)
        if hit is None:
            self.space.check(layer, choice)
            todo = self.space.valid_choices(layer) if self.backend.batch_friendly else [choice]
            self._compute(layer, [c for c in todo if c.key not in known])
            hit = known[choice.key]
        return hit

    def latency_array(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, memory_bytes) over `space.all_choices()` order; NaN where invalid."""
        arrays = self._arrays.get(layer.signature)
        if arrays is None:
            costs = self.layer_costs(layer)
            all_choices = self.space.all_choices()
            latency = np.array([costs[c.key].latency_ms if c.key in costs else np.nan for c in all_choices])
            memory = np.array([costs[c.key].memory_bytes if c.key in costs else np.nan for c in all_choices])
            arrays = self._arrays[layer.signature] = (latency, memory)
        return arrays

    def io_format(self, choice: Choice) -> TensorFormat:
        """Activation format of a layer deployed with `choice`."""
        return self.backend.io_format(choice)

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int) -> Cost:
        """Cost of a non-searchable layer in a given format (memoised)."""
        key = ("fixed", layer.signature, fmt, threads)
        hit = self._fixed.get(key)
        if hit is None:
            hit = self._fixed[key] = self.backend.fixed_layer_cost(layer, fmt, threads)
        return hit

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int) -> Cost:
        """Cost of converting a tensor between formats (memoised; zero when equal)."""
        key = ("convert", elements, src, dst, threads)
        hit = self._fixed.get(key)
        if hit is None:
            hit = self._fixed[key] = self.backend.conversion_cost(elements, src, dst, threads)
        return hit

    def _load(self, layer: Layer) -> dict[str, Cost]:
        known = self._layers.get(layer.signature)
        if known is None:
            known = self.db.get_layer(self.fingerprint, layer.signature) if self.db is not None else {}
            self._layers[layer.signature] = known
        return known

    def _compute(self, layer: Layer, choices: list[Choice]) -> None:
        if not choices:
            return
        self.backend_calls += 1
        costs = self.backend.layer_costs(layer, choices)
        if self.db is not None:
            self.db.put_many(self.fingerprint, ((layer.signature, c.key, cost) for c, cost in zip(choices, costs)))
        known = self._layers[layer.signature]
        for c, cost in zip(choices, costs):
            known[c.key] = cost

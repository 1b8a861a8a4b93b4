"""Where the search gets its costs: memory first, then the measurement database, then the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from deploy.cost import NETWORK_IO_FORMAT, ChoiceRejected, Cost, CostBackend, CostUnavailable, TensorFormat
from envs.network import Layer
from envs.space import Choice, SearchSpace

if TYPE_CHECKING:
    from deploy.db import MeasurementDB
    from deploy.latency_correction import LatencyCorrection


class CostTable:
    """Costs of a network's layers for one target, computed once and reused.

    Every cost the backend produces lands in the database (when one is given) before it is used; a
    layer already in the database is read back in one query and never recomputed.

    A backend that measures (not `batch_friendly`) prices only the choices asked for; where every
    choice of a layer is needed at once (lower bounds, the fastest deployment for a budget check),
    the `estimator`'s numbers stand in for the unmeasured ones.

    Args:
        backend: prices layers for the target.
        space: the search space (decides which choices are valid).
        db: optional measurement database shared across runs and processes.
        estimator: a batch-friendly backend (the target's model) for whole-layer arrays when `backend`
            measures.
        measured: fingerprints in `db` of earlier measurements on this target: their costs are used
            before the backend's (a model then fills in only what was never measured).
        correction: a latency correction applied to every cost the table gives out (the database
            keeps the backend's own numbers).
    """

    def __init__(
        self,
        backend: CostBackend,
        space: SearchSpace,
        db: "MeasurementDB | None" = None,
        estimator: CostBackend | None = None,
        measured: Sequence[str] = (),
        correction: "LatencyCorrection | None" = None,
    ) -> None:
        if not backend.batch_friendly and (estimator is None or not estimator.batch_friendly):
            raise ValueError(f"a cost table over {backend.provenance} needs a batch-friendly estimator")
        self.backend = backend
        self.space = space
        self.db = db
        self.fingerprint = backend.fingerprint()
        self.measured = tuple(fp for fp in measured if fp != self.fingerprint)
        self.correction = correction
        self._estimates = None if backend.batch_friendly else CostTable(estimator, space, correction=correction)  # type: ignore[arg-type]
        self.choices = tuple(space.all_choices())
        """Every action of the space decoded, in the order of `latency_array`."""
        self._position = {c.key: i for i, c in enumerate(self.choices)}
        self._states: tuple[list[tuple[TensorFormat, int]], np.ndarray] | None = None
        self._layers: dict[str, dict[str, Cost]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._fixed: dict[tuple, Cost | np.ndarray] = {}
        self._rejected: dict[str, dict[str, str]] = {}
        """Per layer signature: choices the backend rejected for good, with the reason (loaded with the layer)."""
        self.backend_calls = 0

    @property
    def estimates(self) -> "CostTable":
        """The estimator's numbers alone (the table itself on a batch-friendly backend): what a
        choice made before measuring sees, whatever has been measured since."""
        return self if self._estimates is None else self._estimates

    def layer_costs(self, layer: Layer) -> dict[str, Cost]:
        """Costs of every valid choice of a layer, keyed by `Choice.key` (batch-friendly backends)."""
        known = self._load(layer)
        missing = [c for c in self.space.valid_choices(layer) if c.key not in known]
        if missing:
            self._compute(layer, missing)
        if self.correction is None:
            return known
        return {key: self._corrected(layer, key, cost) for key, cost in known.items()}

    def cost(self, layer: Layer, choice: Choice) -> Cost:
        """Cost of one valid choice; ChoiceRejected, without asking the backend again, for one it rejected before."""
        known = self._load(layer)
        hit = known.get(choice.key)
        reason = self._rejected.get(layer.signature, {}).get(choice.key)
        if reason is not None:
            raise ChoiceRejected(reason)
        if hit is None:
            self.space.check(layer, choice)
            todo = self.space.valid_choices(layer) if self.backend.batch_friendly else [choice]
            try:
                self._compute(layer, [c for c in todo if c.key not in known])
            except ChoiceRejected as err:
                self._reject(layer, choice, str(err))
                raise
            hit = known[choice.key]
        return self._corrected(layer, choice.key, hit)

    def rejected(self, layer: Layer) -> dict[str, str]:
        """Choices the backend rejected for good for this layer (here or in an earlier run), with the reason."""
        self._load(layer)
        return dict(self._rejected.get(layer.signature, {}))

    def prefetch(self, pairs: Sequence[tuple[Layer, Choice]]) -> list[CostUnavailable]:
        """Price many (layer, choice) pairs in one go where the backend offers `price_many` (a measuring
        backend compiles them in parallel). Returns the failures; `cost` tries those again when asked."""
        price_many = getattr(self.backend, "price_many", None)
        if price_many is None:
            return []
        unique = {(layer.signature, choice.key): (layer, choice) for layer, choice in pairs}
        todo = [
            (layer, choice) for layer, choice in unique.values()
            if choice.key not in self._load(layer) and choice.key not in self._rejected.get(layer.signature, {})
        ]
        if not todo:
            return []
        failures = []
        for (layer, choice), result in zip(todo, price_many(todo)):
            if isinstance(result, Cost):
                self._store(layer, [choice], [result])
            else:
                failures.append(result)
                if isinstance(result, ChoiceRejected):
                    self._reject(layer, choice, str(result))
        return failures

    def latency_array(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, memory_bytes) over `choices` order; NaN where invalid or rejected by the backend.

        With a measuring backend: the estimator's numbers, overwritten by every measurement known."""
        arrays = self._arrays.get(layer.signature)
        if arrays is None:
            if self._estimates is None:
                costs = self._load(layer)
                self.layer_costs(layer)  # computes what is missing into `costs`
                latency, memory = np.full(len(self._position), np.nan), np.full(len(self._position), np.nan)
            else:
                costs = self._load(layer)
                latency, memory = (a.copy() for a in self._estimates.latency_array(layer))
            for key, cost in costs.items():
                latency[self._position[key]] = self._corrected(layer, key, cost).latency_ms
                memory[self._position[key]] = cost.memory_bytes
            for key in self._rejected.get(layer.signature, ()):
                latency[self._position[key]] = memory[self._position[key]] = np.nan
            arrays = self._arrays[layer.signature] = (latency, memory)
        return arrays

    def io_format(self, choice: Choice) -> TensorFormat:
        """Activation format of a layer deployed with `choice`."""
        return self.backend.io_format(choice)

    def states(self) -> tuple[list[tuple[TensorFormat, int]], np.ndarray]:
        """What can flow between layers: every (activation format, threads) a choice leaves its output
        in, and the network input's, sorted; and the index of each choice's (in `choices` order)."""
        if self._states is None:
            outputs = [(self.io_format(c), c.dataflow.threads) for c in self.choices]
            states = sorted(set(outputs) | {(NETWORK_IO_FORMAT, 1)}, key=lambda s: (s[0].quant, s[0].layout, s[1]))
            self._states = states, np.array([states.index(o) for o in outputs])
        return self._states

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int) -> Cost:
        """Cost of a non-searchable layer in a given format (memoised)."""
        key = ("fixed", layer.signature, fmt, threads)
        hit = self._fixed.get(key)
        if hit is None:
            hit = self.backend.fixed_layer_cost(layer, fmt, threads)
            hit = self._fixed[key] = hit if self.correction is None else self.correction.fixed_cost(hit)
        return hit

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int) -> Cost:
        """Cost of converting a tensor between formats (memoised; zero when equal)."""
        key = ("convert", elements, src, dst, threads)
        hit = self._fixed.get(key)
        if hit is None:
            hit = self.backend.conversion_cost(elements, src, dst, threads)
            hit = self._fixed[key] = hit if self.correction is None else self.correction.conversion_cost(hit)
        return hit

    def conversion_matrix(self, elements: int) -> np.ndarray:
        """[source state, reader state] (`states`) latency of converting a tensor of `elements` into the
        reader's format on the reader's threads (memoised)."""
        key = ("conversions", elements)
        matrix = self._fixed.get(key)
        if matrix is None:
            states = self.states()[0]
            matrix = self._fixed[key] = np.array(
                [[self.conversion_cost(elements, f, g, t).latency_ms for g, t in states] for f, _ in states]
            )
        return matrix

    def fixed_layer_vector(self, layer: Layer) -> np.ndarray:
        """Latency of a non-searchable layer run in each state's format and threads (memoised)."""
        key = ("fixed-vector", layer.signature)
        vector = self._fixed.get(key)
        if vector is None:
            vector = self._fixed[key] = np.array([self.fixed_layer_cost(layer, f, t).latency_ms for f, t in self.states()[0]])
        return vector

    def _corrected(self, layer: Layer, key: str, cost: Cost) -> Cost:
        """A cost as the table gives it out: corrected when the table has a correction."""
        if self.correction is None:
            return cost
        return self.correction.layer_cost(layer, self.choices[self._position[key]], cost)

    def _load(self, layer: Layer) -> dict[str, Cost]:
        known = self._layers.get(layer.signature)
        if known is None:
            known = self.db.get_layer(self.fingerprint, layer.signature) if self.db is not None else {}
            for fingerprint in self.measured:  # measurements win over what the backend priced
                known.update(self.db.get_layer(fingerprint, layer.signature))  # type: ignore[union-attr]
            if self.db is not None:
                self._rejected.setdefault(layer.signature, {}).update(self.db.rejections(self.fingerprint, layer.signature))
            self._layers[layer.signature] = known
        return known

    def _reject(self, layer: Layer, choice: Choice, reason: str) -> None:
        """The backend will never price `choice` for this layer: recorded (database first), and invalid
        in the layer's arrays."""
        if self.db is not None:
            self.db.put_rejection(self.fingerprint, layer.signature, choice.key, reason)
        self._rejected.setdefault(layer.signature, {})[choice.key] = reason
        arrays = self._arrays.get(layer.signature)
        if arrays is not None:
            arrays[0][self._position[choice.key]] = arrays[1][self._position[choice.key]] = np.nan

    def _compute(self, layer: Layer, choices: list[Choice]) -> None:
        if not choices:
            return
        self.backend_calls += 1
        self._store(layer, choices, self.backend.layer_costs(layer, choices))

    def _store(self, layer: Layer, choices: Sequence[Choice], costs: Sequence[Cost]) -> None:
        """Database first, then memory (and the layer's arrays, if built)."""
        if self.db is not None:
            self.db.put_many(self.fingerprint, ((layer.signature, c.key, cost) for c, cost in zip(choices, costs)))
        known = self._layers[layer.signature]
        arrays = self._arrays.get(layer.signature)
        for c, cost in zip(choices, costs):
            known[c.key] = cost
            if arrays is not None:
                arrays[0][self._position[c.key]] = self._corrected(layer, c.key, cost).latency_ms
                arrays[1][self._position[c.key]] = cost.memory_bytes

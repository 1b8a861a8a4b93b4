"""The exact fastest deployment of a network on a cost table, by dynamic programming over its graph.

A layer's own cost depends only on its choice; what couples layers is the activation format (precision
and layout) and thread count each one leaves its output in: a reader converts every input into its own
format, and a non-searchable layer (add, pool) runs in the format of its first input. So the state of
a partial deployment is the (format, threads) of every tensor still to be read: the current one and,
across a residual block, its skip tensor. The program walks the layers in order, adds each layer's cost
as a function of the states it touches, and minimises a tensor's state out once nothing reads it any
more (variable elimination). Choices that leave the same state behind cost their readers the same, so
only the fastest admitted choice per state is kept for each layer. The result is exact for the costs
`deploy.deployment.evaluate` sums (tested against brute force on small networks with skips).

The table has one axis per live tensor, so a network that keeps many tensors live at once (DenseNet's
concatenations read every earlier tensor of a block) would need more than `MAX_TABLE_ENTRIES`. There
the oldest live tensor is pinned to its best state given what is known so far (greedy), and the result
is a good deployment but no longer provably the fastest: `Optimum.exact` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from deploy.cost import NETWORK_IO_FORMAT
from deploy.cost_table import CostTable
from deploy.deployment import fastest_per_state
from envs.network import NETWORK_INPUT, Network
from envs.space import Choice


@dataclass
class _Elimination:
    """One state variable minimised out: the argmin over it for every state of the variables left."""

    axis: int
    rest: tuple[int, ...]
    argmin: np.ndarray


MAX_TABLE_ENTRIES = 1 << 22
"""Largest table the program builds (32 MiB of float64); beyond it, live tensors are pinned (module docstring)."""


@dataclass(frozen=True)
class Optimum:
    """The fastest deployment found, and whether it is provably the fastest."""

    choices: dict[str, Choice]
    exact: bool


class _Factors:
    """A table of the best latency so far over the states of the live variables (one array axis each)."""

    def __init__(self, n_states: int, start: int) -> None:
        self.value = np.full(n_states, np.inf)
        self.value[start] = 0.0
        self.axes: list[int] = [0]
        self.eliminated: list[_Elimination] = []
        self.pinned: dict[int, int] = {}

    @property
    def exact(self) -> bool:
        """No variable was pinned."""
        return not self.pinned

    def add(self, factor: np.ndarray, axes: tuple[int, ...]) -> None:
        """Add a cost that depends on the states of `axes` (a new axis is appended first; a pinned one is
        read at its pinned state)."""
        factor = factor[tuple(self.pinned.get(axis, slice(None)) for axis in axes)]
        axes = tuple(axis for axis in axes if axis not in self.pinned)
        growth = math.prod(n for n, axis in zip(factor.shape, axes) if axis not in self.axes)
        while self.value.size * growth > MAX_TABLE_ENTRIES:
            self._pin(next(a for a in self.axes if a not in axes))
        for axis in axes:
            if axis not in self.axes:
                self.axes.append(axis)
                self.value = self.value[..., None]
        order = sorted(range(len(axes)), key=lambda i: self.axes.index(axes[i]))
        shape = [1] * len(self.axes)
        for i in order:
            shape[self.axes.index(axes[i])] = factor.shape[i]
        self.value = self.value + np.transpose(factor, order).reshape(shape)

    def _pin(self, axis: int) -> None:
        """Fix `axis` to its best state given everything added so far (greedy; the result stops being exact)."""
        i = self.axes.index(axis)
        others = tuple(j for j in range(self.value.ndim) if j != i)
        state = int(np.argmin(np.min(self.value, axis=others) if others else self.value))
        self.value = np.take(self.value, state, axis=i)
        self.axes.remove(axis)
        self.pinned[axis] = state

    def eliminate(self, axis: int) -> None:
        """Minimise `axis` out, remembering the argmin for the way back."""
        i = self.axes.index(axis)
        rest = tuple(a for a in self.axes if a != axis)
        self.eliminated.append(_Elimination(axis, rest, np.argmin(self.value, axis=i)))
        self.value = np.min(self.value, axis=i)
        self.axes.remove(axis)

    def assignment(self) -> dict[int, int]:
        """The state of every eliminated variable in the minimum (all variables must be eliminated)."""
        states: dict[int, int] = dict(self.pinned)
        for step in reversed(self.eliminated):
            states[step.axis] = int(step.argmin[tuple(states[a] for a in step.rest)])
        return states


def best_choices(
    network: Network,
    table: CostTable,
    allow: Callable[[Choice], bool] | None = None,
    precisions: Mapping[str, str] | None = None,
) -> dict[str, Choice]:
    """The fastest deployment of `network` (one choice per searchable layer, by name): `optimum`'s choices."""
    return optimum(network, table, allow, precisions).choices


def optimum(
    network: Network,
    table: CostTable,
    allow: Callable[[Choice], bool] | None = None,
    precisions: Mapping[str, str] | None = None,
) -> Optimum:
    """The fastest deployment of `network` (one choice per searchable layer, by name), exact unless the
    network keeps too many tensors live (module docstring).

    Args:
        network: the network (layers in topological order).
        table: its target's costs (on a measuring target: measurements where known, estimates elsewhere).
        allow: admits a choice for every layer (default: every valid choice).
        precisions: layer name -> the only quantization that layer may take (default: any).
    """
    states, state_of = table.states()
    n = len(states)
    admitted = np.array([allow(c) if allow else True for c in table.choices])
    quant_of = np.array([c.quant for c in table.choices])
    readers_left = {NETWORK_INPUT: 0}
    for layer in network.layers:
        readers_left[layer.name] = 0
        for src in layer.inputs:
            readers_left[src] += 1
    output = network.layers[-1].name
    readers_left[output] += 1  # the final conversion reads it

    factors = _Factors(n, states.index((NETWORK_IO_FORMAT, 1)))
    axis_of = {NETWORK_INPUT: 0}
    picks: dict[str, np.ndarray] = {}
    for layer in network.layers:
        elements = [int(np.prod(network.producer_shape(src))) for src in layer.inputs]
        if layer.op.searchable:
            mask = admitted if precisions is None else admitted & (quant_of == precisions[layer.name])
            latency = np.where(mask, table.latency_array(layer)[0], np.nan)
            best = fastest_per_state(latency, state_of, n)
            own = np.where(best >= 0, latency[np.maximum(best, 0)], np.inf)
            axis = len(axis_of)
            factors.add(table.conversion_matrix(elements[0]) + own[None, :], (axis_of[layer.inputs[0]], axis))
            axis_of[layer.name], picks[layer.name] = axis, best
        else:
            first = axis_of[layer.inputs[0]]
            factors.add(table.fixed_layer_vector(layer), (first,))
            for src, size in zip(layer.inputs[1:], elements[1:]):
                if axis_of[src] == first:  # one state (e.g. x + pool(x)): converting a format into itself
                    factors.add(np.diag(table.conversion_matrix(size)).copy(), (first,))
                else:
                    factors.add(table.conversion_matrix(size), (axis_of[src], first))
            axis_of[layer.name] = first
        for src in layer.inputs:
            readers_left[src] -= 1
        _eliminate_dead(factors, axis_of, readers_left)
    tail = np.array([table.conversion_cost(network.layers[-1].out_elements, f, NETWORK_IO_FORMAT, t).latency_ms for f, t in states])
    factors.add(tail, (axis_of[output],))
    readers_left[output] -= 1
    _eliminate_dead(factors, axis_of, readers_left)
    if not np.isfinite(factors.value):
        raise ValueError(f"no admitted deployment exists for {network.name!r}")
    state = factors.assignment()
    return Optimum({name: table.choices[best[state[axis_of[name]]]] for name, best in picks.items()}, factors.exact)


def _eliminate_dead(factors: _Factors, axis_of: dict[str, int], readers_left: dict[str, int]) -> None:
    """Minimise out every state variable that no tensor still to be read refers to."""
    live = {axis_of[t] for t, left in readers_left.items() if left > 0 and t in axis_of}
    for axis in [a for a in factors.axes if a not in live]:
        factors.eliminate(axis)

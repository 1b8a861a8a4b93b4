"""Local search around an architecture search's front, once its agent has settled.

A converged policy samples little but its own mode, so the networks one block away from its choice,
which differ by an image or two of held-out accuracy and a few percent of latency, are mostly never
tried. `refine_front` spends a fixed number of evaluations there, as the simple evolutionary
multi-objective optimiser SEMO does (Laumanns et al., 2004): draw a network uniformly from the
accuracy-latency front, change one of its blocks to another of its options, evaluate it, add it to
the front, and repeat. Searches compared on an equal budget get the same number of evaluations.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from agents.pareto import ParetoFront, Point
from envs.arch_space import ArchSpace

Deploy = Callable[[Sequence[str]], tuple[float, dict[str, Any]]]
"""Deploys the network of the given block labels and returns its reward and info (as an episode would)."""

DRAWS_PER_EVALUATION = 100
"""Neighbours drawn at most for one new network before the search is taken to have run out of them."""


def refine_front(
    front: ParetoFront, deploy: Deploy, space: ArchSpace, evaluations: int, rng: np.random.Generator,
) -> tuple[float, dict[str, Any]] | None:
    """Evaluate up to `evaluations` networks one block away from `front`'s accuracy-latency front,
    adding each to `front`; return the highest (reward, info) among them (None if none was evaluated).
    Networks already on the front or already evaluated here are not evaluated again; the search stops
    early when `DRAWS_PER_EVALUATION` draws in a row find only such networks."""
    seen = {tuple(p.architecture) for p in front.front if p.architecture}
    if not seen:
        raise ValueError("refine_front needs a front of architecture-search points (none has an architecture)")
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(evaluations):
        labels = _unseen_neighbour(front, space, seen, rng)
        if labels is None:
            break
        seen.add(labels)
        reward, info = deploy(labels)
        front.add(Point.from_info(info))
        if best is None or reward > best[0]:
            best = (reward, info)
    return best


def _unseen_neighbour(front: ParetoFront, space: ArchSpace, seen: set[tuple[str, ...]], rng: np.random.Generator) -> tuple[str, ...] | None:
    """Labels of a neighbour of a random accuracy-latency front point that is not in `seen`, or None."""
    parents = [p for p in front.accuracy_latency() if p.architecture]
    for _ in range(DRAWS_PER_EVALUATION):
        parent = parents[rng.integers(len(parents))]
        labels = space.labels(space.neighbour(space.parse(parent.architecture), rng))
        if labels not in seen:
            return labels
    return None

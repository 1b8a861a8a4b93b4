"""Local search around a front: neighbours of front points only, no network twice, a fixed budget."""

from __future__ import annotations

import numpy as np
import pytest

from agents.local_search import refine_front
from agents.pareto import ParetoFront, Point
from envs.arch_space import ResNet18ArchSpace

SPACE = ResNet18ArchSpace()  # 8 blocks: 4 with 3 widths, 4 with 3 widths or dropped


def deployment(labels, widths=None):
    """A network's (reward, info): accuracy and latency both grow with its total width."""
    widths = [SPACE.parse(labels)[i] for i in range(SPACE.blocks)] if widths is None else widths
    work = sum(widths)
    info = {"accuracy": 0.5 + work / 20, "latency_ms": 1.0 + work, "choices": {}, "architecture": list(labels)}
    return info["accuracy"] - 0.01 * info["latency_ms"], info


def front_of(*architectures):
    front = ParetoFront()
    for blocks in architectures:
        front.add(Point.from_info(deployment(SPACE.labels(blocks))[1]))
    return front


def distance(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_every_network_evaluated_is_new_and_one_block_from_the_front_of_its_time():
    front = front_of(SPACE.ORIGINAL)
    evaluated = []

    def deploy(labels):
        parents = [p.architecture for p in front.accuracy_latency()]
        assert min(distance(labels, p) for p in parents) == 1
        evaluated.append(tuple(labels))
        return deployment(labels)

    best = refine_front(front, deploy, SPACE, 40, np.random.default_rng(0))
    assert len(evaluated) == len(set(evaluated)) == 40 and len(front.points) == 41
    assert tuple(SPACE.labels(SPACE.ORIGINAL)) not in evaluated
    assert best == max((deployment(labels) for labels in evaluated), key=lambda b: b[0])
    # narrower networks trade accuracy for latency here, so the front grew from its one point
    assert len(front.accuracy_latency()) > 5


def test_it_stops_when_the_front_has_no_unseen_neighbours():
    rewards = []

    def deploy(labels):  # every neighbour is dominated, so the front keeps its one point
        _, info = deployment(labels, widths=[1.0] * SPACE.blocks)
        info = {**info, "accuracy": 0.0}
        rewards.append(-1.0)
        return -1.0, info

    front = front_of(SPACE.ORIGINAL)
    neighbours = sum(len(SPACE.options(i)) - 1 for i in range(SPACE.blocks))
    best = refine_front(front, deploy, SPACE, 500, np.random.default_rng(0))
    assert best[0] == -1.0 and len(rewards) == neighbours == 20 and len(front.front) == 1
    assert refine_front(front_of(SPACE.ORIGINAL), deploy, SPACE, 0, np.random.default_rng(0)) is None


def test_a_front_without_architectures_is_refused():
    front = ParetoFront()
    front.add(Point(0.9, 1.0))
    with pytest.raises(ValueError, match="none has an architecture"):
        refine_front(front, deployment, SPACE, 5, np.random.default_rng(0))

"""The Pareto front of evaluated deployments: exactly the non-dominated points, kept with their choices."""

from __future__ import annotations

import numpy as np
import pytest

from agents.pareto import ParetoFront, Point, hypervolume


def brute_force_front(points: list[Point]) -> set[tuple]:
    unique = {(p.accuracy, p.latency_ms, p.energy_mj): p for p in points}.values()
    return {(p.accuracy, p.latency_ms, p.energy_mj) for p in unique if not any(q.dominates(p) for q in points)}


def test_dominance_needs_better_in_one_objective_and_no_worse_in_any():
    a = Point(0.9, 10.0, 1.0)
    assert a.dominates(Point(0.8, 10.0, 1.0)) and a.dominates(Point(0.9, 11.0, 1.0)) and a.dominates(Point(0.9, 10.0, 2.0))
    assert not a.dominates(Point(0.9, 10.0, 1.0))  # equal
    assert not a.dominates(Point(0.95, 12.0, 1.0)) and not Point(0.95, 12.0, 1.0).dominates(a)  # a trade-off
    assert Point(0.9, 10.0).dominates(Point(0.9, 11.0, 0.1))  # energy counts only when both have it


def test_front_is_exactly_the_non_dominated_set_whatever_the_order():
    rng = np.random.default_rng(0)
    points = [Point(float(a), float(l), float(e), {"i": i}) for i, (a, l, e) in
              enumerate(zip(rng.choice(20, 300) / 20, rng.choice(30, 300) + 1.0, rng.choice(10, 300) + 1.0))]
    front = ParetoFront()
    joined = [front.add(p) for p in points]
    assert {(p.accuracy, p.latency_ms, p.energy_mj) for p in front.front} == brute_force_front(points)
    assert len(front.points) == 300 and 0 < front.changes == sum(joined) < 300
    assert [p.latency_ms for p in front.front] == sorted(p.latency_ms for p in front.front)
    assert all(p.choices["i"] == points.index(p) for p in front.front)  # each keeps its own choices


def test_json_round_trip_and_figure():
    front = ParetoFront()
    for point in (Point(0.9, 10.0, None, {"l": "a"}), Point(0.95, 20.0, None, {"l": "b"}), Point(0.8, 30.0)):
        front.add(point)
    again = ParetoFront.from_dict(front.to_dict())
    assert again.front == front.front and again.points == front.points
    assert [p.choices for p in again.front] == [{"l": "a"}, {"l": "b"}]
    figure = front.figure({"baseline": (25.0, 0.9)})
    assert figure.axes[0].get_xlabel() == "latency (ms)"


def test_figure_marks_the_chosen_deployment_the_budget_and_points_on_the_front_by_energy_only():
    front = ParetoFront()
    for point in (Point(0.9, 10.0, 5.0), Point(0.95, 20.0, 5.0), Point(0.85, 15.0, 1.0)):  # the last: energy only
        front.add(point)
    ax = front.figure({"baseline": (25.0, 0.9)}, chosen=(10.0, 0.9), budget_ms=12.0).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {"chosen deployment", "budget 12.00 ms", "on the front by energy only"} <= set(labels)
    (budget,) = [line for line in ax.get_lines() if line.get_label() == "budget 12.00 ms"]
    assert list(budget.get_xdata()) == [12.0, 12.0]
    (energy_only,) = [c for c in ax.collections if c.get_label() == "on the front by energy only"]
    assert energy_only.get_offsets().tolist() == [[15.0, 85.0]]
    (chosen,) = [c for c in ax.collections if c.get_label() == "chosen deployment"]
    assert chosen.get_offsets().tolist() == [[10.0, 90.0]]


def test_accuracy_latency_front_is_the_two_objective_front_of_every_point_added():
    rng = np.random.default_rng(1)
    latency = rng.choice(30, 300) + 1.0
    accuracy = (latency + rng.choice(10, 300)) / 40  # slower points tend to be more accurate: a trade-off
    points = [Point(float(a), float(l), float(e)) for a, l, e in zip(accuracy, latency, rng.choice(10, 300) + 1.0)]
    front = ParetoFront()
    for p in points:
        front.add(p)
    two = front.accuracy_latency()
    expected = {(p.accuracy, p.latency_ms) for p in points
                if not any(q.accuracy >= p.accuracy and q.latency_ms <= p.latency_ms and (q.accuracy, q.latency_ms) != (p.accuracy, p.latency_ms)
                           for q in points)}
    assert {(p.accuracy, p.latency_ms) for p in two} == expected
    assert len(front.front) > len(expected)  # energy keeps more points on the three-objective front
    assert [p.latency_ms for p in two] == sorted(p.latency_ms for p in two)


def test_hypervolume_is_the_dominated_area_over_the_box():
    box = dict(nadir=(10.0, 0.5), ideal=(0.0, 1.0))
    assert hypervolume([(5.0, 0.9)], **box) == pytest.approx(5 * 0.4 / 5)
    # three staircase steps; a dominated point and a point beyond the nadir add nothing
    points = [(5.0, 0.9), (2.0, 0.6), (8.0, 0.95), (6.0, 0.7), (11.0, 0.99)]
    assert hypervolume(points, **box) == pytest.approx((8 * 0.1 + 5 * 0.3 + 2 * 0.05) / 5)
    assert hypervolume([], **box) == 0.0
    with pytest.raises(ValueError, match="must be faster and more accurate"):
        hypervolume(points, nadir=(1.0, 0.5), ideal=(2.0, 1.0))

"""The accuracy-latency(-energy) Pareto front of every deployment a search evaluated.

Every finished episode is a point (accuracy up, latency down, and energy down where the backend gives
one). All points are kept as numbers; the non-dominated ones also keep the per-layer choices that
produce them, so the front can be exported and any point on it deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@dataclass(frozen=True)
class Point:
    """One evaluated deployment."""

    accuracy: float
    latency_ms: float
    energy_mj: float | None = None
    choices: dict[str, Any] = field(default_factory=dict, compare=False)
    architecture: list[str] | None = field(default=None, compare=False)
    """Every block's setting label, when the search chose the architecture too."""

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Point":
        """The point of an evaluated deployment's `info` (as `DeploymentEnv.step` and `replay` give it,
        or a front point of `ParetoFront.to_dict`)."""
        return cls(info["accuracy"], info["latency_ms"], info.get("energy_mj"), info["choices"], info.get("architecture"))

    def dominates(self, other: "Point") -> bool:
        """At least as good in every objective and better in one (energy only when both have it)."""
        mine = [self.accuracy, -self.latency_ms]
        theirs = [other.accuracy, -other.latency_ms]
        if self.energy_mj is not None and other.energy_mj is not None:
            mine.append(-self.energy_mj)
            theirs.append(-other.energy_mj)
        return all(a >= b for a, b in zip(mine, theirs)) and any(a > b for a, b in zip(mine, theirs))


class ParetoFront:
    """All evaluated points and the non-dominated set among them."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float, float | None]] = []
        """(accuracy, latency_ms, energy_mj) of every point added."""
        self.front: list[Point] = []
        """The non-dominated points, by latency."""
        self.changes = 0
        """How often the front changed (a new point joined it)."""

    def add(self, point: Point) -> bool:
        """Record a point; True when it joins the front (dropping the points it dominates)."""
        self.points.append((point.accuracy, point.latency_ms, point.energy_mj))
        if any(p.dominates(point) or _same(p, point) for p in self.front):
            return False
        self.front = sorted([p for p in self.front if not point.dominates(p)] + [point], key=lambda p: p.latency_ms)
        self.changes += 1
        return True

    def accuracy_latency(self) -> list[Point]:
        """The points no other evaluated point beats in both accuracy and latency, by latency (the front
        also weighs energy; every point of this one is on it)."""

        def beaten(p: Point) -> bool:
            return any(
                q.accuracy >= p.accuracy and q.latency_ms <= p.latency_ms and (q.accuracy, q.latency_ms) != (p.accuracy, p.latency_ms)
                for q in self.front
            )

        return [p for p in self.front if not beaten(p)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every point evaluated, and the front with each point's choices."""
        return {
            "evaluated": len(self.points),
            "objectives": {"accuracy": "max", "latency_ms": "min", "energy_mj": "min (where given)"},
            "points": [list(p) for p in self.points],
            "front": [
                {
                    "accuracy": p.accuracy, "latency_ms": p.latency_ms, "energy_mj": p.energy_mj,
                    "architecture": p.architecture, "choices": p.choices,
                }
                for p in self.front
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParetoFront":
        """Inverse of `to_dict` (a resumed search goes on from the front it had)."""
        front = cls()
        front.points = [tuple(p) for p in d["points"]]  # type: ignore[misc]
        front.front = [Point.from_info(p) for p in d["front"]]
        return front

    def figure(
        self, references: dict[str, tuple[float, float]] | None = None, chosen: tuple[float, float] | None = None,
        budget_ms: float | None = None,
    ) -> Figure:
        """Accuracy against latency: every point, the accuracy-latency front (points on the front only
        because they use less energy hollow), labelled reference points (latency, accuracy), the chosen
        deployment and the latency budget."""
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if self.points:
            ax.scatter([p[1] for p in self.points], [100 * p[0] for p in self.points], s=6, c="0.75", label="evaluated")
        two = self.accuracy_latency()
        ax.step([p.latency_ms for p in two], [100 * p.accuracy for p in two], "o-", where="post",
                color="C3", markersize=4, label="Pareto front (accuracy, latency)")
        by_energy = [p for p in self.front if p not in two]
        if by_energy:
            ax.scatter([p.latency_ms for p in by_energy], [100 * p.accuracy for p in by_energy], s=22, facecolors="none",
                       edgecolors="C3", label="on the front by energy only")
        for label, (latency, accuracy) in (references or {}).items():
            ax.scatter([latency], [100 * accuracy], marker="*", s=120, label=label, zorder=3)
        if chosen is not None:
            ax.scatter([chosen[0]], [100 * chosen[1]], marker="D", s=60, color="k", label="chosen deployment", zorder=4)
        if budget_ms is not None:
            ax.axvline(budget_ms, color="0.3", linestyle="--", linewidth=1, label=f"budget {budget_ms:.2f} ms")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"{len(self.points)} deployments evaluated, {len(self.front)} on the front")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig


def hypervolume(points: Sequence[tuple[float, float]], nadir: tuple[float, float], ideal: tuple[float, float]) -> float:
    """The accuracy-latency hypervolume of `points` ((latency_ms, accuracy) pairs), normalised: the
    area they dominate within the box from `nadir` (worst latency, worst accuracy) to `ideal` (best
    latency, best accuracy) over the box's area. Points beyond the nadir add nothing; a point better
    than the ideal counts as far as it reaches (the measure may then exceed 1)."""
    (worst_ms, worst_acc), (best_ms, best_acc) = nadir, ideal
    if not (best_ms < worst_ms and best_acc > worst_acc):
        raise ValueError(f"hypervolume box: the ideal {ideal} must be faster and more accurate than the nadir {nadir}")
    area, reached = 0.0, worst_acc
    for latency, accuracy in sorted(p for p in points if p[0] < worst_ms and p[1] > worst_acc):
        if accuracy > reached:  # sweep from the fastest: each point adds its strip above the best so far
            area += (worst_ms - latency) * (accuracy - reached)
            reached = accuracy
    return area / ((worst_ms - best_ms) * (best_acc - worst_acc))


def _same(a: Point, b: Point) -> bool:
    """Equal in every objective (the first such point stays on the front)."""
    return (a.accuracy, a.latency_ms, a.energy_mj) == (b.accuracy, b.latency_ms, b.energy_mj)

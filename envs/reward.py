"""Turning (accuracy, latency) into a reward: the only place the two oracles meet.

Rewards are in accuracy points (0-100), so that a point of accuracy and the latency terms are on one
scale the user can read, and every mode says what one millisecond is worth (`RewardConfig.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BUDGET_POINTS = 7.0
"""Budget mode's default rate: spending the whole budget costs this many accuracy points. It is
MnasNet's trade-off (exponent -0.07: 1% more latency costs 0.07% of the accuracy) read at the budget
of a 95%-accurate network, made linear so that every millisecond is worth the same."""


@dataclass(frozen=True)
class RewardConfig:
    """How an episode is scored, in accuracy points.

    budget mode: the budget is a limit and, under it, latency trades against accuracy at a fixed rate:
        reward = 100 * accuracy - points_per_ms * latency_ms - overrun_penalty * 100 * max(0, latency / budget - 1)
    (by default one more point per 1% over budget). The latency term is paid as it accrues: each step
    pays `-points_per_ms` times the milliseconds its layer added, the end pays the rest. Without
    `points_per_ms` the rate is `DEFAULT_BUDGET_POINTS / budget_ms`.

    tradeoff mode (MnasNet): the final reward is 100 * accuracy * (latency / target_ms) ** exponent;
    steps pay nothing.
    """

    mode: str = "budget"
    budget_ms: float | None = None
    target_ms: float | None = None
    exponent: float = -0.07
    overrun_penalty: float = 1.0
    points_per_ms: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("budget", "tradeoff"):
            raise ValueError(f"reward mode {self.mode!r} is not one of ('budget', 'tradeoff')")
        limit = self.budget_ms if self.mode == "budget" else self.target_ms
        name = "budget_ms" if self.mode == "budget" else "target_ms"
        if limit is None or not limit > 0:
            raise ValueError(f"{self.mode} mode needs a positive {name}, got {limit!r}")
        if self.points_per_ms is not None and not self.points_per_ms >= 0:
            raise ValueError(f"points_per_ms must be >= 0 (accuracy points one millisecond costs), got {self.points_per_ms!r}")
        if self.mode == "budget" and self.points_per_ms is None:
            object.__setattr__(self, "points_per_ms", DEFAULT_BUDGET_POINTS / float(limit))

    @property
    def reference_ms(self) -> float:
        """The latency the observations are normalised by (budget or trade-off target)."""
        return float(self.budget_ms if self.mode == "budget" else self.target_ms)  # type: ignore[arg-type]

    def step_reward(self, layer_latency_ms: float) -> float:
        """Reward for pricing one more layer."""
        if self.mode == "tradeoff":
            return 0.0
        return -self.points_per_ms * layer_latency_ms  # type: ignore[operator]

    def final_reward(self, accuracy: float, latency_ms: float) -> float:
        """Reward when the deployment is complete (the steps have paid its latency term already)."""
        if self.mode == "tradeoff":
            return self.total(accuracy, latency_ms)
        overrun = max(0.0, latency_ms / self.reference_ms - 1.0)
        return 100.0 * accuracy - self.overrun_penalty * 100.0 * overrun

    def total(self, accuracy: float, latency_ms: float) -> float:
        """The whole episode's reward of a deployment with this accuracy and latency."""
        if self.mode == "tradeoff":
            return 100.0 * accuracy * (latency_ms / self.reference_ms) ** self.exponent
        return self.final_reward(accuracy, latency_ms) + self.step_reward(latency_ms)

    def feasible(self, latency_ms: float) -> bool:
        """Whether a latency meets the budget (always true in trade-off mode)."""
        return self.mode == "tradeoff" or latency_ms <= self.reference_ms

    def describe(self) -> str:
        """One line saying what the reward is and what one millisecond is worth."""
        if self.mode == "tradeoff":
            rate = 100 * abs(self.exponent)
            return (f"100 x accuracy x (latency / {self.reference_ms:.3g} ms) ^ {self.exponent:g} (MnasNet): "
                    f"1% more latency costs {rate:.2g}% of the accuracy")
        return (f"100 x accuracy - {self.points_per_ms:.4g} points per ms "
                f"({self.points_per_ms * self.reference_ms:.3g} points for the whole {self.reference_ms:.4g} ms budget)"
                f" - {self.overrun_penalty:g} point per 1% over budget")

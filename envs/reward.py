"""Turning (accuracy, latency) into a reward: the only place the two oracles meet.

Rewards are in accuracy points (0-100) so that a point of accuracy and the latency terms are on one
scale the user can read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardConfig:
    """How an episode is scored.

    budget mode: maximise accuracy subject to latency <= `budget_ms`. The final reward is
        100 * accuracy - `overrun_penalty` * 100 * max(0, latency / budget - 1)
    (by default one point per 1% over budget), and each step pays a small
    `-latency_weight * 100 * layer_latency / budget` so that, among equally accurate deployments,
    faster ones score higher (the whole budget spent costs `latency_weight * 100` points).

    tradeoff mode (MnasNet): the final reward is 100 * accuracy * (latency / target_ms) ** exponent;
    steps pay nothing.
    """

    mode: str = "budget"
    budget_ms: float | None = None
    target_ms: float | None = None
    exponent: float = -0.07
    overrun_penalty: float = 1.0
    latency_weight: float = 0.02

    def __post_init__(self) -> None:
        if self.mode not in ("budget", "tradeoff"):
            raise ValueError(f"reward mode {self.mode!r} is not one of ('budget', 'tradeoff')")
        limit = self.budget_ms if self.mode == "budget" else self.target_ms
        name = "budget_ms" if self.mode == "budget" else "target_ms"
        if limit is None or not limit > 0:
            raise ValueError(f"{self.mode} mode needs a positive {name}, got {limit!r}")

    @property
    def reference_ms(self) -> float:
        """The latency the observations are normalised by (budget or trade-off target)."""
        return float(self.budget_ms if self.mode == "budget" else self.target_ms)  # type: ignore[arg-type]

    def step_reward(self, layer_latency_ms: float) -> float:
        """Reward for pricing one more layer."""
        if self.mode == "tradeoff":
            return 0.0
        return -self.latency_weight * 100.0 * layer_latency_ms / self.reference_ms

    def final_reward(self, accuracy: float, latency_ms: float) -> float:
        """Reward when the deployment is complete."""
        if self.mode == "tradeoff":
            return 100.0 * accuracy * (latency_ms / self.reference_ms) ** self.exponent
        overrun = max(0.0, latency_ms / self.reference_ms - 1.0)
        return 100.0 * accuracy - self.overrun_penalty * 100.0 * overrun

    def feasible(self, latency_ms: float) -> bool:
        """Whether a latency meets the budget (always true in trade-off mode)."""
        return self.mode == "tradeoff" or latency_ms <= self.reference_ms

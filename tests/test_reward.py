"""`envs.reward.RewardConfig`: what a millisecond is worth, and that the steps and the end add up."""

from __future__ import annotations

import pytest

from envs.reward import DEFAULT_BUDGET_POINTS, RewardConfig


def test_default_rate_prices_the_whole_budget_at_the_stated_points():
    reward = RewardConfig("budget", budget_ms=50.0)
    assert reward.points_per_ms == pytest.approx(DEFAULT_BUDGET_POINTS / 50.0)
    assert "0.14 points per ms (7 points for the whole 50 ms budget)" in reward.describe()


def test_steps_and_end_add_up_to_the_total():
    reward = RewardConfig("budget", budget_ms=40.0, points_per_ms=0.5)
    layers = [3.0, 10.0, 7.5]  # ms each step added
    paid = sum(reward.step_reward(ms) for ms in layers) + reward.final_reward(0.9, sum(layers))
    assert paid == pytest.approx(reward.total(0.9, 20.5)) == pytest.approx(90 - 0.5 * 20.5)


def test_over_budget_costs_a_point_per_percent_on_top():
    reward = RewardConfig("budget", budget_ms=40.0, points_per_ms=0.5)
    assert reward.total(0.9, 44.0) == pytest.approx(90 - 0.5 * 44 - 10)
    assert not reward.feasible(44.0) and reward.feasible(40.0)


def test_faster_is_better_at_equal_accuracy_and_accuracy_trades_at_the_rate():
    reward = RewardConfig("budget", budget_ms=40.0, points_per_ms=0.25)
    assert reward.total(0.9, 20.0) > reward.total(0.9, 21.0)
    assert reward.total(0.91, 24.0) == pytest.approx(reward.total(0.90, 20.0))  # 1 point = 4 ms


def test_tradeoff_mode_is_mnasnet():
    reward = RewardConfig("tradeoff", target_ms=10.0)
    assert reward.step_reward(3.0) == 0.0
    assert reward.total(0.8, 20.0) == pytest.approx(80 * 2 ** -0.07) == reward.final_reward(0.8, 20.0)
    assert "MnasNet" in reward.describe()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "budget"}, "positive budget_ms"),
        ({"mode": "budget", "budget_ms": -5}, "positive budget_ms"),
        ({"mode": "tradeoff"}, "positive target_ms"),
        ({"mode": "budget", "budget_ms": 5, "points_per_ms": -1}, "points_per_ms must be >= 0"),
        ({"mode": "fastest"}, "not one of"),
    ],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)

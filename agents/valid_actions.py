"""Valid actions for agents that cannot mask them (Stable-Baselines3's PPO and A2C).

The environment ends an episode on an invalid action (`envs.env.DeploymentEnv`); an agent that
cannot mask would spend most of its episodes learning where the masks are. `ValidActions` maps every
action component onto the step's valid entries instead: an invalid entry i of a component with n valid
entries becomes its (i mod n)-th valid one; valid entries stay. The agent then learns over the same
deployments the masked agents search, through a many-to-one action map.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ValidActions(gym.Wrapper):
    """Replaces each invalid action component by a valid entry (module docstring)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._splits = np.cumsum(np.asarray(env.action_space.nvec))[:-1]

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        masks = np.split(self.env.unwrapped.action_masks(), self._splits)
        fixed = [a if m[a] else np.flatnonzero(m)[a % m.sum()] for a, m in zip(np.asarray(action).reshape(-1), masks)]
        return self.env.step(np.array(fixed))

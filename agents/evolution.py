"""Regularized (aging) evolution over whole deployments (Real et al., AAAI 2019).

A deployment is the sequence of actions of its episode. The population holds the last `population`
deployments evaluated; each new one copies the best of `sample` drawn at random from it and redraws
one step's action (uniformly among that step's valid actions), and then the oldest leaves. The first
`population` deployments are random. A copied action that is not valid where it lands (an architecture
choice moved the layers) is drawn afresh. Fitness is the episode's return.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from agents.episodic import EpisodicAgent


class RegularizedEvolution(EpisodicAgent):
    """Aging evolution with tournament selection and one-step mutation; seeded.

    Args:
        env, seed, tensorboard_log: as `EpisodicAgent`.
        population: deployments kept (the oldest leaves when a new one arrives).
        sample: deployments drawn for each tournament.
    """

    name = "evolution"

    def __init__(
        self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None, population: int = 20, sample: int = 5
    ) -> None:
        super().__init__(env, seed, tensorboard_log)
        if population < 1 or not 1 <= sample <= population:
            raise ValueError(f"evolution needs population >= 1 and 1 <= sample <= population, got {population} and {sample}")
        self.population_size, self.sample = population, sample
        self.population: deque[tuple[float, list[np.ndarray]]] = deque()
        self._parent: list[np.ndarray] | None = None
        self._mutate_at = -1
        self._taken: list[np.ndarray] = []
        self._return = 0.0

    def begin_episode(self) -> None:
        self._taken, self._return = [], 0.0
        if len(self.population) < self.population_size:
            self._parent, self._mutate_at = None, -1
            return
        drawn = self.rng.choice(len(self.population), self.sample, replace=False)
        self._parent = max((self.population[i] for i in drawn), key=lambda member: member[0])[1]
        self._mutate_at = int(self.rng.integers(len(self._parent)))

    def act(self, observation: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        step = len(self._taken)
        inherited = self._parent[step] if self._parent is not None and step < len(self._parent) else None
        valid = inherited is not None and all(m[a] for m, a in zip(masks, inherited))
        if step == self._mutate_at or not valid:
            return self._redraw(masks, inherited)
        return inherited

    def _redraw(self, masks: list[np.ndarray], avoid: np.ndarray | None) -> np.ndarray:
        """A random valid action, other than `avoid` when there is another."""
        for _ in range(16):
            action = self.random_action(masks)
            if avoid is None or not np.array_equal(action, avoid):
                return action
        return action

    def observe(self, action: np.ndarray, reward: float, done: bool, info: dict[str, Any]) -> None:
        self._taken.append(np.asarray(action))
        self._return += reward
        if done:
            self.population.append((self._return, self._taken))
            if len(self.population) > self.population_size:
                self.population.popleft()

    def state(self) -> dict[str, Any]:
        return {"population": list(self.population), "size": self.population_size, "sample": self.sample}

    def restore(self, state: dict[str, Any]) -> None:
        self.population_size, self.sample = state["size"], state["sample"]
        self.population = deque(state["population"])

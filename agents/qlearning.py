"""Tabular Q-learning with an epsilon schedule and experience replay, as QS-DNN searches primitives
(de Prado et al., DATE 2019).

QS-DNN's state is the layer and the primitive chosen for the previous layer; here the previous
layer's primitive is reduced to its (quantization, algorithm) entry, which fixes the format the
layer hands on. The actions are the whole per-layer actions. Unvisited actions have the value 0, below
any deployment's return, so the policy takes the best action tried and explores with probability
epsilon, which falls linearly from 1 to `epsilon_final` over the first `explore_fraction` of the
timesteps. After each episode its transitions are learnt backwards (the final reward reaches the
first layer at once) and `replay` transitions drawn from the last `memory` are learnt again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from agents.episodic import EpisodicAgent

State = tuple[int, int]
Action = tuple[int, ...]


class QLearning(EpisodicAgent):
    """Tabular Q-learning over (layer, previous entry) states; seeded.

    Args:
        env, seed, tensorboard_log: as `EpisodicAgent`.
        alpha: learning rate. gamma: discount (1: the return is the deployment's score).
        epsilon_final: exploration rate once the schedule ends. explore_fraction: share of the
            timesteps over which epsilon falls from 1.
        replay: transitions learnt again after each episode. memory: transitions kept to replay.
    """

    name = "qlearning"

    def __init__(
        self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None, alpha: float = 0.5, gamma: float = 1.0,
        epsilon_final: float = 0.05, explore_fraction: float = 0.8, replay: int = 256, memory: int = 20_000,
    ) -> None:
        super().__init__(env, seed, tensorboard_log)
        self.hyper = {"alpha": alpha, "gamma": gamma, "epsilon_final": epsilon_final,
                      "explore_fraction": explore_fraction, "replay": replay, "memory": memory}
        self.q: dict[State, dict[Action, float]] = {}
        self.memory: deque[tuple[State, Action, float, State | None]] = deque(maxlen=memory)
        self._episode: list[tuple[State, Action, float]] = []
        self._state: State = (0, -1)

    @property
    def epsilon(self) -> float:
        """The exploration rate now."""
        h = self.hyper
        return max(h["epsilon_final"], 1.0 - (1.0 - h["epsilon_final"]) * self.progress / h["explore_fraction"])

    def begin_episode(self) -> None:
        self._episode, self._state = [], (0, -1)

    def act(self, observation: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        values = self.q.get(self._state, {})
        valid = [a for a, v in values.items() if all(m[i] for m, i in zip(masks, a))]
        if not valid or self.rng.random() < self.epsilon:
            return self.random_action(masks)
        best = max(values[a] for a in valid)
        ties = [a for a in valid if values[a] == best]
        return np.array(ties[self.rng.integers(len(ties))])

    def observe(self, action: np.ndarray, reward: float, done: bool, info: dict[str, Any]) -> None:
        key = tuple(int(a) for a in action)
        self._episode.append((self._state, key, reward))
        self._state = (self._state[0] + 1, key[1])
        if not done:
            return
        transitions = [(s, a, r, None if i == len(self._episode) - 1 else self._episode[i + 1][0])
                       for i, (s, a, r) in enumerate(self._episode)]
        for transition in reversed(transitions):
            self._learn(*transition)
        self.memory.extend(transitions)
        for i in self.rng.integers(len(self.memory), size=min(self.hyper["replay"], len(self.memory))):
            self._learn(*self.memory[i])

    def _learn(self, state: State, action: Action, reward: float, following: State | None) -> None:
        future = 0.0 if following is None else max(self.q.get(following, {0: 0.0}).values())
        values = self.q.setdefault(state, {})
        old = values.get(action, 0.0)
        values[action] = old + self.hyper["alpha"] * (reward + self.hyper["gamma"] * future - old)

    def state(self) -> dict[str, Any]:
        return {"hyper": self.hyper, "q": self.q, "memory": list(self.memory)}

    def restore(self, state: dict[str, Any]) -> None:
        self.hyper, self.q = state["hyper"], state["q"]
        self.memory = deque(state["memory"], maxlen=self.hyper["memory"])

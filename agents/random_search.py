"""Random search: every step draws each action component uniformly among its valid entries."""

from __future__ import annotations

import numpy as np

from agents.episodic import EpisodicAgent


class RandomSearch(EpisodicAgent):
    """Uniform random deployments (the reference every search must beat); seeded."""

    name = "random"

    def act(self, observation: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        return self.random_action(masks)

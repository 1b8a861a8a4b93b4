"""The loop of a search agent that learns from whole episodes without gradients.

Random search, evolution and tabular Q-learning pick one action per step of one environment, as
Stable-Baselines3's algorithms do, and are driven through the same interface (`learn(total_timesteps,
callback)`, `save`, `load`, `num_timesteps`, `logger`), so the TensorBoard callback, checkpoints and
run folder work unchanged for every agent. A subclass says what to do at an episode's start
(`begin_episode`), at each step (`act`, given the step's action masks) and after each step (`observe`);
its state is what `save` keeps.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.utils import configure_logger
from stable_baselines3.common.vec_env import VecEnv

LOG_EVERY = 1024
"""Timesteps between two TensorBoard writes (a Stable-Baselines3 rollout's length by default)."""


class EpisodicAgent:
    """One environment, one action per step; subclasses implement `begin_episode`, `act`, `observe`.

    Args:
        env: a vectorised environment of exactly one copy (masks come from its `action_masks`).
        seed: seeds the agent's own draws and the environment.
        tensorboard_log: folder of TensorBoard runs (None: no TensorBoard).
    """

    name = "episodic"
    """TensorBoard run name."""

    def __init__(self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None) -> None:
        if env.num_envs != 1:
            raise ValueError(f"{type(self).__name__} steps one environment, got {env.num_envs}")
        self.env = env
        self.seed = seed
        self.tensorboard_log = tensorboard_log
        self.rng = np.random.default_rng(seed)
        self.num_timesteps = 0
        self.logger = configure_logger(0, None, self.name)
        self._learn_end = 1
        """The timestep the current `learn` call runs to."""
        self._nvec = np.asarray(env.action_space.nvec)
        self._splits = np.cumsum(self._nvec)[:-1]
        self.pause_hook: Callable[[], bool] | None = None
        """Called between episodes (`agents.resumable.at_pause_points`); learning stops when it returns True."""

    # ---- what a subclass implements ------------------------------------------------------------
    def begin_episode(self) -> None:
        """Called before the first step of every episode."""

    def act(self, observation: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        """The action for this step; `masks` are the valid entries of each action component."""
        raise NotImplementedError

    def observe(self, action: np.ndarray, reward: float, done: bool, info: dict[str, Any]) -> None:
        """Called after every step with what it returned."""

    def state(self) -> dict[str, Any]:
        """What `save` keeps besides the timestep count and the random generator."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of `state`."""

    # ---- the loop -------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the search's timesteps done (0 to 1): of this `learn` call's and, when it
        continues an earlier one (`reset_num_timesteps=False`), of those before it, as in Stable-Baselines3."""
        return min(1.0, self.num_timesteps / max(self._learn_end, 1))

    def random_action(self, masks: list[np.ndarray]) -> np.ndarray:
        """Every component drawn uniformly among its valid entries."""
        return np.array([self.rng.choice(np.flatnonzero(m)) for m in masks])

    def learn(
        self,
        total_timesteps: int,
        callback: BaseCallback | list[BaseCallback] | None = None,
        progress_bar: bool = False,
        reset_num_timesteps: bool = True,
        tb_log_name: str | None = None,
    ) -> "EpisodicAgent":
        """Run `total_timesteps` more steps, calling `callback` as Stable-Baselines3 does."""
        if reset_num_timesteps:
            self.num_timesteps = 0
        self.logger = configure_logger(0, self.tensorboard_log, tb_log_name or self.name, reset_num_timesteps)
        callbacks = [callback] if isinstance(callback, BaseCallback) else list(callback or [])
        if progress_bar:
            callbacks.append(ProgressBarCallback())
        hooks = CallbackList(callbacks)
        hooks.init_callback(self)  # type: ignore[arg-type]
        end = self.num_timesteps + total_timesteps
        self._learn_end = end
        self.env.seed(self.seed + self.num_timesteps)
        observation = self.env.reset()
        hooks.on_training_start(locals(), globals())
        hooks.on_rollout_start()
        stopped = self._pause()
        if not stopped:
            self.begin_episode()
        while not stopped and self.num_timesteps < end:
            masks = np.split(np.asarray(self.env.env_method("action_masks")[0]), self._splits)
            action = np.asarray(self.act(observation[0], masks))
            observation, rewards, dones, infos = self.env.step(action[None])
            self.num_timesteps += 1
            hooks.update_locals({"rewards": rewards, "dones": dones, "infos": infos})
            if not hooks.on_step():
                break
            self.observe(action, float(rewards[0]), bool(dones[0]), infos[0])
            if self.num_timesteps % LOG_EVERY == 0:
                hooks.on_rollout_end()
                self.logger.dump(self.num_timesteps)
                hooks.on_rollout_start()
            if dones[0]:
                stopped = self._pause()
                if not stopped:
                    self.begin_episode()
        hooks.on_rollout_end()
        self.logger.dump(self.num_timesteps)
        hooks.on_training_end()
        return self

    def _pause(self) -> bool:
        """A pause point (between episodes, before the next one begins): True if learning stops here."""
        return bool(self.pause_hook and self.pause_hook())

    # ---- Stable-Baselines3's interface for callbacks ---------------------------------------------
    def get_env(self) -> VecEnv:
        """The environment (callbacks read it)."""
        return self.env

    def get_vec_normalize_env(self) -> None:
        """No observation normalisation (checkpoints ask)."""
        return None

    def save(self, path: str | Path) -> None:
        """Everything needed to continue: the agent's state, its random generator and step count."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        blob = {"agent": type(self).__name__, "seed": self.seed, "num_timesteps": self.num_timesteps,
                "rng": self.rng.bit_generator.state, "state": self.state()}
        with open(path, "wb") as f:
            pickle.dump(blob, f)

    @classmethod
    def load(cls, path: str | Path, env: VecEnv, tensorboard_log: str | None = None) -> "EpisodicAgent":
        """An agent saved by `save`, on `env`; ValueError if the file is another agent's."""
        with open(path, "rb") as f:
            blob = pickle.load(f)
        if not isinstance(blob, dict) or blob.get("agent") != cls.__name__:
            found = blob.get("agent") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"{path}: a checkpoint of {found!r}, not of {cls.__name__}")
        agent = cls(env, blob["seed"], tensorboard_log)
        agent.num_timesteps = blob["num_timesteps"]
        agent.rng.bit_generator.state = blob["rng"]
        agent.restore(blob["state"])
        return agent

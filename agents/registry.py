"""Every search agent by name, built and restored the same way, so a run, a benchmark or a test can
swap one for another: `--agent maskable_ppo|ppo|a2c|qlearning|evolution|random`.

The Stable-Baselines3 agents (`agents.ppo`) take their hyperparameters from `ppo.yml` and step
`n_envs` environment copies; `maskable_ppo` is MaskablePPO with self-imitation on its best episodes
(`agents.self_imitation`). The episodic agents (`agents.episodic`) step one copy and keep their own
defaults. Every agent is seeded and offers `learn(total_timesteps, callback, ...)`, `save(path)` and
`num_timesteps`, and writes TensorBoard under its own name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gymnasium as gym

from agents.episodic import EpisodicAgent
from agents.evolution import RegularizedEvolution
from agents.ppo import ALGORITHMS, PPOHyperparams, make_agent, make_vec_env
from agents.qlearning import QLearning
from agents.random_search import RandomSearch

EPISODIC: dict[str, type[EpisodicAgent]] = {"qlearning": QLearning, "evolution": RegularizedEvolution, "random": RandomSearch}
AGENTS = (*ALGORITHMS, *EPISODIC)
"""Every agent's name; the first is the default."""


def check_agent(name: str) -> str:
    """`name` if it is an agent's; ValueError listing them otherwise."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(AGENTS)}")
    return name


def checkpoint_suffix(name: str) -> str:
    """The file suffix of the agent's checkpoints (Stable-Baselines3 zips, pickles otherwise)."""
    return ".pkl" if check_agent(name) in EPISODIC else ".zip"


def make_search_agent(
    name: str, make_env: Callable[[], gym.Env], seed: int, tensorboard_log: str | None, hp: PPOHyperparams
):
    """A fresh agent `name` on copies of `make_env()` (`hp` applies to the Stable-Baselines3 agents)."""
    if check_agent(name) in EPISODIC:
        return EPISODIC[name](make_vec_env(make_env, 1), seed, tensorboard_log)
    env = make_vec_env(make_env, hp.n_envs, valid_actions=name != "maskable_ppo")
    return make_agent(env, hp, seed, tensorboard_log, name)


def load_search_agent(
    name: str, path: Path, make_env: Callable[[], gym.Env], tensorboard_log: str | None, hp: PPOHyperparams
):
    """Agent `name` as saved at `path`, on fresh copies of `make_env()`."""
    if check_agent(name) in EPISODIC:
        return EPISODIC[name].load(path, make_vec_env(make_env, 1), tensorboard_log)
    env = make_vec_env(make_env, hp.n_envs, valid_actions=name != "maskable_ppo")
    return ALGORITHMS[name].load(path, env=env, device="cpu", tensorboard_log=tensorboard_log)

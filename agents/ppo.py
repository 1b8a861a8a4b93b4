"""Building the Stable-Baselines3 agents (MaskablePPO, PPO, A2C) from hyperparameters in YAML.

MaskablePPO uses the environment's action masks; PPO and A2C cannot, and search through
`agents.valid_actions.ValidActions`. Hyperparameters come from sections of `ppo.yml`: `default`,
updated by each section asked for that exists (e.g. the target's, then the target's and network's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import torch
import yaml
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import FloatSchedule
from stable_baselines3.common.vec_env import VecEnv

from agents.masked_policy import PaddedMaskablePolicy
from agents.resumable import EpisodeRecordingVecEnv, Pausable
from agents.self_imitation import SelfImitationPPO
from agents.valid_actions import ValidActions

# Every policy step builds one torch Categorical per action component, and torch checks each one's
# arguments; the action masks already keep them valid, and the checks cost ~10% of a training step.
torch.distributions.Distribution.set_default_validate_args(False)

DEFAULT_HYPERPARAMS = Path(__file__).with_name("ppo.yml")
SEARCH_THREADS = 1
"""Torch threads of a search: the policy is a small MLP (one thread is as fast), and a fixed count
makes a seeded run the same search on any number of cores."""


class HyperparamError(ValueError):
    """A hyperparameter file that cannot be used, naming the file and the problem."""


@dataclass(frozen=True)
class PPOHyperparams:
    """The Stable-Baselines3 agents' settings (see agents/ppo.yml); A2C and PPO ignore what is MaskablePPO's."""

    n_envs: int = 8
    """environments stepped together to fill a rollout"""
    n_steps: int = 32
    """steps per environment per rollout"""
    batch_size: int = 128
    """minibatch size"""
    n_epochs: int = 10
    """optimisation epochs per rollout"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    gamma: float = 1.0
    """discount (1: the return is the deployment's score)"""
    gae_lambda: float = 0.8
    """GAE lambda"""
    ent_coef: float = 0.0
    """entropy bonus"""
    clip_range: float = 0.2
    """PPO clip range"""
    net_arch: tuple[int, ...] = (128, 128)
    """hidden layers of the policy and value networks"""
    sil_steps: int = 16
    """maskable_ppo: self-imitation gradient steps after each update (0: plain MaskablePPO)"""
    buffer_episodes: int = 16
    """maskable_ppo: best episodes kept for self-imitation"""
    sil_batch_size: int = 128
    """maskable_ppo: transitions per self-imitation step"""
    value_starts_at_typical_return: bool = True
    """start the value head at `typical_return` (False: at 0, as Stable-Baselines3 does)"""
    anneal_learning_rate: bool = False
    """lower the learning rate linearly to 0 over each `learn()` call (`LinearDecay`); a model-guided
    search, which learns in rounds, keeps its starting rate (`hold_learning_rate`)"""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for config files and TensorBoard hparams)."""
        d = asdict(self)
        d["net_arch"] = list(self.net_arch)
        return d


@dataclass(frozen=True)
class LinearDecay:
    """A Stable-Baselines3 learning-rate schedule: `start` times the progress remaining, which falls
    from 1 to 0 over a `learn()` call (a resumed run goes on along the same line). Late updates
    then only refine what the policy learned, instead of moving it as far as the first did."""

    start: float

    def __call__(self, progress_remaining: float) -> float:
        return self.start * progress_remaining


def hold_learning_rate(agent: BaseAlgorithm) -> None:
    """From now on, learn at an annealed agent's starting rate (`LinearDecay.start`): for learning in
    rounds of `learn()` calls with no common end, where each call would anneal over its own steps."""
    if isinstance(agent.learning_rate, LinearDecay):
        agent.learning_rate = agent.learning_rate.start
        agent.lr_schedule = FloatSchedule(agent.learning_rate)


class PausablePPO(Pausable, PPO):
    """PPO with pause points (`agents.resumable`)."""


class PausableA2C(Pausable, A2C):
    """A2C with pause points (`agents.resumable`)."""


ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"maskable_ppo": SelfImitationPPO, "ppo": PausablePPO, "a2c": PausableA2C}
"""The Stable-Baselines3 agents, by name (`maskable_ppo` self-imitates; `sil_steps: 0` turns that off);
each can pause between rollouts to be saved and resumed exactly."""


def load_hyperparams(*sections: str, path: str | Path = DEFAULT_HYPERPARAMS) -> PPOHyperparams:
    """The `default` section of the YAML at `path`, updated by each of `sections` it has, in order."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise HyperparamError(f"{path}: cannot read hyperparameters ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("default"), dict):
        raise HyperparamError(f"{path}: expected a mapping with a 'default' section of hyperparameters")
    merged = dict(doc["default"])
    for name in sections:
        section = doc.get(name, {})
        if not isinstance(section, dict):
            raise HyperparamError(f"{path}: section {name!r} must be a mapping, got {type(section).__name__}")
        merged.update(section)
    known = {f.name: f for f in fields(PPOHyperparams)}
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise HyperparamError(f"{path}: unknown hyperparameter(s) {unknown}; valid: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in merged.items():
        default = getattr(PPOHyperparams(), name)
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
                values[name] = value
            elif isinstance(default, tuple):
                if not isinstance(value, (list, tuple)):
                    raise TypeError("expected a list")
                values[name] = tuple(int(v) for v in value)
            elif isinstance(default, int) and not isinstance(value, bool) and float(value) == int(value):
                values[name] = int(value)
            elif isinstance(default, float) and not isinstance(value, bool):
                values[name] = float(value)
            else:
                raise TypeError(f"expected {type(default).__name__}")
        except (TypeError, ValueError) as err:
            raise HyperparamError(f"{path}: hyperparameter {name}={value!r}: {err}") from err
    return PPOHyperparams(**values)


def make_vec_env(make_env: Callable[[], gym.Env], n_envs: int, valid_actions: bool = False) -> VecEnv:
    """`n_envs` monitored copies of the environment, stepped in this process (wrapped in
    `ValidActions` for an agent that cannot mask), their unfinished episodes recorded for a resume."""
    wrap = ValidActions if valid_actions else (lambda env: env)
    return EpisodeRecordingVecEnv([lambda: Monitor(wrap(make_env())) for _ in range(n_envs)])


def make_agent(
    env: VecEnv, hp: PPOHyperparams, seed: int, tensorboard_log: str | None, algorithm: str = "maskable_ppo"
) -> BaseAlgorithm:
    """A fresh agent of `algorithm` (a key of `ALGORITHMS`) for the environment. A2C makes one update
    per rollout: it has no use for `batch_size`, `n_epochs` and `clip_range`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    # SB3's Adam (eps 1e-5), fused: one kernel for all parameters instead of a loop over them
    policy_kwargs = {"net_arch": list(hp.net_arch), "optimizer_kwargs": {"eps": 1e-5, "fused": True}}
    learning_rate = LinearDecay(hp.learning_rate) if hp.anneal_learning_rate else hp.learning_rate
    shared = dict(
        n_steps=hp.n_steps, learning_rate=learning_rate, gamma=hp.gamma, gae_lambda=hp.gae_lambda,
        ent_coef=hp.ent_coef, policy_kwargs=policy_kwargs,
    )
    if algorithm != "a2c":
        shared.update(batch_size=hp.batch_size, n_epochs=hp.n_epochs, clip_range=hp.clip_range)
    if algorithm == "maskable_ppo":
        shared.update(sil_steps=hp.sil_steps, buffer_episodes=hp.buffer_episodes, sil_batch_size=hp.sil_batch_size)
    policy = PaddedMaskablePolicy if algorithm == "maskable_ppo" else "MlpPolicy"
    agent = ALGORITHMS[algorithm](policy, env, **shared, tensorboard_log=tensorboard_log, seed=seed, device="cpu", verbose=0)
    if hp.value_starts_at_typical_return:
        with torch.no_grad():
            agent.policy.value_net.bias.fill_(typical_return(env))
    return agent


def typical_return(env: VecEnv) -> float:
    """The return of a deployment at the reference latency with the baseline's accuracy (about 89
    points on the main job): where the value head starts. An episode's return is ~90 accuracy points
    while choices differ by hundredths of a point; a value head that starts at 0 spends its first
    updates learning the offset, and its large errors dominate the clipped gradient norm that the
    policy shares. Where the first episodes return far less (a budget close to the minimum latency,
    which they overrun), starting at 0 is the nearer guess: `value_starts_at_typical_return: false`."""
    config = env.get_attr("reward_config", [0])[0]
    accuracy = env.get_attr("oracle", [0])[0].baseline_accuracy
    return float(config.total(accuracy, config.reference_ms))

"""Building the PPO agent (MaskablePPO, as the environment masks invalid choices) from YAML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.monitor import Monitor

DEFAULT_HYPERPARAMS = Path(__file__).with_name("ppo.yml")


class HyperparamError(ValueError):
    """A hyperparameter file that cannot be used, naming the file and the problem."""


@dataclass(frozen=True)
class PPOHyperparams:
    """The MaskablePPO settings the experiments use (see agents/ppo.yml)."""

    n_envs: int = 16
    """environments stepped together to fill a rollout"""
    n_steps: int = 64
    """steps per environment per rollout"""
    batch_size: int = 256
    """minibatch size"""
    n_epochs: int = 4
    """optimisation epochs per rollout"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    gamma: float = 1.0
    """discount (1: the return is the deployment's score)"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    ent_coef: float = 0.01
    """entropy bonus"""
    clip_range: float = 0.2
    """PPO clip range"""
    net_arch: tuple[int, ...] = (128, 128)
    """hidden layers of the policy and value networks"""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for config files and TensorBoard hparams)."""
        d = asdict(self)
        d["net_arch"] = list(self.net_arch)
        return d


def load_hyperparams(network: str, path: str | Path = DEFAULT_HYPERPARAMS) -> PPOHyperparams:
    """The `default` section of the YAML updated by the network's own section (if any)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise HyperparamError(f"{path}: cannot read hyperparameters ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("default"), dict):
        raise HyperparamError(f"{path}: expected a mapping with a 'default' section of hyperparameters")
    merged = dict(doc["default"])
    section = doc.get(network, {})
    if not isinstance(section, dict):
        raise HyperparamError(f"{path}: section {network!r} must be a mapping, got {type(section).__name__}")
    merged.update(section)
    known = {f.name: f for f in fields(PPOHyperparams)}
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise HyperparamError(f"{path}: unknown hyperparameter(s) {unknown}; valid: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in merged.items():
        default = getattr(PPOHyperparams(), name)
        try:
            if isinstance(default, tuple):
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


def make_vec_env(make_env: Callable[[], gym.Env], n_envs: int) -> VecEnv:
    """`n_envs` monitored copies of the environment, stepped in this process."""
    return DummyVecEnv([lambda: Monitor(make_env()) for _ in range(n_envs)])


def make_agent(env: VecEnv, hp: PPOHyperparams, seed: int, tensorboard_log: str | None) -> MaskablePPO:
    """A fresh MaskablePPO agent for the environment."""
    return MaskablePPO(
        "MlpPolicy",
        env,
        n_steps=hp.n_steps,
        batch_size=hp.batch_size,
        n_epochs=hp.n_epochs,
        learning_rate=hp.learning_rate,
        gamma=hp.gamma,
        gae_lambda=hp.gae_lambda,
        ent_coef=hp.ent_coef,
        clip_range=hp.clip_range,
        policy_kwargs={"net_arch": list(hp.net_arch)},
        tensorboard_log=tensorboard_log,
        seed=seed,
        device="cpu",
        verbose=0,
    )

"""TensorBoard for the search: what the environment reported at the end of each episode.

Scalars (averaged over the episodes a rollout completed, written at each rollout end):
`deploy/episode_reward`, `deploy/latency_ms`, `deploy/accuracy`, `deploy/speedup`,
`deploy/feasible_fraction`, `deploy/memory_mb`, `deploy/energy_mj`; episodes that ended on an
invalid action or a failed measurement: `deploy/invalid_episodes`, `deploy/measurement_failures`;
best so far (by reward): `best/reward`, `best/latency_ms`, `best/accuracy`, `best/speedup`, and
`best/latency_vs_minimum` (over the exact minimum latency, when given).
Histograms of the chosen options: `choices/quant`, `choices/algo`, and on a CPU `choices/threads`,
`choices/tile`, on an NPU `choices/spatial`, `choices/temporal` (option indices; threads as counts);
in joint search `choices/block` (every searched block's option index in `arch_labels`). The run's
hyperparameters are written once as TensorBoard hparams.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure, HParam, TensorBoardOutputFormat

from agents.pareto import ParetoFront, Point

from envs.space import ALGORITHMS, NPU_SPATIAL, NPU_TEMPORAL, QUANTS, TILES

_DATAFLOW_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "threads": None, "tile": TILES, "spatial": NPU_SPATIAL, "temporal": NPU_TEMPORAL,
}
"""Dataflow fields with a histogram: their options (None: the value itself is the number)."""


@dataclass
class BestDeployment:
    """The best complete deployment seen so far (by episode reward)."""

    reward: float = -np.inf
    info: dict[str, Any] = field(default_factory=dict)


class DeploymentTensorBoard(BaseCallback):
    """Logs finished episodes to TensorBoard and keeps the best deployment found.

    Args:
        hparams: hyperparameters and run settings to show in TensorBoard's HPARAMS tab.
        on_best: called with the episode info whenever a new best deployment is found.
        best: the best deployment of an earlier session of the same run (when resuming).
        pareto_every: draw the Pareto front at most every this many rollouts (drawing takes ~0.1 s).
        pareto: the front of an earlier session of the same run (when resuming).
        arch_labels: in joint search, the labels of the architecture space's options.
        minimum_latency_ms: the network's exact minimum latency, to log the best latency against.
    """

    def __init__(
        self,
        hparams: dict[str, Any],
        on_best: Callable[[dict[str, Any]], None] | None = None,
        best: BestDeployment | None = None,
        pareto_every: int = 10,
        pareto: ParetoFront | None = None,
        arch_labels: Sequence[str] = (),
        minimum_latency_ms: float | None = None,
    ) -> None:
        super().__init__()
        self.minimum_latency_ms = minimum_latency_ms
        self.curve: list[tuple[int, int, float, float]] = []
        """(timesteps, episodes, reward, latency_ms) each time the best deployment improved."""
        self.arch_labels = list(arch_labels)
        self.hparams = hparams
        self.on_best = on_best
        self.best = best or BestDeployment()
        self.pareto = pareto or ParetoFront()
        self.pareto_every = pareto_every
        self._rollouts = 0
        self._drawn_changes = 0
        self._baseline: tuple[float, float] | None = None
        self._returns: np.ndarray | None = None
        self._choices: dict[str, list[int]] = defaultdict(list)
        self.episodes = 0

    _KEPT = ("curve", "best", "pareto", "episodes", "_rollouts", "_drawn_changes", "_baseline", "_returns", "_choices")

    def state(self) -> dict[str, Any]:
        """What a resumed search needs to go on logging as if it had not stopped (`agents.resumable`)."""
        return {name: getattr(self, name) for name in self._KEPT}

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of `state`."""
        for name in self._KEPT:
            setattr(self, name, state[name])

    def _on_training_start(self) -> None:
        if self._returns is None or len(self._returns) != self.training_env.num_envs:  # not restored
            self._returns = np.zeros(self.training_env.num_envs)
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
        self.logger.record(
            "hparams",
            HParam(hparams, {"best/reward": 0.0, "best/latency_ms": 0.0, "best/accuracy": 0.0}),
            exclude=("stdout", "log", "json", "csv"),
        )

    def _on_step(self) -> bool:
        rewards, dones, infos = self.locals["rewards"], self.locals["dones"], self.locals["infos"]
        assert self._returns is not None
        self._returns += rewards
        for i, (done, info) in enumerate(zip(dones, infos)):
            if not done:
                continue
            episode_reward = float(self._returns[i])
            self._returns[i] = 0.0
            if "measurement_error" in info:
                self.logger.record_mean("deploy/measurement_failures", 1.0)
                continue
            if "accuracy" not in info:  # ended on an invalid action
                self.logger.record_mean("deploy/invalid_episodes", 1.0)
                continue
            self.episodes += 1
            self._log_episode(episode_reward, info)
        return True

    def record(self, agent: Any, episode_reward: float, info: dict[str, Any]) -> None:
        """A deployment evaluated outside `agent`'s rollouts (a model-guided search's measured pick,
        `agents.model_guided`): logged as an episode, with the best-so-far scalars, at the agent's step."""
        if getattr(self, "model", None) is not agent:
            self.init_callback(agent)
            self._on_training_start()
        self.num_timesteps = agent.num_timesteps
        self.episodes += 1
        self._log_episode(episode_reward, info)
        self._on_rollout_end()
        self.logger.dump(self.num_timesteps)

    def _log_episode(self, episode_reward: float, info: dict[str, Any]) -> None:
        record = self.logger.record_mean
        record("deploy/episode_reward", episode_reward)
        record("deploy/latency_ms", info["latency_ms"])
        record("deploy/accuracy", info["accuracy"])
        record("deploy/speedup", info["speedup"])
        record("deploy/feasible_fraction", float(info["feasible"]))
        record("deploy/memory_mb", info["memory_bytes"] / 1e6)
        if info.get("energy_mj") is not None:
            record("deploy/energy_mj", info["energy_mj"])
        for choice in info["choices"].values():
            self._choices["quant"].append(QUANTS.index(choice["quant"]))
            self._choices["algo"].append(ALGORITHMS.index(choice["algo"]))
            for name, options in _DATAFLOW_OPTIONS.items():
                if name in choice["dataflow"]:
                    value = choice["dataflow"][name]
                    self._choices[name].append(value if options is None else options.index(value))
        if self.arch_labels:
            known = [label for label in info["architecture"] if label in self.arch_labels]  # not fixed blocks
            self._choices["block"].extend(self.arch_labels.index(label) for label in known)
        self.pareto.add(Point.from_info(info))
        self._baseline = (info["baseline_latency_ms"], info["baseline_accuracy"])
        if episode_reward > self.best.reward:
            self.best = BestDeployment(episode_reward, dict(info))
            self.curve.append((self.num_timesteps, self.episodes, episode_reward, info["latency_ms"]))
            if self.on_best:
                self.on_best(self.best.info)

    def _on_rollout_end(self) -> None:
        if self.best.info:
            self.logger.record("best/reward", self.best.reward)
            self.logger.record("best/latency_ms", self.best.info["latency_ms"])
            self.logger.record("best/accuracy", self.best.info["accuracy"])
            self.logger.record("best/speedup", self.best.info["speedup"])
            if self.minimum_latency_ms:
                self.logger.record("best/latency_vs_minimum", self.best.info["latency_ms"] / self.minimum_latency_ms)
        self.logger.record("deploy/episodes", self.episodes)
        self._rollouts += 1
        if self._rollouts % self.pareto_every == 0:
            self._draw_pareto()
        for name, values in self._choices.items():
            if values:
                self.logger.record(f"choices/{name}", th.tensor(values, dtype=th.float32), exclude=("stdout", "log", "json", "csv"))
                values.clear()

    def _on_training_end(self) -> None:
        if self._draw_pareto():
            self.logger.dump(self.num_timesteps)

    def _draw_pareto(self) -> bool:
        """Log the front as an image if it changed since it was last drawn and TensorBoard is written
        (only its writer closes the figure); True if drawn."""
        if self.pareto.changes == self._drawn_changes:
            return False
        if not any(isinstance(f, TensorBoardOutputFormat) for f in self.logger.output_formats):
            return False
        self._drawn_changes = self.pareto.changes
        references = {"baseline": self._baseline} if self._baseline else None
        self.logger.record("pareto/front", Figure(self.pareto.figure(references), close=True),
                           exclude=("stdout", "log", "json", "csv"))
        return True

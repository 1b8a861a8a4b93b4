"""Stopping a search where it can be saved, and resuming it exactly where it stopped.

A search can be saved and continued with nothing lost at its pause points: a Stable-Baselines3 agent
between an update and the next rollout, an episodic agent (`agents.episodic`) between two episodes.
`at_pause_points` makes an agent call a hook there, which may stop it. `Checkpointer` is that hook for a
run folder: it saves a checkpoint every few minutes (so `kill -9` loses at most those minutes), and at
once when SIGINT or SIGTERM arrived (`StopRequest`), then stops the search.

A checkpoint is the agent's own file (`<agent>_<steps>_steps.zip` or `.pkl`) and beside it
`<agent>_<steps>_steps.state.pkl`: the torch, NumPy and Python random states, the actions of every
environment's unfinished episode (replayed into fresh environments on resume: the environments are
deterministic), and the state of the callbacks that asked to be kept (best deployment, Pareto front,
episode counts). `restore` puts all of it back, so a seeded search interrupted and resumed takes the
same steps as one that never stopped.
"""

from __future__ import annotations

import pickle
import random
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Protocol

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.episodic import EpisodicAgent

STATE_SUFFIX = ".state.pkl"
"""Beside an agent's checkpoint: what else an exact resume needs."""
KEEP = 3
"""Checkpoints a run folder keeps (the newest)."""


class Keeps(Protocol):
    """A callback whose state a checkpoint keeps."""

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class EpisodeRecordingVecEnv(DummyVecEnv):
    """`DummyVecEnv` that remembers the actions of every environment's unfinished episode."""

    def __init__(self, env_fns: list[Callable[[], Any]]) -> None:
        super().__init__(env_fns)
        self.open_actions: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]

    def step_async(self, actions: np.ndarray) -> None:
        for i in range(self.num_envs):
            self.open_actions[i].append(np.array(actions[i]))
        super().step_async(actions)

    def step_wait(self):  # type: ignore[no-untyped-def]
        obs, rewards, dones, infos = super().step_wait()
        for i in np.flatnonzero(dones):
            self.open_actions[i] = []
        return obs, rewards, dones, infos

    def reset(self):  # type: ignore[no-untyped-def]
        self.open_actions = [[] for _ in range(self.num_envs)]
        return super().reset()

    def replay(self, open_actions: list[list[np.ndarray]]) -> np.ndarray:
        """Reset every environment and step each through its saved unfinished episode; the observations."""
        if len(open_actions) != self.num_envs:
            raise ValueError(f"the checkpoint has {len(open_actions)} environments' episodes, this run {self.num_envs}")
        self.reset()
        for i, actions in enumerate(open_actions):
            for action in actions:
                obs, _, terminated, truncated, _ = self.envs[i].step(action)
                if terminated or truncated:
                    raise ValueError("a saved unfinished episode ended on replay: the environment is not the one saved")
                self._save_obs(i, obs)
            self.open_actions[i] = [np.array(a) for a in actions]
        return self._obs_from_buf()


class StopRequest:
    """While entered, SIGINT and SIGTERM set `signal_name` instead of stopping the process at once (the
    search stops at its next pause point); a second SIGINT raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


class Pausable:
    """Mixin for a Stable-Baselines3 on-policy algorithm: a pause point before every rollout (after
    the previous update), where `pause_hook` is called; learning stops there when it returns True."""

    pause_hook: Callable[[], bool] | None = None

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        if self.pause_hook is not None and self.pause_hook():
            return False  # Stable-Baselines3's learn() stops here
        return super().collect_rollouts(*args, **kwargs)  # type: ignore[misc]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "pause_hook"]  # type: ignore[misc]


def at_pause_points(agent: Any, hook: Callable[[], bool]) -> None:
    """Make `agent` (a `Pausable` algorithm or an episodic agent) call `hook()` at each of its pause
    points (module docstring), before its first step too; learning stops there when it returns True."""
    if not isinstance(agent, (Pausable, EpisodicAgent)):
        raise TypeError(f"{type(agent).__name__} has no pause points")
    agent.pause_hook = hook


class Checkpointer:
    """The pause-point hook of a run: a checkpoint every `minutes` and on a stop request (module docstring).

    Args:
        agent: the search agent (saved with its own `save`).
        folder: where checkpoints go.
        prefix, suffix: checkpoint file names are `<prefix>_<steps>_steps<suffix>`.
        minutes: time between two periodic checkpoints.
        stop: the run's stop request.
        keeps: callbacks whose state each checkpoint keeps, by name.
    """

    def __init__(self, agent: Any, folder: Path, prefix: str, suffix: str, minutes: float, stop: StopRequest,
                 keeps: dict[str, Keeps]) -> None:
        self.agent, self.folder, self.prefix, self.suffix = agent, Path(folder), prefix, suffix
        self.seconds, self.stop, self.keeps = minutes * 60, stop, keeps
        self.last: Path | None = None
        """The newest checkpoint written."""
        self._saved_at = time.monotonic()

    def __call__(self) -> bool:
        if self.stop or time.monotonic() - self._saved_at >= self.seconds:
            self.save()
        return bool(self.stop)

    def save(self) -> Path:
        """Write a checkpoint at the agent's current step (an exact pause point); its path."""
        path = self.folder / f"{self.prefix}_{self.agent.num_timesteps}_steps{self.suffix}"
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}")  # renamed when whole: a kill midway leaves no broken checkpoint
        self.agent.save(partial)
        partial.replace(path)
        env = self.agent.get_env()
        state = {
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "open_actions": getattr(env, "open_actions", None),
            "agent": {"_open": self.agent._open} if hasattr(self.agent, "_open") else {},
            "callbacks": {name: kept.state() for name, kept in self.keeps.items()},
        }
        temporary = state_path(path).with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps(state))
        temporary.replace(state_path(path))
        self.last, self._saved_at = path, time.monotonic()
        self._prune()
        return path

    def _prune(self) -> None:
        """Keep the newest `KEEP` checkpoints."""
        for old in checkpoints(self.folder, self.prefix, self.suffix)[:-KEEP]:
            old.unlink(missing_ok=True)
            state_path(old).unlink(missing_ok=True)


def state_path(checkpoint: Path) -> Path:
    """The resume state saved beside `checkpoint`."""
    return checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + STATE_SUFFIX)


def checkpoints(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """The agent's checkpoints in `folder`, oldest first (by step)."""
    found = []
    for path in Path(folder).glob(f"{prefix}_*_steps{suffix}"):
        steps = path.name.removeprefix(f"{prefix}_").removesuffix(f"_steps{suffix}")
        if steps.isdigit():
            found.append((int(steps), path))
    return [path for _, path in sorted(found)]


def restore(agent: Any, checkpoint: Path, keeps: dict[str, Keeps]) -> bool:
    """Put back what `Checkpointer.save` kept beside `checkpoint` into the freshly loaded `agent` and
    the callbacks `keeps`; False when the checkpoint has no resume state (the search then starts new
    episodes, and its random draws differ from an uninterrupted run's)."""
    path = state_path(checkpoint)
    if not path.is_file():
        return False
    state = pickle.loads(path.read_bytes())
    if state["open_actions"] is not None:
        agent._last_obs = agent.get_env().replay(state["open_actions"])
    for name, value in state["agent"].items():
        setattr(agent, name, value)
    for name, kept in keeps.items():
        if name in state["callbacks"]:
            kept.restore(state["callbacks"][name])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return True

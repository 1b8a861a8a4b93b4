"""MaskablePPO with self-imitation learning (Oh et al., ICML 2018).

A deployment search is deterministic: an episode that scored well scores the same when replayed. PPO
learns only from the rollout it just collected and then forgets it, so a good deployment found early
pulls the policy toward it for one update at most; that is how a (1+1) evolutionary loop, which
keeps its best deployment, beat plain PPO at equal episodes here. Self-imitation keeps the
`buffer_episodes` best episodes seen (by return) and, after each PPO update, takes `sil_steps`
gradient steps on their transitions where the return-to-go beats the value estimate:

    loss = -log pi(a|s) * max(R - V(s), 0) + value_coef / 2 * max(R - V(s), 0) ** 2

with `R` the (undiscounted) return from that step, so the policy moves toward the good episodes'
choices only where it does not yet expect their return, and the value function learns what they are
worth. Masks are the ones each step had.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import torch as th
from sb3_contrib import MaskablePPO

from agents.resumable import Pausable


class SelfImitationPPO(Pausable, MaskablePPO):
    """MaskablePPO plus self-imitation on its best episodes (module docstring), with pause points
    (`agents.resumable`).

    Args:
        buffer_episodes: best episodes kept (by return).
        sil_steps: self-imitation gradient steps after each PPO update.
        sil_batch_size: transitions per self-imitation step.
        sil_value_coef: weight of the value loss in the self-imitation loss.
        Everything else as `sb3_contrib.MaskablePPO`.
    """

    def __init__(
        self, *args: Any, buffer_episodes: int = 16, sil_steps: int = 4, sil_batch_size: int = 128,
        sil_value_coef: float = 0.01, **kwargs: Any,
    ) -> None:
        self.buffer_episodes, self.sil_steps = buffer_episodes, sil_steps
        self.sil_batch_size, self.sil_value_coef = sil_batch_size, sil_value_coef
        self.best_episodes: list[tuple[float, int, dict[str, np.ndarray]]] = []
        self._arrivals = 0
        self._open: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]] = {}
        super().__init__(*args, **kwargs)

    def remember(self, steps: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]) -> None:
        """Keep a finished episode if it is among the best `buffer_episodes` (ties: the earlier stays)."""
        rewards = np.array([s[3] for s in steps])
        episode = {
            "obs": np.stack([s[0] for s in steps]),
            "actions": np.stack([s[1] for s in steps]),
            "masks": np.stack([s[2] for s in steps]),
            "returns": np.cumsum(rewards[::-1])[::-1].astype(np.float32),
        }
        self._arrivals += 1
        entry = (float(rewards.sum()), -self._arrivals, episode)
        if len(self.best_episodes) < self.buffer_episodes:
            heapq.heappush(self.best_episodes, entry)
        elif entry[:2] > self.best_episodes[0][:2]:
            heapq.heapreplace(self.best_episodes, entry)

    def forget_episodes(self) -> None:
        """Drop the kept and unfinished episodes (before learning on an environment whose returns are on
        another scale, e.g. measured after modelled latencies)."""
        self.best_episodes.clear()
        self._open.clear()

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, use_masking=True) -> bool:  # type: ignore[override]
        complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, use_masking)
        if complete:  # the rollout's steps, continuing each environment's open episode
            buffer = rollout_buffer
            for t in range(buffer.buffer_size):
                for i in range(buffer.n_envs):
                    if buffer.episode_starts[t, i] and self._open.get(i):
                        self.remember(self._open.pop(i))
                    step = (buffer.observations[t, i].copy(), buffer.actions[t, i].astype(np.int64),
                            buffer.action_masks[t, i].astype(bool), float(buffer.rewards[t, i]))
                    self._open.setdefault(i, []).append(step)
        return complete

    def train(self) -> None:
        super().train()
        if not self.best_episodes or self.sil_steps == 0:
            return
        data = {k: np.concatenate([e[2][k] for e in self.best_episodes]) for k in ("obs", "actions", "masks", "returns")}
        self.policy.set_training_mode(True)
        losses = []
        for _ in range(self.sil_steps):
            idx = self.np_random_indices(len(data["returns"]))
            obs = th.as_tensor(data["obs"][idx], device=self.device)
            actions = th.as_tensor(data["actions"][idx], device=self.device)
            returns = th.as_tensor(data["returns"][idx], device=self.device)
            values, log_prob, _ = self.policy.evaluate_actions(obs, actions, action_masks=data["masks"][idx])
            gap = (returns - values.flatten()).clamp(min=0.0)
            loss = -(log_prob * gap.detach()).mean() + self.sil_value_coef * 0.5 * gap.pow(2).mean()
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            losses.append(loss.item())
        self.logger.record("train/self_imitation_loss", float(np.mean(losses)))
        self.logger.record("train/self_imitation_best_return", max(e[0] for e in self.best_episodes))

    def np_random_indices(self, n: int) -> np.ndarray:
        """`sil_batch_size` transition indices drawn from the agent's seeded generator."""
        if not hasattr(self, "_sil_rng"):
            self._sil_rng = np.random.default_rng(self.seed)
        return self._sil_rng.integers(n, size=self.sil_batch_size)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_open"]

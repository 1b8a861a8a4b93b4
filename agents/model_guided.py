"""Search on a measured target, guided by its latency model corrected by what was measured.

Timing a kernel on a board costs about a second; a PPO rollout on measured rewards times hundreds of
new kernels before the policy has learnt anything. So on a measured target the agent learns on the
target's *model*, corrected by the kernels measured so far (the layer-adaptive correction of Zeng et
al., `deploy.latency_correction`; a measured kernel keeps its measured cost), and only the deployment
it picks is measured, one whole deployment per round:

1. calibration: one kernel per class of the correction (op, precision, algorithm, threads) on a random
   layer of that class with a random schedule, `calibration_kernels` in all, timed in parallel;
2. each round: fit the correction to every kernel measured so far, learn on the corrected model
   (`pretrain_steps` the first time, `round_steps` after), then measure the deployment the policy picks
   (greedy; if that measures nothing new, the best on the corrected model of `round_samples` sampled
   deployments that does);
3. stop when the next pick would pass `kernel_budget` distinct kernels, or no pick measures anything new.

The first measured deployment arrives after the calibration and the first learning (60 kernels at
about a second each on a board; 30,000 steps at PPO's ~1,000 steps/s, `make bench`), not after a whole
rollout of random measured episodes. On this machine's measured row (`benchmarks/search_quality.py`) this took
MobileNetV2-32's best measured reward at 200 kernels from 16.3 (random search) to 82.9 (mean of 3 seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deploy.cost_table import CostTable
from deploy.targets import Target
from envs.env import DeploymentEnv
from envs.space import Choice

Kernel = tuple[str, str]
"""A kernel: (layer signature, choice key)."""


@dataclass(frozen=True)
class GuideSettings:
    """How a model-guided search spends a board's time (module docstring)."""

    kernel_budget: int = 200
    calibration_kernels: int = 60
    pretrain_steps: int = 30_000
    round_steps: int = 8_000
    round_samples: int = 32

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")


class ModelGuidedSearch:
    """The rounds of a model-guided search of `probe`'s network (module docstring).

    Args:
        probe: an environment on the measured target (its cost table measures; its `replay` prices a pick).
        target: the target, whose `model()` is corrected.
        make_env: an environment like `probe`'s, but on the given cost table.
        settings: the budgets.
        seed: seeds the calibration draws and the sampled picks.
    """

    def __init__(self, probe: DeploymentEnv, target: Target, make_env: Callable[[CostTable], DeploymentEnv],
                 settings: GuideSettings, seed: int) -> None:
        self.probe, self.target, self.make_env, self.settings, self.seed = probe, target, make_env, settings, seed
        self.layers = {layer.signature: layer for layer in probe.layers}
        self.used: set[Kernel] = set()
        """Every kernel measured (or asked for) so far."""
        self.rounds = 0
        self.needed: int | None = None
        """When the last round found no pick within the budget: the fewest kernels one would have needed."""

    def state(self) -> dict[str, Any]:
        """What a resumed search goes on from (`agents.resumable.Checkpointer` keeps it)."""
        return {"used": set(self.used), "rounds": self.rounds}

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of `state`."""
        self.used, self.rounds = set(state["used"]), state["rounds"]

    def calibrate(self) -> None:
        """Measure one kernel per class of the correction (step 1), unless this search did already."""
        from deploy.latency_correction import layer_class

        if self.used:
            return
        rng = np.random.default_rng(self.seed)
        classes: dict[str, list[tuple]] = {}
        for layer in self.probe.layers:
            for choice in self.probe.costs.space.valid_choices(layer):
                classes.setdefault(layer_class(layer, choice), []).append((layer, choice))
        keys = sorted(classes)
        count = min(self.settings.calibration_kernels, len(keys), self.settings.kernel_budget)
        keys = [keys[i] for i in sorted(rng.choice(len(keys), count, replace=False))]
        pairs = [classes[k][rng.integers(len(classes[k]))] for k in keys]
        self.probe.costs.prefetch(pairs)  # compiled in parallel
        self.used |= {(layer.signature, choice.key) for layer, choice in pairs}

    def corrected_costs(self) -> CostTable:
        """The target's model corrected by every kernel measured so far (measured ones keep their cost)."""
        from deploy.calibration import LayerSample
        from deploy.cost import CostUnavailable
        from deploy.latency_correction import CorrectedBackend, fit_correction

        measured = {}
        for signature, key in self.used:
            try:
                cost = self.probe.costs.cost(self.layers[signature], Choice.from_key(key))
            except CostUnavailable:
                continue
            if cost.provenance.startswith("measured:"):
                measured[(signature, key)] = cost
        samples = [LayerSample(self.layers[sig], Choice.from_key(key), c.latency_ms) for (sig, key), c in measured.items()]
        model = self.target.model()
        return CostTable(CorrectedBackend(model, fit_correction(model, samples), measured), self.target.search_space())

    def run(self, agent: Any, on_measured: Callable[[float, dict[str, Any], set[Kernel]], None],
            stop: Callable[[], bool] = lambda: False, on_round: Callable[[int], None] = lambda rounds: None,
            learn_kwargs: dict[str, Any] | None = None) -> None:
        """Calibrate if needed, then run rounds (step 2) until the budget is spent, nothing new is picked
        or `stop()`; `on_measured(reward, info, kernels)` gets each measured deployment, `on_round(rounds)`
        is called after each round; `learn_kwargs` go to `agent.learn`."""
        from agents.ppo import hold_learning_rate, make_vec_env

        hold_learning_rate(agent)  # its rounds have no common end to anneal towards
        self.calibrate()
        while not stop():
            corrected = self.corrected_costs()

            def make_corrected() -> DeploymentEnv:
                return self.make_env(corrected)

            agent.set_env(make_vec_env(make_corrected, agent.n_envs))
            steps = self.settings.pretrain_steps if self.rounds == 0 else self.settings.round_steps
            agent.learn(steps, reset_num_timesteps=False, **(learn_kwargs or {}))
            if hasattr(agent, "forget_episodes"):
                agent.forget_episodes()  # their returns are on the model's scale
            if stop():
                return
            pick = self._pick(agent, make_corrected())
            if pick is None:
                return
            choices, kernels = pick
            self.used |= kernels
            self.rounds += 1
            on_measured(*self.probe.replay(choices), kernels)
            on_round(self.rounds)

    def _pick(self, agent: Any, env: DeploymentEnv) -> tuple[dict[str, Choice], set[Kernel]] | None:
        """The policy's greedy deployment on `env` if it measures something new within the budget, else
        the best (on `env`) of `round_samples` sampled ones that does; None if none does."""
        best = None
        for attempt in range(self.settings.round_samples + 1):
            obs, _ = env.reset(seed=self.seed + attempt)
            total, done, info = 0.0, False, {}
            while not done:
                action, _ = agent.predict(obs, action_masks=env.action_masks(), deterministic=attempt == 0)
                obs, reward, done, _, info = env.step(action)
                total += reward
            if "accuracy" not in info:
                continue
            choices = {name: Choice.from_dict(c) for name, c in info["choices"].items()}
            kernels = {(self.probe.network[n].signature, c.key) for n, c in choices.items()}
            new = len(kernels - self.used)
            if new and len(self.used) + new > self.settings.kernel_budget:
                self.needed = min(self.needed or len(self.used) + new, len(self.used) + new)
            if new and len(self.used) + new <= self.settings.kernel_budget and (best is None or total > best[0]):
                best = (total, choices, kernels)
            if attempt == 0 and best is not None:
                break
        return None if best is None else best[1:]

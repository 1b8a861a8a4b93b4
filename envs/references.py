"""What a search's deployment is measured against: exact optima where the objective allows them.

On a cost table (the A72 model, an NPU's simulations) the latency of a fixed network is a chain over
its layers with the activation formats as state, which dynamic programming solves exactly
(`deploy.optimum`). So for any deployment found, two references are exact:

- `for_its_precisions`: the fastest deployment with the same precision in every layer. Accuracy
  depends only on the precisions, so no deployment with them scores more reward: the gap to it is the
  search's regret on the algorithm and dataflow levels.
- `minimum_latency`: the fastest deployment of all, with the accuracy it has.

Accuracy is a measurement of the whole assignment (layers interact), so the best precisions have no
exact solution short of trying all 3^layers. `best_known` is the best reward found by coordinate
descent from the minimum-latency deployment: change one layer's precision at a time, deploy the
result as fast as it can be (exactly), keep it if the reward rises, until no single change helps. It
is a local optimum, not a proof (on a measured target, where every trial would be measured, only the
two exact references are tried); `reward_bound` is a proof: no deployment scores more than the fp32
network's accuracy (the best an assignment can have) at the minimum latency.

Where no exact optimum exists (architecture search, where the network itself changes; a measured
target, whose unmeasured choices are estimates) the references are computed all the same for the
chosen network and said not to be exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from deploy.optimum import best_choices, optimum
from envs.env import DeploymentEnv
from envs.network import Network
from envs.space import QUANTS, Choice

MAX_PASSES = 3
"""Passes of coordinate descent over the layers at most (each tries every other precision of every layer)."""


@dataclass(frozen=True)
class Reference:
    """One reference deployment, scored by the search's own environment."""

    reward: float
    latency_ms: float
    accuracy: float
    precisions: dict[str, int]
    """How many layers take each precision."""
    choices: dict[str, dict[str, Any]] = field(repr=False)


@dataclass(frozen=True)
class References:
    """The references of one deployment found (module docstring), and how it compares."""

    exact: bool
    """True when the latencies are exact optima (a fixed network on a cost table)."""
    note: str
    found: Reference
    for_its_precisions: Reference
    minimum_latency: Reference
    best_known: Reference
    reward_bound: float | None
    """No deployment of this network scores more (None where no bound is known)."""

    @property
    def implementation_regret(self) -> float:
        """Found latency over the fastest with its precisions (1: nothing left on algorithms and dataflows)."""
        return self.found.latency_ms / self.for_its_precisions.latency_ms

    @property
    def latency_vs_minimum(self) -> float:
        """Found latency over the minimum latency."""
        return self.found.latency_ms / self.minimum_latency.latency_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the ratios."""
        d = asdict(self)
        d.update(
            implementation_regret=self.implementation_regret,
            latency_vs_minimum=self.latency_vs_minimum,
            accuracy_vs_minimum_points=100 * (self.found.accuracy - self.minimum_latency.accuracy),
            reward_gap_to_best_known=self.best_known.reward - self.found.reward,
            reward_gap_to_bound=None if self.reward_bound is None else self.reward_bound - self.found.reward,
        )
        return d

    def scalars(self) -> dict[str, float]:
        """The comparisons as numbers (for TensorBoard)."""
        d = self.to_dict()
        keys = ("implementation_regret", "latency_vs_minimum", "accuracy_vs_minimum_points", "reward_gap_to_best_known", "reward_gap_to_bound")
        return {k: float(d[k]) for k in keys if d[k] is not None}

    def summary(self) -> list[str]:
        """Lines for a run's summary."""
        exact = "exact" if self.exact else "not exact"
        lines = [
            f"vs its precisions   {self.implementation_regret:.3f}x the fastest deployment with the same precisions "
            f"({self.for_its_precisions.latency_ms:.2f} ms; {exact})",
            f"vs minimum latency  {self.latency_vs_minimum:.3f}x the fastest deployment ({self.minimum_latency.latency_ms:.2f} ms "
            f"at {100 * self.minimum_latency.accuracy:.2f}%: accuracy {100 * (self.found.accuracy - self.minimum_latency.accuracy):+.2f} points)",
            f"vs best known       reward {self.found.reward:.3f} against {self.best_known.reward:.3f} "
            f"({self.best_known.latency_ms:.2f} ms at {100 * self.best_known.accuracy:.3f}%: the best reference, "
            "a local optimum of the precisions)",
        ]
        if self.reward_bound is not None:
            lines.append(f"reward bound        {self.reward_bound:.3f} (fp32 accuracy at the minimum latency: no deployment scores more)")
        if self.note:
            lines.append(f"note                {self.note}")
        return lines


def references(env: DeploymentEnv, info: Mapping[str, Any], max_passes: int = MAX_PASSES) -> References:
    """The references of the deployment an episode of `env` ended with (`info` of its last step), with
    up to `max_passes` passes of coordinate descent for `best_known`."""
    architecture = info.get("architecture")
    network = env.arch.network_of(env.arch_space.parse(architecture)) if architecture else env.network
    complete = env.costs.backend.batch_friendly or getattr(env.costs.backend, "prices_all_quickly", False)
    notes = []
    if env.arch is not None:
        notes.append("architecture search: the references are for the architecture found, not over all of them")
    if not complete:
        notes.append("measured target: choices not measured yet are priced by the model's estimate")
    if env.dataflow_mode != "agent" or env.implementation != "agent":
        notes.append("the environment picks some levels itself: the references are free to pick them")

    def score(choices: Mapping[str, Choice]) -> Reference:
        reward, end = env.replay(choices, architecture)
        counts: dict[str, int] = {}
        for c in choices.values():
            counts[c.quant] = counts.get(c.quant, 0) + 1
        return Reference(reward, end["latency_ms"], end["accuracy"], counts, {k: c.to_dict() for k, c in choices.items()})

    found = {name: Choice.from_dict(c) for name, c in info["choices"].items()}
    own_optimum = optimum(network, env.costs, precisions={n: c.quant for n, c in found.items()})
    fastest_optimum = optimum(network, env.costs)
    exact_program = own_optimum.exact and fastest_optimum.exact
    if not exact_program:
        notes.append("the network keeps too many tensors live for the exact program: the fastest deployments are greedy")
    own, fastest = score(own_optimum.choices), score(fastest_optimum.choices)
    best_known = max((_coordinate_descent(env, network, fastest, score, max_passes), own, fastest), key=lambda r: r.reward)
    bound = None
    if env.arch is None and env.reward_config.mode == "budget":
        bound = env.reward_config.total(env.oracle.baseline_accuracy, fastest.latency_ms)
    return References(complete and env.arch is None and exact_program, "; ".join(notes), score(found), own, fastest, best_known, bound)


def _coordinate_descent(
    env: DeploymentEnv, network: Network, start: Reference, score: Callable[[Mapping[str, Choice]], Reference], max_passes: int
) -> Reference:
    """From `start`, change one layer's precision at a time (deployed as fast as possible) while the reward rises."""
    best = start
    quants = sorted({q for q, _ in env.space.quant_algos}, key=QUANTS.index)
    for _ in range(max_passes):
        improved = False
        for layer in network.searchable_layers:
            current = {name: c["quant"] for name, c in best.choices.items()}
            for quant in quants:
                if quant == current[layer.name]:
                    continue
                trial = dict(current, **{layer.name: quant})
                try:
                    candidate = score(best_choices(network, env.costs, precisions=trial))
                except ValueError:  # no choice of this layer computes in that precision
                    continue
                if candidate.reward > best.reward + 1e-9:
                    best, improved = candidate, True
                    current = trial
        if not improved:
            break
    return best

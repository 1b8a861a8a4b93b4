"""Latency-aware NAS with deployment in the loop: joint search of architecture and precision, equal budgets.

    python experiments/nas.py --target npu-eyeriss     # (a) per-layer best vs (b) NVDLA-like vs (c) Eyeriss-like dataflow
    python experiments/nas.py --target my_npu.yaml     # the same on the hardware a YAML file describes
    python experiments/nas.py --target cortex-a72      # joint search vs the fixed MobileNetV2

On an NPU three searches run on the same hardware with the same agent, seed, step budget and accuracy
oracle (the MobileNetV2 supernet): (a) every layer takes its best dataflow (FlowOptimizer), (b) every
layer keeps the NVDLA-like weight-stationary dataflow, (c) every layer keeps the Eyeriss-like
row-stationary one. After PPO, each search spends `--local-search` more evaluations on networks one
block away from its front (`agents.local_search`), each deployed in int8 as fast as the search's
dataflow mode allows (as the random reference is): a settled policy seldom tries the neighbours of
its own choice, which differ from it by an image or two of accuracy.
Each search's choice is its highest-reward deployment; (a) is compared with (b)
and (c) at equal or better accuracy: the fastest network (a) evaluated whose accuracy is at least
that of (b)'s (or (c)'s) choice. On a CPU two joint searches run against the same search with the
architecture fixed to MobileNetV2: one whose agent chooses all four levels, one whose agent chooses
architecture and quantization while the environment deploys each layer with its fastest algorithm
and dataflow (`implementation="fastest"`); each joint Pareto front is checked to dominate the fixed one,
and the fixed network's fastest int8 deployment (so the verdict does not rest on the fixed search).

Random architectures are the reference of every architecture search: `--random-architectures` of
them, drawn once, each deployed as fast as its search allows in int8 (dynamic programming over the
choices that search may make) and scored with the same reward. On an NPU they give, at every accuracy
level, what a search that had tried exactly those networks would gain from per-layer dataflows, and
each network's own gain; on a CPU, how much of the random front each joint search's front dominates.

Writes <out>/nas-<target>.json (every search's choice, accuracy-latency front and settings; the
comparison), nas-<target>.points.json (every evaluated point and each search's full Pareto front with
per-layer choices: megabytes, not in git) and nas-<target>.png (the fronts and the choices), <target>
being the target's name; TensorBoard runs
go to <out>/nas-<target>/, with the fixed-dataflow descriptions of an NPU given as a YAML file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from agents.callbacks import DeploymentTensorBoard
from agents.local_search import Deploy, refine_front
from agents.pareto import ParetoFront, Point
from agents.ppo import load_hyperparams, make_agent, make_vec_env
from deploy.cli import run_main
from deploy.db import MeasurementDB
from deploy.optimum import best_choices
from deploy.export import write_json
from deploy.npu_hardware import FIXED_DATAFLOW_DESIGNS, load_preset, preset_names, write_npu_spec
from deploy.targets import NpuTarget, get_target
from envs.arch_space import ArchSpace
from envs.env import DeploymentEnv
from envs.make import make_cost_table, make_deployment_env, resolve_network
from envs.reduced_space import read_arch_space
from envs.space import Choice
from envs.subnet_accuracy import PROXIES, SupernetOracle, supernet_oracle_for
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS

NPU_LOCAL_SEARCH = 500
"""Local-search evaluations per NPU search after PPO (an eighth of its ~4,000 episodes at the default steps)."""


class SearchPlan(NamedTuple):
    """What one search may choose (see `DeploymentEnv`)."""

    name: str
    target: str
    dataflow: str
    """the environment's dataflow mode: agent, fixed, or a FlowOptimizer criterion"""
    architecture: bool | ArchSpace
    """whether the architecture is searched too (a space: searched within it, e.g. a reduced one)"""
    implementation: str = "agent"
    """who picks algorithm and dataflow: the agent, or the environment (fastest)"""


CPU_SEARCHES = (
    SearchPlan("joint: the agent chooses all four levels", "cortex-a72", "agent", True),
    SearchPlan("joint, fastest implementation: the agent chooses architecture + quantization", "cortex-a72", "agent", True, "fastest"),
    SearchPlan("fixed MobileNetV2: deployment only", "cortex-a72", "agent", False),
)
"""A CPU experiment: joint searches against the fixed network."""


def npu_searches(target: str, folder: Path) -> tuple[SearchPlan, ...]:
    """(a) per-layer best, (b) fixed NVDLA-like and (c) fixed Eyeriss-like dataflow on the hardware of
    the NPU `target`: the presets for a preset, else its YAML description with each fixed dataflow
    (written to `folder`, where the report can point to them)."""
    if target in preset_names():
        nvdla, eyeriss = FIXED_DATAFLOW_DESIGNS.values()
    else:
        spec = get_target(target).spec
        folder.mkdir(parents=True, exist_ok=True)
        nvdla, eyeriss = (
            str(write_npu_spec(replace(spec, name=f"{spec.name}-{design.lower()}", dataflow=load_preset(preset).dataflow),
                               folder / f"{spec.name}-{design.lower()}.yaml"))
            for design, preset in FIXED_DATAFLOW_DESIGNS.items()
        )
    return (
        SearchPlan("a: per-layer best dataflow", eyeriss, "latency", True),
        SearchPlan("b: fixed NVDLA-like (ws)", nvdla, "fixed", True),
        SearchPlan("c: fixed Eyeriss-like (rs)", eyeriss, "fixed", True),
    )


@dataclass
class Search:
    """One search's outcome."""

    plan: SearchPlan
    front: ParetoFront
    best: dict[str, Any]
    episodes: int
    seconds: float
    samples: list[Point] = field(default_factory=list)
    """A random search's networks, in the order drawn (the same order in every random search)."""
    reward: float = -np.inf
    """The choice's reward."""
    refinement: dict[str, Any] | None = None
    """What `refine_search` added: evaluations, front changes, seconds, and the choice (with its reward)
    before and the reward after."""

    @property
    def name(self) -> str:
        return self.plan.name

    def to_dict(self) -> dict[str, Any]:
        keep = ("latency_ms", "accuracy", "energy_mj", "speedup", "architecture", "network", "latency_provenance", "choices")
        plan = self.plan
        return {
            "name": plan.name, "target": get_target(plan.target).name, "dataflow": plan.dataflow, "architecture_searched": bool(plan.architecture),
            "implementation": plan.implementation,
            "episodes": self.episodes, "seconds": round(self.seconds, 1), "refinement": self.refinement,
            "choice": {k: self.best.get(k) for k in keep},
            "accuracy_latency_front": [
                {"latency_ms": p.latency_ms, "accuracy": p.accuracy, "architecture": p.architecture}
                for p in self.front.accuracy_latency()
            ],
            "evaluated": len(self.front.points),
        }


def points_file(stem: Path) -> Path:
    """Beside the report: every search's evaluated points and Pareto front with their choices, by
    search name (megabytes: not kept in git)."""
    return stem.with_name(stem.name + ".points.json")


def search_env(plan: SearchPlan, oracle: SupernetOracle, db_path: Path, tradeoff_ms: float | None) -> Callable[[], DeploymentEnv]:
    """A factory of the environment of `plan` on MobileNetV2 (trade-off reward, one shared cost table)."""
    costs = make_cost_table(plan.target, db_path)

    def make_env() -> DeploymentEnv:
        return make_deployment_env(
            "mobilenet_v2", plan.target, "tradeoff", target_ms=tradeoff_ms, accuracy=oracle, costs=costs,
            dataflow=plan.dataflow, architecture=plan.architecture, implementation=plan.implementation,
        )

    return make_env


def run_search(
    plan: SearchPlan, oracle: SupernetOracle, timesteps: int, seed: int, db_path: Path, tb_dir: Path, tradeoff_ms: float | None,
) -> Search:
    """One MaskablePPO search of MobileNetV2 (trade-off reward), returning its front and choice."""
    make_env = search_env(plan, oracle, db_path, tradeoff_ms)
    hp = load_hyperparams("nas")
    start = time.perf_counter()
    env = make_vec_env(make_env, hp.n_envs)
    agent = make_agent(env, hp, seed, str(tb_dir))
    arch_space = env.envs[0].unwrapped.arch_space
    labels = [arch_space.label(o) for o in arch_space.OPTIONS] if plan.architecture else []
    hparams = {"search": plan.name, "target": plan.target, "dataflow": plan.dataflow,
               "implementation": plan.implementation, "timesteps": timesteps}
    callback = DeploymentTensorBoard(hparams, arch_labels=labels)
    agent.learn(timesteps, callback=callback, tb_log_name=plan.name.split(":")[0])
    return Search(plan, callback.pareto, callback.best.info, callback.episodes, time.perf_counter() - start,
                  reward=callback.best.reward)


def int8_deployer(plan: SearchPlan, oracle: SupernetOracle, db_path: Path, tradeoff_ms: float | None) -> Deploy:
    """Deploys a network (block labels) as fast as the search `plan`'s dataflow mode may in int8
    (dynamic programming over its allowed choices) and scores it as one episode of its environment."""
    env = search_env(plan, oracle, db_path, tradeoff_ms)()
    own = env.space.baseline_choice().dataflow

    def allowed(choice: Choice) -> bool:
        return choice.quant == "int8" and (plan.dataflow != "fixed" or choice.dataflow == own)

    def deploy(labels: Sequence[str]) -> tuple[float, dict[str, Any]]:
        network = env.arch.network_of(env.arch_space.parse(labels))
        return env.replay(best_choices(network, env.costs, allowed), labels)

    return deploy


def random_search(
    plan: SearchPlan, oracle: SupernetOracle, architectures: list[tuple[str, ...]], db_path: Path, tradeoff_ms: float | None,
    name: str = "random architectures",
) -> Search:
    """Every architecture of `architectures` (block labels) deployed by `int8_deployer`; the choice is
    the highest-reward one. The result is named `name`, then the plan's name."""
    plan = SearchPlan(f"{name}, {plan.name}", plan.target, plan.dataflow, True)
    deploy = int8_deployer(plan, oracle, db_path, tradeoff_ms)
    start = time.perf_counter()
    front, samples, best = ParetoFront(), [], (-np.inf, {})
    for labels in architectures:
        reward, info = deploy(labels)
        point = Point.from_info(info)
        front.add(point)
        samples.append(point)
        best = max(best, (reward, info), key=lambda b: b[0])
    return Search(plan, front, best[1], len(architectures), time.perf_counter() - start, samples, best[0])


def refine_search(search: Search, oracle: SupernetOracle, evaluations: int, seed: int, db_path: Path, tradeoff_ms: float | None) -> None:
    """Spend `evaluations` more on networks one block away from `search`'s front (`refine_front`),
    deployed in int8 by `int8_deployer`; its choice becomes the highest-reward network of both."""
    start = time.perf_counter()
    deploy = int8_deployer(search.plan, oracle, db_path, tradeoff_ms)
    evaluated, changes = len(search.front.points), search.front.changes
    before = {k: search.best[k] for k in ("latency_ms", "accuracy")} | {"reward": search.reward}
    found = refine_front(search.front, deploy, searched_space(search.plan, oracle), evaluations, np.random.default_rng(seed))
    if found is not None and found[0] > search.reward:
        search.reward, search.best = found
    search.refinement = {"evaluations": len(search.front.points) - evaluated, "front_changes": search.front.changes - changes,
                         "seconds": round(time.perf_counter() - start, 1), "choice_before_local_search": before, "choice_reward": search.reward}


def searched_space(plan: SearchPlan, oracle: SupernetOracle) -> ArchSpace:
    """The architecture space `plan` searches: its own, else the supernet's (the full one)."""
    return plan.architecture if isinstance(plan.architecture, ArchSpace) else oracle.space


def fastest_at_least(search: Search, accuracy: float) -> Point | None:
    """The fastest point `search` evaluated with at least `accuracy` (None if it has none)."""
    points = [p for p in search.front.accuracy_latency() if p.accuracy >= accuracy]
    return min(points, key=lambda p: p.latency_ms) if points else None


def compare_npu(searches: list[Search], per_layer_best: DeploymentEnv, randoms: list[Search | None]) -> dict[str, Any]:
    """(a) against (b) and (c), each at the accuracy of the other's choice; and, to separate what the
    dataflow gives from what the architecture gives, the other's chosen network (same architecture and
    precisions) with per-layer best dataflows (`per_layer_best` replays it); with the random
    architectures of each search (`randoms`, in the same order; None when none were drawn), their
    `random_reference`; and (a) at every accuracy level of the other's front (`across_front`)."""
    best, *fixed = searches
    rows = {}
    for i, other in enumerate(fixed, start=1):
        theirs = other.best
        mine = fastest_at_least(best, theirs["accuracy"])
        choices = {name: Choice.from_dict(c) for name, c in theirs["choices"].items()}
        _, same = per_layer_best.replay(choices, theirs["architecture"])
        rows[other.name] = {
            "their_network_with_per_layer_best_dataflow_ms": same["latency_ms"],
            "speedup_on_their_network": theirs["latency_ms"] / same["latency_ms"],
            "their_latency_ms": theirs["latency_ms"],
            "their_accuracy": theirs["accuracy"],
            "our_latency_ms": None if mine is None else mine.latency_ms,
            "our_accuracy": None if mine is None else mine.accuracy,
            "our_architecture": None if mine is None else mine.architecture,
            "speedup": None if mine is None else theirs["latency_ms"] / mine.latency_ms,
            "across_their_front": across_front(best, other),
        }
        if randoms[0] is not None:
            rows[other.name]["random_architectures"] = random_reference(randoms[0], randoms[i])
    return {"per-layer best vs fixed, at equal or better accuracy": rows}


def across_front(ours: Search, theirs: Search) -> dict[str, Any]:
    """The speedup of `ours` at every accuracy level of `theirs`' front, summarised: one choice each
    differs from the other by an image or two of held-out accuracy, the whole front less."""
    speedups = np.array([level["speedup"] for level in gains_across_front(ours, theirs) if level["speedup"] is not None])
    summary: dict[str, Any] = {"levels": len(theirs.front.accuracy_latency()), "levels_we_reach": len(speedups)}
    if len(speedups):
        summary["speedup_at_equal_or_better_accuracy"] = spread(speedups)
    return summary


def dominated(front: list[Point], by: list[Point]) -> list[bool]:
    """For each point of `front`, whether some point of `by` is at least as accurate and as fast."""
    return [any(b.accuracy >= f.accuracy and b.latency_ms <= f.latency_ms for b in by) for f in front]


def compare_cpu(searches: list[Search], random: Search | None = None, original_int8: Search | None = None) -> dict[str, Any]:
    """For each joint search: does its front dominate (weakly) every point of the fixed-architecture
    search's front, how much of the random architectures' front, and does it dominate the fixed
    network's fastest int8 deployment (`original_int8`, so that the verdict does not rest on how well
    the fixed search deployed it)?"""
    (fixed,) = [s for s in searches if not s.plan.architecture]
    fixed_front = fixed.front.accuracy_latency()
    random_front = [] if random is None else random.front.accuracy_latency()
    original_front = [] if original_int8 is None else original_int8.front.accuracy_latency()
    verdict: dict[str, Any] = {"fixed_front_points": len(fixed_front)}
    if original_int8 is not None:
        verdict["fixed_network_int8_fastest"] = {k: original_int8.best[k] for k in ("latency_ms", "accuracy")}
    if random is not None:
        verdict["random_architectures"] = {"networks": random.episodes, "front_points": len(random_front)}
    verdict["joint_searches"] = rows = {}
    for joint in searches:
        if joint is fixed:
            continue
        front = joint.front.accuracy_latency()
        covered = dominated(fixed_front, front)
        rows[joint.name] = {
            "fixed_points_dominated": sum(covered),
            "dominates_fixed": all(covered),
            "choice_speedup_over_fixed_choice": fixed.best["latency_ms"] / joint.best["latency_ms"],
        }
        if random is not None:
            rows[joint.name]["random_points_dominated"] = sum(dominated(random_front, front))
        if original_int8 is not None:
            (beats_int8,) = dominated(original_front, front)
            rows[joint.name]["dominates_fixed_network_int8_fastest"] = beats_int8
    return verdict


def spread(values: np.ndarray) -> dict[str, float]:
    """Smallest, median and largest of `values`."""
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def gains_across_front(ours: Search, theirs: Search) -> list[dict[str, Any]]:
    """At every accuracy level of `theirs`' accuracy-latency front, the fastest point of `ours` at least
    as accurate and its speedup (None where `ours` has no point that accurate)."""
    levels = []
    for p in theirs.front.accuracy_latency():
        mine = fastest_at_least(ours, p.accuracy)
        levels.append({
            "accuracy": p.accuracy, "their_latency_ms": p.latency_ms,
            "our_latency_ms": None if mine is None else mine.latency_ms, "our_accuracy": None if mine is None else mine.accuracy,
            "speedup": None if mine is None else p.latency_ms / mine.latency_ms,
            "same_architecture": mine is not None and mine.architecture == p.architecture,
        })
    return levels


def random_reference(ours: Search, theirs: Search) -> dict[str, Any]:
    """Per-layer best dataflows (`ours`) against a fixed dataflow (`theirs`) on the same random networks:
    at every accuracy level of `theirs`' front, the fastest of `ours` at least as accurate (the same
    network is always a candidate); and the gain on each network itself. A search that tried exactly
    these networks could gain no more."""
    levels = gains_across_front(ours, theirs)
    gains = np.array([t.latency_ms / o.latency_ms for o, t in zip(ours.samples, theirs.samples)])
    speedups = np.array([level["speedup"] for level in levels])
    return {
        "networks": len(gains),
        "speedup_at_equal_or_better_accuracy": spread(speedups),
        "per_network_speedup": spread(gains),
        "levels": levels,
    }


def figure(searches: list[Search], randoms: list[Search | None], title: str, marks: dict[str, Search] | None = None):
    """Every search's Pareto front, with its choice starred, its random architectures' front dashed, and
    the choices of `marks` (single deployments by label, e.g. the fixed network's fastest in int8) crossed."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    for i, s in enumerate(searches):
        reference = randoms[i] if randoms[i] is not None and randoms[i] not in randoms[:i] else None  # drawn once
        front = s.front.accuracy_latency()
        evaluated = s.front.points
        ax.scatter([p[1] for p in evaluated], [100 * p[0] for p in evaluated], s=3, color=f"C{i}", alpha=0.15)
        local = f" + {s.refinement['evaluations']} local" if s.refinement else ""
        ax.step([p.latency_ms for p in front], [100 * p.accuracy for p in front], "o-", where="post", color=f"C{i}",
                markersize=3, label=f"{s.name} ({s.episodes} episodes{local})")
        ax.scatter([s.best["latency_ms"]], [100 * s.best["accuracy"]], marker="*", s=160, color=f"C{i}", zorder=3)
        if s.refinement:
            ppo = s.refinement["choice_before_local_search"]
            ax.scatter([ppo["latency_ms"]], [100 * ppo["accuracy"]], marker="*", s=160, facecolors="none", edgecolors=f"C{i}", zorder=3)
        if reference is not None:
            front = reference.front.accuracy_latency()
            ax.step([p.latency_ms for p in front], [100 * p.accuracy for p in front], "--", where="post", color=f"C{i}",
                    linewidth=1, label=f"{reference.episodes} random architectures, int8, fastest")
    for label, mark in (marks or {}).items():
        ax.scatter([mark.best["latency_ms"]], [100 * mark.best["accuracy"]], marker="X", s=90, color="black", zorder=3,
                   label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    hollow = ", hollow star: PPO's choice before local search" if any(s.refinement for s in searches) else ""
    ax.set_title(title + "\n(dots: every deployment evaluated; line: its accuracy-latency front;\n"
                 f"star: its choice{hollow};\n"
                 "dashed: the front of random architectures, each deployed as fast as that search allows in int8)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="npu-eyeriss",
                        help="npu-eyeriss (any NPU preset: the presets' hardware), an NPU's YAML file (its hardware), or cortex-a72")
    parser.add_argument("--timesteps", type=int, default=150_000,
                        help="environment steps per search (equal for all); at 20,000 PPO has barely left its random start, on an NPU it settles by ~150,000")
    parser.add_argument("--seed", type=int, default=0, help="agent seed (the same for every search)")
    parser.add_argument("--tradeoff-ms", type=float, help="target latency of the trade-off reward (default: each environment's)")
    parser.add_argument("--supernet-epochs", type=int, default=DEFAULT_SUPERNET_EPOCHS, help="supernet training epochs")
    parser.add_argument("--proxy", default=PROXIES[0], choices=PROXIES, help="the supernet's proxy data")
    parser.add_argument("--local-search", type=int,
                        help=f"after PPO, evaluations of networks one block away from each search's front (the same for every search; "
                             f"default {NPU_LOCAL_SEARCH} on an NPU, 0 on a CPU, whose fixed-MobileNetV2 search has no architecture to vary)")
    parser.add_argument("--random-architectures", type=int,
                        help="random architectures as every architecture search's reference (default: as many as the first search evaluated; 0: none)")
    parser.add_argument("--arch-space", metavar="FILE",
                        help="search this reduced MobileNetV2 space (a YAML file from experiments/profile_space.py) instead of the full one")
    parser.add_argument("--out", default="runs", help="output folder (also holds the measurement database)")
    args = parser.parse_args(argv)

    target = get_target(args.target)
    npu = isinstance(target, NpuTarget)
    if not npu and args.target != "cortex-a72":
        raise ValueError(f"--target {args.target!r}: use an NPU preset (npu-eyeriss, npu-nvdla, npu-tpu), an NPU's YAML file or cortex-a72")
    if args.random_architectures is not None and args.random_architectures < 0:
        raise ValueError(f"--random-architectures {args.random_architectures}: use 0 (none) or more")
    local_search = (NPU_LOCAL_SEARCH if npu else 0) if args.local_search is None else args.local_search
    if local_search < 0 or (local_search and not npu):
        raise ValueError(f"--local-search {args.local_search}: use 0 or more on an NPU; on a CPU only 0 (the fixed MobileNetV2 has no neighbours)")
    reduced = read_arch_space(args.arch_space) if args.arch_space else None
    if reduced is not None and reduced.name != "mobilenet_v2":
        raise ValueError(f"--arch-space {args.arch_space}: a space of {reduced.name}; this experiment searches MobileNetV2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    oracle = supernet_oracle_for(resolve_network("mobilenet_v2"), epochs=args.supernet_epochs, proxy=args.proxy)
    db_path = out / "measurements.sqlite"
    oracle.use_database(MeasurementDB(db_path))
    stem = out / f"nas-{target.name}"
    plans = npu_searches(args.target, stem) if npu else CPU_SEARCHES
    if reduced is not None:
        plans = tuple(p._replace(architecture=reduced) if p.architecture else p for p in plans)
    searches = []
    for plan in plans:
        print(f"== {plan.name} on {plan.target} ({args.timesteps} steps)", flush=True)
        searches.append(run_search(plan, oracle, args.timesteps, args.seed, db_path, stem, args.tradeoff_ms))
        search = searches[-1]
        print(f"   choice {search.best['latency_ms']:.3f} ms, {100 * search.best['accuracy']:.2f}% "
              f"({search.episodes} episodes, {search.seconds:.0f} s)", flush=True)
        if local_search:
            refine_search(search, oracle, local_search, args.seed, db_path, args.tradeoff_ms)
            print(f"   after {search.refinement['evaluations']} local-search evaluations: choice {search.best['latency_ms']:.3f} ms, "
                  f"{100 * search.best['accuracy']:.2f}% ({search.refinement['front_changes']} front changes, "
                  f"{search.refinement['seconds']:.0f} s)", flush=True)
    count = len(searches[0].front.points) if args.random_architectures is None else args.random_architectures
    space, rng = reduced or oracle.space, np.random.default_rng(args.seed)
    architectures = [space.labels(space.sample(rng)) for _ in range(count)]
    randoms: list[Search | None] = [None] * len(plans)
    drawn: dict[tuple[str, str], Search] = {}  # searches with the same target and dataflow mode share their reference
    for i, plan in enumerate(plans):
        key = (plan.target, plan.dataflow)
        if plan.architecture and architectures:
            if key not in drawn:
                drawn[key] = reference = random_search(plan, oracle, architectures, db_path, args.tradeoff_ms)
                print(f"   {count} random architectures for {plan.name}: choice {reference.best['latency_ms']:.3f} ms, "
                      f"{100 * reference.best['accuracy']:.2f}% ({reference.seconds:.0f} s)", flush=True)
            randoms[i] = drawn[key]
    if npu:
        per_layer_best = search_env(plans[0], oracle, db_path, args.tradeoff_ms)()
        comparison = compare_npu(searches, per_layer_best, randoms)
        marks: dict[str, Search] = {}
    else:
        (fixed_plan,) = [p for p in plans if not p.architecture]
        original = random_search(fixed_plan, oracle, [space.labels(space.ORIGINAL)], db_path, args.tradeoff_ms, name="fixed MobileNetV2")
        label = "fixed MobileNetV2, int8, fastest"
        marks = {label: original}
        print(f"   {label}: {original.best['latency_ms']:.3f} ms, {100 * original.best['accuracy']:.2f}%", flush=True)
        comparison = compare_cpu(searches, randoms[0], original)
    report = {
        "experiment": f"latency-aware NAS of MobileNetV2 on {target.name}, MaskablePPO, trade-off reward",
        "target": target.describe(),
        "timesteps_per_search": args.timesteps,
        "architecture_space": {"file": args.arch_space, "note": reduced.note, "removed": reduced.removed()} if reduced else "full",
        "local_search_evaluations_per_search": local_search,
        "seed": args.seed,
        "accuracy": {"provenance": oracle.provenance, "supernet": oracle.weights_id,
                     "original_mobilenet_v2_fp32": oracle.baseline_accuracy},
        "searches": [s.to_dict() for s in searches],
        "random_architectures": [s.to_dict() for s in drawn.values()],
        "references": [s.to_dict() for s in marks.values()],
        "comparison": comparison,
        "points": points_file(stem).name,
    }
    write_json(stem.with_suffix(".json"), report)
    every = [*searches, *drawn.values(), *marks.values()]
    write_json(points_file(stem), {s.name: s.front.to_dict() for s in every})
    title = f"NAS on {target.name}: {args.timesteps} steps per search, seed {args.seed}"
    figure(searches, randoms, title, marks).savefig(stem.with_suffix(".png"), dpi=120)
    print(json.dumps(comparison, indent=2))
    print(f"wrote {stem.with_suffix('.json')} and .png")
    return 0


if __name__ == "__main__":
    run_main(main)

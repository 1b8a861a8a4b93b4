"""How close every search agent gets to what the space holds, at equal budgets, on 3 seeds.

Rows (the main job's reward, each network's default budget):
- `mobilenet_v2@cortex-a72`, `resnet18@cortex-a72`: the A72 model; `mobilenet_v2@npu-eyeriss`: ZigZag.
  Every agent gets the same number of episodes (the main job's timesteps over the network's searchable
  layers). Each row has exact references (`envs.references`): the minimum latency, the best reward
  known (coordinate descent over precisions, each deployed by dynamic programming) and a bound.
- `mobilenet_v2_32@host`: measured with TVM on this machine, at a fixed budget of distinct kernels
  (what a board's time goes to); the metric is the best measured deployment per kernel spent.
  `maskable_ppo` there measures one kernel per class of layer, corrects the host's latency model by
  them (Zeng et al.'s layer-adaptive correction), learns on the corrected model, measures its pick, and
  repeats with the model corrected again (`agents.model_guided`, what `run_ppo.py` does on a measured
  target): learning on the model costs no measurement, correcting it does.

For every agent and seed the best reward and latency are recorded after every improvement, so the
curves are exact. `random` runs `RANDOM_FACTOR` times the budget, which measures how many episodes it
needs to reach 99% of the best known reward when it takes longer than the others' budget; its draws do
not depend on rewards, so it is screened with an upper bound of the accuracy (the fp32 network's) and
only a deployment that could beat the best so far has its accuracy measured: the curve is still exact,
and its first `budget` episodes are the equal-budget run.

    python benchmarks/search_quality.py                      # every row, agent and seed (hours on 2 cores; resumable)
    python benchmarks/search_quality.py --rows mobilenet_v2@cortex-a72 --agents maskable_ppo random
    python benchmarks/search_quality.py --markdown           # summarise the JSON again; print benchmarks/README.md's tables

Writes benchmarks/out/search_quality.json and .png after every search; a rerun skips the searches the
file holds (`--rerun` repeats them, replacing their earlier runs at any budget). Measurements and
accuracies are kept in benchmarks/out/search_quality.sqlite (not in git), so a repeated search only
computes what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
DB = OUT / "search_quality.sqlite"
TIMESTEPS = 240_000
"""The main job's default timesteps: a row's episode budget is this over its searchable layers."""
RANDOM_FACTOR = 10
"""Random search also runs this many times the budget (episodes to 99% when it needs more)."""
KERNEL_BUDGET = 200
"""Distinct kernels a search may have timed on the measured row."""
CALIBRATION_KERNELS = 60
"""Measured row: kernels maskable_ppo measures (one per class of layer) to correct the latency model."""
PRETRAIN_STEPS = 30_000
"""Measured row: steps maskable_ppo learns on the corrected model before its first pick."""
ROUND_STEPS = 8_000
"""Measured row: steps it learns on the model corrected again before each later pick."""
ROUND_SAMPLES = 32
"""Measured row: sampled deployments it considers when its greedy one measures nothing new."""
ROWS = ("mobilenet_v2@cortex-a72", "resnet18@cortex-a72", "mobilenet_v2@npu-eyeriss", "mobilenet_v2_32@host")
AGENTS = ("maskable_ppo", "ppo", "a2c", "qlearning", "evolution", "random")
MEASURED_AGENTS = ("maskable_ppo", "evolution", "random")


@dataclass(frozen=True)
class Job:
    """One search: a row, an agent, a seed and its budget."""

    row: str
    agent: str
    seed: int
    episodes: int
    kernels: int | None = None
    equal_budget: int | None = None
    """The screened random search: also report its first this many episodes (the others' budget)."""


class _UpperBoundAccuracy:
    """Every deployment at the fp32 network's accuracy, which none exceeds (accuracy = top-1 - KL)."""

    def __init__(self, oracle) -> None:
        self.oracle = oracle
        self.provenance = f"upper-bound:{oracle.provenance}"

    @property
    def baseline_accuracy(self) -> float:
        return self.oracle.baseline_accuracy

    def accuracy(self, precisions) -> float:
        return self.oracle.baseline_accuracy


def _environment(row: str, db: Path, screened: bool = False):
    """The row's environment factory (shared cost table and oracle) and its probe environment; `screened`:
    with `_UpperBoundAccuracy` instead of the oracle."""
    from deploy.tvm_measure import MeasureSettings
    from envs.accuracy import oracle_for
    from envs.make import make_cost_table, make_deployment_env, resolve_network

    net, target = row.split("@")
    network = resolve_network(net)
    settings = MeasureSettings(repeats=5, min_repeat_ms=5) if target == "host" else None
    costs = make_cost_table(target, db, settings=settings)
    oracle = oracle_for(network)
    oracle.use_database(costs.db)

    accuracy = _UpperBoundAccuracy(oracle) if screened else oracle

    def make_env():
        return make_deployment_env(network, target, accuracy=accuracy, costs=costs)

    return make_env, make_env()


class _Stop:
    """Stops a search once it has deployed `episodes` complete deployments or used `kernels` distinct
    kernels (a layer shape and a choice), counted at every step; `signatures` maps layer names to shapes."""

    def __init__(self, episodes: int, kernels: int | None, signatures: dict[str, str]) -> None:
        from agents.callbacks import DeploymentTensorBoard

        self.episodes, self.kernels = episodes, kernels
        self.used: set[tuple[str, str]] = set()
        """(layer signature, choice key) of every layer choice priced so far."""
        self.kernel_curve: list[tuple[int, float, float]] = []
        self.episode_log: list[tuple[int, float, float, tuple[str, ...]]] = []
        """(episode, reward, latency_ms, precisions) of every episode (kept for the screened random search)."""
        outer = self

        class Watch(DeploymentTensorBoard):
            def _log_episode(self, episode_reward: float, info: dict) -> None:
                super()._log_episode(episode_reward, info)
                precisions = tuple(c["quant"] for c in info["choices"].values())
                outer.episode_log.append((self.episodes, episode_reward, info["latency_ms"], precisions))

            def _on_step(self) -> bool:
                before = self.best.reward
                super()._on_step()
                outer.used |= {(signatures[i["layer"]], i["choice"]) for i in self.locals["infos"] if "choice" in i}
                if self.best.reward > before and self.best.info:
                    outer.kernel_curve.append((len(outer.used), self.best.reward, self.best.info["latency_ms"]))
                if outer.kernels is not None and len(outer.used) >= outer.kernels:
                    return False
                return self.episodes < outer.episodes

        self.callback = Watch({})

    def record(self, reward: float, info: dict, kernels: set[tuple[str, str]]) -> None:
        """An episode run outside the agent's learning (a replayed deployment that used `kernels`)."""
        from agents.callbacks import BestDeployment

        self.used |= kernels
        watch = self.callback
        watch.episodes += 1
        if reward > watch.best.reward:
            watch.best = BestDeployment(reward, dict(info))
            watch.curve.append((watch.num_timesteps, watch.episodes, reward, info["latency_ms"]))
            self.kernel_curve.append((len(self.used), reward, info["latency_ms"]))


def run_job(job: Job) -> list[dict[str, Any]]:
    """One search, in a worker process (one torch thread): its result, and for the screened random
    search also the result of its first `equal_budget` episodes."""
    import torch

    from agents.ppo import SEARCH_THREADS, load_hyperparams
    from agents.registry import make_search_agent

    torch.set_num_threads(SEARCH_THREADS)  # as the main job

    net, target = job.row.split("@")
    screened = job.agent == "random" and job.kernels is None
    make_env, probe = _environment(job.row, DB, screened)
    hp = load_hyperparams(target, f"{target}/{net}")
    agent = make_search_agent(job.agent, make_env, job.seed, None, hp)
    stop = _Stop(job.episodes, job.kernels, {layer.name: layer.signature for layer in probe.layers})
    start = time.perf_counter()
    if job.kernels is not None and job.agent == "maskable_ppo":
        _model_guided_search(agent, stop, job.row, probe, job.seed)
    else:
        agent.learn(job.episodes * len(probe.layers) * 4, callback=stop.callback)  # the callback stops it at the budget
    seconds = round(time.perf_counter() - start, 1)
    common = {"row": job.row, "agent": job.agent, "seed": job.seed, "budget_kernels": job.kernels}
    if screened:
        curve, measured = _exact_curve(stop.episode_log, probe)
        return [
            {**common, "budget_episodes": budget, "episodes": budget, "kernels_used": None, "seconds": seconds,
             "best_reward": kept[-1]["reward"], "best_latency_ms": kept[-1]["latency_ms"],
             "best_accuracy": kept[-1]["accuracy"], "curve": kept, "kernel_curve": [],
             "accuracies_measured": sum(1 for e in measured if e <= budget)}
            for budget in (job.episodes, job.equal_budget) if budget
            for kept in [[p for p in curve if p["episode"] <= budget]]
        ]
    best = stop.callback.best
    return [{
        **common, "budget_episodes": job.episodes, "episodes": stop.callback.episodes, "kernels_used": len(stop.used),
        "seconds": seconds, "best_reward": best.reward, "best_latency_ms": best.info.get("latency_ms"),
        "best_accuracy": best.info.get("accuracy"),
        "curve": [{"episode": e, "reward": r, "latency_ms": l} for _, e, r, l in stop.callback.curve],
        "kernel_curve": [{"kernels": k, "reward": r, "latency_ms": l} for k, r, l in stop.kernel_curve],
    }]


def _exact_curve(
    episode_log: list[tuple[int, float, float, tuple[str, ...]]], probe
) -> tuple[list[dict[str, Any]], list[int]]:
    """The best-so-far curve of a search screened with `_UpperBoundAccuracy`, and the episodes whose
    accuracy it measured: an episode whose screened reward does not beat the best true reward so far
    cannot beat it; the others have their accuracy measured and their reward corrected (accuracy enters
    only the final reward)."""
    oracle, reward = probe.oracle.oracle, probe.reward_config  # probe.oracle is the _UpperBoundAccuracy
    best, curve, measured = -np.inf, [], []
    for episode, bound, latency, precisions in episode_log:
        if bound <= best:
            continue
        measured.append(episode)
        accuracy = oracle.accuracy(precisions)
        true = bound + reward.total(accuracy, latency) - reward.total(oracle.baseline_accuracy, latency)
        if true > best:
            best = true
            curve.append({"episode": episode, "reward": true, "latency_ms": latency, "accuracy": accuracy})
    return curve, measured


def _model_guided_search(agent, stop: _Stop, row: str, probe, seed: int) -> None:
    """Measured row, maskable_ppo: the product's model-guided search (`agents.model_guided`) at this
    benchmark's settings, its measured deployments recorded in `stop`."""
    from agents.model_guided import GuideSettings, ModelGuidedSearch
    from deploy.targets import get_target
    from envs.make import make_deployment_env

    target = get_target(row.split("@")[1])

    def make_env(costs):
        return make_deployment_env(probe.network, target.name, accuracy=probe.oracle, costs=costs)

    settings = GuideSettings(KERNEL_BUDGET, CALIBRATION_KERNELS, PRETRAIN_STEPS, ROUND_STEPS, ROUND_SAMPLES)
    search = ModelGuidedSearch(probe, target, make_env, settings, seed)
    search.used = stop.used  # one set: the kernels the curve counts are the ones the search spent
    measured_env = agent.get_env()
    search.run(agent, stop.record)
    agent.set_env(measured_env)


def row_references(row: str) -> dict[str, Any]:
    """The row's references (exact minimum latency, best known reward, bound), from the minimum-latency deployment."""
    from deploy.optimum import best_choices
    from envs.references import references

    _, env = _environment(row, DB)
    fastest = best_choices(env.network, env.costs)
    _, info = env.replay(fastest)
    refs = references(env, info, max_passes=0 if row.endswith("@host") else 3)
    return {
        "minimum_latency_ms": refs.minimum_latency.latency_ms,
        "minimum_latency_accuracy": refs.minimum_latency.accuracy,
        "best_known_reward": refs.best_known.reward,
        "best_known_latency_ms": refs.best_known.latency_ms,
        "best_known_accuracy": refs.best_known.accuracy,
        "reward_bound": refs.reward_bound,
        "exact": refs.exact,
        "searchable_layers": len(env.layers),
        "reward": env.reward_config.describe(),
    }


def episodes_to(curve: list[dict], reward: float) -> int | None:
    """Episodes until the best reward first reached `reward` (None: never)."""
    return next((p["episode"] for p in curve if p["reward"] >= reward), None)


def summarise(results: list[dict], refs: dict[str, dict]) -> dict[str, Any]:
    """Per row and agent: mean and spread over seeds of the final best, the regret, and episodes to 99%."""
    table: dict[str, Any] = {}
    for row, ref in refs.items():
        target = ref["best_known_reward"] - 0.01 * abs(ref["best_known_reward"])
        agents = {}
        for agent in sorted({r["agent"] for r in results if r["row"] == row}):
            runs = [r for r in results if r["row"] == row and r["agent"] == agent and r["budget_episodes"] == min(
                x["budget_episodes"] for x in results if x["row"] == row)]
            if not runs:
                continue
            rewards = np.array([r["best_reward"] for r in runs])
            latencies = np.array([r["best_latency_ms"] for r in runs])
            agents[agent] = {
                "seeds": [r["seed"] for r in runs],
                "best_reward_mean": float(rewards.mean()), "best_reward_min": float(rewards.min()), "best_reward_max": float(rewards.max()),
                "best_latency_ms_mean": float(latencies.mean()), "best_latency_ms_min": float(latencies.min()),
                "best_latency_ms_max": float(latencies.max()),
                "latency_vs_minimum_mean": float(latencies.mean() / ref["minimum_latency_ms"]),
                "reward_gap_to_best_known_mean": float(ref["best_known_reward"] - rewards.mean()),
                "episodes_to_99pct": [episodes_to(r["curve"], target) for r in runs],
            }
        long_random = [r for r in results if r["row"] == row and r["agent"] == "random" and r["budget_episodes"] > min(
            x["budget_episodes"] for x in results if x["row"] == row)]
        if long_random:
            long_latencies = np.array([r["best_latency_ms"] for r in long_random])
            agents["random_long"] = {
                "budget_episodes": long_random[0]["budget_episodes"],
                "episodes_to_99pct": [episodes_to(r["curve"], target) for r in long_random],
                "best_reward_mean": float(np.mean([r["best_reward"] for r in long_random])),
                "best_latency_ms_mean": float(long_latencies.mean()), "best_latency_ms_min": float(long_latencies.min()),
                "best_latency_ms_max": float(long_latencies.max()),
                "latency_vs_minimum_mean": float(long_latencies.mean() / ref["minimum_latency_ms"]),
            }
        baselines = tuple(a for a in BASELINES if not row.endswith("@host") or a in MEASURED_AGENTS)
        table[row] = {"references": ref, "target_99pct_reward": target, "agents": agents, "goals": goals(agents, baselines)}
    return table


BASELINES = ("qlearning", "evolution", "random")


def goals(agents: dict[str, Any], baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """The issue's goals on one row: maskable_ppo's mean best reward against each baseline's, and how many
    times fewer episodes than random it needs to reach 99% of the best known reward (a lower bound, `>=`,
    when random never reaches it in its long run)."""
    ppo = agents.get("maskable_ppo")
    if ppo is None:
        return {}
    margins = {a: ppo["best_reward_mean"] - agents[a]["best_reward_mean"] for a in baselines if a in agents}
    result: dict[str, Any] = {"reward_margin_over_baselines": margins,  # None until every baseline has run
                              "at_least_every_baseline": all(m >= 0 for m in margins.values()) if len(margins) == len(baselines) else None}
    long = agents.get("random_long")
    reached = [e for e in ppo["episodes_to_99pct"] if e is not None]
    if long and len(reached) == len(ppo["episodes_to_99pct"]):
        random_episodes = [e if e is not None else long["budget_episodes"] for e in long["episodes_to_99pct"]]
        result["episodes_to_99pct_vs_random"] = {
            "ratio": float(np.mean(random_episodes) / np.mean(reached)),
            "lower_bound": any(e is None for e in long["episodes_to_99pct"]),
        }
    return result


def markdown(table: dict[str, Any]) -> str:
    """The summary as benchmarks/README.md's tables: per row, every agent's mean (min-max) over seeds."""
    lines = []
    for row, entry in table.items():
        ref, agents = entry["references"], entry["agents"]
        measured = row.endswith("@host")
        lines += [f"**{row}** (exact: {ref['exact']}; minimum latency {ref['minimum_latency_ms']:.2f} ms; "
                  f"best known reward {ref['best_known_reward']:.3f}, bound {ref['reward_bound']:.3f})", ""]
        if measured:
            lines += ["| agent | best reward | best measured latency (ms), seeds 0, 1, 2 |", "|---|---|---|"]
        else:
            lines += ["| agent | best reward | best latency (ms) | latency / minimum | episodes to 99% (seeds 0, 1, 2) |",
                      "|---|---|---|---|---|"]
        order = sorted((a for a in agents if a != "random_long"), key=lambda a: -agents[a]["best_reward_mean"])
        for agent in order + (["random_long"] if "random_long" in agents else []):
            a = agents[agent]
            name = f"random, {a['budget_episodes']:,} episodes" if agent == "random_long" else agent
            reward = f"{a['best_reward_mean']:.3f}" + ("" if agent == "random_long" else f" ({a['best_reward_min']:.3f}-{a['best_reward_max']:.3f})")
            latency = f"{a['best_latency_ms_mean']:.2f} ({a['best_latency_ms_min']:.2f}-{a['best_latency_ms_max']:.2f})"
            reached = ", ".join("-" if e is None else f"{e:,}" for e in a["episodes_to_99pct"])
            if measured:
                lines.append(f"| {name} | {reward} | {latency} |")
            else:
                lines.append(f"| {name} | {reward} | {latency} | {a['latency_vs_minimum_mean']:.3f}x | {reached} |")
        lines += ["", f"goals: {json.dumps(entry['goals'])}", ""]
    return "\n".join(lines)


def plot(results: list[dict], table: dict[str, Any], path: Path) -> None:
    """Best reward vs episodes (kernels on the measured row), mean and range over seeds, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in table if any(r["row"] == row for r in results)]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        measured = row.endswith("@host")
        budget = min(r["budget_episodes"] for r in results if r["row"] == row)
        for agent in AGENTS:
            runs = [r for r in results if r["row"] == row and r["agent"] == agent and r["budget_episodes"] == budget]
            if not runs:
                continue
            xmax = KERNEL_BUDGET if measured else budget
            grid = np.linspace(1, xmax, 200)
            curves = []
            for r in runs:
                points = r["kernel_curve"] if measured else r["curve"]
                key = "kernels" if measured else "episode"
                xs = np.array([p[key] for p in points]) if points else np.array([xmax])
                ys = np.array([p["latency_ms"] for p in points]) if points else np.array([np.nan])
                idx = np.searchsorted(xs, grid, side="right") - 1
                curves.append(np.where(idx >= 0, ys[np.maximum(idx, 0)], np.nan))
            curves = np.array(curves)
            line, = ax.plot(grid, np.nanmean(curves, axis=0), label=agent)
            ax.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=line.get_color(), alpha=0.15)
        ref = table[row]["references"]
        ax.axhline(ref["minimum_latency_ms"], color="k", ls="--", lw=1, label="exact minimum latency")
        ax.set_xscale("log")
        ax.set_xlabel("distinct kernels timed" if measured else "episodes")
        ax.set_ylabel("best deployment's latency (ms)")
        ax.set_title(row)
        ax.legend(fontsize=7)
    fig.suptitle("Best deployment found vs budget: mean and range over 3 seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def jobs_for(rows: list[str], agents: list[str], seeds: list[int]) -> tuple[list[Job], dict[str, dict]]:
    """Every job of the benchmark, and each row's references (computed here, once)."""
    refs = {row: row_references(row) for row in rows}
    jobs = []
    for row in rows:
        episodes = TIMESTEPS // refs[row]["searchable_layers"]
        measured = row.endswith("@host")
        for agent in agents:
            if measured and agent not in MEASURED_AGENTS:
                continue
            for seed in seeds:
                if measured:
                    jobs.append(Job(row, agent, seed, 10**9, KERNEL_BUDGET))
                else:
                    if agent == "random":
                        jobs.append(Job(row, agent, seed, RANDOM_FACTOR * episodes, equal_budget=episodes))
                    else:
                        jobs.append(Job(row, agent, seed, episodes))
    return jobs, refs


def _key(run: dict[str, Any]) -> tuple:
    return run["row"], run["agent"], run["seed"], run["budget_episodes"], run["budget_kernels"]


def _job_keys(job: Job) -> list[tuple]:
    """The keys of the results `run_job(job)` returns."""
    budgets = [job.episodes] + ([job.equal_budget] if job.equal_budget else [])
    return [(job.row, job.agent, job.seed, b, job.kernels) for b in budgets]


def save(out: Path, results: list[dict], refs: dict[str, dict], started: float) -> dict[str, Any]:
    """Write the runs so far, their summary and the plot; the summary."""
    table = summarise(results, refs)
    document = {"command": "python benchmarks/search_quality.py", "seconds_this_session": round(time.perf_counter() - started),
                "timesteps": TIMESTEPS, "kernel_budget": KERNEL_BUDGET, "summary": table, "runs": results}
    out.write_text(json.dumps(document, indent=1) + "\n")
    plot(results, table, out.with_suffix(".png"))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="searches run at once (one core each)")
    parser.add_argument("--out", default=str(OUT / "search_quality.json"))
    parser.add_argument("--rerun", action="store_true", help="run again the searches already in --out")
    parser.add_argument("--markdown", action="store_true",
                        help="search nothing: summarise --out's runs again (JSON and plot) and print the tables")
    args = parser.parse_args(argv)
    if args.markdown:
        earlier = json.loads(Path(args.out).read_text())
        refs = {row: entry["references"] for row, entry in earlier["summary"].items()}
        print(markdown(save(Path(args.out), earlier["runs"], refs, time.perf_counter())))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    jobs, refs = jobs_for(args.rows, args.agents, args.seeds)
    results: list[dict] = []
    if out.exists():  # every search is saved as it ends: a rerun goes on from there
        earlier = json.loads(out.read_text())
        for row, entry in earlier["summary"].items():
            refs.setdefault(row, entry["references"])
        # a rerun replaces each of its searches' earlier runs, whatever their budget (the main job's
        # timesteps may have changed since): left beside, they would be summarised instead
        fresh = {(j.row, j.agent, j.seed) for j in jobs} if args.rerun else set()
        results = [r for r in earlier["runs"] if (r["row"], r["agent"], r["seed"]) not in fresh]
    done = {_key(r) for r in results}
    jobs = [j for j in jobs if not set(_job_keys(j)) <= done]
    started = time.perf_counter()
    from agents.ppo import ALGORITHMS

    modelled = sorted((j for j in jobs if j.kernels is None), key=lambda j: j.agent not in ALGORITHMS)  # longest first
    measured = [j for j in jobs if j.kernels is not None]  # alone: another search beside it would skew the timings
    table = save(out, results, refs, started) if results else {}
    for batch, workers in ((modelled, args.jobs), (measured, 1)):
        with ProcessPoolExecutor(workers) as pool:
            for job_results in pool.map(run_job, batch):
                results.extend(job_results)
                table = save(out, results, refs, started)
                for r in job_results:
                    print(f"{r['row']:28s} {r['agent']:13s} seed {r['seed']} ({r['episodes']} episodes, "
                          f"{r['kernels_used']} kernels): best {r['best_latency_ms']:.2f} ms, reward {r['best_reward']:.3f} "
                          f"in {r['seconds']:.0f} s", flush=True)
    print(json.dumps({row: t["goals"] for row, t in table.items()}, indent=1))


if __name__ == "__main__":
    main()

"""HAO-style co-design against the NPU presets, at their area and at their latency.

    python benchmarks/codesign.py        # -> benchmarks/out/codesign.{json,png}

MobileNetV2 and ResNet-18 (224x224, int8). The presets (`npu-eyeriss`, `npu-nvdla`, `npu-tpu`: one
16x16 int8/fp16 NPU with three fixed dataflows) run every layer in their own dataflow; their area is
the silicon model's (`deploy.silicon`, 45 nm). The co-design (`deploy.codesign`) picks, within the
same area, one of `deploy.npu_design_space`'s 180 NPUs and each layer's dataflow, by one integer
program. Reported beside it, to show where the gain comes from: the presets' own hardware with the
best dataflow per layer (FlowOptimizer, no hardware change), and the co-design restricted to NPUs
that also compute fp16 (the presets' capability). Then the smallest NPU whose optimum is as fast as
the best preset (the area saved at equal latency), and the integer program's size and solve time over
every candidate. Every simulation is ZigZag's, cached in benchmarks/out/codesign/measurements.sqlite
(the first run simulates ~30,000 layer mappings, ~30 min on 2 cores; later runs only read them).
MaskablePPO over the same joint space (`envs.codesign_env`: the NPU, then each layer's precision and
dataflow) gets the program's simulations as its budget, but a settled policy revisits what it has
simulated, so it stops at those or at 100,000 steps; random search then gets as many simulations as
PPO used (3 seeds each): their best latency over the program's optimum is their regret.
Goals: >= 1.5x faster at the presets' area, >= 30% less area at equal latency (both networks); the
integer program over >= 100 NPUs and MobileNetV2 solves in <= 10 s; the same simulations of the 3
smallest NPUs (744) as tasks on a local Ray head (`ray start --head`, stopped after) write the rows the
local workers wrote.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deploy.codesign import Budget, HardwareOption, hardware_options, solve  # noqa: E402
from deploy.cost_table import CostTable  # noqa: E402
from deploy.db import MeasurementDB  # noqa: E402
from deploy.deployment import evaluate, uniform_choices  # noqa: E402
from deploy.npu_backend import ZigZagBackend  # noqa: E402
from deploy.npu_design_space import HardwareCandidate, NODE_NM, design_space  # noqa: E402
from deploy.npu_hardware import load_preset  # noqa: E402
from deploy.silicon import SiliconModel, check_published, npu_floorplan  # noqa: E402
from deploy.targets import NpuTarget  # noqa: E402
from deploy.workers import WorkerPool  # noqa: E402
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings  # noqa: E402
from envs.codesign_env import CodesignEnv  # noqa: E402
from envs.make import resolve_network  # noqa: E402
from envs.space import Choice  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
WORK = OUT / "codesign"
NETWORKS = ("mobilenet_v2", "resnet18")
PRESETS = ("npu-eyeriss", "npu-nvdla", "npu-tpu")
QUANT = "int8"
SPEEDUP_GOAL, AREA_SAVING_GOAL, SOLVE_GOAL_S = 1.5, 0.30, 10.0
SEEDS = (0, 1, 2)
PPO_SETTINGS = {"n_steps": 1024, "batch_size": 256, "n_epochs": 4, "learning_rate": 3e-4, "ent_coef": 0.01, "gamma": 1.0}
"""The comparison's PPO: one rollout is ~19 MobileNetV2 episodes; undiscounted, as the return is the latency."""
PPO_TIMESTEPS = 100_000
"""PPO's cap: a settled policy revisits what it has simulated, so it may never need the program's
simulations; it stops at those or after this many steps (~1,900 MobileNetV2 episodes)."""
RAY_SWEEP = 3
"""Candidates simulated again on Ray (MobileNetV2 int8: 3 x 248 simulations)."""


def preset_options(model: SiliconModel, db: MeasurementDB, settings: SimulationSettings, pool: WorkerPool) -> dict[str, HardwareOption]:
    """Each preset as a co-design option: its own hardware and energies, area from the silicon model."""
    options = {}
    for name in PRESETS:
        spec = load_preset(name)
        plan = npu_floorplan(spec, NODE_NM)
        candidate = HardwareCandidate(spec, spec, model.area(plan), model.leakage_mw(plan))
        target = NpuTarget(spec)
        table = CostTable(ZigZagBackend(spec, settings, pool=pool), target.search_space(), db, estimator=target.model())
        options[name] = HardwareOption(candidate, table, (QUANT,))
    return options


def preset_fixed(network, option: HardwareOption) -> dict:
    """The preset running every layer in its own dataflow, in int8."""
    spec = option.candidate.spec
    choice = Choice(QUANT, "direct", spec.fixed_dataflow)
    cost = evaluate(network, uniform_choices(network, lambda layer: choice), option.table)
    return {"preset": spec.name, "dataflow": spec.dataflow, "latency_ms": cost.latency_ms, "dynamic_energy_mj": cost.energy_mj,
            "area_mm2": option.candidate.area_mm2}


def design_row(design) -> dict:
    """What the JSON keeps of a co-design."""
    h = design.option.candidate
    return {"npu": h.name, "area_mm2": h.area_mm2, "latency_ms": design.cost.latency_ms, "energy_mj": design.energy_mj,
            "power_mw": design.power_mw, "gap": design.gap, "solve_s": design.solve_s, "variables": design.variables,
            "constraints": design.constraints, "dataflows": sorted({c.dataflow.key for c in design.choices.values()})}


def ppo_at_budget(network, options: list[HardwareOption], reference_ms: float, budget: int, seed: int) -> dict:
    """MaskablePPO on the joint space (`envs.codesign_env`) until its episodes have needed `budget`
    distinct simulations or it has taken `PPO_TIMESTEPS` steps; the best deployment it found on the way."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback

    env = CodesignEnv(network, options, reference_ms)
    best: dict = {"latency_ms": float("inf")}
    episodes = [0]

    class UntilBudget(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "latency_ms" in info:
                    episodes[0] += 1
                    if info["latency_ms"] < best["latency_ms"]:
                        best.update(latency_ms=info["latency_ms"], npu=info["npu"], at_simulations=env.simulations, episode=episodes[0])
            return env.simulations < budget

    start = time.perf_counter()
    model = MaskablePPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **PPO_SETTINGS)
    model.learn(total_timesteps=PPO_TIMESTEPS, callback=UntilBudget())
    return {**best, "simulations": env.simulations, "episodes": episodes[0], "timesteps": model.num_timesteps,
            "seconds": time.perf_counter() - start, "seed": seed}


def random_at_budget(network, options: list[HardwareOption], reference_ms: float, budget: int, seed: int) -> dict:
    """Uniformly random NPUs and valid choices, episode after episode, until `budget` simulations."""
    env = CodesignEnv(network, options, reference_ms)
    rng = np.random.default_rng(seed)
    best: dict = {"latency_ms": float("inf")}
    episodes = 0
    while env.simulations < budget:
        env.reset()
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(rng.choice(np.flatnonzero(env.action_masks())))
        episodes += 1
        if info.get("latency_ms", float("inf")) < best["latency_ms"]:
            best.update(latency_ms=info["latency_ms"], npu=info["npu"], at_simulations=env.simulations, episode=episodes)
    return {**best, "simulations": env.simulations, "episodes": episodes, "seed": seed}


def search_comparison(network, options: list[HardwareOption], area_mm2: float, optimum_ms: float, reference_ms: float) -> dict:
    """PPO over the joint space within the area with at most the simulations the integer program
    needed (every candidate's), and random search with as many as PPO used (per seed), 3 seeds:
    their best against the program's optimum."""
    within = [o for o in options if o.candidate.area_mm2 <= area_mm2]
    budget = sum(1 for o in {o.table.fingerprint: o for o in within}.values()
                 for layer in {l.signature: l for l in network.searchable_layers}.values()
                 for c in o.table.space.valid_choices(layer) if c.quant in o.precisions)
    ppo = [ppo_at_budget(network, within, reference_ms, budget, seed) for seed in SEEDS]
    rows = {"ppo": ppo, "random": [random_at_budget(network, within, reference_ms, run["simulations"], run["seed"]) for run in ppo]}
    summary = {"simulation_budget": budget, "npus": len(within), "optimum_ms": optimum_ms}
    for name, runs in rows.items():
        regret = [r["latency_ms"] / optimum_ms for r in runs]
        summary[name] = {"runs": runs, "regret_mean": float(np.mean(regret)), "regret_spread": [float(min(regret)), float(max(regret))]}
    return summary


def ray_sweep(network, options: list[HardwareOption], db_path: Path, settings: SimulationSettings) -> dict:
    """The simulations of the `RAY_SWEEP` smallest candidates again, as tasks on a Ray head started on
    127.0.0.1, into a fresh database: its rows against the local workers' (in `db_path`)."""
    import sqlite3
    import tempfile

    from deploy.ray_pool import RayPool, local_head

    with local_head(cpus=2) as address:
        with tempfile.TemporaryDirectory() as tmp:
            db = MeasurementDB(Path(tmp) / "ray.sqlite")
            pool = RayPool(address)
            start = time.perf_counter()
            try:
                candidates = [o.candidate for o in sorted(options, key=lambda o: o.candidate.area_mm2)[:RAY_SWEEP]]
                ray_options = hardware_options(candidates, (QUANT,), db, settings, pool)
                for option in ray_options:
                    solve(network, [option], Budget(option.candidate.area_mm2))
            finally:
                pool.close()
            seconds = time.perf_counter() - start
            fingerprints = sorted({o.table.fingerprint for o in ray_options})
            query = f"SELECT fingerprint, signature, choice, latency_ms, memory_bytes, energy_mj, provenance FROM costs WHERE fingerprint IN ({','.join('?' * len(fingerprints))})"
            with sqlite3.connect(Path(tmp) / "ray.sqlite") as a, sqlite3.connect(db_path) as b:
                on_ray = sorted(a.execute(query, fingerprints))
                swept = {row[:3] for row in on_ray}  # the local database also holds these NPUs' other networks
                local = sorted(row for row in b.execute(query, fingerprints) if row[:3] in swept)
    return {"simulations": len(on_ray), "seconds": seconds, "same_rows_as_local_workers": on_ray == local,
            "local_rows": len(local), "npus": [c.name for c in candidates]}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    model = SiliconModel()
    db = MeasurementDB(WORK / "measurements.sqlite")
    settings = SimulationSettings()
    candidates = design_space(model)
    pool = WorkerPool("zigzag")
    results: dict = {"networks": {}}
    try:
        presets = preset_options(model, db, settings, pool)
        options = hardware_options(candidates, (QUANT,), db, settings, pool)
        area = max(o.candidate.area_mm2 for o in presets.values())
        for net_name in NETWORKS:
            network = resolve_network(net_name)
            start = time.perf_counter()
            fixed = [preset_fixed(network, o) for o in presets.values()]  # prices the presets' layers too
            # every candidate's simulations and its own optimum, before anything is timed
            per_npu = sorted((o.candidate.area_mm2, solve(network, [o], Budget(1e9)).cost.latency_ms, o.candidate.name) for o in options)
            simulate_s = time.perf_counter() - start
            best_preset = min(fixed, key=lambda r: r["latency_ms"])
            flow = solve(network, [presets[best_preset["preset"]]], Budget(area))
            codesign = solve(network, options, Budget(area))
            same_precisions = solve(network, [o for o in options if "fp16" in o.candidate.spec.precisions], Budget(area))
            timed = solve(network, options, Budget(1e9))  # the whole space, for the solve-time goal
            matching = next((a, lat, name) for a, lat, name in per_npu if lat <= best_preset["latency_ms"])
            results["networks"][net_name] = {
                "presets_fixed_dataflow": fixed,
                "best_preset": best_preset["preset"],
                "preset_hardware_best_dataflow_per_layer": design_row(flow),
                "codesign_at_preset_area": design_row(codesign),
                "codesign_int8_fp16_npus_only": design_row(same_precisions),
                "speedup_vs_best_preset": best_preset["latency_ms"] / codesign.cost.latency_ms,
                "speedup_of_dataflows_alone": best_preset["latency_ms"] / flow.cost.latency_ms,
                "equal_latency": {"npu": matching[2], "area_mm2": matching[0], "latency_ms": matching[1],
                                  "area_saving": 1 - matching[0] / best_preset["area_mm2"]},
                "whole_space_solve": design_row(timed),
                "per_npu_optimum": [{"npu": n, "area_mm2": a, "latency_ms": lat} for a, lat, n in per_npu],
                "simulate_and_solve_each_s": simulate_s,
            }
            row = results["networks"][net_name]
            print(f"{net_name}: best preset {best_preset['preset']} {best_preset['latency_ms']:.3f} ms at {best_preset['area_mm2']:.2f} mm^2; "
                  f"co-design {codesign.cost.latency_ms:.3f} ms on {codesign.option.candidate.name} ({row['speedup_vs_best_preset']:.2f}x; "
                  f"dataflows alone {row['speedup_of_dataflows_alone']:.2f}x); equal latency at {matching[0]:.2f} mm^2 "
                  f"({100 * row['equal_latency']['area_saving']:.0f}% less); ILP over {len(options)} NPUs: {timed.variables} variables, {timed.solve_s:.2f} s")
            searches = row["search_at_equal_budget"] = search_comparison(network, options, area, codesign.cost.latency_ms,
                                                                         best_preset["latency_ms"])
            used = [r["simulations"] for r in searches["ppo"]["runs"]]
            print(f"  ILP: {searches['simulation_budget']} simulations; PPO ({min(used)}-{max(used)} simulations): "
                  f"{searches['ppo']['regret_mean']:.3f}x the optimum (seeds {searches['ppo']['regret_spread']}), "
                  f"random at PPO's simulations {searches['random']['regret_mean']:.3f}x")
        results["ray"] = ray_sweep(resolve_network("mobilenet_v2"), options, WORK / "measurements.sqlite", settings)
        print(f"Ray: {results['ray']['simulations']} simulations on a local Ray head in {results['ray']['seconds']:.0f} s; "
              f"same rows as local workers: {results['ray']['same_rows_as_local_workers']}")
    finally:
        pool.close()
    nets = results["networks"].values()
    results.update({
        "machine": platform.processor() or platform.machine(),
        "zigzag": ZIGZAG_VERSION, "node_nm": NODE_NM, "candidates": len(candidates), "preset_area_mm2": area,
        "silicon_model_check": [{k: r[k] for k in ("design", "published_mm2", "modelled_mm2", "error_percent")} for r in check_published(model)],
        "goals": {
            "speedup_at_preset_area": {"goal": SPEEDUP_GOAL, "met": all(n["speedup_vs_best_preset"] >= SPEEDUP_GOAL for n in nets)},
            "area_saving_at_equal_latency": {"goal": AREA_SAVING_GOAL, "met": all(n["equal_latency"]["area_saving"] >= AREA_SAVING_GOAL for n in nets)},
            "solve_s_100_npus_mobilenet_v2": {"goal": SOLVE_GOAL_S, "got": results["networks"]["mobilenet_v2"]["whole_space_solve"]["solve_s"],
                                              "met": results["networks"]["mobilenet_v2"]["whole_space_solve"]["solve_s"] <= SOLVE_GOAL_S},
            "ray_500_simulations_same_rows": {"met": results["ray"]["simulations"] >= 500 and results["ray"]["same_rows_as_local_workers"]},
        },
    })
    OUT.mkdir(exist_ok=True)
    (OUT / "codesign.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, OUT / "codesign.png")
    print(json.dumps(results["goals"], indent=2))


def plot(results: dict, path: Path) -> None:
    """Latency against area: every candidate's optimum, the presets, the co-design."""
    fig, axes = plt.subplots(1, len(results["networks"]), figsize=(6 * len(results["networks"]), 4.5))
    for ax, (net, row) in zip(axes, results["networks"].items()):
        ax.scatter([r["area_mm2"] for r in row["per_npu_optimum"]], [r["latency_ms"] for r in row["per_npu_optimum"]], s=10, c="0.6",
                   label="each candidate NPU, its optimum deployment")
        for p in row["presets_fixed_dataflow"]:
            ax.scatter(p["area_mm2"], p["latency_ms"], marker="s", label=f"{p['preset']} ({p['dataflow']})")
        c = row["codesign_at_preset_area"]
        ax.scatter(c["area_mm2"], c["latency_ms"], marker="*", s=160, c="red", label=f"co-design at the presets' area ({c['npu']})")
        e = row["equal_latency"]
        ax.scatter(e["area_mm2"], e["latency_ms"], marker="^", s=90, c="green", label=f"smallest as fast as the best preset ({e['npu']})")
        ax.axvline(results["preset_area_mm2"], ls=":", c="k")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(f"core area (mm^2, {results['node_nm']} nm, modelled)"), ax.set_ylabel("latency (ms, ZigZag)")
        ax.set_title(f"{net}, int8"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

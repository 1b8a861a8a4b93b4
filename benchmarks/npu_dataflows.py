"""Per-layer best dataflow vs fixed NVDLA-like and Eyeriss-like dataflows, on the same NPU (ZigZag).

    python benchmarks/npu_dataflows.py        # -> benchmarks/out/npu_dataflows.{json,png}

MobileNetV2 and ResNet-18 (224x224, int8) on the shared mobile-NPU hardware of the presets (16x16 PEs,
500 MHz): every layer is simulated under every dataflow, then three deployments are compared:
FlowOptimizer's best dataflow per layer (by latency), NVDLA's weight-stationary dataflow everywhere
(`ws:stationary`, as `npu-nvdla`) and Eyeriss's row-stationary one everywhere (`rs:stationary`, as
`npu-eyeriss`). Totals are whole networks (pools and adds from the roofline model, the same in all
three). Goal: >= 2.0x lower latency than each fixed dataflow. `all_macs_busy_bound_ms` is the
network with every MAC busy every cycle (pools and adds as modelled): no dataflow can beat it, so
`largest_possible_speedup` caps what any per-layer choice could gain over a fixed one. For transparency the JSON also gives
the fixed designs' spatial unrolling with a searched temporal mapping (`fixed_spatial_only`).
Simulations are cached in a database under benchmarks/out/, so a second run only reads it.
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

from deploy.deployment import evaluate, uniform_choices  # noqa: E402
from deploy.flow_optimizer import best_dataflows  # noqa: E402
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings  # noqa: E402
from envs.make import make_cost_table, resolve_network  # noqa: E402
from envs.space import Choice, NpuDataflow  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
NETWORKS = ("mobilenet_v2", "resnet18")
QUANT = "int8"
FIXED = {"NVDLA-like (ws:stationary)": NpuDataflow("ws", "stationary"), "Eyeriss-like (rs:stationary)": NpuDataflow("rs", "stationary")}
SPATIAL_ONLY = {"NVDLA-like spatial, searched temporal (ws:auto)": NpuDataflow("ws", "auto"),
                "Eyeriss-like spatial, searched temporal (rs:auto)": NpuDataflow("rs", "auto")}
"""Not the goal's baselines: the fixed designs' spatial unrolling with ZigZag's temporal mapping search,
to show how much of the gain is the spatial choice and how much the temporal mapping."""
GOAL = 2.0


def compare(net_name: str, settings: SimulationSettings) -> dict:
    """Latency and energy of the three deployments of one network."""
    network = resolve_network(net_name)
    costs = make_cost_table("npu-eyeriss", OUT / "npu_dataflows.sqlite", settings=settings)
    start = time.perf_counter()
    before = costs.backend.simulations
    rows = best_dataflows(network, costs, QUANT, "latency")
    seconds = time.perf_counter() - start
    best = evaluate(network, {r.layer: r.choice for r in rows}, costs)
    result = {
        "layers": len(rows),
        "unique_layer_shapes": len({network[r.layer].signature for r in rows}),
        "simulations_run": costs.backend.simulations - before,
        "seconds": round(seconds, 1),
        "per_layer_best": {"latency_ms": best.latency_ms, "energy_mj": best.energy_mj,
                           "dataflows": {r.layer: r.choice.dataflow.key for r in rows}},
        "fixed": {},
        "fixed_spatial_only": {},
    }
    for group, flows in (("fixed", FIXED), ("fixed_spatial_only", SPATIAL_ONLY)):
        for label, flow in flows.items():
            fixed = evaluate(network, uniform_choices(network, lambda layer, f=flow: Choice(QUANT, "direct", f)), costs)
            result[group][label] = {
                "latency_ms": fixed.latency_ms,
                "energy_mj": fixed.energy_mj,
                "speedup_of_per_layer_best": fixed.latency_ms / best.latency_ms,
                "energy_ratio": fixed.energy_mj / best.energy_mj,
            }
    # no dataflow beats every MAC busy every cycle: the bound of any per-layer choice
    spec = costs.backend.spec
    fixed_parts = best.latency_ms - sum(r.cost.latency_ms for r in rows)  # pools, adds: the same for all
    bound = fixed_parts + spec.latency_ms(sum(network[r.layer].macs for r in rows) / (spec.rows * spec.cols))
    result["all_macs_busy_bound_ms"] = bound
    for group in ("fixed", "fixed_spatial_only"):
        for f in result[group].values():
            f["largest_possible_speedup"] = f["latency_ms"] / bound
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.choice.dataflow.key] = counts.get(r.choice.dataflow.key, 0) + 1
    result["per_layer_best"]["dataflow_counts"] = counts
    costs.backend.close()
    return result


def plot(results: dict, path: Path) -> None:
    labels = ["per-layer best", *FIXED]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.26
    x = np.arange(len(results))
    for ax, key, unit in ((axes[0], "latency_ms", "latency (ms)"), (axes[1], "energy_mj", "energy (mJ)")):
        for i, label in enumerate(labels):
            values = [r["per_layer_best"][key] if i == 0 else r["fixed"][label][key] for r in results.values()]
            bars = ax.bar(x + (i - 1) * width, values, width, label=label)
            if key == "latency_ms" and i > 0:
                for bar, r in zip(bars, results.values()):
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                            f"{r['fixed'][label]['speedup_of_per_layer_best']:.1f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, list(results))
        ax.set_ylabel(unit)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Same 16x16 int8 NPU: per-layer best dataflow vs fixed dataflows (ZigZag {ZIGZAG_VERSION})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    settings = SimulationSettings()
    results = {net: compare(net, settings) for net in NETWORKS}
    doc = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "zigzag": ZIGZAG_VERSION,
        "settings": {"lpf_limit": settings.lpf_limit, "optimize": settings.optimize},
        "quant": QUANT,
        "goal_speedup": GOAL,
        "networks": results,
        "goal_met": all(f["speedup_of_per_layer_best"] >= GOAL for r in results.values() for f in r["fixed"].values()),
    }
    (OUT / "npu_dataflows.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, OUT / "npu_dataflows.png")
    for net, r in results.items():
        ratios = ", ".join(f"{label}: {f['speedup_of_per_layer_best']:.2f}x"
                           for label, f in {**r["fixed"], **r["fixed_spatial_only"]}.items())
        print(f"{net}: per-layer best {r['per_layer_best']['latency_ms']:.3f} ms ({r['seconds']} s, "
              f"{r['simulations_run']} simulations); {ratios}")


if __name__ == "__main__":
    main()

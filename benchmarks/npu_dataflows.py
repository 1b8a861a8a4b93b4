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
`array_sweep` repeats the comparison on the same NPU with other PE arrays (8x8, Eyeriss's own 12x14,
the presets' 16x16, 32x32), because what per-layer dataflows gain depends on how well a fixed
unrolling fills the array; the goal is judged on the presets' array only. Simulations are cached in
a database under benchmarks/out/, so a second run only reads it.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deploy.deployment import evaluate, uniform_choices  # noqa: E402
from deploy.flow_optimizer import best_dataflows  # noqa: E402
from deploy.npu_hardware import FIXED_DATAFLOW_DESIGNS, load_preset, write_npu_spec  # noqa: E402
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings  # noqa: E402
from envs.make import make_cost_table, resolve_network  # noqa: E402
from envs.space import Choice, NpuDataflow  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
NETWORKS = ("mobilenet_v2", "resnet18")
QUANT = "int8"
FIXED = {f"{design} ({spec.dataflow})": spec.fixed_dataflow
         for design, spec in ((design, load_preset(preset)) for design, preset in FIXED_DATAFLOW_DESIGNS.items())}
"""The goal's baselines: the dataflows of the presets that carry them, labelled with them."""
SPATIAL_ONLY = {"NVDLA-like spatial, searched temporal (ws:auto)": NpuDataflow("ws", "auto"),
                "Eyeriss-like spatial, searched temporal (rs:auto)": NpuDataflow("rs", "auto")}
"""Not the goal's baselines: the fixed designs' spatial unrolling with ZigZag's temporal mapping search,
to show how much of the gain is the spatial choice and how much the temporal mapping."""
GOAL = 2.0
PRESET = "npu-eyeriss"
ARRAYS = ((8, 8), (12, 14), (16, 16), (32, 32))
"""PE arrays (rows, cols) of the sweep: 12x14 is Eyeriss's own, 16x16 the presets', 32x32 the 1024 MACs
of a larger mobile NPU core; buffers, bandwidths and clock stay the presets'."""


def compare(net_name: str, settings: SimulationSettings, target: str = PRESET) -> dict:
    """Latency and energy of the three deployments of one network on the NPU `target` (a name or YAML file)."""
    network = resolve_network(net_name)
    costs = make_cost_table(target, OUT / "npu_dataflows.sqlite", settings=settings)
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


def array_sweep(settings: SimulationSettings, presets: dict[str, dict]) -> list[dict]:
    """Per-layer best's speedup over each fixed dataflow, and its all-MACs-busy cap, on every array of `ARRAYS`
    (`presets`: `compare`'s results on the presets' array, reused for it)."""
    preset = load_preset(PRESET)
    sweep = []
    with tempfile.TemporaryDirectory() as folder:
        for rows, cols in ARRAYS:
            same = (rows, cols) == (preset.rows, preset.cols)
            results = presets
            if not same:
                spec = replace(preset, name=f"npu-{rows}x{cols}", rows=rows, cols=cols,
                               description=f"{PRESET}'s hardware with a {rows}x{cols} PE array")
                path = write_npu_spec(spec, Path(folder) / f"{spec.name}.yaml")
                results = {net: compare(net, settings, str(path)) for net in NETWORKS}
            networks = {}
            for net in NETWORKS:
                fixed = results[net]["fixed"]
                networks[net] = {label: {"speedup_of_per_layer_best": f["speedup_of_per_layer_best"],
                                         "largest_possible_speedup": f["largest_possible_speedup"]} for label, f in fixed.items()}
            met = all(f["speedup_of_per_layer_best"] >= GOAL for r in networks.values() for f in r.values())
            sweep.append({"array": f"{rows}x{cols}", "macs": rows * cols, "presets_array": same,
                          "networks": networks, "goal_met": met})
    return sweep


def plot(results: dict, sweep: list[dict], path: Path) -> None:
    labels = ["per-layer best", *FIXED]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
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
    ax = axes[2]
    macs = [s["macs"] for s in sweep]
    for i, (net, label) in enumerate((net, label) for net in NETWORKS for label in FIXED):
        ax.plot(macs, [s["networks"][net][label]["speedup_of_per_layer_best"] for s in sweep], "o-", color=f"C{i}",
                label=f"{net} vs {label.split(' (')[0]}")
        ax.plot(macs, [s["networks"][net][label]["largest_possible_speedup"] for s in sweep], ":", color=f"C{i}")
    ax.axhline(GOAL, color="k", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(macs, [s["array"] for s in sweep])
    ax.set_yscale("log", base=2)
    ticks = [1, 1.5, 2, 3, 4, 6, 8]
    ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xlabel("PE array (same buffers, bandwidth, clock)")
    ax.set_ylabel("per-layer best's speedup (dotted: cap)")
    ax.legend(fontsize=7)
    fig.suptitle(f"Same int8 NPU: per-layer best dataflow vs fixed dataflows (ZigZag {ZIGZAG_VERSION}); "
                 f"bars on the presets' 16x16 array")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    settings = SimulationSettings()
    results = {net: compare(net, settings) for net in NETWORKS}
    sweep = array_sweep(settings, results)
    doc = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "zigzag": ZIGZAG_VERSION,
        "settings": {"lpf_limit": settings.lpf_limit, "optimize": settings.optimize},
        "quant": QUANT,
        "goal_speedup": GOAL,
        "networks": results,
        "goal_met": all(f["speedup_of_per_layer_best"] >= GOAL for r in results.values() for f in r["fixed"].values()),
        "array_sweep": sweep,
    }
    (OUT / "npu_dataflows.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, sweep, OUT / "npu_dataflows.png")
    for net, r in results.items():
        ratios = ", ".join(f"{label}: {f['speedup_of_per_layer_best']:.2f}x"
                           for label, f in {**r["fixed"], **r["fixed_spatial_only"]}.items())
        print(f"{net}: per-layer best {r['per_layer_best']['latency_ms']:.3f} ms ({r['seconds']} s, "
              f"{r['simulations_run']} simulations); {ratios}")
    for s in sweep:
        print(f"{s['array']}: " + "; ".join(f"{net} vs {label.split(' (')[0]} {f['speedup_of_per_layer_best']:.2f}x "
                                            f"(cap {f['largest_possible_speedup']:.2f}x)"
                                            for net, r in s["networks"].items() for label, f in r.items()))


if __name__ == "__main__":
    main()

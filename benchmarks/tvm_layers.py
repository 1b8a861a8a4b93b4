"""Benchmark: MobileNetV2's layer kernels on this machine, untuned TVM vs DeployGym's search vs MetaSchedule.

For each unique layer signature of MobileNetV2 (224x224, batch 1), fp32, one thread everywhere:
- untuned: the layer's default TE compute (topi conv2d / depthwise / dense, then DeployGym's bias and
  activation epilogue) compiled by `tvm.compile` with no schedule;
- search: DeployGym's model-guided search with a budget of N kernels: the N fp32 one-thread choices the
  host's latency model ranks fastest, measured through `make_cost_table("host", db)` (every kernel is
  checked against torch, then timed), the best measured kept; "random" does the same with N seeded
  random choices, to show what the model's ranking is worth;
- MetaSchedule: `tune_tir` on the same default PrimFunc with `max_trials_global = N` (see
  `deploy.metaschedule`), the best record compiled.
All winners are timed by the same DeployGym `Measurer` (same worker, settings and thread count); the
untuned and MetaSchedule kernels are also checked against torch. It also reports seconds per cold
compile+check+measure and cost-table hits per second on a warm database.

Writes benchmarks/out/tvm_layers.json and tvm_layers.png.

    python benchmarks/tvm_layers.py [--layers K] [--budget N] [--skip-metaschedule] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tvm
from tqdm import tqdm
from tvm import te, topi

from deploy.cost import CostUnavailable
from deploy.cost_table import CostTable
from deploy.cpu_model import CpuLatencyModel
from deploy.metaschedule import tune
from deploy.targets import get_target
from deploy.tvm_kernels import TOLERANCE, kernel_spec, random_arrays
from deploy.tvm_measure import Measurer
from deploy.tvm_schedules import Operands
from envs.make import make_cost_table
from envs.network import Layer, Network, Op
from envs.space import Choice, CpuSchedule
from envs.zoo import get_network

OUT = Path(__file__).resolve().parent / "out"
NETWORK = "mobilenet_v2"
THREADS = 1
QUANT = "fp32"
REFERENCE = Choice(QUANT, "direct", CpuSchedule(threads=THREADS))
"""Any plain fp32 choice: its kernel signature (data, weight, bias, output) is the default compute's."""
METHODS = ("untuned", "search", "random", "metaschedule")
COLD_GOAL_S = 0.5
SPEEDUP_GOAL = 3.0
SCOPE = ("sums over the searchable layers benchmarked, each unique signature counted as often as it occurs in "
         "the network; non-searchable layers (pooling, adds) and layout/precision conversions are excluded")


# ---- which layers ---------------------------------------------------------------------------------
def unique_layers(network: Network) -> list[tuple[Layer, int]]:
    """The searchable layers deduplicated by signature (first occurrence), with their multiplicity."""
    seen: dict[str, list[Layer]] = {}
    for layer in network.searchable_layers:
        seen.setdefault(layer.signature, []).append(layer)
    return [(same[0], len(same)) for same in seen.values()]


def layer_kind(layer: Layer) -> str:
    """conv, dense, depthwise s1/s2, or pointwise expand/project."""
    if layer.op is Op.DEPTHWISE:
        return f"depthwise s{layer.stride[0]}"
    if layer.op is Op.POINTWISE:
        return "expand" if layer.out_shape[0] > layer.in_shape[0] else "project"
    return layer.op.value


def _distance(a: Layer, b: Layer) -> float:
    """Another kind is far; within a kind, the distance in resolution and width (log2)."""
    kind = 100.0 if layer_kind(a) != layer_kind(b) else 0.0
    return kind + abs(math.log2(a.in_shape[1] / b.in_shape[1])) + 0.5 * abs(math.log2(a.out_shape[0] / b.out_shape[0]))


def representative(layers: list[tuple[Layer, int]], k: int) -> list[tuple[Layer, int]]:
    """`k` layers spread over the network: the first, the last before the classifier and the classifier,
    then greedily the one farthest from those picked (every kind first, then resolutions and widths)."""
    last_conv = max(i for i, (layer, _) in enumerate(layers) if layer.op is not Op.DENSE)
    picked = list(dict.fromkeys([0, last_conv, len(layers) - 1]))[:k]
    while len(picked) < min(k, len(layers)):
        rest = [i for i in range(len(layers)) if i not in picked]
        picked.append(max(rest, key=lambda i: min(_distance(layers[i][0], layers[j][0]) for j in picked)))
    return [layers[i] for i in sorted(picked)]


# ---- the untuned default compute ------------------------------------------------------------------
def default_module(layer: Layer) -> tvm.IRModule:
    """The layer's default TE compute (topi) with its bias and activation, unscheduled: "main"(data, weight, bias, output)."""
    spec = kernel_spec(layer, REFERENCE)
    data, weight, bias = (te.placeholder(t.shape, t.dtype, name=t.name) for t in spec.inputs)
    if layer.op is Op.DENSE:
        acc = topi.reshape(topi.nn.dense(topi.reshape(data, (1, layer.in_elements)), weight), spec.output.shape)
    elif layer.op is Op.DEPTHWISE:
        acc = topi.nn.depthwise_conv2d_nchw(data, weight, layer.stride, layer.padding, 1)
    elif layer.groups > 1:
        acc = topi.nn.group_conv2d_nchw(data, weight, layer.stride, layer.padding, 1, layer.groups)
    else:
        acc = topi.nn.conv2d_nchw(data, weight, layer.stride, layer.padding, 1)
    ops = Operands(data, weight, bias, None)
    out = te.compute(spec.output.shape, lambda n, o, y, x: ops.epilogue(QUANT, layer.activation, acc[n, o, y, x], o), name="out")
    return tvm.IRModule({"main": te.create_prim_func([data, weight, bias, out])})


def check_module(layer: Layer, module: tvm.IRModule, target: dict[str, Any]) -> None:
    """Compile here, run once on random data, compare with torch (AssertionError if off)."""
    spec = kernel_spec(layer, REFERENCE)
    inputs, expected = random_arrays(spec, np.random.default_rng(0))
    dev = tvm.cpu()
    result = tvm.runtime.empty(spec.output.shape, spec.output.dtype, dev)
    tvm.compile(module, target=tvm.target.Target(target))["main"](*(tvm.runtime.tensor(x, dev) for x in inputs), result)
    np.testing.assert_allclose(result.numpy(), expected, *TOLERANCE[QUANT], err_msg=f"layer {layer.name}")


def timed_module(measurer: Measurer, layer: Layer, module: tvm.IRModule, provenance: str) -> dict[str, Any]:
    """Check `module` against torch, then time it with the Measurer on `THREADS` threads."""
    start = time.perf_counter()
    check_module(layer, module, measurer.target)
    spec = kernel_spec(layer, REFERENCE)
    result = measurer.measure(module, [(t.shape, t.dtype) for t in (*spec.inputs, spec.output)], THREADS)
    return {
        "latency_ms": result.median_ms, "spread_ms": result.spread_ms, "provenance": provenance,
        "checked_against_torch": True, "wall_s": time.perf_counter() - start,
    }


# ---- the three methods --------------------------------------------------------------------------
def run_untuned(costs: CostTable, layer: Layer) -> dict[str, Any]:
    """TVM's plain build of the default compute."""
    return timed_module(costs.backend.measurer, layer, default_module(layer), costs.backend.provenance)


def ranked_candidates(costs: CostTable, model: CpuLatencyModel, layer: Layer) -> tuple[list[Choice], dict[str, float]]:
    """The layer's valid fp32 one-thread choices, fastest first by the latency model, and its estimates (ms)."""
    choices = [c for c in costs.space.valid_choices(layer) if c.quant == QUANT and c.dataflow.threads == THREADS]
    latency = [c.latency_ms for c in model.layer_costs(layer, choices)]
    return [choices[i] for i in np.argsort(latency, kind="stable")], {c.key: ms for c, ms in zip(choices, latency)}


def measure_choices(costs: CostTable, layer: Layer, choices: list[Choice], estimates: dict[str, float]) -> dict[str, Any]:
    """Measure each choice through the cost table (check + compile + time, or a hit); keep the best."""
    start = time.perf_counter()
    seconds, measured, failures = [], {}, []
    for choice in choices:
        t = time.perf_counter()
        try:
            measured[choice.key] = costs.cost(layer, choice)
        except CostUnavailable as err:  # a failed compile or run, or a kernel that disagrees with torch
            failures.append(str(err))
        seconds.append(time.perf_counter() - t)
    best = min(measured, key=lambda key: measured[key].latency_ms)
    return {
        "latency_ms": measured[best].latency_ms, "spread_ms": measured[best].spread_ms,
        "provenance": measured[best].provenance, "choice": best, "model_estimate_ms": estimates[best],
        "candidates": len(estimates), "failures": failures, "seconds_per_call": seconds,
        "measured_ms": {key: cost.latency_ms for key, cost in measured.items()}, "wall_s": time.perf_counter() - start,
    }


def run_search(costs: CostTable, model: CpuLatencyModel, layer: Layer, budget: int) -> dict[str, Any]:
    """DeployGym's model-guided search: the `budget` choices the model ranks fastest, measured."""
    start = time.perf_counter()
    ranked, estimates = ranked_candidates(costs, model, layer)
    return {**measure_choices(costs, layer, ranked[:budget], estimates), "wall_s": time.perf_counter() - start}


def run_random(costs: CostTable, model: CpuLatencyModel, layer: Layer, budget: int, rng: np.random.Generator) -> dict[str, Any]:
    """`budget` seeded random choices, measured (choices the search measured already are cache hits)."""
    start = time.perf_counter()
    choices, estimates = ranked_candidates(costs, model, layer)
    picks = rng.choice(len(choices), size=min(budget, len(choices)), replace=False)
    return {**measure_choices(costs, layer, [choices[i] for i in picks], estimates), "wall_s": time.perf_counter() - start}


def run_metaschedule(costs: CostTable, layer: Layer, budget: int, seed: int) -> dict[str, Any]:
    """`tune_tir` on the default PrimFunc with `budget` trials, its best record checked and timed like the others."""
    start = time.perf_counter()
    try:
        tuned = tune(default_module(layer)["main"], costs.backend.target, budget, seed=seed)
        if tuned.module is None:
            raise RuntimeError(f"no valid tuning record among {tuned.records}")
        timed = timed_module(costs.backend.measurer, layer, tuned.module, costs.backend.provenance)
    except Exception as err:  # MetaSchedule raises assorted TVM errors; the benchmark goes on without this number
        return {"latency_ms": None, "error": f"{type(err).__name__}: {err}", "wall_s": time.perf_counter() - start}
    return {**timed, "records": tuned.records, "tune_s": tuned.seconds, "wall_s": time.perf_counter() - start}


def warm_hits(db_path: Path, measured: list[tuple[Layer, str]]) -> dict[str, Any]:
    """Re-query every measured (layer, choice) from a fresh cost table over the same SQLite file."""
    costs = make_cost_table("host", db_path)
    start = time.perf_counter()
    for layer, key in measured:
        costs.cost(layer, Choice.from_key(key))
    seconds = time.perf_counter() - start
    return {"hits": len(measured), "seconds": seconds, "hits_per_second": len(measured) / seconds,
            "backend_calls": costs.backend_calls}


# ---- the report -----------------------------------------------------------------------------------
def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method sums weighted by multiplicity (None where a layer has no number), and wall times."""
    out: dict[str, Any] = {"scope": SCOPE, "layers": sum(r["count"] for r in rows), "macs": sum(r["macs"] * r["count"] for r in rows)}
    for method in METHODS:
        done = [r for r in rows if method in r]
        known = bool(done) and all(r[method]["latency_ms"] is not None for r in done)
        out[f"{method}_ms"] = sum(r[method]["latency_ms"] * r["count"] for r in done) if known else None
        out[f"{method}_wall_s"] = sum(r[method]["wall_s"] for r in done) if done else None
    return out


def goals(total: dict[str, Any], cold: dict[str, Any]) -> dict[str, Any]:
    """Each goal with its value and whether it is met (None when not measured)."""
    speedup = total["untuned_ms"] / total["search_ms"]
    ms = total["metaschedule_ms"]
    return {
        "search_speedup_over_untuned": {"value": speedup, "goal": f">= {SPEEDUP_GOAL}x", "met": speedup >= SPEEDUP_GOAL},
        "search_vs_metaschedule_latency": {
            "value": None if ms is None else total["search_ms"] / ms, "goal": "<= 1 (search not slower at equal budget)",
            "met": None if ms is None else total["search_ms"] <= ms,
        },
        "seconds_per_cold_measurement": {"value": cold["median_s"], "goal": f"<= {COLD_GOAL_S} s", "met": cold["median_s"] <= COLD_GOAL_S},
    }


def label(row: dict[str, Any]) -> str:
    """Short plot label: name, kind, input resolution, multiplicity."""
    times = f", x{row['count']}" if row["count"] > 1 else ""
    return f"{row['name']} ({row['kind']} {row['resolution']}{times})"


def plot(rows: list[dict[str, Any]], total: dict[str, Any], budget: int, path: Path) -> None:
    """Per-layer grouped bars (log scale) above, the weighted totals (horizontal bars) below."""
    shown = [m for m in METHODS if total[f"{m}_ms"] is not None]
    colours = {"untuned": "#999999", "search": "#1f77b4", "random": "#aec7e8", "metaschedule": "#ff7f0e"}
    names = {"untuned": "untuned TVM", "search": f"DeployGym model-guided search ({budget} measured)",
             "random": f"random choices ({budget} measured)", "metaschedule": f"MetaSchedule ({budget} trials)"}
    fig, (ax, axt) = plt.subplots(
        2, 1, figsize=(max(8.0, 0.45 * len(rows) + 3), 9), gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 0.8 / len(shown)
    x = np.arange(len(rows))
    for j, method in enumerate(shown):
        ax.bar(x + (j - (len(shown) - 1) / 2) * width, [r[method]["latency_ms"] for r in rows], width, color=colours[method], label=names[method])
    ax.set_yscale("log")
    ax.set_xticks(x, [label(r) for r in rows], rotation=55, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("latency per layer (ms, log scale)")
    ax.set_title(f"{NETWORK} (224x224, batch 1) layer kernels on this machine: fp32, 1 thread")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    sums = [total[f"{m}_ms"] for m in shown]
    axt.barh(range(len(shown)), sums, color=[colours[m] for m in shown])
    for i, (method, value) in enumerate(zip(shown, sums)):
        speedup = "" if method == "untuned" else f"  ({total['untuned_ms'] / value:.1f}x faster than untuned)"
        axt.text(value, i, f"  {value:.2f} ms{speedup}", va="center", fontsize=8)
    axt.set_yticks(range(len(shown)), [names[m] for m in shown], fontsize=8)
    axt.invert_yaxis()
    axt.set_xlim(0, max(sums) * 1.35)
    axt.set_xlabel("sum over the layers benchmarked, by multiplicity (ms)")
    axt.set_title(f"totals: {total['layers']} searchable layers (pooling, adds and conversions excluded)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(result: dict[str, Any]) -> str:
    """One screen: per-layer table, totals, speeds, goals."""
    def ms(entry: dict[str, Any] | None) -> str:
        return "-" if not entry or entry.get("latency_ms") is None else f"{entry['latency_ms']:.3f}"

    lines = [f"{'layer':12s} {'kind':12s} {'res':>4s} {'n':>2s} {'MMAC':>6s} {'untuned':>9s} {'search':>8s} {'random':>8s} {'MetaSch':>8s}  search choice"]
    for r in result["layers"]:
        lines.append(f"{r['name']:12s} {r['kind']:12s} {r['resolution']:>4d} {r['count']:>2d} {r['macs'] / 1e6:6.1f} "
                     f"{ms(r['untuned']):>9s} {ms(r['search']):>8s} {ms(r['random']):>8s} {ms(r.get('metaschedule')):>8s}  {r['search']['choice']}")
    t = result["totals"]
    lines.append(f"totals (ms, {t['layers']} layers): " + ", ".join(
        f"{m} {t[f'{m}_ms']:.2f}" for m in METHODS if t[f"{m}_ms"] is not None))
    lines.append("wall (s): " + ", ".join(f"{m} {t[f'{m}_wall_s']:.0f}" for m in METHODS if t[f"{m}_wall_s"] is not None)
                 + f", run {result['wall_s']:.0f}")
    cold, warm = result["cold_measurement"], result["warm_database"]
    lines.append(f"cold compile+check+measure: median {cold['median_s']:.2f} s over {cold['n']}; "
                 f"warm database: {warm['hits_per_second']:,.0f} hits/s ({warm['hits']} hits, {warm['backend_calls']} backend calls)")
    for name, goal in result["goals"].items():
        value = "-" if goal["value"] is None else f"{goal['value']:.2f}"
        lines.append(f"goal {name}: {value} (goal {goal['goal']}): {'met' if goal['met'] else 'NOT met' if goal['met'] is False else 'not measured'}")
    return "\n".join(lines)


def benchmark_layer(
    costs: CostTable, model: CpuLatencyModel, layer: Layer, count: int, args: argparse.Namespace,
    rng: np.random.Generator, bar: tqdm,
) -> dict[str, Any]:
    """Every method on one layer, one progress step each."""
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "untuned": lambda: run_untuned(costs, layer),
        "search": lambda: run_search(costs, model, layer, args.budget),
        "random": lambda: run_random(costs, model, layer, args.budget, rng),
    }
    if not args.skip_metaschedule:
        runs["metaschedule"] = lambda: run_metaschedule(costs, layer, args.budget, args.seed)
    row: dict[str, Any] = {
        "name": layer.name, "signature": layer.signature, "kind": layer_kind(layer), "resolution": layer.in_shape[1],
        "count": count, "macs": layer.macs, "activation": layer.activation,
    }
    for method, run in runs.items():
        bar.set_description(f"{layer.name}: {method}")
        row[method] = run()
        bar.update()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="K representative layers (default: every unique signature)")
    parser.add_argument("--budget", type=int, default=32, help="kernels measured per layer by each search (default 32)")
    parser.add_argument("--skip-metaschedule", action="store_true", help="leave MetaSchedule out (it is slow here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of MetaSchedule")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before any kernel runs here or a worker starts
    start = time.perf_counter()
    network = get_network(NETWORK)
    everything = unique_layers(network)
    layers = everything if args.layers is None else representative(everything, args.layers)
    rng = np.random.default_rng(args.seed)
    target = get_target("host")
    model = target.model()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "measurements.sqlite"
        costs = make_cost_table("host", db_path)
        with tqdm(total=len(layers) * (len(METHODS) - args.skip_metaschedule), unit="step") as bar:
            rows = [benchmark_layer(costs, model, layer, count, args, rng, bar) for layer, count in layers]
        costs.backend.close()
        measured = [(layer, key) for (layer, _), row in zip(layers, rows) for key in {**row["search"]["measured_ms"], **row["random"]["measured_ms"]}]
        warm = warm_hits(db_path, measured)
    cold_s = [s for r in rows for s in r["search"]["seconds_per_call"]]
    cold = {"median_s": float(np.median(cold_s)), "p90_s": float(np.percentile(cold_s, 90)), "max_s": max(cold_s), "n": len(cold_s),
            "what": "one CostTable.cost() of the search on a cold database: numerical check against torch, "
                    "compile and time, in DeployGym's (already started) worker processes"}
    total = totals(rows)
    result = {
        "network": NETWORK, "input": list(network.input_shape), "batch": 1, "precision": QUANT, "threads": THREADS,
        "machine": {"hostname": socket.gethostname(), "platform": platform.platform(), "cores": os.cpu_count()},
        "tvm": tvm.__version__, "target": target.tvm_target,
        "settings": {
            "budget": args.budget, "layers": "all unique signatures" if args.layers is None else f"{args.layers} representative",
            "unique_signatures_in_network": len(everything), "seed": args.seed, "metaschedule": not args.skip_metaschedule,
            "measure": asdict(costs.backend.settings),
            "search_model": model.provenance,
            "metaschedule_setup": "tune_tir defaults (evolutionary, XGBoost, LocalBuilder with a worker per core, "
                                  "LocalRunner number=3 repeat=1 min_repeat_ms=100), 1 tuning core, GPU intrinsics stubbed",
        },
        "layers": rows, "totals": total, "cold_measurement": cold, "warm_database": warm,
        "goals": goals(total, cold), "wall_s": time.perf_counter() - start,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tvm_layers.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, total, args.budget, OUT / "tvm_layers.png")
    print(summary(result))


if __name__ == "__main__":
    main()

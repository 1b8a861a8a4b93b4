"""FlowOptimizer: print and export the best dataflow of every layer of a network on a target.

    python experiments/flow_optimizer.py --target npu-eyeriss --net mobilenet_v2
    python experiments/flow_optimizer.py --target npu-nvdla --net resnet18 --criterion edp --quant fp16
    python experiments/flow_optimizer.py --target my_npu.yaml --out best.json

Every dataflow of every layer is simulated with ZigZag (in parallel, through the measurement
database in --logdir, so a second run simulates nothing). The table compares each layer's best
dataflow with the target's own fixed one; the JSON export is a deployment of the network with the
best dataflows, which `estimate_latency.py --deployment` and the environment's `replay` read back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli import run_main
from deploy.deployment import evaluate, uniform_choices
from deploy.export import deployment_dict, write_json
from deploy.cost_table import CostTable
from deploy.flow_optimizer import CRITERIA, LayerDataflow, best_dataflows
from deploy.npu_backend import ZigZagBackend
from deploy.targets import NpuTarget, get_target
from deploy.zigzag_sim import SimulationSettings
from envs.make import make_cost_table, resolve_network
from envs.network import Network
from envs.space import Choice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="npu-eyeriss", help="registered target or an NPU's YAML file")
    parser.add_argument("--net", default="mobilenet_v2", help="built-in network")
    parser.add_argument("--criterion", default="latency", choices=CRITERIA, help="what the best dataflow minimises")
    parser.add_argument("--quant", help="precision of every layer (default: the target's first, int8 on the presets)")
    parser.add_argument("--logdir", default="runs", help="folder of the shared measurement database")
    parser.add_argument("--out", help="deployment JSON to write (default: <logdir>/flow-<net>-<target>-<criterion>.json)")
    parser.add_argument("--zigzag-lpf", type=int, default=SimulationSettings().lpf_limit, help="ZigZag search depth")
    args = parser.parse_args(argv)

    target = get_target(args.target)
    quant = args.quant or target.quants[0]
    if quant not in target.quants:
        raise ValueError(f"--quant {quant!r}: {target.name} computes in {target.quants}")
    settings = SimulationSettings(lpf_limit=args.zigzag_lpf, optimize="EDP" if args.criterion == "edp" else args.criterion)
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    costs = make_cost_table(args.target, Path(args.logdir) / "measurements.sqlite",
                            settings=settings if isinstance(target, NpuTarget) else None)
    network = resolve_network(args.net)
    rows = best_dataflows(network, costs, quant, args.criterion)

    print(f"{'layer':14s} {'best dataflow':22s} {'ms':>8s} {'uJ':>8s} {'util':>5s} | {'fixed ' + costs.space.baseline_choice().dataflow.key:>26s} {'ms':>8s}  gain")
    for row in rows:
        layer = network[row.layer]
        util = costs.backend.utilization(layer, row.cost) if isinstance(costs.backend, ZigZagBackend) else float("nan")
        energy = f"{row.cost.energy_mj * 1e3:8.1f}" if row.cost.energy_mj is not None else f"{'-':>8s}"
        print(f"{row.layer:14s} {row.choice.dataflow.key:22s} {row.cost.latency_ms:8.3f} {energy} {util:5.2f} | "
              f"{'':26s} {row.fixed_cost.latency_ms:8.3f} {row.fixed_cost.latency_ms / row.cost.latency_ms:5.2f}x")
    choices = {row.layer: row.choice for row in rows}
    best = evaluate(network, choices, costs)
    fixed_choice = Choice(quant, "direct", costs.space.baseline_choice().dataflow)
    fixed = evaluate(network, uniform_choices(network, lambda layer: fixed_choice), costs)
    print(f"network: {best.latency_ms:.3f} ms with the best dataflow per layer vs {fixed.latency_ms:.3f} ms with "
          f"{fixed_choice.dataflow.key} everywhere ({fixed.latency_ms / best.latency_ms:.2f}x); "
          f"energy {_mj(best.energy_mj)} vs {_mj(fixed.energy_mj)}; {', '.join(best.provenance)}")
    out = Path(args.out or Path(args.logdir) / f"flow-{network.name}-{target.name}-{args.criterion}.json")
    doc = deployment_dict(network, args.target, costs.fingerprint, choices, best, None,
                          "not measured (dataflows do not change accuracy)", fixed, None, fixed_choice)
    doc["flow_optimizer"] = {"criterion": args.criterion, "quant": quant, "layers": [_row(row, network, costs) for row in rows]}
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


def _row(row: LayerDataflow, network: Network, costs: CostTable) -> dict:
    """One layer of the export: its best dataflow's figures (cycles and utilisation on a simulator)."""
    figures = {"layer": row.layer, "dataflow": row.choice.dataflow.to_dict(), "latency_ms": row.cost.latency_ms,
               "energy_mj": row.cost.energy_mj, "provenance": row.cost.provenance,
               "fixed_dataflow_latency_ms": row.fixed_cost.latency_ms}
    backend = costs.backend
    if isinstance(backend, ZigZagBackend):
        figures.update(backend.figures(network[row.layer], row.cost))
    return figures


def _mj(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} mJ"


if __name__ == "__main__":
    run_main(main)

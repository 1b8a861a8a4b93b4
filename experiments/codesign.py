"""Co-design an NPU and a network's deployment on it by integer programming, under an area (and power) budget.

    python experiments/codesign.py --net mobilenet_v2 --area-mm2 12
    python experiments/codesign.py --net resnet18 --area-mm2 8 --power-mw 400 --objective energy
    python experiments/codesign.py --net mobilenet_v2 --area-mm2 12 --precisions int8 --out runs/codesign

The candidates are `deploy.npu_design_space`'s NPUs (array, register files, global buffer, precisions)
that fit in the area, each priced by the silicon model; every layer of the network is simulated with
ZigZag on each of them under every dataflow and admitted precision (in local worker processes, or as
tasks on a Ray cluster with --ray; through the measurement database in --logdir: a second run
simulates nothing), then one integer program (`deploy.codesign`) picks the
NPU and each layer's precision and dataflow. Writes the NPU's YAML (a `--target` for every other
command, with its simulations already in the database), the deployment JSON and `codesign.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploy.cli import run_main
from deploy.codesign import OBJECTIVES, Budget, Design, feasible_options, hardware_options, solve
from deploy.codesign_pareto import FRONT_POINTS, ArchProblem, front
from deploy.db import MeasurementDB
from deploy.deployment import evaluate, uniform_choices
from deploy.export import deployment_dict, write_json
from deploy.npu_design_space import CLOCK_MHZ, DRAM_BITS_PER_CYCLE, NODE_NM, design_space
from deploy.npu_hardware import NPU_PRECISIONS, write_npu_spec
from deploy.ray_pool import RayPool
from deploy.silicon import SiliconModel
from deploy.workers import WorkerPool
from deploy.zigzag_sim import SimulationSettings
from envs.accuracy_predictor import fit_predictor
from envs.make import resolve_network
from envs.network import Network
from envs.space import Choice
from envs.subnet_accuracy import supernet_oracle_for
from envs.supernet_training import DEFAULT_SUPERNET_EPOCHS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="mobilenet_v2", help="built-in network")
    parser.add_argument("--area-mm2", type=float, required=True, help=f"core area budget at {NODE_NM} nm")
    parser.add_argument("--power-mw", type=float, help="average power budget of one inference (default: none)")
    parser.add_argument("--objective", default="latency", choices=OBJECTIVES)
    parser.add_argument("--precisions", default=",".join(NPU_PRECISIONS), help="precisions layers may take (comma-separated)")
    parser.add_argument("--clock-mhz", type=float, default=CLOCK_MHZ)
    parser.add_argument("--dram-bits-per-cycle", type=int, default=DRAM_BITS_PER_CYCLE, help="the board's DRAM bandwidth")
    parser.add_argument("--logdir", default="runs", help="folder of the shared measurement database")
    parser.add_argument("--out", help="folder for the design (default: <logdir>/codesign-<net>-<area>mm2-<objective>)")
    parser.add_argument("--zigzag-lpf", type=int, default=SimulationSettings().lpf_limit, help="ZigZag search depth")
    parser.add_argument("--workers", type=int, help="simulation processes (default: this machine's cores)")
    parser.add_argument("--ray", metavar="ADDRESS", help="run the simulations as tasks on the Ray cluster at ADDRESS (HOST:PORT of its head)")
    parser.add_argument("--pareto", action="store_true",
                        help="also the accuracy-latency front over architecture, precisions, dataflows and the shortlisted NPUs")
    parser.add_argument("--shortlist", type=int, default=4, help="NPUs of the front: the fastest within the area for the original network")
    parser.add_argument("--points", type=int, default=FRONT_POINTS, help="accuracy bounds the front is swept over")
    parser.add_argument("--predictor-samples", type=int, default=300, help="sub-networks the accuracy predictor is fitted on")
    parser.add_argument("--supernet-epochs", type=int, default=DEFAULT_SUPERNET_EPOCHS, help="training of the accuracy oracle's supernet")
    args = parser.parse_args(argv)

    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    unknown = sorted(set(precisions) - set(NPU_PRECISIONS))
    if unknown or not precisions:
        raise ValueError(f"--precisions {args.precisions!r}: NPU precisions are {NPU_PRECISIONS}")
    if args.area_mm2 <= 0 or (args.power_mw is not None and args.power_mw <= 0):
        raise ValueError("--area-mm2 and --power-mw must be positive")
    network = resolve_network(args.net)
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    db = MeasurementDB(Path(args.logdir) / "measurements.sqlite")
    settings = SimulationSettings(lpf_limit=args.zigzag_lpf)
    candidates = design_space(SiliconModel(), clock_mhz=args.clock_mhz, dram_bits_per_cycle=args.dram_bits_per_cycle)
    pool = RayPool(args.ray) if args.ray else WorkerPool("zigzag", args.workers)
    try:
        options = hardware_options(candidates, precisions, db, settings, pool)
        budget = Budget(args.area_mm2, args.power_mw)
        start = time.perf_counter()
        design = solve(network, options, budget, args.objective)
        print(f"{len(options)} candidate NPUs, {sum(o.candidate.area_mm2 <= args.area_mm2 for o in options)} within "
              f"{args.area_mm2:g} mm^2; simulated and solved in {time.perf_counter() - start:.1f} s")
        report(design)
        out = Path(args.out or Path(args.logdir) / f"codesign-{network.name}-{args.area_mm2:g}mm2-{args.objective}")
        export(design, network, out, db, budget)
        if args.pareto:
            objective = "latency" if args.objective == "latency" else "energy"
            points = pareto(network, options, budget, objective, args)
            write_pareto(points, out, objective)
    finally:
        pool.close()
    print(f"wrote {out}/")
    return 0


def pareto(network: Network, options: list, budget: Budget, objective: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The accuracy-`objective` front over the network's architecture space on the shortlisted NPUs,
    each point's accuracy predicted (the program's) and measured (the supernet oracle's)."""
    def optimum(option) -> float:
        design = solve(network, [option], budget, objective)
        return design.cost.latency_ms if objective == "latency" else design.energy_mj

    shortlist = sorted(feasible_options(options, budget), key=optimum)[: args.shortlist]
    print(f"accuracy front on {', '.join(o.candidate.name for o in shortlist)}: supernet oracle and predictor ...")
    oracle = supernet_oracle_for(network, epochs=args.supernet_epochs)
    predictor = fit_predictor(oracle, samples=args.predictor_samples)
    print(f"  predictor on {predictor.report.held_out} held-out sub-networks: Spearman {predictor.report.spearman:.2f}, "
          f"mean error {100 * predictor.report.mean_abs_error:.2f} points")
    problem = ArchProblem(oracle.space, predictor, network.input_shape[1], network.layers[-1].out_shape[0])
    points = []
    for d in front(problem, shortlist, budget, args.points, objective):
        precisions = [d.choices[l.name].quant for l in d.network.searchable_layers]
        measured = oracle.accuracy(precisions, d.blocks)
        points.append({"npu": d.option.candidate.name, "area_mm2": d.option.candidate.area_mm2,
                       "architecture": list(oracle.space.labels(d.blocks)), "latency_ms": d.cost.latency_ms,
                       "energy_mj": d.energy_mj, "predicted_accuracy": d.predicted_accuracy, "measured_accuracy": measured,
                       "int8_layers": precisions.count("int8"), "layers": len(precisions), "gap": d.gap, "solve_s": d.solve_s,
                       "choices": {name: c.key for name, c in d.choices.items()}})
        print(f"  {d.option.candidate.name:28s} {d.cost.latency_ms:8.4f} ms {d.energy_mj:8.4f} mJ  predicted "
              f"{100 * d.predicted_accuracy:5.2f}%  measured {100 * measured:5.2f}%  int8 {precisions.count('int8')}/{len(precisions)}")
    return points


def write_pareto(points: list[dict[str, Any]], out: Path, objective: str) -> None:
    """pareto.json and pareto.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "pareto.json").write_text(json.dumps({"objective": objective, "points": points}, indent=2) + "\n")
    key = "latency_ms" if objective == "latency" else "energy_mj"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for npu in sorted({p["npu"] for p in points}):
        mine = [p for p in points if p["npu"] == npu]
        ax.plot([p[key] for p in mine], [100 * p["predicted_accuracy"] for p in mine], "o", label=f"{npu} (predicted)")
        ax.plot([p[key] for p in mine], [100 * p["measured_accuracy"] for p in mine], "x", c="k")
    ax.set_xlabel(f"{objective} ({key.split('_')[-1]}, ZigZag)"), ax.set_ylabel("top-1 on the proxy's held-out images (%); x: measured")
    ax.legend(fontsize=7), fig.tight_layout(), fig.savefig(out / "pareto.png", dpi=120)


def report(design: Design) -> None:
    """Print the NPU, its area and what the deployment costs on it."""
    h = design.option.candidate
    quants = Counter(c.quant for c in design.choices.values())
    flows = Counter(c.dataflow.key for c in design.choices.values())
    print(f"NPU {h.name}: {h.spec.description}")
    print(f"  area {h.area_mm2:.3f} mm^2 ({', '.join(f'{k} {v:.3f}' for k, v in h.area.to_dict().items() if k != 'total')}); "
          f"SRAM leakage {h.leakage_mw:.1f} mW")
    print(f"  {design.objective}-optimal deployment: {design.cost.latency_ms:.4f} ms, {design.energy_mj:.4f} mJ, "
          f"{design.power_mw:.1f} mW average; precisions {dict(quants)}; dataflows {dict(flows.most_common())}")
    print(f"  integer program: {design.variables} variables, {design.constraints} constraints, optimality gap "
          f"{100 * design.gap:.4f}%, {design.solve_s:.2f} s ({design.solver})")


def export(design: Design, network: Network, out: Path, db: MeasurementDB, budget: Budget) -> dict[str, Any]:
    """The NPU as YAML (its fixed dataflow the one most layers take; its simulations and the choices
    ZigZag could not map copied to its own fingerprint in `db`), the deployment JSON, and
    `codesign.json`; returns the last."""
    from deploy.targets import NpuTarget

    out.mkdir(parents=True, exist_ok=True)
    h = design.option.candidate
    dataflow = Counter(c.dataflow.key for c in design.choices.values()).most_common(1)[0][0]
    spec = replace(h.spec, dataflow=dataflow)
    yaml_path = write_npu_spec(spec, out / f"{spec.name}.yaml")
    table = design.option.table
    target = NpuTarget(spec)
    own = target.backend(settings=table.backend.settings).fingerprint()
    db.register_target(own, {**target.describe(), "provenance": table.backend.provenance})
    for layer in {l.signature: l for l in network.searchable_layers}.values():
        rows = [(layer.signature, key, cost) for key, cost in db.get_layer(table.fingerprint, layer.signature).items()
                if Choice.from_key(key).quant in spec.precisions]
        db.put_many(own, rows)
        for key, reason in db.rejections(table.fingerprint, layer.signature).items():
            if Choice.from_key(key).quant in spec.precisions:
                db.put_rejection(own, layer.signature, key, reason)
    baseline_choice = Choice(spec.precisions[0], "direct", spec.fixed_dataflow)
    baseline = evaluate(network, uniform_choices(network, lambda layer: baseline_choice), table)
    doc = deployment_dict(network, str(yaml_path), own, design.choices, design.cost, None,
                          "not measured (co-design by integer program)", baseline, None, baseline_choice)
    write_json(out / "deployment.json", doc)
    summary = {
        "npu": spec.to_dict(),
        "yaml": str(yaml_path),
        "area_mm2": h.area.to_dict(),
        "leakage_mw": h.leakage_mw,
        "budget": {"area_mm2": budget.area_mm2, "power_mw": budget.power_mw},
        "objective": design.objective,
        "latency_ms": design.cost.latency_ms,
        "energy_mj": design.energy_mj,
        "power_mw": design.power_mw,
        "provenance": list(design.cost.provenance) + ["modelled:silicon (deploy/data/npu_silicon.yaml)"],
        "solver": {"optimality_gap": design.gap, "solve_s": design.solve_s, "variables": design.variables,
                   "constraints": design.constraints, **design.solver},
    }
    (out / "codesign.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    run_main(main)

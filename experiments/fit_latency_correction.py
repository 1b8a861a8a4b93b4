"""Measure sampled deployments as whole networks and fit the layer-adaptive latency correction.

    python experiments/fit_latency_correction.py --target host --nets mobilenet_v2 resnet18 --samples 30
    python experiments/fit_latency_correction.py --target cortex-a72 --rpc BOARD:9090 --nets mobilenet_v2 resnet18
    python experiments/run_ppo.py --target host --net mobilenet_v2 --latency-correction runs/corrections/host.json

For every network: `--samples` deployments spread over the space (`deploy.whole_network.sample_deployments`),
the deployment the cost table's exact optimum picks, and any `--deployments` files (searches' picks)
are priced layer by layer by the target's cost table (each kernel measured on the device), then, one
deployment at a time, its kernels are timed again and its network built as one library and timed right
after (`deploy.whole_network.measure_paired`): the sum of layers and the whole network come from the
same minutes, so a machine whose speed drifts during the run does not bias the fit. How far the
kernels drifted from the table's timings is reported (`kernel_drift_percent`). A correction is
fitted to all of them (`deploy.whole_network`), and checked leave-one-network-out: fitted without a network, how well it
predicts that network's measurements (median absolute error and Spearman, before and after).

Writes the correction file (`--out`, default `<logdir>/corrections/<target>.json`) with the fit's
errors and provenance; the measurements and the correction also go to `<logdir>/measurements.sqlite`
(a rerun measures nothing twice).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deploy.cli import run_main


def _drift_summary(drifts: list[float | None]) -> dict[str, float | int] | None:
    """How far the kernels' times right before each network were from the table's (median per sample):
    the median and largest over the samples; None when no sample was re-timed."""
    import numpy as np

    known = [d for d in drifts if d is not None]
    if not known:
        return None
    return {"median": float(np.median(known)), "max": float(np.max(known)), "samples": len(known)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host", help="a CPU target: host, or cortex-a72 with --rpc/--rpc-tracker")
    parser.add_argument("--nets", nargs="+", default=["mobilenet_v2", "resnet18"], help="networks to sample (at least two)")
    parser.add_argument("--samples", type=int, default=30, help="sampled deployments per network")
    parser.add_argument("--deployments", nargs="*", default=[], help="deployment.json files to measure too (searches' picks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each whole network")
    parser.add_argument("--logdir", default="runs", help="where the measurement database is")
    parser.add_argument("--out", help="correction file (default: <logdir>/corrections/<target>.json)")
    parser.add_argument("--rpc", metavar="HOST:PORT")
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT")
    parser.add_argument("--rpc-key", default="")
    args = parser.parse_args(argv)
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, not {args.samples}")
    start = time.perf_counter()

    from deploy.cost import CostUnavailable
    from deploy.export import load_deployment, write_json
    from deploy.latency_correction import correction_document
    from deploy.optimum import best_choices
    from deploy.targets import CpuTarget, get_target
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.validation import with_threads_at_most
    from deploy.whole_network import (NetworkSample, cross_validated, fit_network_correction,
                                      leave_one_network_out, measured_whole_networks, prediction_errors,
                                      priced_as_measured, sample_deployments)
    from envs.make import make_cost_table, resolve_network

    tgt = get_target(args.target)
    if not isinstance(tgt, CpuTarget):
        raise ValueError(f"target {args.target!r} is not a CPU: whole networks are measured on CPU targets")
    device = Device.parse(args.rpc, args.rpc_tracker, args.rpc_key)
    if device.kind == "local" and not getattr(tgt, "runs_here", False):
        raise ValueError(f"{args.target} runs on its board: give --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY")
    db_path = Path(args.logdir) / "measurements.sqlite"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    table = make_cost_table(args.target, db_path, device=None if device.kind == "local" else device)
    settings = MeasureSettings(repeats=args.repeats, min_repeat_ms=0)
    picks = [load_deployment(Path(f)) for f in args.deployments]
    samples: list[NetworkSample] = []
    drifts: list[float | None] = []
    for name in args.nets:
        network = resolve_network(name)
        plans = [("sampled", c) for c in sample_deployments(network, table.space, args.samples, args.seed)]
        plans.append(("optimum", best_choices(network, table)))
        plans += [("pick", with_threads_at_most(p.choices, tgt.spec.cores)) for p in picks
                  if p.network.fingerprint == network.fingerprint]
        table.prefetch([(network[n], c) for _, choices in plans for n, c in choices.items()])
        for i, (kind, choices) in enumerate(plans):
            try:
                (measured,) = measured_whole_networks([(network, choices)], table, args.target, device, settings)
                priced = priced_as_measured(network, choices, table, measured)
            except CostUnavailable as err:  # a kernel that does not build or run here: the deployment cannot be either
                print(f"{name} {kind} {i + 1}/{len(plans)}: skipped ({err})")
                continue
            samples.append(NetworkSample(network, choices, priced, measured["median_ms"]))
            drifts.append(measured.get("kernel_drift_percent"))
            print(f"{name} {kind} {i + 1}/{len(plans)}: whole network {measured['median_ms']:.2f} ms, "
                  f"sum of layers {priced.latency_ms:.2f} ms (kernels re-timed just before: "
                  f"{measured.get('kernel_drift_percent', float('nan')):.1f}% from the table's)", flush=True)
    fitted_to = f"whole networks measured on {device.name}: {', '.join(args.nets)}, {len(samples)} deployments"
    correction = fit_network_correction(samples, fitted_to)
    report = {
        "device": device.name,
        "networks": args.nets,
        "samples": len(samples),
        "kernel_drift_percent": _drift_summary(drifts),
        "in_sample": {"uncorrected": prediction_errors(samples, None), "corrected": prediction_errors(samples, correction)},
        "held_out_deployments": cross_validated(samples, fitted_to),
        "leave_one_network_out": leave_one_network_out(samples, fitted_to) if len(args.nets) > 1 else None,
        "command": "python experiments/fit_latency_correction.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": round(time.perf_counter() - start),
    }
    document = correction_document(correction, tgt.name, table.fingerprint, **report)
    out = Path(args.out) if args.out else Path(args.logdir) / "corrections" / f"{tgt.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, document)
    table.db.put_correction(str(out), table.fingerprint, document)
    cv = report["held_out_deployments"]
    print(f"held-out deployments ({cv['folds']}-fold): median error {cv['uncorrected']['median_abs_error_percent']:.1f}% -> "
          f"{cv['corrected']['median_abs_error_percent']:.1f}%, Spearman {cv['uncorrected']['spearman']:.2f} -> {cv['corrected']['spearman']:.2f}")
    for name, errors in (report["leave_one_network_out"] or {}).items():
        before, after = errors["uncorrected"], errors["corrected"]
        print(f"{name} held out: median error {before['median_abs_error_percent']:.1f}% -> {after['median_abs_error_percent']:.1f}%, "
              f"Spearman {before['spearman']:.2f} -> {after['spearman']:.2f}")
    print(f"wrote {out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    run_main(main)

"""Validate a run's deployment: rebuild it, re-measure the whole network and its layers, re-check accuracy.

    python experiments/validate.py runs/<run> --target host             # on this machine
    python experiments/validate.py runs/<run> --rpc 192.168.1.20:9090   # on a board running tvm.exec.rpc_server
    python experiments/validate.py runs/<run> --rpc-tracker HOST:PORT --rpc-key rasp4

Writes `<run>/validation.json`: the claimed latency and accuracy (with their provenance) beside the
measured whole-network latency (TVM time_evaluator on the built module: median and IQR of --repeats),
the sum of the deployment's layers measured on the same device, the accuracy re-measured through the
built module, and the drift of each in percent (accuracy in points). Fails with a one-line error when
the artifact's files, network, target or TVM version do not match. Measured kernels go to the
measurement database beside the run (`<logdir>/measurements.sqlite`), so a rerun measures nothing twice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from deploy.cli import run_main
from deploy.export import load_deployment, write_json

ACCURACY_TOLERANCE_POINTS = 0.3
"""Largest difference between the claimed and the re-measured accuracy that validates."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder written by run_ppo.py")
    parser.add_argument("--target", help="host or cortex-a72 (default: the deployment's)")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="a board's tvm.exec.rpc_server")
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="a TVM RPC tracker")
    parser.add_argument("--rpc-key", default="", help="the board's key at the tracker")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of the whole network")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="longest a board may take to answer")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run = Path(args.run)
    if not (run / "deployment.json").exists():
        raise ValueError(f"{run}: not a run folder (no deployment.json)")
    record = load_deployment(run / "deployment.json")

    from deploy.artifact import LIBRARY, artifact_folder, build_artifact, verified_manifest, weights_for
    from deploy.targets import get_target
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.validation import check_against_oracle, layer_sum, time_library, with_threads_at_most
    from envs.accuracy import oracle_for
    from envs.make import make_cost_table

    target = args.target or record.target
    tgt = get_target(target)
    device = Device.parse(args.rpc, args.rpc_tracker, args.rpc_key)
    if device.kind == "local" and not getattr(tgt, "runs_here", False):
        raise ValueError(
            f"a {target} deployment runs on its board: give --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY, "
            f"or --target host to validate it built for this machine"
        )
    oracle = oracle_for(record.network)
    numerics, weights = weights_for(record.network, oracle)
    folder = artifact_folder(run, record, target)
    build_artifact(record, run / "deployment.json", target, folder, numerics, weights)
    manifest = verified_manifest(folder)
    if manifest["network_fingerprint"] != record.network.fingerprint or manifest["target"] != target:
        raise ValueError(f"{folder}: built for {manifest['network']} on {manifest['target']}, not this run's deployment")
    settings = MeasureSettings(repeats=args.repeats, min_repeat_ms=0, run_timeout_s=args.timeout_s)
    whole = time_library(folder / LIBRARY, tuple(manifest["input"]["shape"]), manifest["threads"], device, settings)
    choices = with_threads_at_most(record.choices, tgt.spec.cores)
    table = make_cost_table(target, run.parent / "measurements.sqlite", device=None if device.kind == "local" else device)
    layers = layer_sum(record.network, choices, table)
    check = check_against_oracle(choices, oracle)
    claimed = record.totals
    accuracy_drift = None if claimed.get("accuracy") is None else 100 * (check["artifact_accuracy"] - claimed["accuracy"])
    report = {
        "deployment": str(run / "deployment.json"),
        "target": target,
        "device": device.name,
        "tvm_version": manifest["tvm_version"],
        "artifact": str(folder),
        "claimed": {
            "target": record.target,
            "latency_ms": claimed["latency_ms"],
            "latency_provenance": claimed["latency_provenance"],
            "accuracy": claimed.get("accuracy"),
            "accuracy_provenance": claimed.get("accuracy_provenance"),
        },
        "measured": {"whole_network": whole, "sum_of_layers": layers, "accuracy": check},
        "drift_percent": {
            "whole_network_vs_claimed": 100 * (whole["median_ms"] / claimed["latency_ms"] - 1),
            "whole_network_vs_sum_of_layers": 100 * (whole["median_ms"] / layers["latency_ms"] - 1),
        },
        "accuracy_drift_points": accuracy_drift,
        "accuracy_validated": accuracy_drift is not None and abs(accuracy_drift) <= ACCURACY_TOLERANCE_POINTS
        and check["top1_agreement"] >= 0.99,
        "note": None if target == record.target else (
            f"the claim is for {record.target}; this validates the deployment built for {target}, so the latency "
            f"drift against the claim compares two machines"
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(run / "validation.json", report)
    print(f"whole network on {device.name}: {whole['median_ms']:.2f} ms (IQR {whole['iqr_ms'][0]:.2f}-{whole['iqr_ms'][1]:.2f}, "
          f"{whole['repeats']} runs, {whole['threads']} threads); sum of its layers measured there {layers['latency_ms']:.2f} ms "
          f"({report['drift_percent']['whole_network_vs_sum_of_layers']:+.1f}%); claimed {claimed['latency_ms']:.2f} ms on {record.target}")
    print(f"accuracy of the built module {check['artifact_accuracy']:.4f} vs {claimed.get('accuracy')} claimed "
          f"(top-1 agreement {check['top1_agreement']:.4f} on {check['images']} images): "
          f"{'validated' if report['accuracy_validated'] else 'NOT validated'}")
    print(f"wrote {run / 'validation.json'} in {report['seconds']:.0f} s")
    return 0 if report["accuracy_validated"] else 1


if __name__ == "__main__":
    run_main(main)

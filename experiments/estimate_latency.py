"""Estimate a network's latency on a target, per layer, without searching.

    python experiments/estimate_latency.py --net resnet18                      # best per-layer deployment
    python experiments/estimate_latency.py --net mobilenet_v1 --quant int8 --threads 4
    python experiments/estimate_latency.py --deployment runs/<run>/deployment.json

The numbers come from the target's latency model, or from the measurement database beside a run
(`<logdir>/measurements.sqlite`, or `--db`) where it measured or simulated a layer; the output says which.
A deployment is priced on its own target unless `--target` names another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli import run_main
from deploy.db import MeasurementDB
from deploy.estimate import estimate_latency
from deploy.export import load_deployment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="mobilenet_v2", help="built-in network")
    parser.add_argument("--target", help="registered target (default: the deployment's, else cortex-a72)")
    parser.add_argument("--db", help="measurement database to read measured or simulated layers from")
    parser.add_argument("--deployment", help="a deployment.json written by run_ppo.py (its network and choices)")
    parser.add_argument("--quant", help="best deployment restricted to this precision on every layer")
    parser.add_argument("--threads", type=int, help="best deployment restricted to this thread count")
    args = parser.parse_args(argv)
    db_path = Path(args.db) if args.db else None
    if args.deployment:
        record = load_deployment(args.deployment)
        beside = Path(args.deployment).resolve().parent.parent / "measurements.sqlite"
        db_path = db_path or (beside if beside.exists() else None)
        db = MeasurementDB(db_path) if db_path else None
        estimate = estimate_latency(record.network, args.target or record.target, record.choices, db=db)
    else:
        db = MeasurementDB(db_path) if db_path else None
        estimate = estimate_latency(args.net, args.target or "cortex-a72", quant=args.quant, threads=args.threads, db=db)
    rows = [(layer.name, layer.choice.key if layer.choice else "-", layer.latency_ms, layer.conversion_ms)
            for layer in estimate.layers]
    name_width = max(len("layer"), *(len(r[0]) for r in rows))
    choice_width = max(len("choice"), *(len(r[1]) for r in rows))
    print(f"{'layer':{name_width}s} {'choice':{choice_width}s} {'ms':>8s} {'conv ms':>8s}")
    for name, choice, ms, conversion_ms in rows:
        print(f"{name:{name_width}s} {choice:{choice_width}s} {ms:8.3f} {conversion_ms:8.3f}")
    print(estimate.summary())
    return 0


if __name__ == "__main__":
    run_main(main)

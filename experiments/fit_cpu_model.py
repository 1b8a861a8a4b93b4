"""Fit a CPU target's latency model to per-layer measurements from a board (or this machine).

For owners of a board: run a search with measured rewards first, so the database holds TVM-measured
layers, e.g. `python experiments/run_ppo.py --target cortex-a72 --rpc-tracker HOST:9190 --rpc-key pi4`,
then

    python experiments/fit_cpu_model.py --target cortex-a72 --db runs/measurements.sqlite

fits the model's efficiencies to those layers. A third of the measured layer shapes is held out of the
fit and reported, so you see how the model predicts layers it was not fitted on. The result is a
calibration file (`--out`); copy it over `deploy/data/cortex_a72.json` to make it the model the
environment uses when no board is attached.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np

from deploy.calibration import LAYER_FITTED, fit_to_layers, layer_error_summary, measured_samples
from deploy.cli import run_main
from deploy.db import MeasurementDB
from deploy.targets import get_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cortex-a72", help="registered CPU target whose model is fitted")
    parser.add_argument("--db", default="runs/measurements.sqlite", help="measurement database")
    parser.add_argument("--out", help="calibration file to write (default runs/<target>-fitted.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    args = parser.parse_args(argv)
    target = get_target(args.target)
    with MeasurementDB(args.db) as db:
        measured = [fp for fp in db.fingerprints_of(args.target) if fp.startswith("measured:")]
        if not measured:
            raise ValueError(f"{args.db} has no measurements of {args.target}; run a search with --rpc first")
        fingerprint = max(measured, key=db.count)
        samples = measured_samples(db, fingerprint)
    shapes = sorted({s.layer.signature for s in samples})
    if len(shapes) < 3:
        raise ValueError(f"only {len(shapes)} measured layer shapes under {fingerprint}; need at least 3")
    rng = np.random.default_rng(args.seed)
    held_out = set(rng.choice(shapes, size=max(1, len(shapes) // 3), replace=False))
    train = [s for s in samples if s.layer.signature not in held_out]
    test = [s for s in samples if s.layer.signature in held_out]
    model = target.model()
    before = {"train": layer_error_summary(model, train), "held_out": layer_error_summary(model, test)}
    fitted = model.with_params(fit_to_layers(model, train), "fitted")
    after = {"train": layer_error_summary(fitted, train), "held_out": layer_error_summary(fitted, test)}
    record = {
        "params": asdict(fitted.params),
        "fitted": list(LAYER_FITTED),
        "measurements": {"fingerprint": fingerprint, "layers": len(samples), "held_out_shapes": sorted(held_out)},
        "before": before,
        "after": after,
    }
    out = args.out or f"runs/{args.target}-fitted.json"
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"fitted {target.name} model to {len(train)} measured layers ({fingerprint})")
    for name, summary in (("before", before), ("after", after)):
        print(f"{name:7s} train {summary['train']}\n        held out {summary['held_out']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)

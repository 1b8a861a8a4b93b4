"""Fit the Cortex-A72 latency model to reference whole-network latencies and write its calibration.

Fits the parameters listed in `deploy.calibration.FITTED` on all references, then refits once per
reference without it (leave-one-out) to report how well the model predicts a figure it has not seen.
Writes `deploy/data/<name>.json`, which the `cortex-a72` target loads.

    python experiments/calibrate_cpu_model.py            # the public Raspberry Pi 4 figures
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from deploy.calibration import PI4_REFERENCES, calibration_record, fit, predict, report
from deploy.cpu_model import CpuLatencyModel, CpuModelParams
from deploy.targets import get_target
from envs import zoo


@dataclass
class Args:
    """Command-line arguments."""

    target: str = "cortex-a72"
    """registered CPU target whose model is calibrated"""
    out: Path = Path(__file__).resolve().parents[1] / "deploy" / "data" / "cortex_a72.json"
    """calibration file to write"""
    max_evals: int = 250
    """model evaluations for the full fit (leave-one-out refits use a third)"""
    skip_loo: bool = False
    """skip the leave-one-out refits"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(Args()).items():
        kind = type(default)
        if kind is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true")
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = Args(**vars(parser.parse_args()))
    target = get_target(args.target)
    space = target.search_space()
    start = CpuModelParams(eta=0.4, dram_core_gbps=2.0, l2_bytes_per_cycle=6.0, l2_contention=0.5, sync_us=30.0, allcore_clock=0.5, dram_fraction=0.8)
    if args.out.is_file():  # refit from the current calibration
        start = replace(start, **json.loads(args.out.read_text())["params"])
    model = CpuLatencyModel(target.spec, start, "fitting")
    networks = {r.network: zoo.get_network(r.network) for r in PI4_REFERENCES}
    refs = list(PI4_REFERENCES)

    bar = tqdm(total=args.max_evals, desc="fit (all references)")
    params = fit(model, space, networks, refs, max_evals=args.max_evals, progress=lambda i, v: (bar.update(1), bar.set_postfix(l4=f"{v:.4f}")))
    bar.close()
    fitted = model.with_params(params, "fitted")
    rows = report(fitted, space, networks, refs)
    for row in rows:
        print(f"{row['reference']:24s} public {row['public_ms']:7.1f} ms  modelled {row['modelled_ms']:7.1f} ms  {row['error']:+.1%}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**calibration_record(params, refs, None), "in_sample": rows}, indent=2) + "\n")
    loo = None
    if not args.skip_loo:
        loo = []
        for i, held_out in enumerate(tqdm(refs, desc="leave-one-out")):
            rest = refs[:i] + refs[i + 1 :]
            p = fit(model, space, networks, rest, start=params, max_evals=args.max_evals // 3)
            predicted = predict(model.with_params(p, "loo"), space, networks, [held_out])[0]
            loo.append({"reference": held_out.label, "public_ms": held_out.latency_ms, "predicted_ms": round(predicted, 2), "error": round(predicted / held_out.latency_ms - 1, 4)})
            print(f"LOO {held_out.label:20s} public {held_out.latency_ms:7.1f} ms  predicted {predicted:7.1f} ms  {predicted / held_out.latency_ms - 1:+.1%}", flush=True)
    record = calibration_record(params, refs, loo)
    record["in_sample"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

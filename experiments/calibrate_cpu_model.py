"""Fit the Cortex-A72 latency model to reference whole-network latencies and write its calibration.

The fork/join cost of a parallel phase is measured, not fitted (`deploy.fork_join`): on the board when
one is given (`--rpc` / `--rpc-tracker`), else on this machine and converted to the board's clock (an
estimate; the file says which). Then the parameters listed in `deploy.calibration.FITTED` are fitted on
all references, and refitted once per reference without it (leave-one-out) to report how well the
model predicts a figure it has not seen. Writes `deploy/data/<name>.json`, which the `cortex-a72`
target loads.

    python experiments/calibrate_cpu_model.py                        # public Raspberry Pi 4 figures
    python experiments/calibrate_cpu_model.py --rpc PI4:9090         # fork/join measured on the board
"""

from __future__ import annotations

import argparse
import math
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from deploy.cli import run_main
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
    rpc: str = ""
    """HOST:PORT of the board's RPC server, to measure its fork/join"""
    rpc_tracker: str = ""
    """HOST:PORT of an RPC tracker (with --rpc-key), to measure the board's fork/join"""
    rpc_key: str = ""
    """the board's key at the tracker"""
    fork_join_us: float = math.nan
    """fork/join cost per thread beyond the first, in us, instead of measuring it (default: measured)"""


def fork_join_record(args: Args, target) -> dict:
    """The fork/join cost the model is given: `--fork-join-us`, measured on the board over RPC, or
    measured here on as many threads as this machine has (at most the board's cores) and converted
    to the board's clock."""
    from deploy.fork_join import measure_fork_join
    from deploy.tvm_measure import Device, MeasureSettings, Measurer

    if not math.isnan(args.fork_join_us):
        if args.fork_join_us < 0:
            raise ValueError(f"--fork-join-us {args.fork_join_us:g}: a fork/join cost is at least 0 us")
        return {"us_per_thread": args.fork_join_us, "source": "given (--fork-join-us)"}
    device = Device.parse(args.rpc or None, args.rpc_tracker or None, args.rpc_key or None)
    here = get_target("host")
    tvm_target, threads = (target.tvm_target, target.spec.cores) if device.kind != "local" else \
        (here.tvm_target, min(here.spec.cores, target.spec.cores))
    if threads < 2:
        raise ValueError("this machine has one core, so no fork/join to time: measure it on the board "
                         "(--rpc HOST:PORT) or give --fork-join-us")
    with Measurer(tvm_target, device, MeasureSettings(repeats=15, min_repeat_ms=20)) as measurer:
        measured = measure_fork_join(measurer, threads)
    per_thread = round(measured.us_per_thread, 3)
    record = {"measured": asdict(measured), "measured_us_per_thread": per_thread}
    if device.kind != "local":
        return {**record, "us_per_thread": per_thread, "source": f"measured on {device.name}"}
    ghz = here.spec.freq_ghz
    return {**record, "us_per_thread": round(measured.at_clock(ghz, target.spec.freq_ghz), 3),
            "source": f"estimated: measured on {device.name} ({threads} threads, {ghz:.2f} GHz), "
                      f"converted to {target.spec.freq_ghz} GHz in the cycles it took"}


def main() -> int:
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
    start = CpuModelParams(eta=0.4, dram_core_gbps=2.0, l2_bytes_per_cycle=6.0, l2_contention=0.5, allcore_clock=0.5, dram_fraction=0.8)
    if args.out.is_file():  # refit from the current calibration
        known = set(CpuModelParams.names())
        start = replace(start, **{k: v for k, v in json.loads(args.out.read_text())["params"].items() if k in known})
    fork_join = fork_join_record(args, target)
    print(f"fork/join {fork_join['us_per_thread']:.2f} us per thread beyond the first ({fork_join['source']})", flush=True)
    start = replace(start, fork_join_us=fork_join["us_per_thread"])
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
    args.out.write_text(json.dumps({**calibration_record(params, refs, None), "in_sample": rows, "fork_join": fork_join}, indent=2) + "\n")
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
    record["in_sample"], record["fork_join"] = rows, fork_join
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)

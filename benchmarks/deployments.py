"""The searched deployment built as one artifact, against the field's usual ways of running the same network.

Measured side by side in one run on this machine (`host`), MobileNetV2 and ResNet-18 at 224x224,
batch 1, on 1 and 2 threads (every layer on that many):
- `searched`: the deployment search on measured kernels (`measured_optimum`: `TUNE` random choices of
  every layer shape measured, then the exact optimum of the cost table, whose unmeasured kernels are
  the host model's estimates; its pick's kernels measured; again until the pick is measured
  throughout), built as one TVM library (`deploy.artifact`) and timed
  whole (`deploy.validation.time_library`); beside it the sum of its layers as the table prices it,
  uncorrected and with the whole-network correction fitted leave-one-network-out;
- `tvm-default`: the same fp32 network (`envs.torch_build`, batch norm folded) through
  `torch.export` -> `relax.frontend.torch.from_exported_program` -> `tvm.compile`, no tuning;
- `pytorch-eager` and `onnxruntime` (CPU provider; `pip install onnxruntime` when missing): the same
  torch module; median of `REPEATS` runs after warm-up.
Every way runs on the same seeded random image (`deploy.validation.timing_image`; ONNX Runtime ran
ResNet-18 5x faster on a zero image).
Memory: the weights and peak live activations of each built module (`deploy.build.module_memory`)
against the deployment's claimed `memory_bytes`, and the all-int8 deployment against BLAS fp32 (de
Prado et al.'s 2x claim). The whole-network correction: `experiments/fit_latency_correction.py` on
these two networks (`SAMPLES` sampled deployments each, cached in the database), its leave-one-network-
out and cross-validated errors. `validate.py` on the main job's run folder, timed, when one exists.

    python benchmarks/deployments.py      # ~1 h on 2 cores: every kernel and network timed in this run (~30 min of it tuning)

Writes benchmarks/out/deployments.json and .png, and the correction to benchmarks/out/deployments/host-correction.json;
measurements go to benchmarks/out/deployments/measurements.sqlite, started afresh each run (the last
run's is kept beside it, renamed after the time it was written): layer costs timed hours before the
whole networks are not comparable with them on a machine whose speed drifts (PyTorch eager ran 15-44%
slower here in the evening than in the morning). `--reuse-measurements` keeps them (~25 min), for a
quick look only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
WORK = OUT / "deployments"
"""The measurement database (shared with the correction's fit, not in git) and the correction file."""
NETWORKS = ("mobilenet_v2", "resnet18")
THREADS = (1, 2)
REPEATS = 20
SAMPLES = 30
"""Sampled deployments per network for the whole-network correction."""
MAX_ROUNDS = 8
"""Rounds of `measured_optimum` at most."""
TUNE = 72
"""Random `allow`ed choices measured per layer shape before `measured_optimum`'s rounds (its tuning:
ResNet-18 on 2 threads went from 24.13 ms of kernels to 18.15 with 24 a shape, 15.67 with 72)."""


def measured_optimum(network, table, allow: Callable, tune: int = TUNE, seed: int = 0) -> tuple[dict, dict[str, Any]]:
    """`tune` random `allow`ed choices of every layer shape measured, then the exact optimum of `table`
    among `allow`ed choices, its kernels measured, repeated until the optimum's kernels are all
    measured (or `MAX_ROUNDS`); the choices and what it took."""
    from deploy.optimum import best_choices

    measured_before = table.db.count(table.fingerprint)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    shapes = {layer.signature: layer for layer in network.searchable_layers}
    trials = []
    for layer in shapes.values():
        valid = [c for c in table.space.valid_choices(layer) if allow(c)]
        trials += [(layer, valid[i]) for i in rng.permutation(len(valid))[:tune]]
    table.prefetch(trials)
    for rounds in range(1, MAX_ROUNDS + 1):
        choices = best_choices(network, table, allow)
        todo = [(network[n], c) for n, c in choices.items() if c.key not in table.db.get_layer(table.fingerprint, network[n].signature)]
        if not todo:
            break
        table.prefetch(todo)
    return choices, {"tuned_per_shape": tune, "rounds": rounds, "converged": not todo,
                     "kernels_measured": table.db.count(table.fingerprint) - measured_before, "seconds": round(time.perf_counter() - start)}


def torch_module(network):
    """The fp32 network in torch, eval mode, batch norm folded."""
    from envs.torch_build import build_module, fold_batch_norm

    return fold_batch_norm(build_module(network).eval())


def time_calls(run: Callable[[], Any], repeats: int = REPEATS) -> dict[str, Any]:
    """Median and IQR in ms of `repeats` calls after 3 warm-up calls."""
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - start))
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "iqr_ms": [float(q1), float(q3)], "repeats": repeats}


def tvm_default(module, shape: tuple[int, ...], threads: int, folder: Path) -> dict[str, Any]:
    """TVM's default whole-network build of the torch module (no tuning), timed like the artifact."""
    import torch
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    from deploy.tvm_kernels import HOST_TARGET
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.validation import time_library

    library = folder / f"tvm_default-{module.network.name}.so"
    if not library.exists():
        program = torch.export.export(module, (torch.zeros(shape),))
        mod = from_exported_program(program, keep_params_as_input=False, unwrap_unit_return_tuple=True)
        tvm.compile(mod, target=tvm.target.Target(HOST_TARGET)).export_library(str(library))
    result = time_library(library, shape, threads, Device(), MeasureSettings(repeats=REPEATS // 2, min_repeat_ms=0, run_timeout_s=600))
    return {**result, "provenance": "measured:local:whole-network (tvm.compile of torch.export, untuned)"}


def pytorch_eager(module, shape: tuple[int, ...], threads: int) -> dict[str, Any]:
    """The torch module run eagerly on `threads` intra-op threads."""
    import torch

    from deploy.validation import timing_image

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.from_numpy(timing_image(shape))
        with torch.inference_mode():
            result = time_calls(lambda: module(x))
    finally:
        torch.set_num_threads(before)
    return {**result, "threads": threads, "provenance": f"measured:local:torch {torch.__version__} eager"}


def onnxruntime_cpu(module, shape: tuple[int, ...], threads: int, folder: Path) -> dict[str, Any]:
    """ONNX Runtime's CPU provider on the module exported to ONNX."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install onnxruntime)"}
    import torch

    path = folder / f"{module.network.name}.onnx"
    if not path.exists():
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    from deploy.validation import timing_image

    feed = {session.get_inputs()[0].name: timing_image(shape)}
    result = time_calls(lambda: session.run(None, feed))
    return {**result, "threads": threads, "provenance": f"measured:local:onnxruntime {ort.__version__} CPUExecutionProvider"}


def built(network, choices, table, correction, folder: Path, threads: int) -> dict[str, Any]:
    """A deployment built as one library and timed whole, beside its claimed sum and memory."""
    from deploy.artifact import SeededNumerics, compile_library
    from deploy.build import module_memory, network_module
    from deploy.deployment import evaluate
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.validation import time_library
    from deploy.whole_network import corrected_sum

    numerics = SeededNumerics(network)
    library = folder / f"{network.name}-{threads}.so"
    compile_library(network, choices, numerics, "host", library)
    whole = time_library(library, (1, *network.layers[0].in_shape), threads, Device(), MeasureSettings(repeats=REPEATS, min_repeat_ms=0))
    cost = evaluate(network, choices, table)
    memory = module_memory(network_module(network, choices, numerics))
    return {
        "whole_network": whole,
        "sum_of_layers_ms": cost.latency_ms,
        "corrected_sum_ms": None if correction is None else corrected_sum(correction, network, cost),
        "precisions": {q: sum(c.quant == q for c in choices.values()) for q in ("fp32", "fp16", "int8")},
        "memory": {**memory, "claimed_bytes": cost.memory_bytes},
        "choices": {name: c.key for name, c in choices.items()},
    }


def memory_ratio(network, space) -> dict[str, Any]:
    """Weights + peak activations of an all-int8 deployment's module (im2col, depthwise kernels where
    they apply; a schedule changes neither) against BLAS fp32's (de Prado et al.: 2x less)."""
    from deploy.artifact import SeededNumerics
    from deploy.build import module_memory, network_module

    blas = space.baseline_choice()
    int8 = {layer.name: next(c for c in space.valid_choices(layer) if c.quant == "int8" and c.algo in ("im2col", "depthwise"))
            for layer in network.searchable_layers}
    numerics = SeededNumerics(network)
    mine, theirs = (module_memory(network_module(network, c, numerics))
                    for c in (int8, {layer.name: blas for layer in network.searchable_layers}))
    return {"int8": mine, "blas_fp32": theirs, "ratio": theirs["total_bytes"] / mine["total_bytes"]}


def fit_without(fit: dict[str, Any], name: str):
    """The correction the fit report holds that was fitted without network `name`."""
    from deploy.latency_correction import LatencyCorrection

    return LatencyCorrection.from_dict(fit["leave_one_network_out"][name]["correction"])


def correction_fit(logdir: Path, runs: Path) -> dict[str, Any]:
    """Run experiments/fit_latency_correction.py on the two networks (measurements cached), with the
    main job's latest pick when there is one; its report."""
    picks = sorted(runs.glob("mobilenet_v2-cortex-a72-s*/deployment.json"), key=lambda p: p.stat().st_mtime)[-1:]
    command = [sys.executable, "experiments/fit_latency_correction.py", "--target", "host", "--nets", *NETWORKS,
               "--samples", str(SAMPLES), "--logdir", str(logdir), "--out", str(logdir / "host-correction.json"),
               "--deployments", *map(str, picks)]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads((logdir / "host-correction.json").read_text())


def validate_main_job(runs: Path) -> dict[str, Any]:
    """validate.py --target host on the newest main-job run folder, timed (None when there is none)."""
    folders = sorted(runs.glob("mobilenet_v2-cortex-a72-s0-*"), key=lambda p: p.stat().st_mtime)
    if not folders:
        return {"skipped": f"no main-job run folder in {runs} (make run)"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "experiments/validate.py", str(folders[-1]), "--target", "host"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    report = json.loads((folders[-1] / "validation.json").read_text()) if done.returncode in (0, 1) else None
    return {"run": str(folders[-1]), "exit_code": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "accuracy_validated": None if report is None else report["accuracy_validated"],
            "accuracy_drift_points": None if report is None else report["accuracy_drift_points"]}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Bars: whole-network latency of every way of running each network, per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = ("searched", "tvm-default", "pytorch-eager", "onnxruntime")
    fig, axes = plt.subplots(1, len(NETWORKS), figsize=(6 * len(NETWORKS), 4))
    for ax, name in zip(np.atleast_1d(axes), NETWORKS):
        for k, threads in enumerate(THREADS):
            row = doc["networks"][name][str(threads)]
            values = [(row[w]["whole_network"] if w == "searched" else row[w]).get("median_ms", np.nan) for w in ways]
            ax.bar(np.arange(len(ways)) + 0.4 * k, values, width=0.4, label=f"{threads} thread{'s' if threads > 1 else ''}")
        ax.set_xticks(np.arange(len(ways)) + 0.2, ways)
        ax.set_yscale("log")
        ax.set_ylabel("whole network, ms (log)")
        ax.set_title(f"{name} 224x224, batch 1, this machine")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def set_aside_measurements(db: Path) -> None:
    """Start this run's measurements afresh without losing the last run's: its database (with its WAL
    files) is renamed after the time it was last written, beside it."""
    if not db.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(db.stat().st_mtime))
    for suffix in ("", "-wal", "-shm"):
        part = db.with_name(db.name + suffix)
        if part.exists():
            part.rename(db.with_name(f"{db.stem}-{stamp}{db.suffix}{suffix}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="where the main job's run folders are (for the validate timing)")
    parser.add_argument("--reuse-measurements", action="store_true",
                        help="keep the kernels and networks an earlier run timed (quicker; not side by side with this run's)")
    args = parser.parse_args(argv)
    if not args.reuse_measurements:
        set_aside_measurements(WORK / "measurements.sqlite")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import tvm

    from deploy.whole_network import deployment_digest
    from envs.make import make_cost_table
    from envs.zoo import get_network

    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fit = correction_fit(WORK, Path(args.runs))
    lono = fit["leave_one_network_out"]
    table = make_cost_table("host", WORK / "measurements.sqlite")
    doc: dict[str, Any] = {"command": "python benchmarks/deployments.py", "machine": {"cores": os.cpu_count()},
                           "tvm": tvm.__version__, "torch": torch.__version__, "correction": fit, "networks": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in NETWORKS:
            network = get_network(name)
            held_out = fit_without(fit, name)  # the correction fitted without this network
            module = torch_module(network)
            shape = (1, *network.layers[0].in_shape)
            rows: dict[str, Any] = {}
            for threads in THREADS:
                choices, search = measured_optimum(network, table, lambda c, t=threads: c.dataflow.threads == t)
                row = {
                    "searched": {**built(network, choices, table, held_out, folder, threads), "search": search,
                                 "deployment": deployment_digest(choices)},
                    "tvm-default": tvm_default(module, shape, threads, folder),
                    "pytorch-eager": pytorch_eager(module, shape, threads),
                    "onnxruntime": onnxruntime_cpu(module, shape, threads, folder),
                }
                searched = row["searched"]["whole_network"]["median_ms"]
                row["goals"] = {
                    "speedup_vs_tvm_default": row["tvm-default"]["median_ms"] / searched,
                    "faster_than_pytorch_eager": searched < row["pytorch-eager"]["median_ms"],
                }
                rows[str(threads)] = row
                print(f"{name} {threads}T: searched {searched:.2f} ms, tvm default {row['tvm-default']['median_ms']:.2f}, "
                      f"torch {row['pytorch-eager']['median_ms']:.2f}, onnxruntime {row['onnxruntime'].get('median_ms', float('nan')):.2f}",
                      flush=True)
            rows["memory_int8_vs_blas_fp32"] = memory_ratio(network, table.space)
            doc["networks"][name] = rows
            doc["networks"][name]["leave_one_network_out"] = lono[name]
    doc["validate_main_job"] = validate_main_job(Path(args.runs))
    cv = fit["held_out_deployments"]
    doc["goals"] = {
        "searched_vs_tvm_default_at_least_2x": all(doc["networks"][n][str(t)]["goals"]["speedup_vs_tvm_default"] >= 2
                                                   for n in NETWORKS for t in THREADS),
        "searched_faster_than_pytorch_eager": all(doc["networks"][n][str(t)]["goals"]["faster_than_pytorch_eager"]
                                                  for n in NETWORKS for t in THREADS),
        "held_out_median_error_percent": {"uncorrected": cv["uncorrected"]["median_abs_error_percent"],
                                          "corrected": cv["corrected"]["median_abs_error_percent"]},
        "corrected_within_10_percent": cv["corrected"]["median_abs_error_percent"] <= 10,
        "validate_seconds": doc["validate_main_job"].get("seconds"),
    }
    doc["seconds"] = round(time.perf_counter() - started)
    (OUT / "deployments.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, OUT / "deployments.png")
    print(json.dumps(doc["goals"], indent=1))


if __name__ == "__main__":
    main()

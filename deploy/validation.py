"""Checking a built deployment: its outputs against the accuracy oracle, its whole-network latency on
a device, and the sum of its layers measured there, against what the search claimed."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deploy.deployment import evaluate
from deploy.tvm_measure import Device, MeasureSettings
from envs.space import Choice


def with_threads_at_most(choices: Mapping[str, Choice], cores: int) -> dict[str, Choice]:
    """The choices with every thread count capped at `cores` (a kernel's code does not depend on it)."""
    return {
        name: replace(c, dataflow=replace(c.dataflow, threads=min(c.dataflow.threads, cores)))
        if hasattr(c.dataflow, "threads") else c
        for name, c in choices.items()
    }


def check_against_oracle(choices: Mapping[str, Choice], oracle, images: int | None = None) -> dict[str, Any]:
    """Build `choices` on the oracle's network for this machine and compare its outputs on the held-out
    images (the first `images`; default all) with the oracle's fake-quantised model."""
    from deploy.build import host_logits

    start = time.perf_counter()
    mine = {name: choices[name] for name in oracle.layer_names}
    x = oracle.dataset.x_test.numpy()[:images]
    got = host_logits(oracle.network, mine, oracle, x)
    precisions = [mine[name].quant for name in oracle.layer_names]
    want = oracle.logits(precisions).numpy()[: len(x)]
    labels = oracle.dataset.y_test.numpy()[: len(x)]
    return {
        "network": oracle.network.name,
        "images": len(x),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "max_abs_logit_difference": float(np.abs(got - want).max()),
        "logit_scale": float(np.abs(want).max()),
        "artifact_top1": float((got.argmax(1) == labels).mean()),
        "oracle_top1": float((want.argmax(1) == labels).mean()),
        "oracle_accuracy": oracle.accuracy(precisions),
        "artifact_accuracy": oracle.fidelity(got).accuracy if len(x) == len(oracle.dataset.x_test) else None,
        "provenance": f"measured:host:held-out images of {oracle.dataset.name}",
        "seconds": round(time.perf_counter() - start, 1),
    }


def time_library(
    library: Path, input_shape: tuple[int, ...], threads: int, device: Device, settings: MeasureSettings
) -> dict[str, Any]:
    """Whole-network latency of an artifact's library on `device` (this machine, or a board over RPC):
    TVM's time_evaluator on `main` with a seeded random image (`timing_image`), `settings.repeats` repeats of at least
    `settings.min_repeat_ms` each, in a worker process that is killed after `settings.run_timeout_s`
    (a board that stops answering); median and interquartile range in ms, with provenance."""
    from deploy.workers import Worker

    worker = Worker(f"whole-network timing on {device.name}")
    try:
        results = np.array(worker.call(_time, (str(library), input_shape, threads, device, settings), settings.run_timeout_s))
    finally:
        worker.stop()
    q1, median, q3 = np.percentile(results, [25, 50, 75])
    return {
        "median_ms": float(median), "iqr_ms": [float(q1), float(q3)], "repeats": len(results), "threads": threads,
        "provenance": f"measured:{device.name}:whole-network",
    }


def _time(library: str, input_shape: tuple[int, ...], threads: int, device: Device, settings: MeasureSettings) -> list[float]:
    """What the worker runs: load (or upload) the library, time `main`; milliseconds per repeat."""
    import tvm
    from tvm import relax

    if device.kind == "local":
        tvm.get_global_func("runtime.config_threadpool")(1, threads)
        module, dev = tvm.runtime.load_module(library), tvm.cpu()
    else:
        from deploy.tvm_measure import rpc_session

        try:
            remote = rpc_session(device, settings.run_timeout_s)
        except Exception as err:  # any failure to get a session means the board is not there
            raise ConnectionError(f"cannot reach {device.name}: {err}") from None
        remote.upload(library)
        module, dev = remote.load_module(os.path.basename(library)), remote.cpu()
        remote.get_function("runtime.config_threadpool")(1, threads)
    vm = relax.VirtualMachine(module, dev)
    image = tvm.runtime.tensor(timing_image(input_shape), dev)
    timer = vm.time_evaluator("main", dev, number=1, repeat=settings.repeats, min_repeat_ms=settings.min_repeat_ms)
    return [float(r) * 1e3 for r in timer(image).results]


def timing_image(shape: tuple[int, ...]) -> np.ndarray:
    """The input whole networks are timed on: seeded standard normal, not zeros (a runtime may take
    shortcuts on zeros: ONNX Runtime ran ResNet-18 5x faster on a zero image)."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def layer_sum(network, choices: Mapping[str, Choice], table) -> dict[str, Any]:
    """The deployment priced layer by layer with `table` (measured kernels where it measures), summed."""
    cost = evaluate(network, choices, table)
    return {"latency_ms": cost.latency_ms, "conversion_ms": cost.conversion_ms, "provenance": list(cost.provenance)}


def compare_emulated(network, choices: Mapping[str, Choice], numerics, library: Path, images: np.ndarray) -> dict[str, Any]:
    """Run an aarch64 library under qemu on `images` (N, C, H, W) and the same deployment built for this
    machine; their largest logit difference and top-1 agreement."""
    from deploy.build import host_logits
    from deploy.emulation import run_emulated

    start = time.perf_counter()
    host = host_logits(network, choices, numerics, images)
    emulated = np.stack([run_emulated(library, images[i : i + 1]) for i in range(len(images))])
    return {
        "images": len(images),
        "max_abs_logit_difference": float(np.abs(host - emulated).max()),
        "logit_scale": float(np.abs(host).max()),
        "top1_agreement": float((host.argmax(1) == emulated.argmax(1)).mean()),
        "provenance": "emulated:qemu-aarch64 vs measured:host (outputs only; emulated time says nothing about speed)",
        "seconds": round(time.perf_counter() - start, 1),
    }

"""Checking a built deployment: its outputs against the accuracy oracle, its whole-network latency on
a device, and the sum of its layers measured there, against what the search claimed."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deploy.deployment import evaluate
from deploy.tvm_measure import Device, MeasureSettings
from envs.space import Choice


CALL_PROFILE_RUNS = 3
"""Instrumented runs of each library per round (`time_libraries`' "calls")."""


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
    return time_libraries([(library, input_shape, threads)], device, settings)[0]


def time_libraries(
    libraries: Sequence[tuple[Path, tuple[int, ...], int]], device: Device, settings: MeasureSettings, rounds: int = 1,
    call_profile: bool = False,
) -> list[dict[str, Any]]:
    """Several libraries (each with its input shape and thread count) timed as `time_library` times one,
    in turns: `rounds` rounds, each timing every library once (`settings.repeats` repeats) in a fresh
    seeded order. Per library: "median_ms", the latency with the device's drift taken out
    (`drift_corrected`; one library timed once: the median), the interquartile range of all its
    repeats, repeats, rounds, threads, provenance; timed with others, also "group" (an id the libraries
    timed together share) and "group_size". A slow spell of a shared machine falls on every library of
    a round alike, so what the libraries cost relative to each other is measured far more closely than
    their absolute times: a regression over groups gives each group its own constant.

    With `call_profile`, on this machine, each round also runs every library `CALL_PROFILE_RUNS` times more with the VM's
    instrument on, timing each call it makes (kernels, fused fixed layers and conversions, runtime
    builtins): "calls" lists them in call order as [function, ms] (each position's median over the
    runs and rounds), scaled so they sum to "median_ms": where the network's time goes, measured in
    the same turns as the network itself. (A board over RPC cannot run the instrument's callback.)"""
    from deploy.workers import Worker

    if rounds < 1 or not libraries:
        raise ValueError(f"timing in turns needs at least one library and one round ({len(libraries)} libraries, {rounds} rounds)")
    worker = Worker(f"whole-network timing on {device.name}")
    timeout = settings.run_timeout_s * len(libraries) * rounds * (2 if call_profile else 1)  # the instrumented runs: at most a timing's
    try:
        jobs = [(str(library), shape, threads) for library, shape, threads in libraries]
        timed, calls = worker.call(_time, (jobs, device, settings, rounds, call_profile), timeout)
    finally:
        worker.stop()
    results = np.array(timed)  # libraries x rounds x repeats
    group = {"group": uuid.uuid4().hex[:12], "group_size": len(libraries)} if len(libraries) > 1 else {}
    out = []
    for timings, latency, runs, (_, _, threads) in zip(results, drift_corrected(results), calls, libraries):
        q1, q3 = np.percentile(timings, [25, 75])
        out.append({"median_ms": latency, "iqr_ms": [float(q1), float(q3)], "repeats": timings.size, "rounds": rounds,
                    "threads": threads, "provenance": f"measured:{device.name}:whole-network", **group}
                   | ({"calls": call_breakdown(runs, latency)} if runs else {}))
    return out


def call_breakdown(runs: list[list[tuple[str, float]]], latency_ms: float) -> list[list[Any]]:
    """One library's instrumented runs (each its calls in order, (function, ms)) as one breakdown: each
    position's median over the runs, scaled so the calls sum to `latency_ms`."""
    names = [name for name, _ in runs[0]]
    if any([name for name, _ in run] != names for run in runs):
        raise RuntimeError("the instrumented runs of one library made different calls: they are not one breakdown")
    ms = np.median(np.array([[t for _, t in run] for run in runs]), axis=0)
    return [[name, float(t * latency_ms / ms.sum())] for name, t in zip(names, ms)]


def drift_corrected(timings: np.ndarray) -> list[float]:
    """Each library's latency (ms) from `time_libraries`' timings (libraries x rounds x repeats), the
    device's drift taken out: each round's medians over their geometric mean across the libraries (what
    the device's speed did to all of them that round), the median of those ratios over the rounds,
    times the geometric mean of all the round medians. Timed in turns on this machine, a ResNet-18's
    latency so estimated from 8 rounds spread 0.6% (its single timings 2.8%)."""
    medians = np.log(np.median(timings, axis=2))  # libraries x rounds
    centred = medians - medians.mean(axis=0)
    return np.exp(medians.mean() + np.median(centred, axis=1)).tolist()


def _time(jobs: list[tuple[str, tuple[int, ...], int]], device: Device, settings: MeasureSettings, rounds: int,
          call_profile: bool) -> tuple[list[list[list[float]]], list[list[list[tuple[str, float]]]]]:
    """What the worker runs: load (or upload) every library, then time each one's `main` in every round
    (in an order seeded by the round): milliseconds per library, round and repeat; and with
    `call_profile`, on this machine, per library, its instrumented runs (`_CallProfiler`), each its calls in order."""
    import tvm
    from tvm import relax

    if device.kind == "local":
        configure = tvm.get_global_func("runtime.config_threadpool")
        modules, dev = [tvm.runtime.load_module(library) for library, _, _ in jobs], tvm.cpu()
    else:
        from deploy.tvm_measure import rpc_session

        try:
            remote = rpc_session(device, settings.run_timeout_s)
        except Exception as err:  # any failure to get a session means the board is not there
            raise ConnectionError(f"cannot reach {device.name}: {err}") from None
        modules = []
        for library, _, _ in jobs:
            remote.upload(library)
            modules.append(remote.load_module(os.path.basename(library)))
        configure, dev = remote.get_function("runtime.config_threadpool"), remote.cpu()
    timers = [relax.VirtualMachine(module, dev).time_evaluator("main", dev, number=1, repeat=settings.repeats,
                                                               min_repeat_ms=settings.min_repeat_ms) for module in modules]
    images = [tvm.runtime.tensor(timing_image(shape), dev) for _, shape, _ in jobs]
    results: list[list[list[float]]] = [[] for _ in jobs]
    calls: list[list[list[tuple[str, float]]]] = [[] for _ in jobs]
    profilers = [_CallProfiler(module, dev) for module in modules] if call_profile and device.kind == "local" else []
    for round_ in range(rounds):
        for i in np.random.default_rng(round_).permutation(len(jobs)):
            configure(1, jobs[i][2])
            results[i].append([float(r) * 1e3 for r in timers[i](images[i]).results])
            if profilers:
                calls[i].extend(profilers[i].run(images[i], CALL_PROFILE_RUNS))
    return results, calls


class _CallProfiler:
    """A library's `main` run with the VM's instrument timing every call it makes, in a VM of its own
    (the timed runs are not instrumented)."""

    def __init__(self, module: Any, dev: Any) -> None:
        from tvm import relax

        self.vm = relax.VirtualMachine(module, dev)
        self._calls: list[tuple[str, float]] = []
        self._started = 0.0
        self.vm.set_instrument(self._instrument)

    def _instrument(self, func: Any, symbol: str, before_run: bool, ret_value: Any, *args: Any) -> int:
        now = time.perf_counter()
        if before_run:
            self._started = now
        else:
            self._calls.append((str(symbol), (now - self._started) * 1e3))
        return 0

    def run(self, image: Any, runs: int) -> list[list[tuple[str, float]]]:
        """`runs` runs of `main`, each its calls in order with their milliseconds."""
        out = []
        for _ in range(runs):
            self._calls = []
            self.vm["main"](image)
            out.append(self._calls)
        return out


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

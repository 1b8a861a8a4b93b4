"""Compiling a TVM kernel and timing it: on this machine, or on a board through TVM RPC.

Compiling runs in worker processes, as many as there are cores (a kernel compiled once is kept for
the measurer's life: timing it again only runs it); timing runs in one more worker process, one
kernel at a time, and never while this process compiles, so two timings never share a
core with each other or with a compiler. Every call has a timeout: a hung compile, a dead board or a
crashed kernel kills that worker, which is started again; the caller gets a `MeasurementError`
saying what failed, and earlier results are untouched. A device that was lost (unreachable, no
answer after retries) is not tried again for a cool-off period, so a dead board costs one timeout,
not one per step.

A board is reached with `python -m tvm.exec.rpc_server` on it, directly (`Device.rpc`) or through
`python -m tvm.exec.rpc_tracker` and a key (`Device.tracker`). Kernels for a board are exported as a
`.tar` of object files, which the board's server links itself: no cross-linker is needed here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploy.workers import MeasurementError, Worker, WorkerPool, attempt

__all__ = ["Device", "Measurement", "MeasurementError", "MeasureSettings", "Measurer"]

ArgSpec = tuple[tuple[int, ...], str]  # (shape, dtype) of one kernel argument


@dataclass(frozen=True)
class Device:
    """Where kernels run: this machine (`local`), an RPC server (`rpc`) or a tracker key (`tracker`)."""

    kind: str = "local"
    host: str = ""
    port: int = 0
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "rpc", "tracker"):
            raise ValueError(f"device kind {self.kind!r} is not one of ('local', 'rpc', 'tracker')")
        if self.kind != "local" and not (self.host and 0 < self.port < 65536):
            raise ValueError(f"{self.kind} device needs HOST:PORT, got {self.host!r}:{self.port}")
        if self.kind == "tracker" and not self.key:
            raise ValueError("a tracker device needs a key (--rpc-key)")

    @property
    def name(self) -> str:
        """How measurements name the device (part of their provenance)."""
        if self.kind == "local":
            return f"local:{socket.gethostname()}"
        where = f"{self.host}:{self.port}"
        return f"rpc:{where}" if self.kind == "rpc" else f"tracker:{where}/{self.key}"

    @classmethod
    def parse(cls, rpc: str | None = None, tracker: str | None = None, key: str | None = None) -> "Device":
        """`--rpc HOST:PORT`, or `--rpc-tracker HOST:PORT --rpc-key KEY`, or neither (local)."""
        if rpc and tracker:
            raise ValueError("give either --rpc HOST:PORT or --rpc-tracker HOST:PORT, not both")
        address = rpc or tracker
        if not address:
            return cls()
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"RPC address {address!r} is not HOST:PORT")
        return cls("rpc" if rpc else "tracker", host, int(port), key or "")


@dataclass(frozen=True)
class MeasureSettings:
    """How kernels are timed and how long anything may take."""

    repeats: int = 5
    """timed repeats (the median is kept, the interquartile range is the spread)"""
    min_repeat_ms: int = 10
    """each repeat runs the kernel as often as needed to last at least this long"""
    compile_timeout_s: float = 60.0
    """longest a compile may take"""
    run_timeout_s: float = 60.0
    """longest connecting, uploading and timing one kernel may take"""
    retries: int = 1
    """further attempts after a failed compile or run (with a fresh worker)"""
    device_cooloff_s: float = 60.0
    """after the device is lost (no answer, unreachable), later runs fail at once for this long, then it is tried again"""
    cold_cache: bool = False
    """flush the CPU caches of the kernel's weights and output before every timed run (each repeat then runs once,
    whatever `min_repeat_ms`), as inside a network whose other layers evicted them: a kernel timed warm, alone, can
    be far faster than in the network (here, ResNet-18's deepest Winograd layers at 224x224 ran 1.3-1.5x slower cold)"""


@dataclass(frozen=True)
class Measurement:
    """Timing of one kernel: per-repeat times, their median and interquartile range."""

    results_ms: tuple[float, ...]
    threads: int

    @property
    def median_ms(self) -> float:
        """Median of the repeats."""
        return float(np.median(self.results_ms))

    @property
    def spread_ms(self) -> float:
        """Interquartile range of the repeats."""
        q1, q3 = np.percentile(self.results_ms, [25, 75])
        return float(q3 - q1)


# ---- what the worker processes run (top level, so a spawned process can import them) ----------
def _compile(module_json: str, target: dict[str, Any], path: str) -> str:
    """Compile a scheduled IRModule for `target` and export it to `path` (.so locally, .tar for RPC)."""
    import tvm

    module = tvm.ir.load_json(module_json)
    executable = tvm.compile(module, target=tvm.target.Target(target))
    executable.export_library(path)
    return path


def _random_args(args: Sequence[ArgSpec], device: Any) -> list[Any]:
    import tvm

    rng = np.random.default_rng(0)
    out = []
    for shape, dtype in args:
        if dtype.startswith("int"):
            values = rng.integers(-8, 8, size=shape).astype(dtype)
        else:
            values = rng.uniform(-1, 1, size=shape).astype(dtype)
        out.append(tvm.runtime.tensor(values, device))
    return out


def _time(module: Any, device: Any, args: Sequence[ArgSpec], settings: MeasureSettings) -> tuple[float, ...]:
    # cold: TVM's runtime flushes every argument but the first (the input) before each repeat of one run
    each = {"f_preproc": "cache_flush_cpu_non_first_arg"} if settings.cold_cache else {"min_repeat_ms": settings.min_repeat_ms}
    timer = module.time_evaluator("main", device, number=1, repeat=settings.repeats, **each)
    return tuple(float(r) * 1e3 for r in timer(*_random_args(args, device)).results)


def _run_local(path: str, args: list[ArgSpec], threads: int, settings: MeasureSettings) -> tuple[float, ...]:
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    return _time(tvm.runtime.load_module(path), tvm.cpu(), args, settings)


def rpc_session(device: Device, timeout_s: float) -> Any:
    from tvm import rpc

    if device.kind == "rpc":
        return rpc.connect(device.host, device.port, session_timeout=timeout_s)
    tracker = rpc.connect_tracker(device.host, device.port)
    keys = sorted(tracker.summary().get("queue_info", {}))
    if device.key not in keys:
        raise MeasurementError(
            f"tracker {device.host}:{device.port} has no server with key {device.key!r}; keys there: {keys}"
        )
    return tracker.request(device.key, priority=1, session_timeout=timeout_s, max_retry=1)


_SESSIONS: dict[Device, Any] = {}
"""The runner worker's open RPC session per device, reused across kernels, dropped on any failure."""


def _run_remote(
    device: Device, path: str, args: list[ArgSpec], threads: int, settings: MeasureSettings
) -> tuple[float, ...]:
    remote = _SESSIONS.get(device)
    if remote is None:
        try:
            remote = _SESSIONS[device] = rpc_session(device, settings.run_timeout_s)
        except Exception as err:  # any failure to get a session means the board is not there
            raise ConnectionError(f"cannot reach {device.name}: {err}") from None
    try:
        remote.upload(path)
        module = remote.load_module(os.path.basename(path))
        remote.get_function("runtime.config_threadpool")(1, threads)
        return _time(module, remote.cpu(), args, settings)
    except BaseException:
        _SESSIONS.pop(device, None)
        raise


class Measurer:
    """Compiles scheduled kernels for a target and times them on a device.

    Args:
        target: TVM target as a JSON-like dict (as `CpuTarget.tvm_target`).
        device: where the kernels run.
        settings: repeats and timeouts.
        compile_workers: parallel compiler processes (default: this machine's cores).
    """

    def __init__(
        self,
        target: dict[str, Any],
        device: Device = Device(),
        settings: MeasureSettings = MeasureSettings(),
        compile_workers: int | None = None,
    ) -> None:
        self.target = target
        self.device = device
        self.settings = settings
        self._compilers = WorkerPool("compiler", compile_workers)
        self._runner = Worker("runner")
        self._dir = tempfile.TemporaryDirectory(prefix="deploygym-kernels-")
        self._ids = itertools.count()
        self._compiled: dict[str, str] = {}
        """Path of each kernel compiled so far, by the sha256 of its module's JSON."""
        self._down_until = 0.0
        self._down_error = ""

    def measure(self, module: Any, args: Sequence[ArgSpec], threads: int) -> Measurement:
        """Compile and time one scheduled IRModule (`main` takes `args`) on `threads` threads."""
        (result,) = self.measure_many([(module, args, threads)])
        if isinstance(result, MeasurementError):
            raise result
        return result

    def measure_many(
        self, kernels: Sequence[tuple[Any, Sequence[ArgSpec], int]]
    ) -> list[Measurement | MeasurementError]:
        """Compile all kernels in parallel (those not compiled before), then time them one at a time; a
        failure is returned in its place.
        While the device is down nothing is compiled: each kernel gets the error that says so."""
        import tvm

        down = self._down()
        if down is not None:
            return [down] * len(kernels)
        texts = [tvm.ir.save_json(k[0]) for k in kernels]
        digests = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        todo = {d: t for d, t in zip(digests, texts) if d not in self._compiled}
        compiled = self.in_compilers(_compile, [(t, self.target, self._kernel_path()) for t in todo.values()], "kernel compile")
        self._compiled.update((d, path) for d, path in zip(todo, compiled) if not isinstance(path, MeasurementError))
        failed = {d: path for d, path in zip(todo, compiled) if isinstance(path, MeasurementError)}
        paths = [failed.get(d) or self._compiled[d] for d in digests]
        results: list[Measurement | MeasurementError] = []
        for path, (_, args, threads) in zip(paths, kernels):
            if isinstance(path, MeasurementError):
                results.append(path)
                continue
            results.append(self._run(path, [(tuple(s), d) for s, d in args], threads))
        return results

    def in_compilers(self, fn: Callable[..., Any], calls: Sequence[tuple], what: str) -> list[Any]:
        """`fn(*args)` for each args, spread over the compiler workers (within the compile timeout, with
        retries); a call that fails has its `MeasurementError` in its place."""
        return self._compilers.map(fn, calls, self.settings.compile_timeout_s, self.settings.retries, what)

    def _kernel_path(self) -> str:
        suffix = ".so" if self.device.kind == "local" else ".tar"
        return str(Path(self._dir.name) / f"kernel{next(self._ids)}{suffix}")

    def _down(self) -> MeasurementError | None:
        """The error for a run while the device is in its cool-off after failing (None when it is up)."""
        if time.monotonic() >= self._down_until:
            return None
        return MeasurementError(
            f"run on {self.device.name} skipped: it failed {self._down_error}; tried again "
            f"{self._down_until - time.monotonic():.0f} s from now"
        )

    def _run(self, path: str, args: list[ArgSpec], threads: int) -> Measurement | MeasurementError:
        down = self._down()
        if down is not None:
            return down
        if self.device.kind == "local":
            call = (_run_local, (path, args, threads, self.settings))
        else:
            call = (_run_remote, (self.device, path, args, threads, self.settings))
        results = attempt(
            lambda: self._runner.call(*call, self.settings.run_timeout_s), self.settings.retries, f"run on {self.device.name}"
        )
        if isinstance(results, MeasurementError):
            if results.device_lost:
                self._down_until = time.monotonic() + self.settings.device_cooloff_s
                self._down_error = str(results)
            return results
        return Measurement(results, threads)

    def close(self) -> None:
        """Stop the workers and delete the compiled kernels."""
        self._compilers.close()
        self._runner.stop()
        self._dir.cleanup()

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

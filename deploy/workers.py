"""Work that may hang or crash, run in worker processes: fresh interpreters on a socket each.

A `Worker` runs one call at a time with a timeout; a call past its timeout, or one that kills the
process, kills the worker, and the next call starts a new one. A `WorkerPool` spreads calls over
several workers (one per core by default), each serving one call at a time. Failures come back as
`MeasurementError`s in the place of their results, so one bad call never loses the others.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from deploy.cost import CostUnavailable

_ROOT = str(Path(__file__).resolve().parents[1])
PROGRESS_FROM = 16
"""Batches of this many calls or more show a progress bar (an NPU's up-front simulations took ~3 min in silence)."""


class MeasurementError(CostUnavailable):
    """A kernel could not be compiled, reached or timed; the message says which and why.

    `device_lost` is True when the device itself failed (unreachable, no answer, worker died), not
    the kernel."""

    def __init__(self, message: str, device_lost: bool = False) -> None:
        super().__init__(message)
        self.device_lost = device_lost


def serve(fd: int) -> None:
    """Worker loop on a socket: run (function, args) requests until it closes."""
    conn = Connection(fd)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the parent closed the socket or exited
            return
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as err:  # reported to the caller, who decides
            conn.send(("error", f"{type(err).__name__}: {_gist(str(err))}"))


def _gist(message: str) -> str:
    """TVM's errors carry the Python traceback of the worker: keep only their last line, the reason."""
    if "Traceback (most recent call last)" not in message:
        return message
    return [line for line in message.splitlines() if line.strip()][-1].strip()


class Worker:
    """One worker process (a fresh interpreter that imports only this module); a call that times out
    or crashes it kills it, and the next call starts a new one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._conn is not None
        self._conn.send((fn, args))
        if not self._conn.poll(timeout_s):
            self.stop()
            raise MeasurementError(f"{self.name}: no answer within {timeout_s:.0f} s (worker killed)", True)
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise MeasurementError(f"{self.name}: the worker process died", True) from None
        if status == "error":  # compilers repeat a line per relocation: keep each line once
            message = "\n".join(dict.fromkeys(value.splitlines()))
            raise MeasurementError(f"{self.name}: {message}", message.startswith("ConnectionError"))
        return value

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
        # TVM sizes its thread pool from TVM_NUM_THREADS, else OMP_NUM_THREADS (set to 1 for torch in
        # searches and tests), else half the cores on x86 (for hyper-threads): a worker timing a kernel
        # on n threads must have every core, or a 2-thread kernel runs on one
        env["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from deploy.workers import serve; serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal stops the search, which ends its workers; never a call midway
        )
        theirs.close()
        self._conn = Connection(ours.detach())

    def stop(self) -> None:
        """Kill the process (idempotent)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None


class Pool(Protocol):
    """Runs calls in parallel somewhere (`WorkerPool` here, `deploy.ray_pool.RayPool` on a cluster)."""

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], timeout_s: float, retries: int, what: str) -> list[Any]:
        """`fn(*args)` for each args in `calls`; a failure is a `MeasurementError` in its place."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


class WorkerPool:
    """`n` workers (default: this machine's cores) named `name-0`, `name-1`, ...; each serves one call at a time."""

    def __init__(self, name: str, n: int | None = None) -> None:
        n = n or os.cpu_count() or 1
        self._workers = [Worker(f"{name}-{i}") for i in range(n)]
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._threads = ThreadPoolExecutor(n)

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], timeout_s: float, retries: int, what: str) -> list[Any]:
        """`fn(*args)` for each args in `calls`, in parallel; a call that fails (after `retries` more
        attempts, each within `timeout_s`) has its `MeasurementError` in its place. A batch of at least
        `PROGRESS_FROM` calls shows a progress bar named `what` on a terminal."""

        def one(args: tuple) -> Any:
            worker = self._idle.get()
            try:
                return attempt(lambda: worker.call(fn, args, timeout_s), retries, what)
            finally:
                self._idle.put(worker)

        done = self._threads.map(one, calls)
        if len(calls) >= PROGRESS_FROM:
            from tqdm.auto import tqdm  # here: a worker process imports this module and nothing else

            done = tqdm(done, total=len(calls), desc=f"{what}s", unit="call", leave=False, disable=None)  # None: off unless a terminal
        return list(done)

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers:
            worker.stop()
        self._threads.shutdown()


def attempt(fn: Callable[[], Any], retries: int, what: str) -> Any:
    """`fn()`, tried 1 + `retries` times; the last `MeasurementError` is returned (not raised)."""
    error: MeasurementError | None = None
    for _ in range(1 + retries):
        try:
            return fn()
        except MeasurementError as err:
            error = MeasurementError(f"{what} failed: {err}", err.device_lost)
    return error

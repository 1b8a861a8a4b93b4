"""What a parallel phase costs before any work is done: TVM's thread pool waking its threads and
waiting for them (fork/join), measured on a device.

A kernel whose parallel loop has one near-empty chunk per thread is timed on `threads` threads and the
same loop serial on one; the difference is the fork/join of `threads` threads. The A72 model
(`deploy.cpu_model`) charges it per thread beyond the first, per parallel phase. Measured over RPC on
the board it is the board's own; measured on this machine it is converted to the board's clock (the
pool's hand-off is a few hundred core cycles of atomics and cache-line transfers), which makes it an
estimate, and its provenance says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHUNK_FLOATS = 16
"""Floats between two chunks' elements (64 bytes: each thread writes its own cache line)."""


@dataclass(frozen=True)
class ForkJoin:
    """A fork/join measurement: per-thread cost, the timings it came from, and where."""

    threads: int
    parallel_us: float
    serial_us: float
    device: str

    @property
    def us_per_thread(self) -> float:
        """Fork/join cost per thread beyond the first (never below zero)."""
        return max(0.0, (self.parallel_us - self.serial_us) / (self.threads - 1))

    def at_clock(self, measured_ghz: float, target_ghz: float) -> float:
        """`us_per_thread` on a core clocked at `target_ghz`, in the cycles it took at `measured_ghz`."""
        return self.us_per_thread * measured_ghz / target_ghz


def fork_join_kernel(chunks: int, parallel: bool) -> Any:
    """A TIR module whose `main(a, out)` sets `out[i] = a[i * CHUNK_FLOATS] + 1` for each of `chunks`
    chunks (one cache line of `a` each), in a parallel loop (`parallel`) or a serial one."""
    import tvm
    from tvm import s_tir, te

    a = te.placeholder((chunks * CHUNK_FLOATS,), "float32", name="a")
    out = te.compute((chunks,), lambda i: a[i * CHUNK_FLOATS] + 1.0, name="out")
    module = tvm.IRModule({"main": te.create_prim_func([a, out])})
    if not parallel:
        return module
    sch = s_tir.Schedule(module)
    (loop,) = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(loop)
    return sch.mod


def measure_fork_join(measurer, threads: int) -> ForkJoin:
    """Time the one-chunk-per-thread loop on `threads` threads and serial, with `measurer`
    (`deploy.tvm_measure.Measurer`: this machine or a board over RPC); medians in microseconds."""
    from deploy.tvm_measure import MeasurementError

    if threads < 2:
        raise ValueError(f"a fork/join needs at least 2 threads, not {threads}")
    args = [((threads * CHUNK_FLOATS,), "float32"), ((threads,), "float32")]
    parallel, serial = measurer.measure_many([(fork_join_kernel(threads, True), args, threads),
                                              (fork_join_kernel(threads, False), args, 1)])
    for result in (parallel, serial):
        if isinstance(result, MeasurementError):
            raise result
    return ForkJoin(threads, 1e3 * parallel.median_ms, 1e3 * serial.median_ms, measurer.device.name)

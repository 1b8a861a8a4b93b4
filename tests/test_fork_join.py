"""The fork/join of TVM's thread pool, measured with real TVM (this machine; over RPC in test_tvm_measure)."""

from __future__ import annotations

import numpy as np
import pytest

import tvm

from deploy.fork_join import CHUNK_FLOATS, ForkJoin, fork_join_kernel, measure_fork_join
from deploy.tvm_measure import MeasureSettings, Measurer

HOST = {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}


@pytest.mark.parametrize("parallel", [True, False])
def test_the_kernel_reads_one_cache_line_per_chunk(parallel):
    library = tvm.compile(fork_join_kernel(3, parallel), target=tvm.target.Target(HOST))
    a = np.arange(3 * CHUNK_FLOATS, dtype="float32")
    out = tvm.runtime.tensor(np.zeros(3, "float32"))
    library["main"](tvm.runtime.tensor(a), out)
    np.testing.assert_array_equal(out.numpy(), a[::CHUNK_FLOATS] + 1)


def test_two_threads_cost_more_than_the_serial_loop_here():
    with Measurer(HOST, settings=MeasureSettings(repeats=9, min_repeat_ms=5, retries=0)) as measurer:
        measured = measure_fork_join(measurer, 2)
    assert measured.device.startswith("local:") and measured.threads == 2
    assert 0 < measured.serial_us < measured.parallel_us  # a serial loop of two stores is far below a microsecond
    assert 0.05 < measured.us_per_thread < 200  # a hand-off, not a millisecond sleep
    with pytest.raises(ValueError, match="at least 2 threads"):
        measure_fork_join(measurer, 1)


def test_per_thread_cost_and_its_conversion_to_another_clock():
    measured = ForkJoin(threads=4, parallel_us=10.0, serial_us=1.0, device="rpc:pi4:9090")
    assert measured.us_per_thread == pytest.approx(3.0)
    assert measured.at_clock(2.4, 1.5) == pytest.approx(4.8)  # the same cycles take longer on a slower core
    assert ForkJoin(2, 1.0, 1.5, "local:x").us_per_thread == 0.0  # noise below the serial loop is no negative cost

"""Compiling and timing TVM kernels locally and through a real RPC tracker and server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

import tvm
from tvm import te, topi

from deploy.targets import get_target
from deploy.tvm_measure import Device, MeasurementError, MeasureSettings, Measurer
from tests.tvm_rpc import RpcCluster, free_port

HOST = {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}
FAST = MeasureSettings(repeats=3, min_repeat_ms=5, retries=0, run_timeout_s=30, compile_timeout_s=60)


def conv_kernel(cout: int = 16):
    data = te.placeholder((1, 8, 14, 14), name="data")
    weight = te.placeholder((cout, 8, 3, 3), name="weight")
    out = topi.nn.conv2d_nchw(data, weight, 1, 1, 1)
    module = tvm.IRModule({"main": te.create_prim_func([data, weight, out])})
    return module, [((1, 8, 14, 14), "float32"), ((cout, 8, 3, 3), "float32"), ((1, cout, 14, 14), "float32")]


@pytest.fixture(scope="module")
def cluster():
    rpc = RpcCluster().start()
    yield rpc
    rpc.stop()


def test_local_measurement_has_repeats_median_and_spread():
    module, args = conv_kernel()
    with Measurer(HOST, settings=FAST) as measurer:
        result = measurer.measure(module, args, threads=1)
        assert len(result.results_ms) == 3 and result.threads == 1
        assert 0 < min(result.results_ms) <= result.median_ms <= max(result.results_ms)
        assert 0 <= result.spread_ms <= max(result.results_ms) - min(result.results_ms)
        bigger, smaller = measurer.measure_many([(*conv_kernel(64), 1), (*conv_kernel(4), 1)])
        assert bigger.median_ms > smaller.median_ms  # results come back in order, and mean something


def test_cold_caches_time_a_kernel_as_in_a_network_whose_other_layers_evicted_its_weights():
    # 64 KB of float32 "weights" streamed once (and 64 KB written): from a core's own L2 when warm, which only a process
    # on the same core can evict (then for the run after it was switched out), from memory when flushed. At 1 MB the
    # warm data lived in the shared L3, and under the suite's other worker a whole warm run took what a cold one did.
    n = 1 << 14
    scale, weights = te.placeholder((1,), name="scale"), te.placeholder((n,), name="weights")
    out = te.compute((n,), lambda i: weights[i] * scale[0])
    module = tvm.IRModule({"main": te.create_prim_func([scale, weights, out])})
    args = [((1,), "float32"), ((n,), "float32"), ((n,), "float32")]
    with Measurer(HOST, settings=MeasureSettings(repeats=9, min_repeat_ms=5, retries=0)) as measurer:
        warm = measurer.measure(module, args, threads=1)
    with Measurer(HOST, settings=MeasureSettings(repeats=9, cold_cache=True, retries=0)) as measurer:
        cold = measurer.measure(module, args, threads=1)
    assert len(cold.results_ms) == 9
    # fastest repeat against fastest repeat: another process sharing the caches (the suite's other worker) can only
    # slow a repeat down, so each run's fastest is its least disturbed; a flush that did nothing would tie them
    assert min(cold.results_ms) > 1.5 * min(warm.results_ms)  # 3.6-3.9x on this machine (0.0048 vs 0.0012 ms)
    warm_backend, cold_backend = (get_target("host").backend(settings=MeasureSettings(cold_cache=c)) for c in (False, True))
    assert warm_backend.fingerprint() != cold_backend.fingerprint()  # never mixed in one database
    assert warm_backend.fingerprint() == get_target("host").backend().fingerprint()  # warm databases stay valid


def test_a_kernel_that_does_not_compile_is_an_error_and_the_next_one_still_measures():
    module, args = conv_kernel()
    with Measurer({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, settings=FAST) as measurer:
        with pytest.raises(MeasurementError, match="(?s)compile failed: .*wrong format"):
            measurer.measure(module, args, threads=1)  # an aarch64 object cannot be linked for this machine
    with Measurer(HOST, settings=FAST) as measurer:
        failed, ok = measurer.measure_many([(module, [((1, 8), "float32")], 1), (module, args, 1)])
        assert isinstance(failed, MeasurementError) and ok.median_ms > 0


def echo_after(seconds: float, value: int) -> int:
    """Runs in a compiler worker: answers `value` after `seconds`."""
    time.sleep(seconds)
    return value


def test_compiler_workers_serve_one_call_at_a_time_so_every_answer_is_its_own():
    # uneven durations make a free pool thread pick up a call while other calls are still running
    delays = [0.3, 0.0, 0.0, 0.2, 0.0, 0.1, 0.0, 0.0]
    with Measurer(HOST, settings=FAST, compile_workers=2) as measurer:
        answers = measurer.in_compilers(echo_after, [(d, i) for i, d in enumerate(delays)], "echo")
    assert answers == list(range(len(delays)))


def test_through_the_tracker_and_directly_to_the_server(cluster):
    module, args = conv_kernel()
    board = Device.parse(tracker=f"127.0.0.1:{cluster.tracker_port}", key=cluster.key)
    with Measurer(HOST, board, FAST) as m:
        assert m.device.name == f"tracker:127.0.0.1:{cluster.tracker_port}/{cluster.key}"
        assert m.measure(module, args, threads=1).median_ms > 0
    with Measurer(HOST, board, MeasureSettings(repeats=3, cold_cache=True, retries=0)) as m:
        assert len(m.measure(module, args, threads=1).results_ms) == 3  # the board's runtime flushes its caches too


def test_fork_join_is_measured_on_the_board_over_rpc(cluster):
    from deploy.fork_join import measure_fork_join

    device = Device.parse(tracker=f"127.0.0.1:{cluster.tracker_port}", key=cluster.key)
    with Measurer(HOST, device, FAST) as measurer:
        measured = measure_fork_join(measurer, 2)
    assert measured.device == device.name
    assert 0 < measured.serial_us < measured.parallel_us and measured.us_per_thread < 200


def test_wrong_key_names_the_keys_the_tracker_has(cluster):
    module, args = conv_kernel()
    device = Device.parse(tracker=f"127.0.0.1:{cluster.tracker_port}", key="no-such-board")
    with Measurer(HOST, device, FAST) as measurer, pytest.raises(MeasurementError) as err:
        measurer.measure(module, args, threads=1)
    assert "no server with key 'no-such-board'" in str(err.value) and cluster.key in str(err.value)


def test_unreachable_address_fails_clearly_within_the_timeout():
    module, args = conv_kernel()
    start = time.monotonic()
    with Measurer(HOST, Device.parse(rpc=f"127.0.0.1:{free_port()}"), FAST) as measurer:
        with pytest.raises(MeasurementError, match=r"run on rpc:127\.0\.0\.1:\d+ failed: .*[Cc]onnect"):
            measurer.measure(module, args, threads=1)
        assert time.monotonic() - start < FAST.run_timeout_s + 15
        again = time.monotonic()
        with pytest.raises(MeasurementError, match="skipped: it failed .* tried again"):
            measurer.measure(module, args, threads=1)  # the dead device costs one timeout, not one per kernel
        errors = measurer.measure_many([(module, args, 1)] * 3)  # nor a compilation per kernel
        assert all(isinstance(e, MeasurementError) and "skipped" in str(e) for e in errors)
        assert time.monotonic() - again < 5


@pytest.mark.parametrize(
    "rpc, tracker, key, message",
    [
        ("board", None, None, "is not HOST:PORT"),
        ("a:1", "b:2", "k", "not both"),
        (None, "127.0.0.1:9190", None, "needs a key"),
    ],
)
def test_bad_device_arguments(rpc, tracker, key, message):
    with pytest.raises(ValueError, match=message):
        Device.parse(rpc, tracker, key)


def _pool_size(threads: int) -> int:
    """Worker side: the TVM thread pool's size after asking for `threads`."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    return tvm.get_global_func("runtime.NumThreads")()


def test_a_measuring_worker_can_use_every_core(monkeypatch):
    """TVM would size the pool from OMP_NUM_THREADS (1 in searches) or half an x86 machine's cores."""
    import os

    from deploy.workers import Worker

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker = Worker("pool check")
    try:
        assert worker.call(_pool_size, (os.cpu_count(),), 60) == os.cpu_count()
        assert worker.call(_pool_size, (1,), 60) == 1
    finally:
        worker.stop()


def test_a_large_batch_of_worker_calls_shows_its_progress_on_a_terminal(monkeypatch):
    """An NPU's up-front simulations ran minutes in silence: a batch of PROGRESS_FROM calls or more shows a bar."""
    import io
    import sys

    from deploy.workers import PROGRESS_FROM, WorkerPool

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    pool = WorkerPool("test", 2)
    try:
        results = pool.map(pow, [(2, i) for i in range(PROGRESS_FROM)], 60, 0, "power")
        assert results == [2**i for i in range(PROGRESS_FROM)]
        assert "powers:" in screen.getvalue() and f"/{PROGRESS_FROM} [" in screen.getvalue()
        shown = screen.getvalue()
        pool.map(pow, [(2, 1)], 60, 0, "power")
        assert screen.getvalue() == shown  # a small batch stays quiet
    finally:
        pool.close()

"""MetaSchedule (TVM's auto-tuner) on a CPU target, with the work-around TVM 0.27 needs here.

The tuning context and every builder worker import `tvm.s_tir.tensor_intrin`, which parses the CUDA,
ROCm and Hexagon tensor intrinsics: ~30 s per process on this kind of machine, past the builder's 30 s
timeout, so `tune_tir` fails with its defaults. A CPU target uses none of them: `stub_gpu_intrinsics`
puts empty modules in their place, in this process and (as the builder's initializer) in each worker.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from typing import Any

import tvm

GPU_INTRINSICS = ("cuda", "rocm", "hexagon")
"""Submodules of `tvm.s_tir.tensor_intrin` a CPU target never needs."""


def stub_gpu_intrinsics() -> None:
    """Register empty modules for the GPU/DSP tensor intrinsics (before `tvm.s_tir.tensor_intrin` is imported)."""
    for name in GPU_INTRINSICS:
        full = f"tvm.s_tir.tensor_intrin.{name}"
        sys.modules.setdefault(full, types.ModuleType(full))


@dataclass(frozen=True)
class Tuned:
    """Outcome of one tuning run."""

    module: tvm.IRModule | None
    """the best record's scheduled module ("main"); None when no record was valid"""
    records: int
    """tuning records in the database (candidates built and timed)"""
    seconds: float
    """wall time of the tuning, the choice of the best record included"""


def tune(
    func: tvm.tirx.PrimFunc,
    target: dict[str, Any],
    trials: int,
    seed: int = 0,
    build_workers: int | None = None,
    console_level: int = logging.ERROR,
) -> Tuned:
    """Tune `func` for `target` with `trials` candidates (`tune_tir`'s defaults otherwise: evolutionary
    search, XGBoost cost model, local builder and runner); one tuning core, `build_workers` compilers
    (default: every core). MetaSchedule prints to the console from `console_level` up (it reads its
    logger's level at each call, and leaves it at DEBUG)."""
    stub_gpu_intrinsics()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(console_level)
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.tir_integration import compile_tir

    start = time.perf_counter()
    tvm_target = tvm.target.Target(target)
    with tempfile.TemporaryDirectory(prefix="deploygym-ms-") as work_dir:
        database = ms.tune_tir(
            func,
            tvm_target,
            work_dir,
            max_trials_global=trials,
            num_trials_per_iter=min(64, trials),
            builder=ms.builder.LocalBuilder(max_workers=build_workers, initializer=stub_gpu_intrinsics),
            num_tuning_cores=1,
            seed=seed,
        )
        schedule = compile_tir(database, func, tvm_target)
        records = len(database.get_all_tuning_records())
    return Tuned(None if schedule is None else schedule.mod, records, time.perf_counter() - start)

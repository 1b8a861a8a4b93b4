"""The target registry: a name -> the hardware, its search space, and the backend that prices it.

CPU boards are priced by their latency model, or measured with TVM when given a device; NPUs
(`npu-eyeriss`, `npu-nvdla`, `npu-tpu`, or any NPU described by a YAML file given as the target) are
simulated with ZigZag.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deploy.cost import CostBackend
from deploy.cpu_model import CORTEX_A72, CpuLatencyModel, CpuModelParams, CpuSpec, load_calibration
from deploy.npu_hardware import NpuSpec, load_npu_spec, load_preset, preset_names
from deploy.npu_model import NpuRooflineModel
from deploy.tvm_measure import Device, MeasureSettings
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings
from envs.space import QUANTS, Choice, SearchSpace, cpu_schedules, npu_dataflows


@dataclass(frozen=True)
class CpuTarget:
    """A CPU board: its published spec, TVM target, and the calibration of its latency model."""

    name: str
    description: str
    spec: CpuSpec
    tvm_target: dict[str, Any]
    calibration: str | None = None
    """Name of the shipped calibration (`deploy/data/<name>.json`); None = uncalibrated defaults."""
    quants: tuple[str, ...] = field(default=QUANTS)
    runs_here: bool = False
    """Kernels for this target run on this machine, so it is measured locally unless told otherwise."""

    def search_space(self) -> SearchSpace:
        """The per-layer choices this target offers (threads up to its core count)."""
        return SearchSpace(cpu_schedules(self.spec.cores), self.quants)

    def model(self) -> CpuLatencyModel:
        """The analytical latency model of this target (its modelled cost backend)."""
        if self.calibration is None:
            return CpuLatencyModel(self.spec, CpuModelParams(), "uncalibrated")
        return CpuLatencyModel(self.spec, load_calibration(self.calibration), self.calibration)

    def describe(self) -> dict[str, Any]:
        """What the measurement database records about the target."""
        return {"target": self.name, "tvm_target": self.tvm_target}

    def backend(self, device: Device | None = None, settings: MeasureSettings | None = None) -> CostBackend:
        """TVM measurement on `device` (this machine for a target that runs here), else the model."""
        if settings is not None and not isinstance(settings, MeasureSettings):
            raise TypeError(f"{self.name} is measured: settings must be MeasureSettings, got {type(settings).__name__}")
        if device is None and not self.runs_here:
            return self.model()
        device = device or Device()
        if device.kind == "local" and not self.runs_here:
            raise ValueError(
                f"kernels for {self.name} cannot run on this machine: give a board with --rpc HOST:PORT "
                f"or --rpc-tracker HOST:PORT --rpc-key KEY, or use --target host"
            )
        from deploy.tvm_backend import TvmBackend

        return TvmBackend(checked_tvm_target(self.tvm_target), device, self.model(), settings or MeasureSettings())


def checked_tvm_target(target: dict[str, Any]) -> dict[str, Any]:
    """`target` if TVM accepts it; ValueError naming the target and TVM's objection otherwise."""
    import tvm

    try:
        tvm.target.Target(target)
    except Exception as err:  # TVM raises its own error types for unknown kinds and keys
        raise ValueError(f"TVM rejects the target {target}: {str(err).strip().splitlines()[-1]}") from None
    return target


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _cache_kib(index: int, default: int) -> int:
    size = _read(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
    match = re.fullmatch(r"(\d+)K", size)
    return int(match.group(1)) if match else default


def _host() -> CpuTarget:
    """This machine, described from /proc and /sys (the model is uncalibrated for it)."""
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", _read("/proc/cpuinfo"))
    spec = CpuSpec(
        name="host",
        cores=os.cpu_count() or 1,
        freq_ghz=float(mhz.group(1)) / 1000 if mhz else 2.5,
        l1d_kib=_cache_kib(0, 32),
        l2_kib=_cache_kib(2, 1024),
        simd_pipes=2,
        load_ports=2,
        dram_gbps=10.0,
        fp16_arith=False,
        dotprod=False,
        idle_w=10.0,
        core_active_w=5.0,
    )
    return CpuTarget(
        name="host",
        description=f"this machine ({spec.cores} cores), measured with TVM; its latency model is uncalibrated",
        spec=spec,
        tvm_target={"kind": "llvm", "mcpu": _llvm_cpu(), "num-cores": spec.cores},
        runs_here=True,
    )


def _llvm_cpu() -> str:
    """LLVM's name for this machine's CPU (LLVM 22 refuses "native")."""
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def _cortex_a72() -> CpuTarget:
    return CpuTarget(
        name="cortex-a72",
        description="Raspberry Pi 4: 4x Cortex-A72 @1.5 GHz, NEON, 32 KB L1D, 1 MB L2 (ARMv8.0: no fp16 arithmetic, no dot-product)",
        spec=CORTEX_A72,
        tvm_target={
            "kind": "llvm",
            "mtriple": "aarch64-linux-gnu",
            "mcpu": "cortex-a72",
            "mattr": ["+neon"],
            "num-cores": 4,
        },
        calibration="cortex_a72",
    )


@dataclass(frozen=True)
class NpuTarget:
    """An NPU: its hardware, priced by ZigZag simulation (the roofline model bounds what is not simulated)."""

    spec: NpuSpec

    @property
    def name(self) -> str:
        """The NPU's name."""
        return self.spec.name

    @property
    def description(self) -> str:
        """One line about the NPU."""
        return self.spec.description

    @property
    def quants(self) -> tuple[str, ...]:
        """Precisions the NPU computes in."""
        return self.spec.precisions

    def search_space(self) -> SearchSpace:
        """Each precision, computed directly, under every dataflow; the baseline is the NPU's own
        fixed dataflow in int8 (or its first precision)."""
        baseline = Choice(self.quants[0], "direct", self.spec.fixed_dataflow)
        return SearchSpace(npu_dataflows(), self.quants, algorithms=("direct",), baseline=baseline)

    def model(self) -> NpuRooflineModel:
        """The roofline bound of the NPU (the estimator for unsimulated choices)."""
        return NpuRooflineModel(self.spec)

    def describe(self) -> dict[str, Any]:
        """What the measurement database records about the target."""
        return {"target": self.name, "zigzag": ZIGZAG_VERSION, "hardware": self.spec.hardware}

    def backend(self, device: Device | None = None, settings: SimulationSettings | None = None) -> CostBackend:
        """ZigZag simulation with `settings` (an NPU has no device to measure on)."""
        if device is not None:
            raise ValueError(f"{self.name} is simulated with ZigZag: --rpc / --rpc-tracker do not apply to it")
        if settings is not None and not isinstance(settings, SimulationSettings):
            raise TypeError(f"{self.name} is simulated: settings must be SimulationSettings, got {type(settings).__name__}")
        from deploy.npu_backend import ZigZagBackend

        return ZigZagBackend(self.spec, settings or SimulationSettings())


Target = CpuTarget | NpuTarget

TARGETS: dict[str, Callable[[], Target]] = {
    "cortex-a72": _cortex_a72,
    "host": _host,
    **{name: (lambda name=name: NpuTarget(load_preset(name))) for name in preset_names()},
}


def get_target(name: str) -> Target:
    """The registered target `name`, or the NPU described by a YAML file at the path `name`; ValueError
    listing the valid names otherwise."""
    if name.endswith((".yaml", ".yml")):
        return NpuTarget(load_npu_spec(name))
    try:
        return TARGETS[name]()
    except KeyError:
        raise ValueError(
            f"unknown target {name!r}; valid targets: {', '.join(sorted(TARGETS))}, or an NPU's YAML file"
        ) from None

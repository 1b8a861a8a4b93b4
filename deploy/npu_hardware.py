"""An NPU's hardware, as a user writes it in YAML, and the same hardware as ZigZag's accelerator input.

A 2-D array of multiply-accumulate PEs, each with register files for weights, inputs and outputs;
one global buffer shared by the array; DRAM behind it. Sizes are in bytes, bandwidths in bits per
clock cycle, energies in picojoules per access of one port-wide word (ZigZag's convention). Three
presets ship in `deploy/data/npu/` (`npu-eyeriss`, `npu-nvdla`, `npu-tpu`): the same hardware, each
with the fixed dataflow of the design it is named after, so comparisons between them are on equal
hardware. Any other NPU is one YAML file of the same shape (`load_npu_spec`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from envs.space import InvalidChoice, NpuDataflow

PRESET_DIR = Path(__file__).resolve().parent / "data" / "npu"
NPU_PRECISIONS = ("int8", "fp16")
OPERAND_BITS = {"int8": 8, "fp16": 16}
PARTIAL_SUM_BITS = {"int8": 16, "fp16": 32}
"""Accumulator width in the output register files (ZigZag's `O` precision; int8 as in its examples)."""
MAX_ARRAY_SIDE = 1024


class NpuSpecError(ValueError):
    """A hardware description that cannot describe an NPU; the message names the field."""


@dataclass(frozen=True)
class Buffer:
    """One memory: capacity, port width, and energy per read / write of one port-wide word."""

    bytes: int
    bits_per_cycle: int
    read_pj: float
    write_pj: float


@dataclass(frozen=True)
class NpuSpec:
    """An NPU: PE array, buffers, DRAM, clock, supported precisions and its own fixed dataflow."""

    name: str
    description: str
    dataflow: str
    """the design's fixed dataflow as SPATIAL:TEMPORAL (e.g. `rs:stationary`): its baseline"""
    clock_mhz: float
    rows: int
    cols: int
    mac_energy_pj: dict[str, float]
    """energy of one multiply-accumulate per precision; its keys are the precisions the NPU supports"""
    pe_weights: Buffer
    pe_inputs: Buffer
    pe_outputs: Buffer
    global_buffer: Buffer
    dram: Buffer

    def latency_ms(self, cycles: float) -> float:
        """`cycles` of the NPU's clock in milliseconds."""
        return cycles / (self.clock_mhz * 1e3)

    def cycles(self, latency_ms: float) -> float:
        """Milliseconds in cycles of the NPU's clock."""
        return latency_ms * self.clock_mhz * 1e3

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the NPU computes in, in `NPU_PRECISIONS` order."""
        return tuple(p for p in NPU_PRECISIONS if p in self.mac_energy_pj)

    @property
    def fixed_dataflow(self) -> NpuDataflow:
        """The design's own dataflow."""
        return NpuDataflow.parse(self.dataflow)

    @property
    def hardware(self) -> dict[str, Any]:
        """Everything but name, description and dataflow: equal for NPUs that are the same hardware."""
        fields = self.to_dict()
        for key in ("name", "description", "dataflow"):
            del fields[key]
        return fields

    def to_dict(self) -> dict[str, Any]:
        """The YAML description (`npu_spec_from_dict` reads it back)."""
        return {
            "name": self.name,
            "description": self.description,
            "dataflow": self.dataflow,
            "clock_mhz": self.clock_mhz,
            "array": {"rows": self.rows, "cols": self.cols},
            "mac_energy_pj": dict(self.mac_energy_pj),
            "pe_buffers": {k: asdict(getattr(self, f"pe_{k}")) for k in ("weights", "inputs", "outputs")},
            "global_buffer": asdict(self.global_buffer),
            "dram": asdict(self.dram),
        }

    def zigzag_accelerator(self, quant: str) -> dict[str, Any]:
        """ZigZag's accelerator description of this NPU computing in `quant` (memories lowest first)."""
        memories = {
            "rf_weights": _memory(self.pe_weights, ["I2"], []),
            "rf_inputs": _memory(self.pe_inputs, ["I1"], []),
            "rf_outputs": _memory(self.pe_outputs, ["O"], []),
            "global_buffer": _memory(self.global_buffer, ["I1", "I2", "O"], ["D1", "D2"]),
            "dram": _memory(self.dram, ["I1", "I2", "O"], ["D1", "D2"]),
        }
        return {
            "name": self.name,
            "memories": memories,
            "operational_array": {
                "unit_energy": self.mac_energy_pj[quant],
                "unit_area": 1,
                "dimensions": ["D1", "D2"],
                "sizes": [self.rows, self.cols],
            },
        }


def _memory(buffer: Buffer, operands: list[str], served: list[str]) -> dict[str, Any]:
    """One ZigZag memory with a read and a write port serving `operands`."""
    read = {"name": "r_port_1", "type": "read", "bandwidth_min": buffer.bits_per_cycle,
            "bandwidth_max": buffer.bits_per_cycle, "allocation": []}
    write = {"name": "w_port_1", "type": "write", "bandwidth_min": buffer.bits_per_cycle,
             "bandwidth_max": buffer.bits_per_cycle, "allocation": []}
    for operand in operands:
        if operand == "O":  # partial sums go both ways
            read["allocation"] += ["O, tl", "O, th"]
            write["allocation"] += ["O, fh", "O, fl"]
        else:
            read["allocation"].append(f"{operand}, tl")
            write["allocation"].append(f"{operand}, fh")
    return {
        "size": buffer.bytes * 8,
        "r_cost": buffer.read_pj,
        "w_cost": buffer.write_pj,
        "area": 0,
        "latency": 1,
        "operands": operands,
        "ports": [read, write],
        "served_dimensions": served,
    }


# ---- reading a YAML description, with errors that name the field --------------------------------
def load_npu_spec(path: str | Path) -> NpuSpec:
    """The NPU described by a YAML file; `NpuSpecError` naming the file and the field if it is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise NpuSpecError(f"{path}: cannot read the NPU description ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise NpuSpecError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected the NPU's YAML") from None
    except yaml.YAMLError as err:
        raise NpuSpecError(f"{path}: not valid YAML ({err})") from None
    try:
        return npu_spec_from_dict(data)
    except NpuSpecError as err:
        raise NpuSpecError(f"{path}: {err}") from None


def write_npu_spec(spec: NpuSpec, path: str | Path) -> Path:
    """Write `spec` as a YAML description that `load_npu_spec` reads back equal; returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return path


def npu_spec_from_dict(data: Any) -> NpuSpec:
    """The NPU described by a parsed YAML mapping (see `deploy/data/npu/npu-eyeriss.yaml`)."""
    root = _Fields(data, "")
    array = root.mapping("array")
    rows, cols = array.integer("rows"), array.integer("cols")
    for name, side in (("array.rows", rows), ("array.cols", cols)):
        if not 1 <= side <= MAX_ARRAY_SIDE:
            raise NpuSpecError(f"{name} = {side}: a PE array side must be between 1 and {MAX_ARRAY_SIDE}")
    energies = root.mapping("mac_energy_pj")
    unknown = sorted(set(energies.data) - set(NPU_PRECISIONS))
    if unknown or not energies.data:
        raise NpuSpecError(f"mac_energy_pj must give the energy of each supported precision of {NPU_PRECISIONS}, got {sorted(energies.data)}")
    dataflow = root.text("dataflow")
    try:
        NpuDataflow.parse(dataflow)
    except InvalidChoice as err:
        raise NpuSpecError(f"dataflow: {err}") from None
    pe = root.mapping("pe_buffers")
    return NpuSpec(
        name=root.text("name"),
        description=root.text("description"),
        dataflow=dataflow,
        clock_mhz=root.positive("clock_mhz"),
        rows=rows,
        cols=cols,
        mac_energy_pj={p: energies.positive(p) for p in NPU_PRECISIONS if p in energies.data},
        pe_weights=pe.buffer("weights"),
        pe_inputs=pe.buffer("inputs"),
        pe_outputs=pe.buffer("outputs"),
        global_buffer=root.buffer("global_buffer"),
        dram=root.buffer("dram", default_bytes=10**12),
    )


class _Fields:
    """Typed access to a YAML mapping; every error names the dotted path of the field."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, dict):
            raise NpuSpecError(f"{prefix.rstrip('.') or 'the file'} must be a mapping of fields, got {type(data).__name__}")
        self.data, self.prefix = data, prefix

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise NpuSpecError(f"missing field {self.prefix}{key}")
        return self.data[key]

    def mapping(self, key: str) -> "_Fields":
        return _Fields(self._get(key), f"{self.prefix}{key}.")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise NpuSpecError(f"{self.prefix}{key} must be a non-empty string, got {value!r}")
        return value

    def positive(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise NpuSpecError(f"{self.prefix}{key} must be a positive number, got {value!r}")
        return float(value)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise NpuSpecError(f"{self.prefix}{key} must be an integer, got {value!r}")
        return value

    def buffer(self, key: str, default_bytes: int | None = None) -> Buffer:
        fields = self.mapping(key)
        size = default_bytes if default_bytes is not None and "bytes" not in fields.data else fields.integer("bytes")
        if size < 1:
            raise NpuSpecError(f"{self.prefix}{key}.bytes must be at least 1, got {size}")
        width = fields.integer("bits_per_cycle")
        if width < 1:
            raise NpuSpecError(f"{self.prefix}{key}.bits_per_cycle must be at least 1, got {width}")
        return Buffer(size, width, fields.positive("read_pj"), fields.positive("write_pj"))


FIXED_DATAFLOW_DESIGNS = {"NVDLA-like": "npu-nvdla", "Eyeriss-like": "npu-eyeriss"}
"""The designs whose fixed dataflows per-layer best is compared with, and the preset that carries each."""


def preset_names() -> list[str]:
    """Names of the NPU presets that ship with DeployGym."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> NpuSpec:
    """A shipped NPU preset by name."""
    return load_npu_spec(PRESET_DIR / f"{name}.yaml")

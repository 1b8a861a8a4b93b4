"""The NPU hardware co-design searches: array shapes, register files, global buffers and precisions.

Every candidate is an NPU description (`NpuSpec`, what any `--target` accepts as YAML) whose access
energies come from the silicon model, priced in area and leakage by the same model. The board around
it is fixed: its clock and DRAM bandwidth are the user's. Candidates that differ only in the precisions
they compute in share one simulation spec (`HardwareCandidate.simulated`): an int8 layer costs the same on an NPU
that could also compute fp16, only its area differs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Sequence

from deploy.npu_hardware import NPU_PRECISIONS, Buffer, NpuSpec
from deploy.silicon import AreaBreakdown, Memory, SiliconModel, npu_floorplan

ARRAYS = ((8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64))
"""PE array rows x columns."""
GLOBAL_BUFFER_KIB = (64, 128, 256, 512, 1024)
REGISTER_FILES = ((32, 16, 16), (64, 32, 32), (256, 64, 64))
"""Bytes of each PE's weight, input and output register files."""
REGISTER_FILE_PORT_BITS = (16, 16, 32)
PRECISION_SETS = (("int8",), ("int8", "fp16"))
GLOBAL_BUFFER_BITS_PER_PE = 8
"""The global buffer's port grows with the array: one byte a PE a cycle (the presets' 2048 bits for 256 PEs)."""
NODE_NM = 45
CLOCK_MHZ = 500.0
DRAM_BITS_PER_CYCLE = 256
"""The board's DRAM: 16 GB/s at 500 MHz, as the presets."""


@dataclass(frozen=True)
class HardwareCandidate:
    """One NPU the co-design may pick: its description, area and SRAM leakage."""

    spec: NpuSpec
    simulated: NpuSpec
    """the same hardware computing in every NPU precision: what its layers are simulated on (an int8
    layer costs the same whether or not the NPU could also compute fp16)"""
    area: AreaBreakdown
    leakage_mw: float

    @property
    def name(self) -> str:
        """The NPU's name."""
        return self.spec.name

    @property
    def area_mm2(self) -> float:
        """Core area."""
        return self.area.total


def candidate(rows: int, cols: int, global_buffer_kib: int, register_files: Sequence[int], precisions: Sequence[str],
              model: SiliconModel, node_nm: float = NODE_NM, clock_mhz: float = CLOCK_MHZ,
              dram_bits_per_cycle: int = DRAM_BITS_PER_CYCLE) -> HardwareCandidate:
    """The candidate NPU of these parameters, energies and area from `model` at `node_nm`."""
    unknown = sorted(set(precisions) - set(NPU_PRECISIONS))
    if unknown:
        raise ValueError(f"precisions {unknown} are not NPU precisions {NPU_PRECISIONS}")
    weights, inputs, outputs = (model.buffer(Memory(b, w), node_nm) for b, w in zip(register_files, REGISTER_FILE_PORT_BITS))
    glb = model.buffer(Memory(global_buffer_kib * 1024, GLOBAL_BUFFER_BITS_PER_PE * rows * cols), node_nm)
    dram_pj = round(model.dram_pj(dram_bits_per_cycle), 3)
    hardware = f"npu-{rows}x{cols}-gb{global_buffer_kib}k-rf{register_files[0]}"
    simulated = NpuSpec(
        name=hardware,
        description=(f"co-design candidate: {rows}x{cols} PEs, {tuple(register_files)} B register files, "
                     f"{global_buffer_kib} KiB global buffer, {node_nm:g} nm, {clock_mhz:g} MHz"),
        dataflow="os_ch:auto",
        clock_mhz=clock_mhz,
        rows=rows,
        cols=cols,
        mac_energy_pj={p: round(model.mac_pj(p, node_nm), 4) for p in NPU_PRECISIONS},
        pe_weights=weights,
        pe_inputs=inputs,
        pe_outputs=outputs,
        global_buffer=glb,
        dram=Buffer(10**12, dram_bits_per_cycle, dram_pj, dram_pj),
    )
    spec = replace(simulated, name=f"{hardware}-{'-'.join(precisions)}",
                   mac_energy_pj={p: e for p, e in simulated.mac_energy_pj.items() if p in precisions})
    plan = npu_floorplan(spec, node_nm)
    return HardwareCandidate(spec, simulated, model.area(plan), model.leakage_mw(plan))


def design_space(model: SiliconModel | None = None, node_nm: float = NODE_NM, clock_mhz: float = CLOCK_MHZ,
                 dram_bits_per_cycle: int = DRAM_BITS_PER_CYCLE, arrays: Sequence[tuple[int, int]] = ARRAYS,
                 global_buffers_kib: Sequence[int] = GLOBAL_BUFFER_KIB,
                 register_files: Sequence[tuple[int, int, int]] = REGISTER_FILES,
                 precision_sets: Sequence[tuple[str, ...]] = PRECISION_SETS) -> list[HardwareCandidate]:
    """Every combination of the given parameters (default: 6 x 5 x 3 x 2 = 180 NPUs), smallest area first."""
    model = model or SiliconModel()
    out = [candidate(r, c, g, rf, p, model, node_nm, clock_mhz, dram_bits_per_cycle)
           for (r, c), g, rf, p in itertools.product(arrays, global_buffers_kib, register_files, precision_sets)]
    return sorted(out, key=lambda h: h.area_mm2)

"""Area, leakage and access energies of an NPU's silicon, from published figures.

A design is a `Floorplan`: PEs of multiply-accumulate units (one per precision they compute in) and
register files, and the SRAMs they share. Arithmetic comes from Horowitz (ISSCC 2014, 45 nm),
flip-flops from the NanGate 45 nm library, SRAMs from CACTI 7 (the binary shipped in zigzag-dse, run
at the design's node); `deploy/data/npu_silicon.yaml` cites each figure. Control, operand networks and
wiring are one multiple of the PEs' own area (`pe_overhead`), fitted on Eyeriss's published core and
checked on DianNao and ShiDianNao (`check_published`):

    python -m deploy.silicon        # refits the overhead on Eyeriss and prints the check
"""

from __future__ import annotations

import functools
import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.npu_hardware import Buffer, NpuSpec

DATA = Path(__file__).resolve().parent / "data"
SILICON_FILE = DATA / "npu_silicon.yaml"
PUBLISHED_FILE = DATA / "published_npus.yaml"
CACTI_NODES_NM = (22, 32, 45, 65, 90)
"""Nodes CACTI 7 has technology files for."""


class SiliconModelError(ValueError):
    """A design the model cannot price; the message names the part."""


@dataclass(frozen=True)
class Memory:
    """One SRAM or register file: capacity and port width."""

    bytes: int
    bits_per_cycle: int


@dataclass(frozen=True)
class MemoryFigures:
    """A memory's area, energy per access of its whole port, and standby leakage."""

    area_mm2: float
    read_pj: float
    write_pj: float
    leakage_mw: float


@dataclass(frozen=True)
class Floorplan:
    """What silicon a design is made of."""

    node_nm: float
    pes: int
    macs: tuple[str, ...]
    """one multiply-accumulate unit per precision, in every PE"""
    pe_memories: tuple[Memory, ...]
    shared_memories: tuple[Memory, ...] = field(default=())


@dataclass(frozen=True)
class AreaBreakdown:
    """Area of a floorplan by part, in mm^2."""

    macs: float
    pe_memories: float
    pe_overhead: float
    shared_memories: float

    @property
    def total(self) -> float:
        """The core's area."""
        return self.macs + self.pe_memories + self.pe_overhead + self.shared_memories

    def to_dict(self) -> dict[str, float]:
        """Each part and the total, rounded to um^2."""
        parts = {"macs": self.macs, "pe_memories": self.pe_memories, "pe_overhead": self.pe_overhead,
                 "shared_memories": self.shared_memories, "total": self.total}
        return {k: round(v, 6) for k, v in parts.items()}


class SiliconModel:
    """Area, leakage and energies of floorplans.

    Args:
        figures: the parsed `deploy/data/npu_silicon.yaml` (default: that file).
        pe_overhead: overrides the file's fitted PE overhead.
    """

    def __init__(self, figures: dict[str, Any] | None = None, pe_overhead: float | None = None) -> None:
        self.figures = figures if figures is not None else yaml.safe_load(SILICON_FILE.read_text())
        self.pe_overhead = float(self.figures["pe_overhead"] if pe_overhead is None else pe_overhead)
        self.reference_nm = float(self.figures["reference_nm"])

    # ---- arithmetic -------------------------------------------------------------------------
    def mac_pj(self, precision: str, node_nm: float) -> float:
        """Energy of one multiply-accumulate in `precision` at `node_nm`."""
        unit = self._mac(precision)
        return (unit["multiply"]["pj"] + unit["accumulate"]["pj"]) * node_nm / self.reference_nm

    def mac_mm2(self, precision: str, node_nm: float) -> float:
        """Area of one multiply-accumulate unit in `precision` at `node_nm`."""
        unit = self._mac(precision)
        return (unit["multiply"]["um2"] + unit["accumulate"]["um2"]) * 1e-6 * (node_nm / self.reference_nm) ** 2

    def _mac(self, precision: str) -> dict[str, Any]:
        try:
            return self.figures["mac"][precision]
        except KeyError:
            raise SiliconModelError(f"no published MAC figures for precision {precision!r}; known: {sorted(self.figures['mac'])}") from None

    # ---- memories ---------------------------------------------------------------------------
    def memory(self, memory: Memory, node_nm: float) -> MemoryFigures:
        """A PE register file or shared SRAM: flip-flops below `register_file_as_sram_from_bytes` or
        `register_file_as_sram_from_words` (an access costs, per bit of the port, what one of the
        smallest SRAM's 16-bit port costs), else CACTI's SRAM, built of banks no wider than
        `sram_bank_port_bits`."""
        smallest = int(self.figures["register_file_as_sram_from_bytes"])
        words = memory.bytes * 8 // memory.bits_per_cycle
        if memory.bytes < smallest or words < self.figures["register_file_as_sram_from_words"]:
            sram = self.memory(Memory(smallest, 16), node_nm)
            bits = memory.bits_per_cycle / 16
            area = memory.bytes * 8 * self.figures["flip_flop_um2_per_bit"] * 1e-6 * (node_nm / self.reference_nm) ** 2
            return MemoryFigures(area, sram.read_pj * bits, sram.write_pj * bits, 0.0)
        banks = max(1, math.ceil(memory.bits_per_cycle / self.figures["sram_bank_port_bits"]))
        bank = cacti(max(smallest, memory.bytes // banks), memory.bits_per_cycle // banks or 1, node_nm, self.figures["sram_cells"])
        return MemoryFigures(bank.area_mm2 * banks, bank.read_pj * banks, bank.write_pj * banks, bank.leakage_mw * banks)

    # ---- whole designs ----------------------------------------------------------------------
    def area(self, plan: Floorplan) -> AreaBreakdown:
        """Area of every part of `plan`."""
        macs = plan.pes * sum(self.mac_mm2(p, plan.node_nm) for p in plan.macs)
        registers = plan.pes * sum(self.memory(m, plan.node_nm).area_mm2 for m in plan.pe_memories)
        shared = sum(self.memory(m, plan.node_nm).area_mm2 for m in plan.shared_memories)
        return AreaBreakdown(macs, registers, self.pe_overhead * (macs + registers), shared)

    def leakage_mw(self, plan: Floorplan) -> float:
        """Standby leakage of the SRAMs (flip-flops and logic are not modelled)."""
        pe = sum(self.memory(m, plan.node_nm).leakage_mw for m in plan.pe_memories)
        return plan.pes * pe + sum(self.memory(m, plan.node_nm).leakage_mw for m in plan.shared_memories)

    def fit_pe_overhead(self, plan: Floorplan, area_mm2: float) -> float:
        """The PE overhead that makes `plan`'s modelled area `area_mm2`."""
        bare = SiliconModel(self.figures, pe_overhead=0.0).area(plan)
        pe = bare.macs + bare.pe_memories
        overhead = (area_mm2 - bare.total) / pe
        if overhead < 0:
            raise SiliconModelError(f"the design's parts alone ({bare.total:.2f} mm^2) exceed its area {area_mm2} mm^2")
        return overhead

    def buffer(self, memory: Memory, node_nm: float) -> Buffer:
        """A memory as ZigZag prices it: capacity, port width and energy per port-wide access."""
        figures = self.memory(memory, node_nm)
        return Buffer(memory.bytes, memory.bits_per_cycle, round(figures.read_pj, 4), round(figures.write_pj, 4))

    def dram_pj(self, bits_per_cycle: int) -> float:
        """Energy of one DRAM access `bits_per_cycle` wide."""
        return self.figures["dram_pj_per_bit"] * bits_per_cycle


def npu_floorplan(spec: NpuSpec, node_nm: float) -> Floorplan:
    """An NPU description's silicon at `node_nm`: its PEs with a MAC per supported precision and
    their three register files, and the global buffer (DRAM is off chip)."""
    pe = tuple(Memory(b.bytes, b.bits_per_cycle) for b in (spec.pe_weights, spec.pe_inputs, spec.pe_outputs))
    shared = (Memory(spec.global_buffer.bytes, spec.global_buffer.bits_per_cycle),)
    return Floorplan(node_nm, spec.rows * spec.cols, spec.precisions, pe, shared)


@functools.lru_cache(maxsize=None)
def cacti(size_bytes: int, port_bits: int, node_nm: float, cells: str) -> MemoryFigures:
    """CACTI 7's figures of one single-bank SRAM with one read and one write port (energies per
    access of the port); SiliconModelError naming the memory if CACTI finds no organisation."""
    import zigzag
    from zigzag.hardware.architecture.get_cacti_cost import CactiConfig

    if node_nm not in CACTI_NODES_NM:
        raise SiliconModelError(f"CACTI has no technology at {node_nm} nm; nodes: {CACTI_NODES_NM}")
    master = Path(zigzag.__file__).parent / "cacti" / "cacti_master"
    config = CactiConfig()
    values = {"mem_type": '"ram"', "cache_size": size_bytes, "IO_bus_width": port_bits, "line_size": max(1, port_bits // 8),
              "ex_rd_port": 1, "ex_wr_port": 1, "rd_wr_port": 0, "bank_count": 1, "technology": node_nm / 1000}
    lines = [option["string"] + str(values.get(name, option["default"])) + "\n" for name, option in config.config_options.items()]
    with tempfile.TemporaryDirectory(prefix="deploygym-cacti-") as tmp:
        path = Path(tmp) / "sram.cfg"
        config.write_config(lines, str(path))
        text = path.read_text()
        for part in ("Data array cell type", "Data array peripheral type"):
            text = text.replace(f'-{part} - "itrs-hp"', f'-{part} - "{cells}"')
        path.write_text(text)
        subprocess.run([str(master / "cacti"), "-infile", str(path)], cwd=master, capture_output=True, timeout=120)
        out = path.with_name("sram.cfg.out")
        if not out.exists():
            raise SiliconModelError(f"CACTI found no SRAM of {size_bytes} B with a {port_bits}-bit port at {node_nm} nm")
        header, *rows = out.read_text().splitlines()
    row = dict(zip((k.strip() for k in header.split(",")), (v.strip() for v in rows[-1].split(","))))
    return MemoryFigures(float(row["Area (mm2)"]), float(row["Dynamic read energy (nJ)"]) * 1e3,
                         float(row["Dynamic write energy (nJ)"]) * 1e3, float(row["Standby leakage per bank(mW)"]))


# ---- published designs ------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedDesign:
    """A fabricated accelerator: its floorplan, published core area and the paper."""

    name: str
    plan: Floorplan
    area_mm2: float
    source: str


def published_designs() -> list[PublishedDesign]:
    """The designs of `deploy/data/published_npus.yaml`."""
    designs = []
    for name, d in yaml.safe_load(PUBLISHED_FILE.read_text()).items():
        memories = {k: tuple(Memory(m["bytes"], m["bits_per_cycle"]) for m in d[k]) for k in ("pe_memories", "shared_memories")}
        plan = Floorplan(d["node_nm"], d["pes"], (d["mac"],), memories["pe_memories"], memories["shared_memories"])
        designs.append(PublishedDesign(name, plan, d["area_mm2"], " ".join(d["source"].split())))
    return designs


def check_published(model: SiliconModel | None = None) -> list[dict[str, Any]]:
    """Modelled against published core area for every published design, error in percent."""
    model = model or SiliconModel()
    rows = []
    for design in published_designs():
        area = model.area(design.plan)
        rows.append({"design": design.name, "node_nm": design.plan.node_nm, "published_mm2": design.area_mm2,
                     "modelled_mm2": round(area.total, 3), "error_percent": round(100 * (area.total / design.area_mm2 - 1), 1),
                     "breakdown_mm2": area.to_dict(), "source": design.source})
    return rows


def main() -> None:
    """Refit the PE overhead on Eyeriss and print the check on every published design."""
    designs = {d.name: d for d in published_designs()}
    fitted = SiliconModel().fit_pe_overhead(designs["eyeriss"].plan, designs["eyeriss"].area_mm2)
    print(f"pe_overhead fitted on Eyeriss: {fitted:.3f} (deploy/data/npu_silicon.yaml has {SiliconModel().pe_overhead})")
    for row in check_published(SiliconModel(pe_overhead=fitted)):
        print(f"{row['design']:11s} {row['node_nm']:.0f} nm: published {row['published_mm2']:6.2f} mm^2, modelled {row['modelled_mm2']:6.2f} ({row['error_percent']:+.1f}%)")


if __name__ == "__main__":
    main()

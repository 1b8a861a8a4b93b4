"""Analytical latency, memory and energy model of a Cortex-A class CPU running one CNN layer.

The model is built from the core's published characteristics (`CpuSpec`) and a handful of
calibrated efficiencies (`CpuModelParams`); nothing in it is a per-network constant. A layer under a
choice is a sequence of phases (im2col packing, Winograd transforms, the GEMM-like main loop, the
depthwise kernel), and each phase is priced as:

* compute: issue-limited cycles of the register-tiled inner loop, from instruction counts per
  reduction step (NEON MAC instructions per lane-vector, loads through one load port, fp16->fp32
  conversions for fp16 storage, widening sequences for int8 without dot-product), with tile-edge and
  lane waste, divided by an achieved-issue efficiency `eta`;
* memory: L2->L1 traffic (streamed operand re-read once per L1 block of the stationary operand, the
  non-partitioned operand read by every thread) and DRAM traffic (weights cold, activations that do not
  fit in the L2 share, workspaces and re-streaming that overflow it), over bandwidths that saturate with
  threads (DRAM capped at the measured total; shared-L2 contention as in the universal scalability law);
* threads: load imbalance over the parallel axis, a fork/join cost per parallel phase and thread
  beyond the first (measured, `deploy.fork_join`: not fitted);
* time = max(compute, memory) + overlap * min(compute, memory) + fixed costs.

Every number it returns carries the provenance `modelled:<name>@<version>`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from typing import Sequence

import numpy as np

from deploy.cost import Cost, TensorFormat
from envs.network import Layer, Op
from envs.space import QUANT_BYTES, Choice, CpuSchedule

MODEL_VERSION = 2
VECTOR_BYTES = 16  # NEON Q register
WINOGRAD_M = {"winograd_f2": 2, "winograd_f4": 4}
# NEON vector ops per tile per channel of the 2-D Winograd transforms: B^T d B and A^T m A done as
# row then column 1-D transforms (F(2,3): 4 ops per 1-D input/output transform; F(4,3): 12 / 10).
WINOGRAD_INPUT_OPS = {2: 32, 4: 144}
WINOGRAD_OUTPUT_OPS = {2: 24, 4: 100}


@dataclass(frozen=True)
class CpuSpec:
    """Published characteristics of a CPU cluster (one core type)."""

    name: str
    cores: int
    freq_ghz: float
    l1d_kib: int
    l2_kib: int
    simd_pipes: int
    load_ports: int
    dram_gbps: float
    fp16_arith: bool
    dotprod: bool
    idle_w: float
    core_active_w: float


@dataclass(frozen=True)
class CpuModelParams:
    """The calibrated part of the model: efficiencies the published sheet does not give."""

    eta: float = 0.6
    """Achieved fraction of the issue-limited peak in inner loops (scheduling, loop overhead, L1 misses)."""
    dram_core_gbps: float = 3.0
    """DRAM bandwidth one core can draw; the cluster total is capped by `CpuSpec.dram_gbps`."""
    l2_bytes_per_cycle: float = 12.0
    """L2->L1 bandwidth of one core, bytes per cycle."""
    l2_contention: float = 0.3
    """Shared-L2 contention: bandwidth of t threads = t / (1 + c (t - 1)) x one core's."""
    fork_join_us: float = 3.0
    """Fork/join cost of one parallel phase per thread beyond the first (`deploy.fork_join` measures it)."""
    overlap: float = 0.2
    """Fraction of the shorter of compute and memory time that is not hidden behind the longer."""
    layer_us: float = 3.0
    """Fixed cost of launching a layer (dispatch, small setup)."""
    call_us: float = 1.0
    """Fixed cost of one GEMM call (im2col+GEMM runs one per group)."""
    dram_fraction: float = 1.0
    """Fraction of the measured (streaming) DRAM bandwidth that mixed read/write layer traffic gets."""
    allcore_clock: float = 1.0
    """Fraction of the nominal clock sustained with every core busy (power and thermal limits);
    linear in the number of busy cores between one core (full clock) and all of them."""

    @classmethod
    def names(cls) -> list[str]:
        """Field names in declaration order."""
        return [f.name for f in fields(cls)]


CORTEX_A72 = CpuSpec(
    name="cortex-a72",
    cores=4,
    freq_ghz=1.5,
    l1d_kib=32,
    l2_kib=1024,
    simd_pipes=2,
    load_ports=1,
    dram_gbps=5.0,
    fp16_arith=False,
    dotprod=False,
    idle_w=2.7,  # Raspberry Pi 4 board at idle
    core_active_w=0.9,  # added per busy A72 core under NEON load
)


@dataclass(frozen=True)
class _Precision:
    """How one quantization executes: bytes stored, lanes per vector MAC, instructions per lane-vector."""

    bytes: int
    lanes: int
    instr_per_vector_mac: float
    convert_loads: bool
    epilogue_ops: float  # NEON ops per output vector (bias/activation; requantisation for int8)


def _precision(quant: str, spec: CpuSpec) -> _Precision:
    if quant == "int8":
        if spec.dotprod:  # sdot: 16 MACs (4 lanes x 4) in one instruction
            return _Precision(1, 4, 0.25, False, 3.0)
        # ARMv8.0: smull + smlal (8 x int16 lanes) then sadalp into int32: 3 instructions per 16 MACs
        return _Precision(1, 8, 1.5, False, 3.0)
    if quant == "fp16":
        if spec.fp16_arith:
            return _Precision(2, 8, 1.0, False, 1.0)
        return _Precision(2, 4, 1.0, True, 1.0)  # fcvtl to fp32, fp32 fmla
    return _Precision(4, 4, 1.0, False, 1.0)


@dataclass
class _Phase:
    """One loop nest of a layer: compute cycles (one thread), traffic, and how it splits over threads."""

    cycles: np.ndarray
    l2_bytes: np.ndarray
    dram_bytes: np.ndarray
    units: np.ndarray  # independent work items along the parallel axis


class _DataflowArrays:
    """The schedule options of a search space as arrays, so a layer prices all of them at once."""

    def __init__(self, dataflows: Sequence[CpuSchedule]) -> None:
        self.dataflows = tuple(dataflows)
        self.mr = np.array([d.tile_shape[0] for d in dataflows], float)
        self.nr = np.array([d.tile_shape[1] for d in dataflows], float)
        self.vec_oc = np.array([d.vec == "oc" for d in dataflows])
        self.par_oc = np.array([d.par == "oc" for d in dataflows])
        self.weight_outer = np.array([d.order == "weight_outer" for d in dataflows])
        self.threads = np.array([d.threads for d in dataflows], float)


class CpuLatencyModel:
    """Cost backend: the analytical model for one CPU spec and one set of calibrated parameters.

    Args:
        spec: the core's published characteristics.
        params: calibrated efficiencies.
        calibration: short name of where `params` came from (part of the fingerprint).
    """

    batch_friendly = True

    def __init__(self, spec: CpuSpec, params: CpuModelParams, calibration: str = "default") -> None:
        self.spec = spec
        self.params = params
        self.calibration = calibration
        self.provenance = f"modelled:{spec.name}-model@{MODEL_VERSION}"
        self._arrays: dict[tuple[CpuSchedule, ...], _DataflowArrays] = {}
        self.hz = spec.freq_ghz * 1e9
        self.l1 = spec.l1d_kib * 1024.0
        self.l2_share = spec.l2_kib * 1024.0 / 2  # half the L2 for one operand; the rest for the others

    # ---- CostBackend protocol ----------------------------------------------------------------
    def fingerprint(self) -> str:
        """Model version, spec and parameters: anything that changes a number."""
        blob = json.dumps({"v": MODEL_VERSION, "spec": asdict(self.spec), "params": asdict(self.params)}, sort_keys=True)
        return f"{self.provenance}:{self.calibration}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def io_format(self, choice: Choice) -> TensorFormat:
        """im2col+GEMM works on plain NCHW; the other kernels on channel-packed NCHWc."""
        return TensorFormat(choice.quant, "NCHW" if choice.algo == "im2col" else "NCHWc")

    def layer_costs(self, layer: Layer, choices: Sequence[Choice]) -> list[Cost]:
        """Price each choice; choices sharing (quant, algo) are priced together over their dataflows."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, c in enumerate(choices):
            groups.setdefault((c.quant, c.algo), []).append(i)
        out: list[Cost | None] = [None] * len(choices)
        for (quant, algo), idx in groups.items():
            dataflows = tuple(choices[i].dataflow for i in idx)
            latency_s, memory = self.price(layer, quant, algo, dataflows)
            threads = np.array([d.threads for d in dataflows], float)
            energy = latency_s * (self.spec.idle_w + self.spec.core_active_w * threads) * 1e3
            for j, i in enumerate(idx):
                out[i] = Cost(float(latency_s[j] * 1e3), int(memory), self.provenance, float(energy[j]))
        return out  # type: ignore[return-value]

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int = 1) -> Cost:
        """Pooling, add, concat, scale, affine and standalone activations: streaming passes over their tensors."""
        prec = _precision(fmt.quant, self.spec)
        elements = layer.read_elements + layer.weight_elements + layer.out_elements
        ops = max(layer.macs, layer.out_elements) / prec.lanes
        phase = _Phase(
            cycles=np.array([ops / self.spec.simd_pipes + elements * prec.bytes / VECTOR_BYTES]),
            l2_bytes=np.array([elements * prec.bytes]),
            dram_bytes=np.array([self._spill(elements * prec.bytes)]),
            units=np.array([float(layer.out_shape[0] * layer.out_shape[1])]),
        )
        seconds = self._time([phase], np.array([float(threads)]))[0]
        return Cost(seconds * 1e3, 0, self.provenance, seconds * (self.spec.idle_w + self.spec.core_active_w * threads) * 1e3)

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int = 1) -> Cost:
        """A repacking and/or (de)quantising pass: read in `src`, write in `dst`."""
        if src == dst:
            return Cost(0.0, 0, self.provenance, 0.0)
        b_in, b_out = QUANT_BYTES[src.quant], QUANT_BYTES[dst.quant]
        ops = elements / 4 * (3.0 if "int8" in (src.quant, dst.quant) and src.quant != dst.quant else 1.0)
        traffic = elements * (b_in + b_out)
        phase = _Phase(
            cycles=np.array([ops / self.spec.simd_pipes + elements * (b_in + b_out) / VECTOR_BYTES]),
            l2_bytes=np.array([float(traffic)]),
            dram_bytes=np.array([self._spill(traffic)]),
            units=np.array([max(1.0, elements / 1024)]),
        )
        seconds = self._time([phase], np.array([float(threads)]))[0]
        return Cost(seconds * 1e3, elements * b_out, self.provenance, seconds * self.spec.idle_w * 1e3)

    # ---- the model -------------------------------------------------------------------------
    def price(
        self, layer: Layer, quant: str, algo: str, dataflows: Sequence[CpuSchedule]
    ) -> tuple[np.ndarray, float]:
        """Latency in seconds for each dataflow, and memory bytes (weights + workspace), of one layer."""
        df = self._arrays.get(tuple(dataflows))
        if df is None:
            df = self._arrays.setdefault(tuple(dataflows), _DataflowArrays(dataflows))
        prec = _precision(quant, self.spec)
        if algo in WINOGRAD_M:
            phases, memory = self._winograd(layer, quant, prec, WINOGRAD_M[algo], df)
        elif algo == "depthwise":
            phases, memory = self._depthwise(layer, prec, df), layer.weight_elements * prec.bytes
        else:
            phases, memory = self._conv_gemm(layer, prec, algo, df)
        if algo != "im2col" and layer.padding != (0, 0):
            # the kernels read a zero-padded copy of their input, made in one pass
            cin, h, w = layer.in_shape
            padded = cin * (h + 2 * layer.padding[0]) * (w + 2 * layer.padding[1]) * prec.bytes
            phases.insert(0, self._copy(float(padded), df, float(h)))
        fixed = self.params.layer_us * 1e-6
        if algo == "im2col" and layer.groups > 1:
            fixed += layer.groups * self.params.call_us * 1e-6
        return self._time(phases, df.threads) + fixed, float(memory)

    def _spill(self, nbytes: float | np.ndarray) -> np.ndarray:
        """DRAM traffic for a tensor that goes through the cache: none if it fits the L2 share."""
        nbytes = np.asarray(nbytes, float)
        return np.where(nbytes > self.l2_share, nbytes, 0.0)

    def _time(self, phases: list[_Phase], threads: np.ndarray) -> np.ndarray:
        p, spec = self.params, self.spec
        total = np.zeros_like(threads)
        for ph in phases:
            busy = np.minimum(threads, ph.units)
            clock = self.hz * (1 - (1 - p.allcore_clock) * (busy - 1) / max(spec.cores - 1, 1))
            t_compute = ph.cycles / clock * np.ceil(ph.units / threads) / ph.units
            l2_bw = p.l2_bytes_per_cycle * self.hz * busy / (1 + p.l2_contention * (busy - 1))
            dram_bw = np.minimum(busy * p.dram_core_gbps, spec.dram_gbps * p.dram_fraction) * 1e9
            t_memory = np.maximum(ph.l2_bytes / l2_bw, ph.dram_bytes / dram_bw)
            total = total + np.maximum(t_compute, t_memory) + p.overlap * np.minimum(t_compute, t_memory)
            total = total + p.fork_join_us * 1e-6 * (threads - 1)
        return total

    def _gemm(
        self,
        df: _DataflowArrays,
        prec: _Precision,
        m: int,
        n_row: int,
        rows: int,
        k: int,
        batch: int,
        weight_bytes: float,
        streamed_bytes: float,
        out_bytes: float,
        spatial_load_stride: int = 1,
    ) -> _Phase:
        """A register-tiled GEMM-like loop: batch x (m x [rows x n_row]) outputs, reduction k."""
        mr, nr = np.minimum(df.mr, m), np.minimum(df.nr, n_row)
        vec_e = np.where(df.vec_oc, mr, nr)
        other_e = np.where(df.vec_oc, nr, mr)
        mac_instr = np.ceil(vec_e / prec.lanes) * other_e * prec.instr_per_vector_mac
        loads = np.ceil(mr * prec.bytes / VECTOR_BYTES) + np.ceil(nr * prec.bytes / VECTOR_BYTES) * spatial_load_stride
        converts = (np.ceil(mr / 4) + np.ceil(nr / 4)) if prec.convert_loads else 0.0
        cycles_k = np.maximum((mac_instr + converts) / self.spec.simd_pipes, loads / self.spec.load_ports)
        m_blocks, n_blocks = np.ceil(m / mr), np.ceil(n_row / nr)
        steps = m_blocks * n_blocks * rows * k * batch
        epilogue = batch * m * n_row * rows / prec.lanes * prec.epilogue_ops / self.spec.simd_pipes
        cycles = (steps * cycles_k + epilogue) / self.params.eta
        units = np.where(df.par_oc, m_blocks * batch, n_blocks * rows)
        # cache blocking, per batch element (group or Winograd frequency): the stationary operand is
        # held in L1 (then L2) blocks and the other streamed past each block
        stationary = np.where(df.weight_outer, weight_bytes, streamed_bytes) / batch
        streamed = np.where(df.weight_outer, streamed_bytes, weight_bytes) / batch
        l1_passes = np.ceil(stationary / (self.l1 / 2))
        unsplit = np.where(df.par_oc, streamed_bytes, weight_bytes)  # every thread reads all of it
        busy = np.minimum(df.threads, units)
        l2 = batch * (stationary + l1_passes * streamed) + (busy - 1) * unsplit + out_bytes
        l2_passes = np.ceil(stationary / self.l2_share)
        restream = batch * np.where(streamed > self.l2_share, (l2_passes - 1) * streamed, 0.0)
        dram = weight_bytes + self._spill(streamed_bytes) + self._spill(out_bytes) + restream
        return _Phase(cycles, l2, dram, units)

    def _copy(self, nbytes: float, df: _DataflowArrays, units: float) -> _Phase:
        """A streaming copy of `nbytes` (packing, padding): one load and one store per vector."""
        n = len(df.threads)
        return _Phase(
            cycles=np.full(n, nbytes / VECTOR_BYTES / self.spec.load_ports / self.params.eta),
            l2_bytes=np.full(n, 2 * nbytes),
            dram_bytes=np.full(n, float(2 * self._spill(nbytes))),
            units=np.full(n, units),
        )

    def _conv_gemm(self, layer: Layer, prec: _Precision, algo: str, df: _DataflowArrays) -> tuple[list[_Phase], float]:
        """Direct loop nest or im2col + GEMM, for conv, pointwise, depthwise (grouped) and dense."""
        g = layer.groups
        cin, _, _ = layer.in_shape
        cout, oh, ow = layer.out_shape
        kh, kw = layer.kernel
        weights = layer.weight_elements * prec.bytes
        out_bytes = layer.out_elements * prec.bytes
        in_bytes = layer.in_elements * prec.bytes
        m, k = cout // g, (cin // g) * kh * kw
        if layer.op is Op.DENSE:
            m, k = cout, layer.in_elements
        if algo == "direct" or layer.op is Op.DENSE:  # a dense layer is a GEMV either way
            phase = self._gemm(df, prec, m, ow, oh, k, g, weights, in_bytes, out_bytes, layer.stride[1])
            return [phase], weights
        needs_buffer = (kh, kw, *layer.stride) != (1, 1, 1, 1)
        col_bytes = float(g * k * oh * ow * prec.bytes) if needs_buffer else 0.0
        phases = []
        if needs_buffer:
            # im2col: gather kh*kw shifted copies of the input into a K x N matrix (one load port bound)
            gather = col_bytes / VECTOR_BYTES * layer.stride[1]
            phases.append(
                _Phase(
                    cycles=np.full(len(df.threads), gather / self.params.eta),
                    l2_bytes=np.full(len(df.threads), in_bytes + col_bytes),
                    dram_bytes=np.full(len(df.threads), float(self._spill(in_bytes) + self._spill(col_bytes))),
                    units=np.full(len(df.threads), float(g * cin // g if g > 1 else oh)),
                )
            )
        else:
            # a GEMM library packs its B operand (the activations) into panels: one copy pass
            phases.append(self._copy(in_bytes, df, float(oh)))
        streamed = col_bytes if needs_buffer else in_bytes
        phases.append(self._gemm(df, prec, m, oh * ow, 1, k, g, weights, streamed, out_bytes))
        return phases, weights + max(col_bytes, in_bytes)

    def _winograd(
        self, layer: Layer, quant: str, prec: _Precision, tile: int, df: _DataflowArrays
    ) -> tuple[list[_Phase], float]:
        """Winograd F(m x m, 3x3): input transform, alpha^2 batched GEMMs, output transform."""
        alpha = tile + 2
        cin, _, _ = layer.in_shape
        cout, oh, ow = layer.out_shape
        tiles = math.ceil(oh / tile) * math.ceil(ow / tile)
        # transforms in fp32 (fp32/fp16 storage) or int16 (int8): transformed data keeps 2 or 4 bytes
        t_bytes = 2 if quant in ("int8", "fp16") else 4
        gemm_prec = _Precision(t_bytes, 4, 1.0, quant == "fp16", 0.0) if quant == "int8" else prec
        v_bytes = float(alpha * alpha * tiles * cin * t_bytes)
        m_bytes = float(alpha * alpha * tiles * cout * 4)
        u_bytes = float(alpha * alpha * cin * cout * t_bytes)
        in_bytes = layer.in_elements * prec.bytes
        out_bytes = layer.out_elements * prec.bytes
        n = len(df.threads)
        lanes = 4
        transform_in = _Phase(
            cycles=np.full(n, cin * tiles * WINOGRAD_INPUT_OPS[tile] / lanes / self.spec.simd_pipes / self.params.eta),
            l2_bytes=np.full(n, in_bytes + v_bytes),
            dram_bytes=np.full(n, float(self._spill(in_bytes) + self._spill(v_bytes))),
            units=np.full(n, float(cin)),
        )
        gemm = self._gemm(df, gemm_prec, cout, tiles, 1, cin, alpha * alpha, u_bytes, v_bytes, m_bytes)
        epilogue = cout * oh * ow / prec.lanes * prec.epilogue_ops
        transform_out = _Phase(
            cycles=np.full(
                n, (cout * tiles * WINOGRAD_OUTPUT_OPS[tile] / lanes + epilogue) / self.spec.simd_pipes / self.params.eta
            ),
            l2_bytes=np.full(n, m_bytes + out_bytes),
            dram_bytes=np.full(n, float(self._spill(m_bytes) + self._spill(out_bytes))),
            units=np.full(n, float(cout)),
        )
        return [transform_in, gemm, transform_out], u_bytes + v_bytes + m_bytes

    def _depthwise(self, layer: Layer, prec: _Precision, df: _DataflowArrays) -> list[_Phase]:
        """Specialised depthwise kernel: channels in vector lanes (vec=oc) or output columns (vec=spatial)."""
        c, oh, ow = layer.out_shape
        kh, kw = layer.kernel
        s = layer.stride[1]
        taps = kh * kw
        lanes = float(prec.lanes)
        block = np.minimum(df.nr, ow)  # output columns per register block
        # vec=oc: each output position is a vector of channels; a kernel row's inputs are loaded once
        # per block and reused across kw. vec=spatial: each tap needs its own (unaligned/strided) load.
        row_loads = kh * (block * s + kw - s)
        regs = block + taps + (block * s + kw - s)
        spill = np.maximum(regs - 32, 0) * 2
        loads_oc = (row_loads + spill) / block
        cycles_oc = np.maximum(taps * prec.instr_per_vector_mac / self.spec.simd_pipes, loads_oc / self.spec.load_ports)
        vectors_oc = math.ceil(c / lanes) * oh * ow
        cycles_sp = np.maximum(taps * prec.instr_per_vector_mac / self.spec.simd_pipes, taps * s / self.spec.load_ports)
        vectors_sp = c * oh * np.ceil(ow / lanes)
        epilogue = c * oh * ow / lanes * prec.epilogue_ops / self.spec.simd_pipes
        if prec.convert_loads:
            cycles_oc = cycles_oc + row_loads / block / self.spec.simd_pipes
            cycles_sp = cycles_sp + taps / self.spec.simd_pipes
        cycles = (np.where(df.vec_oc, vectors_oc * cycles_oc, vectors_sp * cycles_sp) + epilogue) / self.params.eta
        in_bytes = layer.in_elements * prec.bytes
        out_bytes = layer.out_elements * prec.bytes
        weights = layer.weight_elements * prec.bytes
        n = len(df.threads)
        units = np.where(df.par_oc, np.ceil(c / lanes), float(oh))
        return [
            _Phase(
                cycles=cycles,
                l2_bytes=np.full(n, in_bytes + out_bytes + weights),
                dram_bytes=np.full(n, float(weights + self._spill(in_bytes) + self._spill(out_bytes))),
                units=units,
            )
        ]

    def with_params(self, params: CpuModelParams, calibration: str) -> "CpuLatencyModel":
        """The same spec with other parameters (used by calibration)."""
        return CpuLatencyModel(self.spec, params, calibration)


def load_calibration(name: str) -> CpuModelParams:
    """Calibrated parameters shipped in `deploy/data/<name>.json` (written by the calibration script)."""
    text = resources.files("deploy").joinpath("data", f"{name}.json").read_text()
    data = json.loads(text)
    return replace(CpuModelParams(), **data["params"])

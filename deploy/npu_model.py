"""A roofline bound of an NPU layer, and the NPU's non-searched work (pools, adds, conversions).

The bound is what no mapping can beat: the compute cycles of the dataflow's spatial unrolling (every
unrolled dimension padded up to a multiple of its unroll factor) and the cycles DRAM needs to move
each input, weight and output once. It stands in for unsimulated choices where a whole layer is
needed at once (lower bounds while an episode is under way), and prices the layers no dataflow maps:
pooling, adds and precision conversions stream their tensors through DRAM.
"""

from __future__ import annotations

import math
from typing import Sequence

from deploy.cost import Cost, TensorFormat
from deploy.npu_hardware import NpuSpec
from deploy.zigzag_sim import loop_sizes, spatial_unrolling
from envs.network import Layer
from envs.space import QUANT_BYTES, Choice

MODEL_VERSION = 1


class NpuRooflineModel:
    """Lower-bound latency and energy of each NPU choice, without simulation (batch-friendly)."""

    batch_friendly = True

    def __init__(self, spec: NpuSpec) -> None:
        self.spec = spec
        self.provenance = f"modelled:npu-roofline@{MODEL_VERSION}"

    def fingerprint(self) -> str:
        """The model version and the NPU it describes."""
        return f"{self.provenance}:{self.spec.name}"

    def io_format(self, choice: Choice) -> TensorFormat:
        """Activations are stored in the layer's precision, channels last."""
        return TensorFormat(choice.quant, "NHWC")

    def layer_costs(self, layer: Layer, choices: Sequence[Choice]) -> list[Cost]:
        """The roofline bound of each choice."""
        return [self._bound(layer, c) for c in choices]

    def _bound(self, layer: Layer, choice: Choice) -> Cost:
        sizes = loop_sizes(layer)
        unrolled: dict[str, int] = {}
        for dims in spatial_unrolling(layer, choice.dataflow.spatial, self.spec.rows, self.spec.cols).values():
            unrolled.update(dims)
        compute = math.prod(math.ceil(n / unrolled.get(dim, 1)) for dim, n in sizes.items())
        nbytes = memory_bytes(layer, choice.quant)
        energy_pj = layer.macs * self.spec.mac_energy_pj[choice.quant] + self._dram_pj(nbytes)
        return Cost(self.spec.latency_ms(max(compute, self._dram_cycles(nbytes))), nbytes, self.provenance, energy_pj * 1e-9)

    def fixed_layer_cost(self, layer: Layer, fmt: TensorFormat, threads: int = 1) -> Cost:
        """Pooling, add, concat and activations: their tensors stream through DRAM once."""
        return self._streamed(layer.bytes_moved(QUANT_BYTES[fmt.quant]), 0)

    def conversion_cost(self, elements: int, src: TensorFormat, dst: TensorFormat, threads: int = 1) -> Cost:
        """A precision conversion reads the tensor in `src` and writes it in `dst` (zero when equal)."""
        if src == dst:
            return Cost(0.0, 0, self.provenance, 0.0)
        return self._streamed(elements * (QUANT_BYTES[src.quant] + QUANT_BYTES[dst.quant]), elements * QUANT_BYTES[dst.quant])

    def _streamed(self, nbytes: float, memory: int) -> Cost:
        """Moving `nbytes` through DRAM, and nothing else."""
        return Cost(self.spec.latency_ms(self._dram_cycles(nbytes)), memory, self.provenance, self._dram_pj(nbytes) * 1e-9)

    def _dram_cycles(self, nbytes: float) -> float:
        return nbytes * 8 / self.spec.dram.bits_per_cycle

    def _dram_pj(self, nbytes: float) -> float:
        return self._dram_cycles(nbytes) * (self.spec.dram.read_pj + self.spec.dram.write_pj) / 2


def memory_bytes(layer: Layer, quant: str) -> int:
    """Weights, input and output of a layer at `quant`."""
    return int(layer.bytes_moved(QUANT_BYTES[quant]))

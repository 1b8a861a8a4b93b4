"""The per-layer search space: what a layer's deployment can be, and which of it is valid.

A `Choice` fixes the four levels for one layer: architecture variant, quantization, algorithm and
dataflow (on a CPU, the loop schedule). The action that selects it is MultiDiscrete
`(arch, quant x algorithm, *dataflow components)`: on a CPU the loop schedule (register tile, loop
order, vectorised and parallel axes: 24 entries, which interact) and the thread count, which scales
whichever schedule runs; on an NPU one component of its spatial unrollings x temporal mappings.
Splitting only the thread count off worked best for PPO (benchmarks/README.md): with every field a
component of its own, interacting fields locked into poor combinations on some seeds (tile 4x16 with
input-outer order and spatial vectors on nearly every layer); with all 72 dataflows one component it
learnt slower. SB3-contrib
masks MultiDiscrete actions per component, which is exact only if the valid set of a layer is a
Cartesian product of per-component sets; the encoding is chosen so that it is: everything that could
constrain validity jointly sits inside the one `quant x algorithm` component, and every dataflow is
valid for every algorithm (each algorithm reads tile, order, axes and threads in its own way). int8 Winograd works in an int16 transform domain, as
ncnn's winograd23/43 int8 kernels do (the F(4x4,3x3) input transform grows values at most 100x). `SearchSpace.mask`
returns exact masks; `SearchSpace.check` explains an invalid choice.

On an NPU the dataflow is an `NpuDataflow`: which loops are unrolled across the PE array (a named
family, sized to the array by the backend) and whether the temporal mapping follows the family's
stationarity or is searched (`auto`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from envs.network import Layer, Op

QUANTS = ("fp32", "fp16", "int8")
"""fp32; fp16 storage with fp32 arithmetic; int8 storage with int32 accumulation."""
ALGORITHMS = ("direct", "im2col", "winograd_f2", "winograd_f4", "depthwise")
"""direct loop nest; im2col + GEMM; Winograd F(2x2,3x3) and F(4x4,3x3); specialised depthwise."""
TILES = ("8x8", "16x4", "4x16")
"""Register tile as out-channels x spatial outputs."""
ORDERS = ("weight_outer", "input_outer")
"""Outer cache loop: weights stationary (input streamed per weight block) or the reverse."""
AXES = ("oc", "spatial")
BASE_ARCH = "base"
QUANT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


class InvalidChoice(ValueError):
    """A choice the search space does not admit for a layer."""


@dataclass(frozen=True)
class CpuSchedule:
    """A CPU loop schedule: register tile, outer loop order, vectorised and parallel axes, threads."""

    tile: str = "8x8"
    order: str = "weight_outer"
    vec: str = "oc"
    par: str = "oc"
    threads: int = 1

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("tile", self.tile, TILES),
            ("order", self.order, ORDERS),
            ("vec", self.vec, AXES),
            ("par", self.par, AXES),
        ):
            if value not in allowed:
                raise InvalidChoice(f"schedule {name}={value!r} is not one of {allowed}")
        if self.threads < 1:
            raise InvalidChoice(f"schedule threads={self.threads} must be >= 1")

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(out-channel block, spatial block) in elements."""
        m, n = self.tile.split("x")
        return int(m), int(n)

    @property
    def key(self) -> str:
        """Compact stable string, used in database keys."""
        return f"{self.tile}/{self.order}/vec={self.vec}/par={self.par}/t{self.threads}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"tile": self.tile, "order": self.order, "vec": self.vec, "par": self.par, "threads": self.threads}


NPU_SPATIAL = ("ws", "os", "os_ch", "rs")
"""Spatial unrollings over the PE array's (rows, cols): ws = output x input channels (NVDLA-like weight
stationary), os = output columns x rows (ShiDianNao-like output stationary), os_ch = output channels x
output columns (TPU-like output stationary), rs = filter rows (packed with input channels) x output rows
(Eyeriss row stationary). A depthwise layer's channels take the place of the output channels."""
NPU_TEMPORAL = ("stationary", "auto")
"""stationary: the family's stationary operand stays innermost (its irrelevant loops run first);
auto: ZigZag's mapping search picks the best temporal mapping for the spatial unrolling."""


@dataclass(frozen=True)
class NpuDataflow:
    """An NPU dataflow: spatial unrolling family and temporal mapping mode (see `NPU_SPATIAL`)."""

    spatial: str = "ws"
    temporal: str = "stationary"

    def __post_init__(self) -> None:
        if self.spatial not in NPU_SPATIAL:
            raise InvalidChoice(f"NPU spatial unrolling {self.spatial!r} is not one of {NPU_SPATIAL}")
        if self.temporal not in NPU_TEMPORAL:
            raise InvalidChoice(f"NPU temporal mapping {self.temporal!r} is not one of {NPU_TEMPORAL}")

    threads = 1
    """An NPU runs one layer at a time on its whole array."""

    @property
    def key(self) -> str:
        """Compact stable string, used in database keys."""
        return f"npu:{self.spatial}:{self.temporal}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"spatial": self.spatial, "temporal": self.temporal}

    @classmethod
    def parse(cls, text: str) -> "NpuDataflow":
        """`ws:auto`, `rs:stationary` or a `key` -> NpuDataflow."""
        parts = text.removeprefix("npu:").split(":")
        if len(parts) != 2:
            raise InvalidChoice(f"NPU dataflow {text!r} is not SPATIAL:TEMPORAL (e.g. 'rs:stationary')")
        return cls(*parts)


def npu_dataflows() -> tuple[NpuDataflow, ...]:
    """Every NPU dataflow option: each spatial family with each temporal mode."""
    return tuple(NpuDataflow(s, t) for s, t in itertools.product(NPU_SPATIAL, NPU_TEMPORAL))


Dataflow = CpuSchedule | NpuDataflow


def cpu_schedules(max_threads: int) -> tuple[CpuSchedule, ...]:
    """Every schedule of the family for a CPU with `max_threads` cores (threads 1, 2, 4, ... <= cores)."""
    threads = [t for t in (1, 2, 4, 8) if t <= max_threads]
    return tuple(
        CpuSchedule(tile, order, vec, par, t)
        for tile, order, vec, par, t in itertools.product(TILES, ORDERS, AXES, AXES, threads)
    )


@dataclass(frozen=True)
class Choice:
    """One layer's deployment: architecture variant, quantization, algorithm and dataflow."""

    quant: str
    algo: str
    dataflow: Dataflow
    arch: str = BASE_ARCH

    @property
    def key(self) -> str:
        """Compact stable string, used in database keys."""
        return f"{self.arch}/{self.quant}/{self.algo}/{self.dataflow.key}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"arch": self.arch, "quant": self.quant, "algo": self.algo, "dataflow": self.dataflow.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Choice":
        """Inverse of `to_dict`."""
        flow = d["dataflow"]
        dataflow = NpuDataflow(**flow) if "spatial" in flow else CpuSchedule(**flow)
        return cls(d["quant"], d["algo"], dataflow, d.get("arch", BASE_ARCH))

    @classmethod
    def from_key(cls, key: str) -> "Choice":
        """Inverse of `key` (as stored in the measurement database)."""
        try:
            parts = key.split("/")
            if len(parts) == 4:
                arch, quant, algo, flow = parts
                return cls(quant, algo, NpuDataflow.parse(flow), arch)
            arch, quant, algo, tile, order, vec, par, threads = parts
            schedule = CpuSchedule(tile, order, vec.removeprefix("vec="), par.removeprefix("par="), int(threads.removeprefix("t")))
        except ValueError as err:
            raise InvalidChoice(f"{key!r} is not a choice key ({err})") from None
        return cls(quant, algo, schedule, arch)


def why_invalid(layer: Layer, quant: str, algo: str) -> str | None:
    """The reason `(quant, algo)` cannot deploy `layer`, or None when it can."""
    if not layer.op.searchable:
        return f"layer {layer.name!r} ({layer.op.value}) has no per-layer choice"
    if quant not in QUANTS:
        return f"quantization {quant!r} is not one of {QUANTS}"
    if algo not in ALGORITHMS:
        return f"algorithm {algo!r} is not one of {ALGORITHMS}"
    if algo == "depthwise" and layer.op is not Op.DEPTHWISE:
        return f"the depthwise kernel needs a depthwise layer; {layer.name!r} is {layer.op.value}"
    if algo.startswith("winograd"):
        if layer.op is not Op.CONV or layer.groups != 1:
            return f"Winograd needs a dense (groups=1) convolution; {layer.name!r} is {layer.op.value}"
        if layer.kernel != (3, 3) or layer.stride != (1, 1):
            return f"Winograd F(m,3x3) needs a 3x3 stride-1 kernel; {layer.name!r} has {layer.kernel} stride {layer.stride}"
    return None


def dataflow_components(dataflows: Sequence[Dataflow]) -> tuple[int, ...]:
    """The sizes of the action components that select a dataflow: (loop schedules, thread counts) when
    `dataflows` runs every schedule at every thread count, thread counts varying fastest (as
    `cpu_schedules` lists them); otherwise one component of all of them."""
    counts = tuple(dict.fromkeys(d.threads for d in dataflows))
    k, n = len(counts), len(dataflows)
    if k < 2 or n % k:
        return (n,)
    for start in range(0, n, k):
        block = dataflows[start : start + k]
        shapes = {tuple(v for name, v in d.to_dict().items() if name != "threads") for d in block}
        if tuple(d.threads for d in block) != counts or len(shapes) != 1:
            return (n,)
    return (n // k, k)


class SearchSpace:
    """The action encoding for one target: MultiDiscrete `(arch, quant x algorithm, *dataflow components)`.

    Args:
        dataflows: the target's dataflow options (CPU schedules or NPU dataflows).
        quants: precisions the target supports.
        arch_options: architecture variants; `("base",)` until an architecture space fills the slot.
        algorithms: the algorithms the target implements.
        baseline: the reference deployment of every layer; default "BLAS fp32" (fp32 im2col+GEMM, the
            default schedule on all threads).
    """

    def __init__(
        self,
        dataflows: Sequence[Dataflow],
        quants: Sequence[str] = QUANTS,
        arch_options: Sequence[str] = (BASE_ARCH,),
        algorithms: Sequence[str] = ALGORITHMS,
        baseline: Choice | None = None,
    ) -> None:
        unknown = set(quants) - set(QUANTS)
        if unknown:
            raise InvalidChoice(f"unknown quantization(s) {sorted(unknown)}; valid: {QUANTS}")
        unknown = set(algorithms) - set(ALGORITHMS)
        if unknown:
            raise InvalidChoice(f"unknown algorithm(s) {sorted(unknown)}; valid: {ALGORITHMS}")
        self.dataflows = tuple(dataflows)
        self.arch_options = tuple(arch_options)
        self.quant_algos = tuple(itertools.product(quants, algorithms))
        self._baseline = baseline or Choice("fp32", "im2col", CpuSchedule(threads=max(d.threads for d in self.dataflows)))
        self.dataflow_radix = dataflow_components(self.dataflows)
        """Sizes of the action's dataflow components (after the first two; `dataflow_components`)."""
        self.nvec = (len(self.arch_options), len(self.quant_algos), *self.dataflow_radix)
        self._dataflow_index = {d: i for i, d in enumerate(self.dataflows)}
        self._qa_index = {qa: i for i, qa in enumerate(self.quant_algos)}
        self._mask_cache: dict[str, np.ndarray] = {}

    @property
    def action_space(self) -> spaces.MultiDiscrete:
        """The Gymnasium action space."""
        return spaces.MultiDiscrete(np.array(self.nvec, dtype=np.int64))

    @property
    def size(self) -> int:
        """Number of distinct actions (valid or not)."""
        return int(np.prod(self.nvec))

    def decode(self, action: Sequence[int]) -> Choice:
        """Action -> Choice (no validity check)."""
        a, qa, *fields = (int(x) for x in action)
        quant, algo = self.quant_algos[qa]
        dataflow = self.dataflows[int(np.ravel_multi_index(fields, self.dataflow_radix))]
        return Choice(quant, algo, dataflow, self.arch_options[a])

    def encode(self, choice: Choice) -> np.ndarray:
        """Choice -> action; raises InvalidChoice if the choice is outside this space."""
        try:
            head = [self.arch_options.index(choice.arch), self._qa_index[(choice.quant, choice.algo)]]
            return np.array(head + list(self.dataflow_entries(self._dataflow_index[choice.dataflow])), dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise InvalidChoice(f"choice {choice.key} is outside this search space") from err

    def dataflow_entries(self, index: int) -> np.ndarray:
        """The dataflow components of the action that selects `dataflows[index]`."""
        return np.array(np.unravel_index(index, self.dataflow_radix), dtype=np.int64)

    def dataflow_mask(self, only: int | None = None) -> np.ndarray:
        """The dataflow components' masks: every entry, or only those selecting `dataflows[only]`."""
        if only is None:
            return np.ones(sum(self.dataflow_radix), dtype=bool)
        return np.concatenate([np.arange(n) == i for n, i in zip(self.dataflow_radix, self.dataflow_entries(only))])

    def qa_mask(self, layer: Layer) -> np.ndarray:
        """Which `quant x algorithm` entries are valid for the layer."""
        return np.array([why_invalid(layer, q, a) is None for q, a in self.quant_algos], dtype=bool)

    def mask(self, layer: Layer) -> np.ndarray:
        """Concatenated per-component masks; exact because validity is a product (module docstring)."""
        key = layer.signature
        cached = self._mask_cache.get(key)
        if cached is None:
            cached = np.concatenate([np.ones(self.nvec[0], bool), self.qa_mask(layer), self.dataflow_mask()])
            self._mask_cache[key] = cached
        return cached

    def check(self, layer: Layer, choice: Choice) -> None:
        """Raise InvalidChoice naming the reason if `choice` cannot deploy `layer`."""
        reason = why_invalid(layer, choice.quant, choice.algo)
        if reason is None and (choice.quant, choice.algo) not in self._qa_index:
            reason = f"{choice.quant} {choice.algo} is not offered by this target (it offers {self.quant_algos})"
        if reason is None and choice.dataflow not in self._dataflow_index:
            reason = f"dataflow {choice.dataflow.key} is not offered by this target"
        if reason is None and choice.arch not in self.arch_options:
            reason = f"architecture variant {choice.arch!r} is not one of {self.arch_options}"
        if reason is not None:
            raise InvalidChoice(f"layer {layer.name!r}: {reason}")

    def valid_choices(self, layer: Layer) -> list[Choice]:
        """Every valid choice for the layer (the product of the component masks)."""
        return [
            Choice(q, a, d, arch)
            for arch in self.arch_options
            for (q, a), ok in zip(self.quant_algos, self.qa_mask(layer))
            if ok
            for d in self.dataflows
        ]

    def baseline_choice(self) -> Choice:
        """The reference deployment of any layer (speed-ups are measured against it)."""
        return self._baseline

    def all_choices(self) -> list[Choice]:
        """Every action decoded, in `flat_index` order (valid or not)."""
        return [
            Choice(q, a, d, arch) for arch in self.arch_options for q, a in self.quant_algos for d in self.dataflows
        ]

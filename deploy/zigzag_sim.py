"""One layer on one NPU under one dataflow, simulated by ZigZag (`zigzag-dse`).

`zigzag_inputs` turns (layer, choice, NPU) into ZigZag's three inputs: the workload (the layer as a
loop nest `O[b][g][k][oy][ox] += W[g][k][c][fy][fx] * I[b][g][c][iy][ix]`), the accelerator and the
mapping (the dataflow's spatial unrolling, sized to the array, and for a `stationary` temporal mapping
the loops that must run innermost). `simulate` runs ZigZag on them in a temporary folder and returns
cycles and energy; it is what the NPU backend's worker processes call.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from deploy.npu_hardware import OPERAND_BITS, PARTIAL_SUM_BITS, NpuSpec, npu_spec_from_dict
from envs.network import Layer, Op
from envs.space import Choice

ZIGZAG_VERSION = version("zigzag-dse")
_LINKS = {"O": "O", "W": "I2", "I": "I1"}

_STATIONARY_INNER = {
    "ws": ("OX", "OY"),  # weights stay while the outputs they feed stream past
    "os": ("FX", "FY", "C"),  # each output accumulates its whole reduction in place
    "os_ch": ("FX", "FY", "C"),
    "rs": ("FX", "OX"),  # a filter row slides along an input row inside the PE
}
"""Innermost temporal loops (innermost first) of each family's stationary temporal mapping."""


class UnmappableLayer(RuntimeError):
    """ZigZag found no valid mapping of the layer on the NPU under the dataflow."""


@dataclass(frozen=True)
class SimulationSettings:
    """How hard ZigZag searches each temporal mapping, and how long a simulation may take."""

    lpf_limit: int = 4
    """loop prime factors LOMA permutes: higher searches more orderings (6 is ZigZag's default; 4 is
    ~10x faster here and within a few percent)"""
    optimize: str = "latency"
    """what ZigZag's search minimises per layer: latency, energy or EDP"""
    timeout_s: float = 600.0
    """longest one simulation may take"""
    retries: int = 0
    """further attempts after a crashed or timed-out simulation"""

    def __post_init__(self) -> None:
        if self.optimize not in ("latency", "energy", "EDP"):
            raise ValueError(f"optimize={self.optimize!r} is not one of ('latency', 'energy', 'EDP')")
        if self.lpf_limit < 1:
            raise ValueError(f"lpf_limit={self.lpf_limit} must be >= 1")

    @property
    def key(self) -> str:
        """What changes the numbers (part of the target fingerprint)."""
        return f"lpf{self.lpf_limit}/opt={self.optimize}"


def loop_sizes(layer: Layer) -> dict[str, int]:
    """The layer as ZigZag's loop dimensions (B, K, G, C, OY, OX, FY, FX); dense = 1x1 conv on 1x1."""
    if layer.op is Op.DENSE:
        return {"B": 1, "K": layer.out_shape[0], "G": 1, "C": layer.in_elements, "OY": 1, "OX": 1, "FY": 1, "FX": 1}
    groups = layer.groups
    cout, oy, ox = layer.out_shape
    return {
        "B": 1,
        "K": cout // groups,
        "G": groups,
        "C": layer.in_shape[0] // groups,
        "OY": oy,
        "OX": ox,
        "FY": layer.kernel[0],
        "FX": layer.kernel[1],
    }


def workload(layer: Layer, quant: str) -> list[dict[str, Any]]:
    """ZigZag's workload for one layer in precision `quant`."""
    sizes = loop_sizes(layer)
    dense = layer.op is Op.DENSE
    stride = (1, 1) if dense else layer.stride
    padding = (0, 0) if dense else layer.padding
    in_h, in_w = (1, 1) if dense else layer.in_shape[1:]
    bits = OPERAND_BITS[quant]
    return [{
        "id": 0,
        "name": layer.name,
        "operator_type": "Conv",
        "equation": "O[b][g][k][oy][ox]+=W[g][k][c][fy][fx]*I[b][g][c][iy][ix]",
        "loop_dims": list(sizes),
        "loop_sizes": list(sizes.values()),
        "dimension_relations": [f"ix={stride[1]}*ox+1*fx", f"iy={stride[0]}*oy+1*fy"],
        "operand_precision": {"W": bits, "I": bits, "O": PARTIAL_SUM_BITS[quant], "O_final": bits},
        "pr_loop_dims": ["IX", "IY"],
        "pr_loop_sizes": [in_w, in_h],
        "padding": [[padding[1], padding[1]], [padding[0], padding[0]]],
    }]


def spatial_unrolling(layer: Layer, spatial: str, rows: int, cols: int) -> dict[str, dict[str, int]]:
    """The family's unrolling of the layer over the array's rows (D1) and columns (D2), each dimension
    clipped to the layer's size (a depthwise layer's channels stand in for output channels, and its
    missing input channels leave a weight-stationary array's columns idle, as on NVDLA)."""
    sizes = loop_sizes(layer)
    channels = "G" if sizes["G"] > 1 else "K"
    if spatial == "ws":
        d1, d2 = {channels: rows}, {"C": cols}
    elif spatial == "os":
        d1, d2 = {"OX": rows}, {"OY": cols}
    elif spatial == "os_ch":
        d1, d2 = {channels: rows}, {"OX": cols}
    else:  # rs: filter rows, packed with input channels (or depthwise channels), over output rows
        fy = min(sizes["FY"], rows)
        d1 = {"FY": fy, ("G" if channels == "G" else "C"): rows // fy}
        d2 = {"OY": cols}
    # a dimension of size 1 stays in the mapping: an array side left empty would be filled by ZigZag
    return {"D1": {dim: min(n, sizes[dim]) for dim, n in d1.items()}, "D2": {dim: min(n, sizes[dim]) for dim, n in d2.items()}}


def mapping(layer: Layer, choice: Choice, spec: NpuSpec) -> list[dict[str, Any]]:
    """ZigZag's mapping input: the spatial unrolling, and the innermost loops of a stationary mapping."""
    flow = choice.dataflow
    unrolled = spatial_unrolling(layer, flow.spatial, spec.rows, spec.cols)
    entry: dict[str, Any] = {
        "name": "default",
        "spatial_mapping": {d: [f"{dim}, {n}" for dim, n in dims.items()] for d, dims in unrolled.items()},
        "memory_operand_links": dict(_LINKS),
    }
    if flow.temporal == "stationary":
        sizes = loop_sizes(layer)
        spatial = {dim: n for dims in unrolled.values() for dim, n in dims.items()}
        inner = [dim for dim in _STATIONARY_INNER[flow.spatial] if sizes[dim] > spatial.get(dim, 1)]
        if inner:
            entry["temporal_ordering"] = [[dim, "*"] for dim in inner]
    return [entry]


def zigzag_inputs(layer: Layer, choice: Choice, spec: NpuSpec) -> tuple[list[dict], dict, list[dict]]:
    """(workload, accelerator, mapping) exactly as `simulate` hands them to ZigZag."""
    return workload(layer, choice.quant), spec.zigzag_accelerator(choice.quant), mapping(layer, choice, spec)


def simulate(layer_dict: dict, choice_dict: dict, spec_dict: dict, settings_dict: dict) -> dict[str, Any]:
    """Run ZigZag for one layer and choice (plain dicts: this runs in a worker process).

    Returns ZigZag's cycles and energy_pj; raises `UnmappableLayer` when it finds no valid mapping."""
    from zigzag.api import get_hardware_performance_zigzag
    from zigzag.opt.loma.engine import NoValidLoopOrderingFoundException

    logging.basicConfig(level=logging.ERROR)  # before ZigZag's own basicConfig(INFO), which then does nothing
    layer, choice = Layer.from_dict(layer_dict), Choice.from_dict(choice_dict)
    spec, settings = npu_spec_from_dict(spec_dict), SimulationSettings(**settings_dict)
    work, accelerator, mapping_entries = zigzag_inputs(layer, choice, spec)
    with tempfile.TemporaryDirectory(prefix="deploygym-zigzag-") as tmp:
        accelerator_path, mapping_path = Path(tmp) / "accelerator.yaml", Path(tmp) / "mapping.yaml"
        accelerator_path.write_text(yaml.safe_dump(accelerator, sort_keys=False))  # order = memory levels
        mapping_path.write_text(yaml.safe_dump(mapping_entries, sort_keys=False))
        try:
            energy_pj, cycles, _ = get_hardware_performance_zigzag(
                work, str(accelerator_path), str(mapping_path), opt=settings.optimize,
                dump_folder=str(Path(tmp) / "out"), lpf_limit=settings.lpf_limit, loma_show_progress_bar=False,
            )
        except NoValidLoopOrderingFoundException as err:
            raise UnmappableLayer(
                f"ZigZag found no valid mapping of layer {layer.name!r} ({layer.signature}) on {spec.name} "
                f"with {choice.quant} {choice.dataflow.key}: {str(err).splitlines()[0]}"
            ) from None
    return {"cycles": float(cycles), "energy_pj": float(energy_pj)}

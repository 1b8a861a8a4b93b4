"""Cost backend that measures: every choice is a TVM kernel, checked once against torch, then timed.

Layers between the searched ones (pooling, adds) and layout/precision conversions are still priced
by the target's latency model, and their costs say so. Kernels are compiled in worker processes and
timed one at a time (`deploy.tvm_measure`); a kernel whose numbers disagree with torch is never
timed (`ChoiceRejected`, and the environment masks it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from deploy.cost import ChoiceRejected, Cost, CostUnavailable, PerChoiceBackend, TensorFormat
from deploy.cpu_model import CpuLatencyModel
from deploy.tvm_measure import Device, MeasurementError, MeasureSettings, Measurer
from envs.network import Layer
from envs.space import Choice

KERNELS_VERSION = 2
"""Bump when the kernels' computes or schedules change: earlier measurements then no longer apply."""
LOCAL_POOL = "every core"
"""How this machine's TVM thread pool is sized when it measures (`deploy.workers`): in a local
measurement's fingerprint, as measurements taken before it had every core (TVM halves an x86
machine's count for hyper-threads) ran their 2-thread kernels on one thread."""


def _check_key(layer: Layer, choice: Choice) -> tuple[str, str]:
    """What a numerical check covers: the layer's shape and the choice but for its thread count."""
    d = choice.dataflow
    return layer.signature, f"{choice.quant}/{choice.algo}/{d.tile}/{d.order}/{d.vec}/{d.par}"


def _check(layer: dict, choice: dict) -> None:
    """Worker-side numerical check of one kernel against torch (compiled for the host)."""
    from deploy.tvm_kernels import check_kernel

    check_kernel(Layer.from_dict(layer), Choice.from_dict(choice))


class TvmBackend(PerChoiceBackend):
    """Measured costs of TVM kernels on a device.

    Args:
        target: TVM target (JSON-like dict) the kernels are compiled for.
        device: where they run (this machine, an RPC server or a tracker key).
        model: the target's latency model, for the non-searched layers and conversions.
        settings: repeats, timeouts, and whether kernels are timed with cold caches.
    """

    batch_friendly = False

    def __init__(
        self, target: dict, device: Device, model: CpuLatencyModel, settings: MeasureSettings = MeasureSettings()
    ) -> None:
        self.target = target
        self.device = device
        self.model = model
        self.settings = settings
        self.provenance = f"measured:{device.name}"
        self._measurer: Measurer | None = None
        self._checked: set[tuple[str, str]] = set()

    @property
    def measurer(self) -> Measurer:
        """The compile and timing workers, started on first use."""
        if self._measurer is None:
            self._measurer = Measurer(self.target, self.device, self.settings)
        return self._measurer

    def fingerprint(self) -> str:
        """Device, target, TVM and kernel versions: anything that changes a measured number."""
        import tvm

        facts = {"target": self.target, "tvm": tvm.__version__, "kernels": KERNELS_VERSION}
        if self.device.kind == "local":
            facts["pool"] = LOCAL_POOL
        if self.settings.cold_cache:  # another number than a warm kernel's: never mixed with warm ones in a database
            facts["cold_cache"] = True
        blob = json.dumps(facts, sort_keys=True)
        return f"{self.provenance}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


    def price_many(self, pairs: Sequence[tuple[Layer, Choice]]) -> list[Cost | CostUnavailable]:
        """Check each kernel against torch once and compile them, both in parallel; then time them one
        at a time. A choice that fails has its error in its place."""
        from deploy.tvm_kernels import build_module, kernel_spec

        results: list[Cost | CostUnavailable | None] = [None] * len(pairs)
        todo = [i for i, (layer, choice) in enumerate(pairs) if _check_key(layer, choice) not in self._checked]
        checks = self.measurer.in_compilers(_check, [(pairs[i][0].to_dict(), pairs[i][1].to_dict()) for i in todo], "check")
        for i, outcome in zip(todo, checks):
            layer, choice = pairs[i]
            if isinstance(outcome, MeasurementError):
                message = f"layer {layer.name!r}, choice {choice.key}: kernel check failed: {outcome}"
                # wrong numbers, not a crash or a timeout: never time it
                wrong = "KernelCheckError" in str(outcome)
                results[i] = ChoiceRejected(message) if wrong else MeasurementError(message, outcome.device_lost)
            else:
                self._checked.add(_check_key(layer, choice))
        timed = [i for i in range(len(pairs)) if results[i] is None]
        kernels = []
        for i in timed:
            layer, choice = pairs[i]
            spec = kernel_spec(layer, choice)
            args = [(t.shape, t.dtype) for t in (*spec.inputs, spec.output)]
            kernels.append((build_module(layer, choice), args, choice.dataflow.threads))
        for i, result in zip(timed, self.measurer.measure_many(kernels)):
            layer, choice = pairs[i]
            if isinstance(result, MeasurementError):
                results[i] = MeasurementError(f"layer {layer.name!r}, choice {choice.key}: {result}", result.device_lost)
                continue
            memory = self.model.layer_costs(layer, [choice])[0].memory_bytes
            results[i] = Cost(result.median_ms, memory, self.provenance, None, result.spread_ms, len(result.results_ms))
        return results  # type: ignore[return-value]

    def io_format(self, choice: Choice) -> TensorFormat:
        """Every kernel reads and writes plain NCHW in its own precision."""
        return TensorFormat(choice.quant, "NCHW")



    def close(self) -> None:
        """Stop the worker processes."""
        if self._measurer is not None:
            self._measurer.close()
            self._measurer = None

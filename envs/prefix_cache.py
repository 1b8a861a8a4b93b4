"""Evaluating a network on fixed inputs again and again, resuming from activations already computed.

An accuracy query fixes one precision per searchable layer, and a layer's output depends only on the
precisions of the layers before it. So the activations at a point where a single, narrow tensor is
alive (a block boundary) can be reused by every later query that agrees on the precisions up to there.
A search walks the layers in order and, as its policy settles, repeats long prefixes: those queries
run only their tail. Even a random policy repeats short prefixes (MobileNetV2 has 27 three-layer
ones), and the first blocks, at full resolution, hold a quarter of the work.

A prefix's activations are kept only once it has been asked for twice: the first sighting only
notes it. So a policy that explores deep, never-repeated prefixes fills the memory with nothing,
and the short, common prefixes stay. Results are identical to a full forward pass (tested).

Cached activations are shared, not copied, when the layers reading them never write their input
(`copy_on_resume=False`, as the accuracy oracle arranges); otherwise each use gets a copy.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from envs.network import NETWORK_INPUT
from envs.torch_build import NetworkModule

DEFAULT_BUDGET_BYTES = 1024 * 2**20
"""Activation memory the cache may hold before it drops the least recently used prefixes (the 27
three-layer prefixes of MobileNetV2-32 on 360 images take 640 MB)."""
_SEEN_LIMIT = 1_000_000
"""Prefixes noted as seen once before the notes are cleared (bounds their memory)."""

_State = list[dict[str, torch.Tensor]]  # per input batch: the live tensors at a checkpoint


class PrefixCache:
    """Runs `module` on `batches` for a precision key, from the deepest checkpoint cached for its prefix.

    The caller sets the layers' precisions before `run`; `key` must list them in the order of the
    network's searchable layers.

    Args:
        module: the network in eval mode (quantisation hooks installed).
        batches: the fixed inputs, one tensor per forward pass.
        budget_bytes: memory the cached activations may use.
        copy_on_resume: copy cached activations before running on from them; False only when the layers
            that read checkpoint tensors (`checkpoint_readers`) never modify their input in place.
    """

    def __init__(
        self,
        module: NetworkModule,
        batches: list[torch.Tensor],
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        copy_on_resume: bool = True,
    ) -> None:
        self.module = module
        self.batches = batches
        self.budget_bytes = budget_bytes
        self.copy_on_resume = copy_on_resume
        layers = module.network.layers
        live = module.live_after_steps()
        self.checkpoints: list[tuple[int, int]] = []
        """(execution position, searchable layers before it): one tensor alive, no larger than the
        layer's input nor the next layer's output (a block boundary, not inside an expansion)."""
        prefix = 0
        for i, layer in enumerate(layers[:-1]):
            prefix += layer.op.searchable
            narrow = layer.out_elements <= min(layer.in_elements, layers[i + 1].out_elements)
            if prefix and len(live[i]) == 1 and narrow:
                self.checkpoints.append((i + 1, prefix))
        self._store: OrderedDict[tuple[int, tuple[str, ...]], _State] = OrderedDict()
        self._seen: set[int] = set()
        self._bytes = 0
        self.layers_run = 0
        """Layer executions (per batch) so far: what the cache saves shows here."""

    def run(self, key: tuple[str, ...]) -> torch.Tensor:
        """Outputs `(sum of batch sizes, features)` for the precisions `key`."""
        start, state = 0, None
        for position, prefix in reversed(self.checkpoints):
            state = self._store.get((position, key[:prefix]))
            if state is not None:
                self._store.move_to_end((position, key[:prefix]))
                start = position
                break
        stops = [(p, n) for p, n in self.checkpoints if p > start]
        saved: dict[tuple[int, tuple[str, ...]], _State] = {
            (p, key[:n]): [] for p, n in stops if self._second_sighting((p, key[:n]))
        }
        outputs = []
        last = len(self.module.network.layers)
        for b, x in enumerate(self.batches):
            tensors = {NETWORK_INPUT: x} if state is None else self._copy(state[b])
            position = start
            for stop, prefix in stops + [(last, len(key))]:
                tensors = self.module.run_steps(tensors, position, stop)
                self.layers_run += stop - position
                position = stop
                if (stop, key[:prefix]) in saved:
                    saved[(stop, key[:prefix])].append(self._copy(tensors))
            outputs.append(tensors[self.module.network.layers[-1].name].flatten(1))
        for entry, value in saved.items():
            self._put(entry, value)
        return torch.cat(outputs)

    @property
    def checkpoint_readers(self) -> set[str]:
        """Layers that read a tensor cached at a checkpoint."""
        network = self.module.network
        consumers = network.consumers()
        return {reader for p, _ in self.checkpoints for reader in consumers[network.layers[p - 1].name]}

    def _copy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The live tensors to cache or resume from: copies unless their readers never write them."""
        return {k: t.clone() for k, t in tensors.items()} if self.copy_on_resume else dict(tensors)

    def _second_sighting(self, entry: tuple[int, tuple[str, ...]]) -> bool:
        """True when `entry` was asked for before (it is then worth keeping); notes it otherwise."""
        token = hash(entry)
        if token in self._seen:
            return True
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()
        self._seen.add(token)
        return False

    def _put(self, entry: tuple[int, tuple[str, ...]], state: _State) -> None:
        size = sum(t.nbytes for tensors in state for t in tensors.values())
        if size > self.budget_bytes:
            return
        self._store[entry] = state
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, dropped = self._store.popitem(last=False)
            self._bytes -= sum(t.nbytes for tensors in dropped for t in tensors.values())

    @property
    def cached_bytes(self) -> int:
        """Activation memory held now."""
        return self._bytes

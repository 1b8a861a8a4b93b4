"""A weight-sharing supernet (Once-for-All style) over an architecture space.

The supernet is the space's largest network (`ArchSpace.largest()`: on MobileNetV2 every block
k7e6; on ResNet-18 every block at full width), built by `envs.torch_build`. Every sub-network is a
`Network` of the same layer names, and each of its tensors is a slice of the same-named supernet
tensor: leading output and input channels (expansions and widths share their first channels) and,
for a smaller kernel, the centre crop of the larger one. Skipped or dropped blocks have no layers.
`forward(x, blocks)` runs a sub-network on the shared tensors (gradients flow into them);
`extract(blocks)` copies them into a standalone `NetworkModule`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.func import functional_call

from envs.proxy_training import recalibrate_batch_norm
from envs.arch_space import ArchSpace
from envs.network import Network
from envs.torch_build import NetworkModule, build_module

SKELETONS_KEPT = 256
"""Sub-network structures (modules without storage) kept for reuse by `forward`."""


def shared_slice(source: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The part of a supernet tensor a sub-network's tensor of `shape` shares: leading entries of
    every dimension, except the kernel dimensions (2 and 3 of a 4-D weight), which are centre-cropped."""
    if source.dim() != len(shape):
        raise ValueError(f"cannot share a {tuple(source.shape)} tensor as {shape}")
    index = []
    for dim, (have, want) in enumerate(zip(source.shape, shape)):
        if want > have:
            raise ValueError(f"cannot share a {tuple(source.shape)} tensor as {shape}: dimension {dim} is too large")
        start = (have - want) // 2 if source.dim() == 4 and dim >= 2 else 0
        if (have - want) % 2 and start:
            raise ValueError(f"a {have}-wide kernel has no centre crop of width {want}")
        index.append(slice(start, start + want))
    return source[tuple(index)]


class Supernet(nn.Module):
    """All sub-networks of `space` at `input_size` with `num_classes` outputs, on shared weights."""

    def __init__(self, space: ArchSpace, input_size: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.space = space
        self.input_size = input_size
        self.num_classes = num_classes
        self.body = build_module(space.network(space.largest(), input_size, num_classes))
        self._skeletons: OrderedDict[tuple, NetworkModule] = OrderedDict()

    def subnetwork(self, blocks: tuple) -> Network:
        """The `Network` of a setting of every block (checked)."""
        return self.space.network(tuple(blocks), self.input_size, self.num_classes)

    def shared_tensors(self, module: NetworkModule) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of a sub-network's module, as slices of the supernet's."""
        mine = dict(self.body.named_parameters()) | dict(self.body.named_buffers())
        theirs = dict(module.named_parameters()) | dict(module.named_buffers())
        missing = sorted(set(theirs) - set(mine))
        if missing:
            raise ValueError(f"sub-network {module.network.name!r} has tensors the supernet lacks: {missing[:5]}")
        return {
            name: mine[name] if tensor.dim() == 0 else shared_slice(mine[name], tuple(tensor.shape))
            for name, tensor in theirs.items()
        }

    def forward(self, x: torch.Tensor, blocks: tuple) -> torch.Tensor:  # type: ignore[override]
        """Logits of sub-network `blocks` on `x`, computed with (and differentiable in) the shared tensors."""
        skeleton = self._skeleton(tuple(blocks))
        # leading slices of batch-norm statistics stay views: training updates the supernet's own buffers
        tensors = {name: t.contiguous() for name, t in self.shared_tensors(skeleton).items()}
        return functional_call(skeleton.train(self.training), tensors, (x,))

    def extract(self, blocks: tuple, recalibrate_on: torch.Tensor | None = None) -> NetworkModule:
        """Sub-network `blocks` as a standalone module holding copies of the supernet's weights (eval mode).

        With `recalibrate_on` (training images), its batch-norm statistics are re-estimated on them:
        statistics shared by every sub-network fit none of them."""
        with torch.device("meta"):  # no initialisation: it would draw from (and so change) torch's global RNG
            module = build_module(self.subnetwork(tuple(blocks)))
        shared = self.shared_tensors(module)
        module.load_state_dict({name: t.detach().clone() for name, t in shared.items()}, assign=True)
        if recalibrate_on is not None:  # channels-last runs the 1x1 convolutions as GEMMs: ~4x faster here
            module = module.to(memory_format=torch.channels_last)
            recalibrate_batch_norm(module, recalibrate_on.contiguous(memory_format=torch.channels_last))
        return module.eval()

    def _skeleton(self, blocks: tuple) -> NetworkModule:
        """A module of the sub-network's structure, without storage of its own (on the meta device), memoised."""
        skeleton = self._skeletons.get(blocks)
        if skeleton is None:
            with torch.device("meta"):
                skeleton = self._skeletons[blocks] = build_module(self.subnetwork(blocks))
            if len(self._skeletons) > SKELETONS_KEPT:
                self._skeletons.popitem(last=False)
        else:
            self._skeletons.move_to_end(blocks)
        return skeleton

"""Architecture search spaces: which variants of each block a network may take.

MobileNetV2 / ProxylessNAS-like: every inverted residual after the first takes a depthwise kernel of
3, 5 or 7 and an expansion ratio of 3, 4 or 6, or is skipped where that keeps the shapes (not the
first block of a stage). The first block stays the original 3x3 block with expansion 1, as in
ProxylessNAS. ResNet-like (on ResNet-18): every basic block takes a width ratio of 0.5, 0.75 or 1 for
its inner channels, and a stage's second block may be dropped (its depth 1 or 2). A choice of every
block gives a `Network` whose layers keep the original names.
"""

from __future__ import annotations

import numpy as np

from envs.network import Network
from envs.zoo import MOBILENET_V2_BLOCKS, MOBILENET_V2_SETTING, RESNET18_BLOCKS, MBBlock, mobilenet_v2, resnet18

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 4, 6)
WIDTH_RATIOS = (0.5, 0.75, 1.0)


class ArchSpace:
    """Per-block options of a network (`OPTIONS`, the same list for every block), which of them each
    block may take, and the network a setting of every block gives."""

    OPTIONS: tuple = ()
    blocks: int = 0

    def options(self, block: int) -> tuple:
        """Valid settings of block `block` (0-based)."""
        raise NotImplementedError

    def block_name(self, block: int) -> str:
        """How errors name block `block`."""
        raise NotImplementedError

    def label(self, option: object) -> str:
        """How errors name an option."""
        return str(option)

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        """The network of a (checked) setting of every block."""
        raise NotImplementedError

    def mask(self, block: int) -> np.ndarray:
        """Which of `OPTIONS` block `block` may take."""
        valid = set(self.options(block))
        return np.array([o in valid for o in self.OPTIONS], dtype=bool)

    def check(self, blocks: tuple) -> None:
        """ValueError naming the first block whose setting is not one of its options."""
        if len(blocks) != self.blocks:
            raise ValueError(f"{type(self).__name__} has {self.blocks} blocks, got {len(blocks)} settings")
        for i, setting in enumerate(blocks):
            if setting not in self.options(i):
                valid = ", ".join(map(self.label, self.options(i)))
                raise ValueError(f"block {self.block_name(i)} cannot be {self.label(setting)}; its options are {valid}")

    def network(self, blocks: tuple, input_size: int = 224, num_classes: int = 1000) -> Network:
        """The network with these block settings (checked first)."""
        self.check(blocks)
        return self.build(blocks, input_size, num_classes)

    def sample(self, rng: np.random.Generator) -> tuple:
        """A uniformly random valid setting of every block."""
        return tuple(options[rng.integers(len(options))] for options in map(self.options, range(self.blocks)))


class MobileNetV2ArchSpace(ArchSpace):
    """MobileNetV2's blocks: kernel x expansion, or skip (see the module docstring)."""

    OPTIONS: tuple[MBBlock, ...] = (*(MBBlock(k, e) for k in KERNELS for e in EXPANSIONS), MBBlock(skip=True))

    def __init__(self) -> None:
        firsts, block = set(), 0
        for _, _, repeats, _ in MOBILENET_V2_SETTING:
            firsts.add(block)
            block += repeats
        self.blocks = len(MOBILENET_V2_BLOCKS)
        self._first_of_stage = firsts

    def options(self, block: int) -> tuple[MBBlock, ...]:
        """The original setting for the first block; skipping only where the block keeps its input's
        shape (the first block's mask is then all False: it takes `options(0)`)."""
        if block == 0:
            return (MOBILENET_V2_BLOCKS[0],)
        return tuple(o for o in self.OPTIONS if not (o.skip and block in self._first_of_stage))

    def block_name(self, block: int) -> str:
        return f"b{block + 1}"

    def label(self, option: object) -> str:
        return option.key if isinstance(option, MBBlock) else str(option)

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        return mobilenet_v2(input_size, num_classes, blocks=blocks)


class ResNet18ArchSpace(ArchSpace):
    """ResNet-18's basic blocks: width ratio, or 0 = dropped (see the module docstring)."""

    OPTIONS: tuple[float, ...] = (*WIDTH_RATIOS, 0.0)
    blocks = len(RESNET18_BLOCKS)

    def options(self, block: int) -> tuple[float, ...]:
        """A stage's first block cannot be dropped."""
        return self.OPTIONS if block % 2 else WIDTH_RATIOS

    def block_name(self, block: int) -> str:
        return f"layer{block // 2 + 1}.{block % 2}"

    def label(self, option: object) -> str:
        return f"{option:g}" if isinstance(option, float) else str(option)

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        return resnet18(input_size, num_classes, blocks=blocks)

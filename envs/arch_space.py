"""Architecture search spaces: which variants of each block a network may take.

MobileNetV2 / ProxylessNAS-like: every inverted residual after the first takes a depthwise kernel of
3, 5 or 7 and an expansion ratio of 3, 4 or 6, or is skipped where that keeps the shapes (not the
first block of a stage). The first block stays the original 3x3 block with expansion 1, as in
ProxylessNAS. A choice of every block gives a `Network` whose layers keep the original names.
"""

from __future__ import annotations

import numpy as np

from envs.network import Network
from envs.zoo import MOBILENET_V2_SETTING, MOBILENET_V2_BLOCKS, MBBlock, mobilenet_v2

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 4, 6)


class MobileNetV2ArchSpace:
    """The per-block options of MobileNetV2 (`OPTIONS`, the same list for every block) and which are valid."""

    OPTIONS: tuple[MBBlock, ...] = (*(MBBlock(k, e) for k in KERNELS for e in EXPANSIONS), MBBlock(skip=True))

    def __init__(self) -> None:
        firsts, block = set(), 0
        for _, _, repeats, _ in MOBILENET_V2_SETTING:
            firsts.add(block)
            block += repeats
        self.blocks = len(MOBILENET_V2_BLOCKS)
        self._first_of_stage = firsts

    def options(self, block: int) -> tuple[MBBlock, ...]:
        """Valid settings of block `block` (0-based): the original one for the first block; skipping
        only where the block keeps its input's shape."""
        if block == 0:
            return (MOBILENET_V2_BLOCKS[0],)
        return tuple(o for o in self.OPTIONS if not (o.skip and block in self._first_of_stage))

    def mask(self, block: int) -> np.ndarray:
        """Which of `OPTIONS` block `block` may take (the first block's one setting is not among them:
        its mask is all False and it takes `options(0)`)."""
        valid = set(self.options(block))
        return np.array([o in valid for o in self.OPTIONS], dtype=bool)

    def check(self, blocks: tuple[MBBlock, ...]) -> None:
        """ValueError naming the first block whose setting is not one of its options."""
        if len(blocks) != self.blocks:
            raise ValueError(f"MobileNetV2 has {self.blocks} blocks, got {len(blocks)} settings")
        for i, setting in enumerate(blocks):
            if setting not in self.options(i):
                valid = ", ".join(o.key for o in self.options(i))
                raise ValueError(f"block b{i + 1} cannot be {setting.key}; its options are {valid}")

    def network(self, blocks: tuple[MBBlock, ...], input_size: int = 224, num_classes: int = 1000) -> Network:
        """The network with these block settings (checked first)."""
        self.check(blocks)
        return mobilenet_v2(input_size, num_classes, blocks=blocks)

    def sample(self, rng: np.random.Generator) -> tuple[MBBlock, ...]:
        """A uniformly random valid setting of every block."""
        return tuple(options[rng.integers(len(options))] for options in map(self.options, range(self.blocks)))

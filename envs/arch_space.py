"""Architecture search spaces: which variants of each block a network may take.

MobileNetV2 / ProxylessNAS-like: every inverted residual after the first takes a depthwise kernel of
3, 5 or 7 and an expansion ratio of 3, 4 or 6, or is skipped where that keeps the shapes (not the
first block of a stage). The first block stays the original 3x3 block with expansion 1, as in
ProxylessNAS. ResNet-like (on ResNet-18): every basic block takes a width ratio of 0.5, 0.75 or 1 for
its inner channels, and a stage's second block may be dropped (its depth 1 or 2). A choice of every
block gives a `Network` whose layers keep the original names.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np

from envs.network import Network
from envs.zoo import MOBILENET_V2_BLOCKS, MOBILENET_V2_SETTING, RESNET18_BLOCKS, MBBlock, mobilenet_v2, resnet18

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 4, 6)
WIDTH_RATIOS = (0.5, 0.75, 1.0)
NETWORKS_KEPT = 1024
"""Networks of recent architectures kept by `ArchSpace.network`."""


class ArchSpace:
    """Per-block options of a network (`OPTIONS`, the same list for every block), which of them each
    block may take, and the network a setting of every block gives."""

    OPTIONS: tuple = ()
    ORIGINAL: tuple = ()
    """The setting of every block in the original network."""
    blocks: int = 0
    name: str = ""
    """The built-in network (`envs.zoo`) whose blocks this space varies."""

    def __eq__(self, other: object) -> bool:  # a space is its class: instances share memoised networks
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def options(self, block: int) -> tuple:
        """Valid settings of block `block` (0-based)."""
        raise NotImplementedError

    def block_name(self, block: int) -> str:
        """How errors name block `block`."""
        raise NotImplementedError

    def stage(self, block: int) -> int:
        """The stage (0-based) of block `block`: the run of blocks at one resolution and width it belongs to."""
        raise NotImplementedError

    def label(self, option: object) -> str:
        """How errors and exports name an option."""
        return str(option)

    def size(self, option: object) -> tuple:
        """Orders a block's options from smallest to largest network (for the sandwich rule)."""
        raise NotImplementedError

    def block_of(self, layer_name: str) -> int | None:
        """The block a layer belongs to (None: the layer is outside every searchable block)."""
        raise NotImplementedError

    def largest(self) -> tuple:
        """Every block at its largest option."""
        return tuple(max(self.options(i), key=self.size) for i in range(self.blocks))

    def smallest(self) -> tuple:
        """Every block at its smallest option (skipped where it may be)."""
        return tuple(min(self.options(i), key=self.size) for i in range(self.blocks))

    def labels(self, blocks: tuple) -> tuple[str, ...]:
        """The label of every block's setting."""
        return tuple(map(self.label, blocks))

    def parse(self, labels: Sequence[str]) -> tuple:
        """The setting of every block from its label (inverse of `labels`), checked."""
        by_label = {self.label(o): o for i in range(self.blocks) for o in self.options(i)}
        unknown = [l for l in labels if l not in by_label]
        if unknown:
            raise ValueError(f"unknown block setting(s) {unknown} for {type(self).__name__}; valid: {sorted(by_label)}")
        blocks = tuple(by_label[l] for l in labels)
        self.check(blocks)
        return blocks

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

    @functools.lru_cache(maxsize=NETWORKS_KEPT)  # noqa: B019 - spaces are few and live as long as the program
    def network(self, blocks: tuple, input_size: int = 224, num_classes: int = 1000) -> Network:
        """The network with these block settings (checked first); memoised, as episodes and queries
        revisit architectures."""
        self.check(blocks)
        return self.build(blocks, input_size, num_classes)

    def sample(self, rng: np.random.Generator) -> tuple:
        """A uniformly random valid setting of every block."""
        return tuple(options[rng.integers(len(options))] for options in map(self.options, range(self.blocks)))

    def neighbour(self, blocks: tuple, rng: np.random.Generator) -> tuple:
        """`blocks` with one block, drawn uniformly among those with a choice, set to another of its options."""
        free = [i for i in range(self.blocks) if len(self.options(i)) > 1]
        block = free[rng.integers(len(free))]
        others = [o for o in self.options(block) if o != blocks[block]]
        return (*blocks[:block], others[rng.integers(len(others))], *blocks[block + 1:])


class MobileNetV2ArchSpace(ArchSpace):
    """MobileNetV2's blocks: kernel x expansion, or skip (see the module docstring)."""

    OPTIONS: tuple[MBBlock, ...] = (*(MBBlock(k, e) for k in KERNELS for e in EXPANSIONS), MBBlock(skip=True))
    ORIGINAL = MOBILENET_V2_BLOCKS
    name = "mobilenet_v2"

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

    def stage(self, block: int) -> int:
        return sum(first <= block for first in self._first_of_stage) - 1

    def label(self, option: object) -> str:
        return option.key if isinstance(option, MBBlock) else str(option)

    def size(self, option: MBBlock) -> tuple:
        return (0, 0) if option.skip else (option.expansion, option.kernel)

    def block_of(self, layer_name: str) -> int | None:
        match = re.fullmatch(r"b(\d+)\.\w+", layer_name)
        return int(match.group(1)) - 1 if match else None

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        return mobilenet_v2(input_size, num_classes, blocks=blocks)


class ResNet18ArchSpace(ArchSpace):
    """ResNet-18's basic blocks: width ratio, or 0 = dropped (see the module docstring)."""

    OPTIONS: tuple[float, ...] = (*WIDTH_RATIOS, 0.0)
    ORIGINAL = RESNET18_BLOCKS
    blocks = len(RESNET18_BLOCKS)
    name = "resnet18"

    def options(self, block: int) -> tuple[float, ...]:
        """A stage's first block cannot be dropped."""
        return self.OPTIONS if block % 2 else WIDTH_RATIOS

    def block_name(self, block: int) -> str:
        return f"layer{block // 2 + 1}.{block % 2}"

    def stage(self, block: int) -> int:
        return block // 2

    def label(self, option: object) -> str:
        if isinstance(option, float):
            return "drop" if option == 0 else f"w{option:g}"
        return str(option)

    def size(self, option: float) -> tuple:
        return (option,)

    def block_of(self, layer_name: str) -> int | None:
        match = re.fullmatch(r"layer(\d)\.(\d)\.\w+", layer_name)
        return 2 * (int(match.group(1)) - 1) + int(match.group(2)) if match else None

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        return resnet18(input_size, num_classes, blocks=blocks)


ARCH_SPACES: dict[str, type[ArchSpace]] = {"mobilenet_v2": MobileNetV2ArchSpace, "resnet18": ResNet18ArchSpace}


def arch_space_for(network_name: str) -> ArchSpace:
    """The architecture space of a built-in network (its name, or a variant's: `mobilenet_v2_32...`)."""
    for name, space in ARCH_SPACES.items():
        if network_name == name or network_name.startswith(name + "_") or network_name.startswith(name + "-"):
            return space()
    raise ValueError(f"network {network_name!r} has no architecture space; spaces exist for {', '.join(ARCH_SPACES)}")

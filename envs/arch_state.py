"""The architecture an episode is building: each block's setting, decided block by block.

Blocks not yet decided keep their original setting, so the network is complete at every step and
its layers before the current block never change. A block is decided at its first layer; skipping or
dropping it removes its layers. A block's layers depend only on its own setting (every block's input
shape is fixed by the space), so they are built once per (block, option).
"""

from __future__ import annotations

from envs.arch_space import ArchSpace
from envs.network import Layer, Network


class ArchitectureState:
    """Block settings of `space` at one input size and class count, and the network they give."""

    def __init__(self, space: ArchSpace, input_size: int, num_classes: int) -> None:
        self.space = space
        self.input_size = input_size
        self.num_classes = num_classes
        self.block_layers: dict[tuple[int, object], tuple[Layer, ...]] = {}
        for block in range(space.blocks):
            for option in space.options(block):
                blocks = list(space.ORIGINAL)
                blocks[block] = option
                self.block_layers[block, option] = tuple(
                    l for l in self.network_of(tuple(blocks)).searchable_layers if space.block_of(l.name) == block
                )
        self._first_layers: dict[int, list[Layer]] = {block: [] for block in range(space.blocks)}
        for (block, _), layers in self.block_layers.items():
            if layers:
                self._first_layers[block].append(layers[0])
        self.first_of_block: dict[str, int] = {}  # an undecided block holds its original setting (which a reduced space may lack)
        for layer in self.network_of(tuple(space.ORIGINAL)).searchable_layers:
            block = space.block_of(layer.name)
            if block is not None and block not in self.first_of_block.values():
                self.first_of_block[layer.name] = block
        self.reset()

    def reset(self) -> None:
        """Every block back to its original setting, none decided."""
        options = [self.space.options(b) for b in range(self.space.blocks)]
        self.blocks = [o[0] if len(o) == 1 else original for o, original in zip(options, self.space.ORIGINAL)]
        self.decided = [len(o) == 1 for o in options]
        self.network = self.network_of(tuple(self.blocks))

    def network_of(self, blocks: tuple) -> Network:
        """The network of a setting of every block."""
        return self.space.network(blocks, self.input_size, self.num_classes)

    def decision(self, layer: Layer) -> int | None:
        """The block `layer` decides (it is the first layer of an undecided block), else None."""
        block = self.first_of_block.get(layer.name)
        return None if block is None or self.decided[block] else block

    def choose(self, block: int, option: object) -> Network:
        """Set block `block` (checked by the caller) and return the network now being built."""
        self.blocks[block] = option
        self.decided[block] = True
        self.network = self.network_of(tuple(self.blocks))
        return self.network

    def first_layers(self, block: int) -> list[Layer]:
        """The first layer of every option of `block` that has layers."""
        return self._first_layers[block]

    def all_layers(self) -> list[Layer]:
        """Every searchable layer some architecture of the space has (distinct by name and shape)."""
        layers = {(l.name, l.signature): l for l in self.network.searchable_layers}
        for block_layers in self.block_layers.values():
            layers.update({(l.name, l.signature): l for l in block_layers})
        return list(layers.values())

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of every block's current setting."""
        return self.space.labels(tuple(self.blocks))

"""A reduced architecture space: a built-in space with some options removed at some blocks.

`experiments/profile_space.py` writes one per device from a space profile (`envs.space_profile`);
`run_ppo.py --arch --arch-space FILE` and `nas.py --arch-space FILE` search in it. The file is YAML:

    space: mobilenet_v2          # the built-in space it reduces
    note: why it was reduced     # free text (the profile's target, samples, aggressiveness)
    blocks:                      # block name -> the options it keeps (blocks not listed keep all)
      b2: [k3e3, k3e4, skip]

Networks, the supernet and its accuracies stay those of the full space (a reduced space only narrows
what a search may pick), so a reduced search's points are comparable with a full one's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from envs.arch_space import ARCH_SPACES, ArchSpace
from envs.network import Network


class ReducedArchSpace(ArchSpace):
    """`base` with block `b` restricted to `kept[b]` (every option where `kept` has no entry)."""

    def __init__(self, base: ArchSpace, kept: Mapping[int, Sequence[object]], note: str = "") -> None:
        self.base = base
        self.OPTIONS, self.ORIGINAL, self.blocks, self.name = base.OPTIONS, base.ORIGINAL, base.blocks, base.name
        self.note = note
        options = []
        for block in range(base.blocks):
            allowed = base.options(block)
            keep = kept.get(block, allowed)
            foreign = [base.label(o) for o in keep if o not in allowed]
            if foreign:
                valid = ", ".join(map(base.label, allowed))
                raise ValueError(f"block {base.block_name(block)} of {base.name} cannot keep {foreign}; its options are {valid}")
            if not keep:
                raise ValueError(f"block {base.block_name(block)} of {base.name} keeps no option: a reduced space keeps at least one per block")
            options.append(tuple(o for o in allowed if o in keep))
        self._options = tuple(options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReducedArchSpace) and other.base == self.base and other._options == self._options

    def __hash__(self) -> int:
        return hash((self.base, self._options))

    def options(self, block: int) -> tuple:
        return self._options[block]

    def block_name(self, block: int) -> str:
        return self.base.block_name(block)

    def stage(self, block: int) -> int:
        return self.base.stage(block)

    def label(self, option: object) -> str:
        return self.base.label(option)

    def size(self, option: object) -> tuple:
        return self.base.size(option)

    def block_of(self, layer_name: str) -> int | None:
        return self.base.block_of(layer_name)

    def build(self, blocks: tuple, input_size: int, num_classes: int) -> Network:
        return self.base.build(blocks, input_size, num_classes)

    def network(self, blocks: tuple, input_size: int = 224, num_classes: int = 1000) -> Network:
        """The network of a setting of the full space (an episode's undecided blocks keep their
        original setting, which this space may have removed); memoised by the full space."""
        return self.base.network(tuple(blocks), input_size, num_classes)

    def removed(self) -> dict[str, list[str]]:
        """Block name -> the labels of the options removed there (blocks with none removed left out)."""
        gone = {self.block_name(b): [self.label(o) for o in self.base.options(b) if o not in self._options[b]]
                for b in range(self.blocks)}
        return {name: labels for name, labels in gone.items() if labels}


def architectures(space: ArchSpace) -> int:
    """How many architectures `space` holds (the product of every block's option count)."""
    return math.prod(len(space.options(b)) for b in range(space.blocks))


def write_arch_space(space: ReducedArchSpace, path: str | Path) -> Path:
    """Write `space` as the YAML `read_arch_space` reads (every block's kept options, by label)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "space": space.name,
        "note": space.note,
        "architectures": architectures(space),
        "architectures_full_space": architectures(space.base),
        "blocks": {space.block_name(b): [space.label(o) for o in space.options(b)] for b in range(space.blocks)},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    return path


def read_arch_space(path: str | Path) -> ReducedArchSpace:
    """The reduced space a YAML file describes (module docstring); errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--arch-space {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"--arch-space {path}: not YAML ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("blocks"), dict):
        raise ValueError(f"--arch-space {path}: expected a mapping with 'space' and 'blocks' (block name -> options kept)")
    if doc.get("space") not in ARCH_SPACES:
        raise ValueError(f"--arch-space {path}: space {doc.get('space')!r} is not one of {', '.join(ARCH_SPACES)}")
    base = ARCH_SPACES[doc["space"]]()
    by_name = {base.block_name(b): b for b in range(base.blocks)}
    kept: dict[int, list[object]] = {}
    for name, labels in doc["blocks"].items():
        if name not in by_name:
            raise ValueError(f"--arch-space {path}: {base.name} has no block {name!r}; its blocks are {', '.join(by_name)}")
        if not isinstance(labels, list):
            raise ValueError(f"--arch-space {path}: block {name} must list the option labels it keeps, got {labels!r}")
        options = {base.label(o): o for o in base.options(by_name[name])}
        unknown = [l for l in labels if l not in options]
        if unknown:
            raise ValueError(f"--arch-space {path}: block {name} cannot keep {unknown}; its options are {', '.join(options)}")
        kept[by_name[name]] = [options[l] for l in labels]
    try:
        return ReducedArchSpace(base, kept, str(doc.get("note", "")))
    except ValueError as err:
        raise ValueError(f"--arch-space {path}: {err}") from None

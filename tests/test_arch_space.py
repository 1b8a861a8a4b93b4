"""The MobileNetV2 architecture space: valid block settings, and the networks they give."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.estimate import estimate_latency
from envs.arch_space import MobileNetV2ArchSpace
from envs.zoo import MOBILENET_V2_BLOCKS, MBBlock, mobilenet_v2

SPACE = MobileNetV2ArchSpace()


def with_block(i: int, setting: MBBlock) -> tuple[MBBlock, ...]:
    blocks = list(MOBILENET_V2_BLOCKS)
    blocks[i] = setting
    return tuple(blocks)


def test_the_original_blocks_give_the_original_network():
    assert SPACE.network(MOBILENET_V2_BLOCKS) == mobilenet_v2()
    assert len(SPACE.OPTIONS) == 10 and SPACE.blocks == 17


def test_kernel_expansion_and_skip_change_the_layers_they_should():
    net = SPACE.network(with_block(2, MBBlock(7, 3)))  # b3: the second block of the 24-channel stage
    assert net["b3.dw"].kernel == (7, 7) and net["b3.dw"].padding == (3, 3)
    assert net["b3.expand"].out_shape[0] == 3 * 24 and net["b3.project"].out_shape == mobilenet_v2()["b3.project"].out_shape
    assert net.name != mobilenet_v2().name
    skipped = SPACE.network(with_block(2, MBBlock(skip=True)))
    assert not any(l.name.startswith("b3.") for l in skipped.layers)
    assert len(skipped.searchable_layers) == len(mobilenet_v2().searchable_layers) - 3
    # more work, more latency (modelled on the A72, best per-layer deployment)
    small, big = SPACE.network(with_block(5, MBBlock(3, 3))), SPACE.network(with_block(5, MBBlock(7, 6)))
    assert estimate_latency(small, "cortex-a72").latency_ms < estimate_latency(big, "cortex-a72").latency_ms


def test_only_shape_keeping_blocks_may_be_skipped_and_the_first_block_is_fixed():
    firsts = [i for i in range(SPACE.blocks) if MBBlock(skip=True) not in SPACE.options(i)]
    assert firsts == [0, 1, 3, 6, 10, 13, 16]  # the first block of each of the 7 stages
    assert SPACE.options(0) == (MOBILENET_V2_BLOCKS[0],) and not SPACE.mask(0).any()
    assert SPACE.mask(2).all() and SPACE.mask(1).sum() == 9
    with pytest.raises(ValueError, match="block b2 cannot be skip; its options are k3e3"):
        SPACE.network(with_block(1, MBBlock(skip=True)))
    with pytest.raises(ValueError, match="block b5 cannot be k9e6"):
        SPACE.check(with_block(4, MBBlock(9, 6)))
    with pytest.raises(ValueError, match="has 17 blocks, got 3"):
        SPACE.check(MOBILENET_V2_BLOCKS[:3])


def test_random_architectures_are_valid_and_differ():
    rng = np.random.default_rng(0)
    nets = [SPACE.network(SPACE.sample(rng), input_size=32, num_classes=10) for _ in range(5)]
    assert len({n.name for n in nets}) == 5
    assert len({sum(l.macs for l in n.layers) for n in nets}) == 5


def test_resnet_width_and_depth():
    from envs.arch_space import ResNet18ArchSpace
    from envs.zoo import RESNET18_BLOCKS, resnet18

    space = ResNet18ArchSpace()
    assert space.network(RESNET18_BLOCKS) == resnet18()
    narrow = space.network((1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0))
    assert narrow["layer1.1.conv1"].out_shape[0] == 32 and narrow["layer1.1.conv2"].out_shape[0] == 64
    assert not any(l.name.startswith("layer4.1.") for l in narrow.layers) and narrow.name != resnet18().name
    assert sum(l.macs for l in narrow.layers) < sum(l.macs for l in resnet18().layers)
    with pytest.raises(ValueError, match="block layer2.0 cannot be drop; its options are w0.5"):
        space.check((1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert [bool(space.mask(i)[-1]) for i in range(8)] == [False, True] * 4
    rng = np.random.default_rng(1)
    assert len({space.network(tuple(map(float, space.sample(rng))), 32, 10).name for _ in range(5)}) == 5


def test_a_neighbour_changes_one_free_block_to_another_valid_option():
    rng = np.random.default_rng(0)
    changed = set()
    for _ in range(300):
        blocks = SPACE.sample(rng)
        near = SPACE.neighbour(blocks, rng)
        SPACE.check(near)
        (block,) = [i for i, (a, b) in enumerate(zip(blocks, near)) if a != b]
        changed.add(block)
    assert changed == set(range(1, SPACE.blocks))  # every block but the fixed first one is reached

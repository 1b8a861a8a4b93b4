"""Joint search: the environment's architecture slot (block variants decided at their first layer)."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.deployment import evaluate
from envs.arch_space import MobileNetV2ArchSpace, ResNet18ArchSpace
from envs.make import make_deployment_env
from envs.space import Choice
from envs.zoo import MBBlock

SPACE = MobileNetV2ArchSpace()
SKIP = SPACE.OPTIONS.index(MBBlock(skip=True))


@pytest.fixture(scope="module")
def env(supernet_oracle):
    return make_deployment_env("mobilenet_v2", "cortex-a72", accuracy=supernet_oracle, architecture=True)


def baseline_action(env, arch: int = 0) -> np.ndarray:
    action = env.space.encode(env.space.baseline_choice())
    action[0] = arch
    return action


def walk_to(env, layer_name: str) -> None:
    env.reset()
    while env.layers[env._t].name != layer_name:
        _, _, done, _, info = env.step(baseline_action(env))
        assert not done and "invalid_action" not in info


def random_episode(env, rng: np.random.Generator) -> dict:
    env.reset()
    done, steps = False, 0
    offsets = np.cumsum([0, *env.action_space.nvec[:-1]])
    while not done:
        mask = env.action_masks()
        action = [rng.choice(np.flatnonzero(mask[o : o + n])) for o, n in zip(offsets, env.action_space.nvec)]
        _, _, done, _, info = env.step(np.array(action))
        assert "invalid_action" not in info, info
        steps += 1
    info["steps"] = steps
    return info


def assert_prices_the_network_it_built(env, info: dict, network) -> dict[str, Choice]:
    """The episode's latency is `evaluate` of `network` with its choices, and a replay gives it again;
    returns the choices."""
    choices = {name: Choice.from_dict(c) for name, c in info["choices"].items()}
    assert info["latency_ms"] == pytest.approx(evaluate(network, choices, env.costs).latency_ms)
    _, again = env.replay(choices, info["architecture"])
    assert again["latency_ms"] == pytest.approx(info["latency_ms"]) and again["architecture"] == info["architecture"]
    return choices


def test_a_block_is_decided_at_its_first_layer_with_its_own_options(env):
    env.reset()
    assert env.action_space.nvec.tolist()[0] == len(SPACE.OPTIONS) == 10
    assert env.action_masks()[:10].tolist() == [True] + [False] * 9  # stem decides nothing
    walk_to(env, "b2.expand")
    assert env.action_masks()[:10].tolist() == SPACE.mask(1).tolist()  # first of its stage: no skip
    assert not env.action_masks()[SKIP]
    walk_to(env, "b3.expand")
    assert env.action_masks()[:10].tolist() == [True] * 10
    k7e6 = SPACE.OPTIONS.index(MBBlock(7, 6))
    _, _, _, _, info = env.step(baseline_action(env, k7e6))
    assert info["block"] == "k7e6" and info["layer"] == "b3.expand"
    assert env.layers[env._t].name == "b3.dw" and env.layers[env._t].kernel == (7, 7)
    observation = env._observation()
    assert observation[8] == pytest.approx(0.7)  # the kernel feature of the chosen variant's layer
    assert env.action_masks()[:10].tolist() == [True] + [False] * 9  # the rest of the block decides nothing


def test_a_skipped_block_has_no_layers_and_the_episode_prices_the_network_it_built(env):
    rng = np.random.default_rng(0)
    for _ in range(3):
        info = random_episode(env, rng)
        blocks = SPACE.parse(info["architecture"])
        network = env.arch.network_of(blocks)
        assert info["network"] == network.name
        assert list(info["choices"]) == [layer.name for layer in network.searchable_layers]
        skipped = sum(b.skip for b in blocks)
        assert info["steps"] == len(network.searchable_layers) + skipped  # a skip is one step that deploys nothing
        for i, b in enumerate(blocks):
            names = [l.name for l in network.searchable_layers if l.name.startswith(f"b{i + 1}.")]
            assert names == [] if b.skip else names[-2:] == [f"b{i + 1}.dw", f"b{i + 1}.project"]
        choices = assert_prices_the_network_it_built(env, info, network)
        precisions = [choices[l.name].quant for l in network.searchable_layers]
        assert info["accuracy"] == env.oracle.accuracy(precisions, blocks)


def test_architectures_change_latency_and_accuracy(env):
    rng = np.random.default_rng(1)
    infos = [random_episode(env, rng) for _ in range(6)]
    assert len({round(i["latency_ms"], 6) for i in infos}) == 6
    assert len({i["accuracy"] for i in infos}) > 1
    smallest = {l.name: env.space.baseline_choice() for l in env.arch.network_of(SPACE.smallest()).searchable_layers}
    largest = {l.name: env.space.baseline_choice() for l in env.arch.network_of(SPACE.largest()).searchable_layers}
    _, small = env.replay(smallest, SPACE.labels(SPACE.smallest()))
    _, large = env.replay(largest, SPACE.labels(SPACE.largest()))
    assert small["latency_ms"] < env.baseline.latency_ms < large["latency_ms"]


def test_an_invalid_block_choice_is_named_and_ends_the_episode(env):
    walk_to(env, "b4.expand")
    _, reward, done, _, info = env.step(baseline_action(env, SKIP))
    assert done and reward == -100.0
    assert info["invalid_action"].startswith("block b4 cannot be skip; its options are k3e3")
    walk_to(env, "b3.dw")
    _, _, done, _, info = env.step(baseline_action(env, 4))
    assert done and "decides no block" in info["invalid_action"]
    with pytest.raises(ValueError, match="unknown block setting"):
        env.replay({}, ["k9e9"] * 17)


def test_resnet_blocks_dropped_up_to_the_last_price_the_network_they_build(resnet_supernet_oracle):
    """Dropping ResNet-18's last block brings its pooling right after the layers already priced."""
    env = make_deployment_env("resnet18", "cortex-a72", accuracy=resnet_supernet_oracle, architecture=True)
    space, rng = ResNet18ArchSpace(), np.random.default_rng(0)
    infos = [random_episode(env, rng) for _ in range(12)]
    last_dropped = [i for i in infos if i["architecture"][-1] == "drop"]
    assert last_dropped and len(last_dropped) < len(infos)
    for info in infos:
        assert_prices_the_network_it_built(env, info, env.arch.network_of(space.parse(info["architecture"])))

"""`implementation="fastest"`: the agent picks quantization (and architecture), the environment the
algorithm and dataflow that add the least latency."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.cost import ChoiceRejected
from deploy.cost_table import CostTable
from deploy.cpu_model import CpuLatencyModel
from deploy.deployment import Assembler, evaluate
from deploy.optimum import best_choices
from envs.make import make_deployment_env
from envs.space import QUANTS, Choice, why_invalid


def quant_episode(env, quants) -> dict:
    """One episode whose agent deploys the i-th layer in quantization `quants(i)` and, in joint
    search, takes alternately the last and the first valid option of each block."""
    env.reset()
    done, step, info = False, 0, {}
    offsets = np.cumsum([0, *env.action_space.nvec[:-1]])
    while not done:
        mask = env.action_masks()
        pairs = np.flatnonzero(mask[offsets[1] : offsets[2]])
        entry = next(i for i in pairs if env.space.quant_algos[i][0] == quants(env._t))
        flows = [0] * (len(env.action_space.nvec) - 2)  # the environment picks the dataflow
        action = np.array([np.flatnonzero(mask[: offsets[1]])[step % 2 - 1], entry, *flows])
        _, _, done, _, info = env.step(action)
        assert "invalid_action" not in info and "measurement_error" not in info, info
        step += 1
    return info


def assert_each_layer_adds_the_least(costs, network, choices: dict[str, Choice]) -> None:
    """Every layer's choice adds no more latency than any other choice of its quantization would at
    that point of the deployment."""
    assembler = Assembler(network, costs)
    for layer in network.searchable_layers:
        chosen = choices[layer.name]
        rivals = [c for c in costs.space.valid_choices(layer) if c.quant == chosen.quant]
        assert assembler.added_by(chosen) == pytest.approx(min(assembler.added_by(c) for c in rivals))
        assembler.add(chosen)


def assert_the_agent_chose_the_quantizations(env, network, info: dict, quants) -> None:
    """The episode deployed layer i in `quants(i)`, each as fast as it could, and priced that deployment."""
    choices = {name: Choice.from_dict(c) for name, c in info["choices"].items()}
    assert [choices[layer.name].quant for layer in network.searchable_layers] == [quants(i) for i in range(len(choices))]
    assert info["latency_ms"] == pytest.approx(evaluate(network, choices, env.costs).latency_ms)
    assert_each_layer_adds_the_least(env.costs, network, choices)


def MIXED(i: int) -> str:
    """fp32, fp16, int8, fp32, ... layer after layer."""
    return QUANTS[i % 3]


@pytest.fixture()
def env(tiny, tiny_oracle):
    return make_deployment_env(tiny, "cortex-a72", "tradeoff", accuracy=tiny_oracle, implementation="fastest")


def test_the_agent_chooses_only_the_quantization(env):
    for layer in env.layers:
        mask = env._mask(layer)
        pairs, flows = np.split(mask[env.space.nvec[0] :], [env.space.nvec[1]])
        valid = [(q, a) for q, a in env.space.quant_algos if why_invalid(layer, q, a) is None]
        kept = [env.space.quant_algos[i] for i in np.flatnonzero(pairs)]
        assert kept == [next(qa for qa in valid if qa[0] == q) for q in QUANTS]  # one entry per quantization
        assert flows.tolist() == env.space.dataflow_mask(0).tolist()  # the first entry of every dataflow component
        assert flows.sum() == len(env.space.dataflow_radix)


def test_each_layer_gets_the_implementation_that_adds_the_least_latency(env, tiny):
    info = quant_episode(env, MIXED)
    assert_the_agent_chose_the_quantizations(env, tiny, info, MIXED)
    assert len({c["algo"] for c in info["choices"].values()}) > 1  # not one algorithm everywhere


def test_uniform_precision_is_as_fast_as_dynamic_programming(env, tiny):
    """With every layer in one precision, picking layer by layer finds the chain's optimum here."""
    for quant in QUANTS:
        info = quant_episode(env, lambda step: quant)
        optimum = evaluate(tiny, best_choices(tiny, env.costs, lambda c: c.quant == quant), env.costs).latency_ms
        assert info["latency_ms"] == pytest.approx(optimum)


def test_replay_gives_the_episode_again(env):
    info = quant_episode(env, MIXED)
    total, again = env.replay({name: Choice.from_dict(c) for name, c in info["choices"].items()})
    assert again["choices"] == info["choices"] and total == pytest.approx(env.reward_config.final_reward(info["accuracy"], info["latency_ms"]))


def test_bad_settings_are_named(tiny, tiny_oracle):
    with pytest.raises(ValueError, match="implementation='quickest'"):
        make_deployment_env(tiny, "cortex-a72", accuracy=tiny_oracle, implementation="quickest")
    with pytest.raises(ValueError, match="dataflow='latency' must be 'agent'"):
        make_deployment_env(tiny, "cortex-a72", accuracy=tiny_oracle, dataflow="latency", implementation="fastest")


def rejecting_costs(a72, rejects):
    """A cost table over a backend that rejects the choices `rejects(layer, choice)` admits, as TVM
    does for a kernel that disagrees with torch (a measuring backend, so the model estimates)."""

    class Rejecting(CpuLatencyModel):
        def layer_costs(self, layer, choices):
            bad = [c for c in choices if rejects(layer, c)]
            if bad:
                raise ChoiceRejected(f"layer {layer.name!r}: {bad[0].key} disagrees with torch")
            return super().layer_costs(layer, choices)

    model = a72.model()
    backend = Rejecting(model.spec, model.params, "test")
    backend.batch_friendly = False
    return CostTable(backend, a72.search_space(), estimator=model)


def test_a_rejected_pick_gives_way_to_the_next_fastest(tiny, tiny_oracle, a72, env):
    stem = tiny.searchable_layers[0]
    first = Choice.from_dict(quant_episode(env, lambda step: "int8")["choices"][stem.name])
    costs = rejecting_costs(a72, lambda layer, c: layer.name == stem.name and c.algo == first.algo)
    rejecting = make_deployment_env(tiny, "cortex-a72", "tradeoff", accuracy=tiny_oracle, costs=costs, implementation="fastest")
    info = quant_episode(rejecting, lambda step: "int8")
    assert Choice.from_dict(info["choices"][stem.name]).algo != first.algo
    assert any(first.algo in key for key in costs.rejected(stem))


def test_a_quantization_the_backend_rejects_entirely_ends_the_episode_and_is_masked(tiny, tiny_oracle, a72):
    stem = tiny.searchable_layers[0]
    costs = rejecting_costs(a72, lambda layer, c: layer.name == stem.name and c.quant == "int8")
    env = make_deployment_env(tiny, "cortex-a72", "tradeoff", accuracy=tiny_oracle, costs=costs, implementation="fastest")
    env.reset()
    int8 = next(i for i, (q, _) in enumerate(env.space.quant_algos) if q == "int8" and env.action_masks()[env.space.nvec[0] + i])
    _, reward, terminated, _, info = env.step(np.array([0, int8, 0, 0]))
    assert terminated and reward == -100.0 and "no admitted choice" in info["measurement_error"]
    env.reset()
    assert not env.action_masks()[env.space.nvec[0] + int8]
    assert env.action_masks()[env.space.nvec[0] :].sum() == 2 + 2  # fp32 and fp16 left; one entry per dataflow component


def test_joint_search_picks_the_fastest_implementation_of_the_network_it_builds(supernet_oracle):
    env = make_deployment_env("mobilenet_v2", "cortex-a72", "tradeoff", accuracy=supernet_oracle,
                              architecture=True, implementation="fastest")
    info = quant_episode(env, MIXED)
    network = env.arch.network_of(env.arch_space.parse(info["architecture"]))
    assert info["network"] == network.name != "mobilenet_v2"
    assert_the_agent_chose_the_quantizations(env, network, info, MIXED)
    _, again = env.replay({name: Choice.from_dict(c) for name, c in info["choices"].items()}, info["architecture"])
    assert again["choices"] == info["choices"]

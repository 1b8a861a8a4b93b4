"""The Gymnasium environment: its spec (docstring) checked against behaviour."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.env import INVALID_ACTION_REWARD, DeploymentEnv
from envs.make import BudgetError, make_deployment_env
from envs.space import Choice, CpuSchedule, why_invalid


@pytest.fixture(scope="module")
def oracle(tiny_oracle):
    return tiny_oracle


@pytest.fixture()
def env(tiny, oracle) -> DeploymentEnv:
    return make_deployment_env(tiny, "cortex-a72", accuracy=oracle)


def rollout(env: DeploymentEnv, rng: np.random.Generator):
    """One episode of uniformly random valid actions; returns (rewards, last info)."""
    env.reset()
    rewards, done, info = [], False, {}
    while not done:
        mask = env.action_masks()
        parts = np.split(mask, np.cumsum(env.space.nvec)[:-1])
        action = np.array([rng.choice(np.flatnonzero(p)) for p in parts])
        _, reward, done, _, info = env.step(action)
        rewards.append(reward)
    return rewards, info


def test_env_checkers_pass(env):
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_gym_make_builds_the_registered_env(tiny, oracle):
    made = gym.make(envs.ENV_ID, network=tiny, target="cortex-a72", accuracy=oracle)
    obs, _ = made.reset(seed=3)
    assert made.observation_space.contains(obs)
    assert made.unwrapped.network.name == "tiny"


def test_masks_are_exact(env, tiny):
    """Every action the masks allow is valid, and every valid choice is allowed."""
    for layer, mask in zip(env.layers, env._masks):
        qa = mask[env.space.nvec[0] : env.space.nvec[0] + env.space.nvec[1]]
        for (quant, algo), allowed in zip(env.space.quant_algos, qa):
            assert allowed == (why_invalid(layer, quant, algo) is None)
        assert mask.sum() == env.space.nvec[0] + qa.sum() + sum(env.space.dataflow_radix)


def test_episode_walks_searchable_layers_and_reports_the_deployment(env, tiny):
    rewards, info = rollout(env, np.random.default_rng(0))
    assert len(rewards) == len(tiny.searchable_layers) == 5
    assert set(info["choices"]) == {l.name for l in tiny.searchable_layers}
    assert info["latency_provenance"] == "modelled:cortex-a72-model@2"
    assert info["accuracy_provenance"].startswith("measured:heldout")
    assert 0.8 < info["accuracy"] <= 1.0
    assert info["speedup"] == pytest.approx(info["baseline_latency_ms"] / info["latency_ms"])
    assert info["memory_bytes"] > 0 and info["energy_mj"] > 0
    # the return is the budget formula: the steps pay the latency term as it accrues, the end the rest
    cfg = env.reward_config
    assert sum(rewards) == pytest.approx(cfg.total(info["accuracy"], info["latency_ms"]))
    assert sum(rewards[:-1]) == pytest.approx(-cfg.points_per_ms * info["latency_ms"], rel=0.5)
    assert cfg.total(info["accuracy"], info["latency_ms"]) == pytest.approx(
        100 * info["accuracy"] - cfg.points_per_ms * info["latency_ms"] - 100 * max(0.0, info["latency_ms"] / cfg.budget_ms - 1))


def test_invalid_action_ends_the_episode_with_a_reason(env):
    env.reset()
    winograd = env.space.quant_algos.index(("fp32", "winograd_f2"))
    env.step(np.array([0, winograd, 0, 0]))  # stem is a 3x3 stride-1 conv: valid
    _, reward, terminated, truncated, info = env.step(np.array([0, winograd, 0, 0]))  # dw: invalid
    assert terminated and not truncated and reward == INVALID_ACTION_REWARD
    assert "Winograd needs a dense" in info["invalid_action"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 0, 0]))


def test_same_actions_same_results(env):
    a, info_a = rollout(env, np.random.default_rng(7))
    b, info_b = rollout(env, np.random.default_rng(7))
    assert a == b and info_a["choices"] == info_b["choices"]


def test_tradeoff_mode_pays_only_at_the_end(tiny, oracle):
    env = make_deployment_env(tiny, "cortex-a72", mode="tradeoff", target_ms=0.5, accuracy=oracle)
    rewards, info = rollout(env, np.random.default_rng(1))
    assert all(r == 0.0 for r in rewards[:-1])
    assert rewards[-1] == pytest.approx(100 * info["accuracy"] * (info["latency_ms"] / 0.5) ** -0.07)


def test_impossible_budget_is_refused_with_the_fastest_possible_latency(tiny, oracle):
    with pytest.raises(BudgetError, match=r"below the fastest deployment .* use --budget-ms >="):
        make_deployment_env(tiny, "cortex-a72", budget_ms=1e-6, accuracy=oracle)


def test_unknown_target_and_network_list_the_valid_ones(oracle):
    with pytest.raises(ValueError, match="valid targets: cortex-a72, host"):
        make_deployment_env("mobilenet_v2", "cortex-a99", accuracy=oracle)
    with pytest.raises(ValueError, match="mobilenet_v1"):
        make_deployment_env("mobilenet_v9", "cortex-a72", accuracy=oracle)


def test_replay_reproduces_an_episode(env):
    rewards, info = rollout(env, np.random.default_rng(5))
    choices = {name: Choice.from_dict(c) for name, c in info["choices"].items()}
    total, replayed = env.replay(choices)
    assert total == pytest.approx(sum(rewards)) and replayed["latency_ms"] == info["latency_ms"]
    with pytest.raises(ValueError, match=r"no choice for layer\(s\) \['fc'\]"):
        env.replay({k: v for k, v in choices.items() if k != "fc"})


def test_a_choice_the_backend_rejects_ends_the_episode_and_is_masked_from_then_on(tiny, oracle, a72):
    """A backend that rejects Winograd F(4x4) (as TVM's would for a kernel that disagreed with torch)."""
    from deploy.cost import ChoiceRejected
    from deploy.cost_table import CostTable
    from deploy.cpu_model import CpuLatencyModel

    class RejectsF4(CpuLatencyModel):
        def layer_costs(self, layer, choices):
            if any(c.algo == "winograd_f4" for c in choices):
                raise ChoiceRejected(f"layer {layer.name!r}: winograd_f4 kernel disagrees with torch")
            return super().layer_costs(layer, choices)

    model = a72.model()
    backend = RejectsF4(model.spec, model.params, "test")
    backend.batch_friendly = False
    costs = CostTable(backend, a72.search_space(), estimator=model)
    env = make_deployment_env(tiny, "cortex-a72", accuracy=oracle, costs=costs)
    f4 = env.space.quant_algos.index(("fp32", "winograd_f4"))
    entry = env.space.nvec[0] + f4
    env.reset()
    assert env.action_masks()[entry]  # stem is a 3x3 stride-1 conv: F4 is valid
    _, reward, terminated, _, info = env.step(np.array([0, f4, 0, 0]))
    assert terminated and reward == -100.0 and "disagrees with torch" in info["measurement_error"]
    env.reset()
    assert not env.action_masks()[entry]  # never offered again for this layer shape
    assert env.action_masks().sum() == env.space.mask(tiny.searchable_layers[0]).sum() - 1  # only that entry more


def test_dataflow_is_a_loop_schedule_and_a_thread_count(a72):
    """On a CPU the dataflow is two components, (24 loop schedules, thread counts); every choice round-trips."""
    from envs.space import SearchSpace, cpu_schedules, dataflow_components, npu_dataflows

    space = a72.search_space()
    assert space.nvec == (1, 15, 24, 3) and dataflow_components(npu_dataflows()) == (8,)
    assert dataflow_components(sorted(cpu_schedules(4), key=lambda d: d.threads)) == (72,)  # threads slowest: one component
    for choice in space.all_choices():
        action = space.encode(choice)
        assert space.decode(action) == choice and action[3] == [1, 2, 4].index(choice.dataflow.threads)
    one = SearchSpace(cpu_schedules(1))
    assert one.nvec == (1, 15, 24)  # a single core: no thread component


def test_observation_shows_the_format_of_the_skip_tensor_waiting_for_its_add(mobilenet_v2, a72_table):
    """Inside a residual block the block's input waits for the add: its format is in the observation,
    and it is the format the block's first layer left it in."""
    from envs.accuracy import oracle_for

    env = make_deployment_env(mobilenet_v2, "cortex-a72", accuracy=oracle_for(mobilenet_v2), costs=a72_table)
    env.reset()
    int8 = env.space.encode(Choice("int8", "direct", CpuSchedule(threads=2)))
    fp16 = env.space.encode(Choice("fp16", "direct", CpuSchedule(threads=1)))
    seen = {}
    for layer in env.layers:
        obs = env._observation()
        seen[layer.name] = obs[-6:]
        env.step(int8 if layer.name == "b2.project" else fp16)
    assert not seen["b3.expand"][0]  # its input is the block's input: nothing else waits
    waiting = seen["b3.dw"]  # b2.project's output (int8, packed, 2 threads) waits for b3.add
    assert waiting.tolist() == pytest.approx([1, 0, 0, 1, 1, 0.5])
    assert seen["b3.project"].tolist() == waiting.tolist()
    assert not seen["b2.dw"][0]  # b2 has no residual

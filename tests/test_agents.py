"""Agents: hyperparameters from YAML, and seeded PPO runs that are identical."""

from __future__ import annotations

import pytest
import torch

from agents.ppo import HyperparamError, PPOHyperparams, hold_learning_rate, load_hyperparams, make_agent, make_vec_env
from deploy.optimum import best_choices
from envs.make import make_deployment_env


def test_default_section_and_overrides_in_order(tmp_path):
    assert load_hyperparams() == load_hyperparams("no-such-section") == PPOHyperparams()
    assert load_hyperparams("nas").sil_steps == 0  # nas.py keeps plain MaskablePPO with its own settings
    assert not load_hyperparams("cortex-a72", "cortex-a72/resnet18").value_starts_at_typical_return
    assert load_hyperparams("cortex-a72", "cortex-a72/mobilenet_v2").value_starts_at_typical_return
    path = tmp_path / "ppo.yml"
    path.write_text("default: {n_steps: 8}\nnpu: {n_steps: 16, ent_coef: 0.5}\nnpu/net: {n_steps: 32}\n")
    assert load_hyperparams("npu", "npu/net", path=path) == PPOHyperparams(n_steps=32, ent_coef=0.5)
    assert load_hyperparams("npu/net", "npu", path=path) == PPOHyperparams(n_steps=16, ent_coef=0.5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("default: [1, 2\n", "cannot read hyperparameters"),
        ("- just\n- a list\n", "expected a mapping with a 'default' section"),
        ("default:\n  n_steps: 64\n  learning_rat: 0.1\n", "unknown hyperparameter(s) ['learning_rat']"),
        ("default:\n  n_steps: many\n", "hyperparameter n_steps='many'"),
        ("default:\n  net_arch: 64\n", "hyperparameter net_arch=64"),
        ("default:\n  value_starts_at_typical_return: 1\n", "value_starts_at_typical_return=1: expected true or false"),
        ("default: {}\ntiny: [1]\n", "section 'tiny' must be a mapping"),
    ],
)
def test_malformed_yaml_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "ppo.yml"
    path.write_text(text)
    with pytest.raises(HyperparamError) as err:
        load_hyperparams("tiny", path=path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_two_seeded_runs_are_identical(tiny, tiny_oracle):
    oracle = tiny_oracle
    hp = PPOHyperparams(n_envs=2, n_steps=32, batch_size=32, n_epochs=2)

    def trained() -> dict[str, torch.Tensor]:
        env = make_vec_env(lambda: make_deployment_env(tiny, "cortex-a72", accuracy=oracle), hp.n_envs)
        agent = make_agent(env, hp, seed=11, tensorboard_log=None)
        agent.learn(128)
        return agent.policy.state_dict()

    first, second = trained(), trained()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("algorithm", ["maskable_ppo", "ppo", "a2c"])
def test_value_head_starts_at_the_scale_of_an_episodes_return(tiny, tiny_oracle, algorithm):
    """Returns are ~90 accuracy points; a value head starting at 0 would spend its first updates on the offset."""
    env = make_vec_env(lambda: make_deployment_env(tiny, "cortex-a72", accuracy=tiny_oracle), 2)
    agent = make_agent(env, PPOHyperparams(n_envs=2, n_steps=32, batch_size=32), seed=0, tensorboard_log=None,
                       algorithm=algorithm)
    probe = env.envs[0].unwrapped
    fastest_return, _ = probe.replay(best_choices(probe.network, probe.costs))
    start = agent.policy.predict_values(torch.as_tensor(env.reset()))[0].item()
    assert fastest_return > 50 and abs(start - fastest_return) < 0.1 * fastest_return


def update_rates(agent, steps: int) -> list[float]:
    """The learning rate of each update while `agent` learns `steps` steps."""
    seen: list[float] = []
    train = agent.train

    def recording_train() -> None:
        train()
        seen.append(agent.policy.optimizer.param_groups[0]["lr"])

    agent.train = recording_train
    agent.learn(steps, reset_num_timesteps=False)
    del agent.train
    return seen


def test_an_annealed_learning_rate_falls_linearly_to_zero_and_is_kept_in_a_checkpoint(tiny, tiny_oracle, tmp_path):
    """`anneal_learning_rate` (the main job's setting): each update at the learning rate times the
    progress remaining; without it, or held for learning in rounds (a model-guided search), every
    update is at the learning rate."""
    agents = {}
    for anneal in (False, True):
        hp = PPOHyperparams(n_envs=2, n_steps=32, batch_size=32, n_epochs=1, learning_rate=1e-3, anneal_learning_rate=anneal)
        env = make_vec_env(lambda: make_deployment_env(tiny, "cortex-a72", accuracy=tiny_oracle), hp.n_envs)
        agents[anneal] = make_agent(env, hp, seed=0, tensorboard_log=None)
    # 4 rollouts of 64 steps: updates at progress 0.75, 0.5, 0.25, 0
    assert update_rates(agents[False], 256) == [1e-3] * 4
    assert update_rates(agents[True], 256) == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    agents[True].save(tmp_path / "annealed")
    loaded = type(agents[True]).load(tmp_path / "annealed", env=agents[True].get_env(), device="cpu")
    assert loaded.lr_schedule(0.5) == pytest.approx(5e-4)
    hold_learning_rate(loaded)
    assert update_rates(loaded, 128) == [1e-3] * 2

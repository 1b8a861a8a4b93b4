"""Searching with measured rewards: TVM kernels timed on a board (a real RPC server on 127.0.0.1)."""

from __future__ import annotations


from stable_baselines3.common.callbacks import BaseCallback

from agents.ppo import PPOHyperparams, make_agent, make_vec_env
from deploy.tvm_measure import Device, MeasureSettings
from envs.make import make_cost_table, make_deployment_env
from tests.tvm_rpc import RpcCluster

QUICK = MeasureSettings(repeats=3, min_repeat_ms=2, retries=1, run_timeout_s=20, compile_timeout_s=60)


class Infos(BaseCallback):
    """Keeps the info of every finished episode."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[dict] = []

    def _on_step(self) -> bool:
        self.finished += [info for info, done in zip(self.locals["infos"], self.locals["dones"]) if done]
        return True


def test_search_through_the_tracker_survives_the_board_dying(tiny, tiny_oracle, tmp_path):
    cluster = RpcCluster().start()
    try:
        device = Device.parse(tracker=f"127.0.0.1:{cluster.tracker_port}", key=cluster.key)
        costs = make_cost_table("host", tmp_path / "m.sqlite", device, QUICK)
        env = make_deployment_env(tiny, "host", accuracy=tiny_oracle, costs=costs)
        assert env.baseline.provenance[0] == f"measured:{device.name}"
        # the fastest deployment is unknown before everything is timed: the default budget is the
        # baseline's measured latency, which the baseline meets
        assert env.reward_config.budget_ms == env.baseline.latency_ms
        hp = PPOHyperparams(n_envs=1, n_steps=20, batch_size=20, n_epochs=1)
        agent = make_agent(make_vec_env(lambda: env, 1), hp, seed=0, tensorboard_log=None)
        infos = Infos()
        agent.learn(20, callback=infos)
        complete = [i for i in infos.finished if "latency_ms" in i]
        assert complete and all(f"measured:{device.name}" in i["latency_provenance"] for i in complete)
        measured = costs.db.count(costs.fingerprint)
        assert measured >= len(tiny.searchable_layers)

        cluster.kill_server()
        infos.finished.clear()
        agent.learn(20, callback=infos, reset_num_timesteps=False)  # the run goes on and finishes
        failed = [i for i in infos.finished if "measurement_error" in i]
        assert failed, "no step needed a new measurement after the board died"
        assert all("no server with key" in i["measurement_error"] or "failed" in i["measurement_error"] for i in failed)
        assert costs.db.count(costs.fingerprint) == measured  # nothing measured before was lost
    finally:
        cluster.stop()


def test_prefetch_measures_many_layers_in_one_go_and_cost_then_only_reads(tiny, tmp_path):
    costs = make_cost_table("host", tmp_path / "m.sqlite", settings=QUICK)
    pairs = [(layer, costs.space.baseline_choice()) for layer in tiny.searchable_layers]
    assert costs.prefetch(pairs + pairs[:2]) == []  # duplicates are priced once
    assert costs.db.count(costs.fingerprint) == len(pairs)
    calls = costs.backend_calls
    for layer, choice in pairs:
        assert costs.cost(layer, choice).provenance.startswith("measured:local:")
    assert costs.backend_calls == calls  # every cost came from what prefetch stored
    costs.backend.close()

"""Wiring a `DeploymentEnv` from names: network, target, reward, database, accuracy oracle.

This is the entry point `gym.make("DeployGym/Deploy-v0", ...)` calls.
"""

from __future__ import annotations

from pathlib import Path

from deploy.cost_table import CostTable
from deploy.db import MeasurementDB
from deploy.deployment import evaluate
from deploy.latency_correction import load_correction
from deploy.optimum import best_choices
from deploy.targets import get_target
from deploy.tvm_measure import Device, MeasureSettings
from deploy.zigzag_sim import SimulationSettings
from envs import zoo
from envs.arch_space import ArchSpace, arch_space_for
from envs.arch_state import ArchitectureState
from envs.env import Accuracy, ArchAccuracy, DeploymentEnv
from envs.network import Network
from envs.reward import RewardConfig
from envs.space import Choice

DEFAULT_BUDGET_FRACTION = 0.4
"""Without an explicit budget, the budget is this fraction of the baseline ("BLAS fp32") latency..."""
DEFAULT_BUDGET_SLACK = 1.1
"""...but never below this multiple of the fastest deployment, where that is known (an NPU's
baseline, its own dataflow in int8, is already within 2x of its fastest). On a measured target the
fastest is unknown until every kernel is timed, and a fraction of the baseline may be out of reach
(on an x86 host without VNNI, int8 gains little): there the default is the baseline's measured
latency, which the baseline meets, so the search is paid for every millisecond it saves below it."""


class BudgetError(ValueError):
    """A latency budget no deployment can meet."""


def resolve_network(network: str | Network) -> Network:
    """A Network, or the built-in network of that name."""
    return network if isinstance(network, Network) else zoo.get_network(network)


def make_cost_table(
    target: str,
    db_path: str | Path | None = None,
    device: Device | None = None,
    settings: MeasureSettings | SimulationSettings | None = None,
    correction_file: str | Path | None = None,
) -> CostTable:
    """The cost table of a registered target: its model, TVM measurement on `device` (a board over
    RPC, or this machine for `host`), or ZigZag simulation for an NPU, with `settings`, over the
    measurement database at `db_path` (None: in memory). Without a board, what was measured on this
    target before (on any board) is used before the model. With `correction_file` (written by
    `experiments/fit_latency_correction.py` for this target and these costs) every cost is corrected."""
    tgt = get_target(target)
    db = MeasurementDB(db_path) if db_path is not None else None
    backend = tgt.backend(device, settings)
    correction = None if correction_file is None else load_correction(correction_file, tgt.name, backend.fingerprint())
    # without a board, earlier measurements of this target stand in for the model; a board uses only its own
    earlier = db.fingerprints_of(tgt.name) if db is not None and backend.batch_friendly else []
    measured = [fp for fp in earlier if fp.startswith("measured:")]
    table = CostTable(backend, tgt.search_space(), db, estimator=tgt.model(), measured=measured, correction=correction)
    if db is not None:
        description = {**tgt.describe(), "provenance": backend.provenance}
        if backend.provenance.startswith("measured:"):
            import tvm

            description["tvm"] = tvm.__version__
        db.register_target(table.fingerprint, description)
    return table


def make_deployment_env(
    network: str | Network = "mobilenet_v2",
    target: str = "cortex-a72",
    mode: str = "budget",
    budget_ms: float | None = None,
    target_ms: float | None = None,
    db_path: str | Path | None = None,
    accuracy: Accuracy | ArchAccuracy | None = None,
    costs: CostTable | None = None,
    device: Device | None = None,
    dataflow: str = "agent",
    architecture: bool | ArchSpace = False,
    implementation: str = "agent",
    points_per_ms: float | None = None,
) -> DeploymentEnv:
    """Build the environment.

    Args:
        network: built-in network name or a `Network` (e.g. from `envs.torch_import.import_module`).
        target: registered target name, or an NPU's YAML file.
        mode: "budget" (maximise accuracy under `budget_ms`) or "tradeoff" (MnasNet-style, `target_ms`).
        budget_ms: latency budget; default `DEFAULT_BUDGET_FRACTION` x the baseline latency, at least
            `DEFAULT_BUDGET_SLACK` x the fastest deployment; on a measured target the baseline's latency.
        target_ms: trade-off target latency; default the same as the default budget.
        db_path: measurement database file shared across runs (None: costs stay in memory).
        accuracy: accuracy oracle; default trains (once, cached) the network's 32x32 variant on digits.
        costs: a cost table to share between environments (from `make_cost_table`); built otherwise.
        device: where to measure (see `make_cost_table`).
        dataflow: "agent" (the agent chooses each layer's dataflow), "fixed" (the target's own) or a FlowOptimizer criterion
            ("latency", "energy", "edp": the environment picks the best dataflow of each layer).
        architecture: joint search: the agent also chooses every block's variant (`envs.arch_space`
            of a built-in MobileNetV2 or ResNet-18); the default accuracy oracle is then the
            space's supernet (`envs.subnet_accuracy`, trained once and cached). An `ArchSpace` of the
            network (e.g. a reduced one, `envs.reduced_space`): the agent chooses within it.
        implementation: "agent" (the agent chooses each layer's algorithm and dataflow) or "fastest"
            (the environment picks the fastest for the agent's quantization; see `DeploymentEnv`).
        points_per_ms: budget mode: accuracy points one millisecond costs (default: the whole budget
            costs `envs.reward.DEFAULT_BUDGET_POINTS`).
    """
    net = resolve_network(network)
    arch_space = None
    if isinstance(architecture, ArchSpace):
        if architecture.name != arch_space_for(net.name).name:
            raise ValueError(f"architecture space of {architecture.name} given for network {net.name!r}")
        arch_space = architecture
    elif architecture:
        arch_space = arch_space_for(net.name)
    costs = costs or make_cost_table(target, db_path, device)
    space = costs.space
    costs.prefetch([(layer, space.baseline_choice()) for layer in net.searchable_layers])
    baseline = evaluate(net, {l.name: space.baseline_choice() for l in net.searchable_layers}, costs)
    # the fastest deployment is known up front from a model, or from a simulator that prices a whole
    # network in seconds; a measuring backend would have to time it all
    fastest = 0.0
    own_flow = space.baseline_choice().dataflow

    def allowed(choice: Choice) -> bool:  # what this environment may deploy
        return dataflow != "fixed" or choice.dataflow == own_flow

    if costs.backend.batch_friendly or getattr(costs.backend, "prices_all_quickly", False):
        if not costs.backend.batch_friendly:  # simulate every choice of every layer any architecture has, in parallel
            layers = net.searchable_layers
            if arch_space is not None:
                layers = ArchitectureState(arch_space, net.input_shape[1], net.num_classes).all_layers()
            costs.prefetch([(layer, c) for layer in layers for c in space.valid_choices(layer) if allowed(c)])
        fastest = evaluate(net, best_choices(net, costs, allowed), costs).latency_ms
    if fastest > 0:
        default = max(DEFAULT_BUDGET_FRACTION * baseline.latency_ms, DEFAULT_BUDGET_SLACK * fastest)
    else:  # measuring: the fastest is unknown (see DEFAULT_BUDGET_SLACK)
        default = baseline.latency_ms
    if mode == "budget":
        budget = default if budget_ms is None else float(budget_ms)
        if budget < fastest:
            raise BudgetError(
                f"latency budget {budget:.3f} ms is below the fastest deployment of {net.name} on {target} "
                f"({fastest:.3f} ms, {costs.backend.provenance}): no deployment can meet it; "
                f"use --budget-ms >= {fastest:.3f} or --tradeoff"
            )
        reward = RewardConfig("budget", budget_ms=budget, points_per_ms=points_per_ms)
    else:
        reward = RewardConfig(mode, target_ms=default if target_ms is None else float(target_ms))
    if accuracy is None and arch_space is not None:
        from envs.subnet_accuracy import supernet_oracle_for

        accuracy = supernet_oracle_for(net)
    elif accuracy is None:
        from envs.accuracy import oracle_for

        accuracy = oracle_for(net)
    return DeploymentEnv(net, space, costs, accuracy, reward, dataflow, arch_space, implementation)

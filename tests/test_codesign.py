"""HAO-style co-design: the silicon model against published chips, and the integer program against
brute-force enumeration of every NPU and deployment on small instances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from deploy.codesign import Budget, HardwareOption, InfeasibleBudget, least_power, solve
from deploy.cost_table import CostTable
from deploy.deployment import evaluate
from deploy.npu_design_space import design_space
from deploy.npu_model import NpuRooflineModel
from deploy.silicon import SiliconModel, check_published, published_designs
from deploy.targets import NpuTarget
from envs.network import Layer, Network, Op
from envs.space import Choice, NpuDataflow
from envs.zoo import MBBlock
from tests.test_optimum import conv


# ---- the silicon model ---------------------------------------------------------------------------
def test_the_pe_overhead_in_the_data_file_is_the_one_eyeriss_fits():
    eyeriss = next(d for d in published_designs() if d.name == "eyeriss")
    assert SiliconModel().fit_pe_overhead(eyeriss.plan, eyeriss.area_mm2) == pytest.approx(SiliconModel().pe_overhead, abs=0.001)


def test_the_area_model_is_within_a_third_of_the_chips_it_was_not_fitted_on():
    errors = {row["design"]: row["error_percent"] for row in check_published()}
    assert errors["eyeriss"] == pytest.approx(0, abs=0.1)
    assert abs(errors["diannao"]) < 33 and abs(errors["shidiannao"]) < 15  # +30.1% and +11.2% when written


def test_area_grows_with_every_part_of_the_design_space():
    space = {h.name: h for h in design_space(arrays=((8, 8), (16, 16)), global_buffers_kib=(64, 256),
                                            register_files=((32, 16, 16),), precision_sets=(("int8",), ("int8", "fp16")))}
    area = {name: h.area_mm2 for name, h in space.items()}
    assert area["npu-16x16-gb64k-rf32-int8"] > 3.5 * area["npu-8x8-gb64k-rf32-int8"] - 3 * space["npu-8x8-gb64k-rf32-int8"].area.shared_memories
    assert area["npu-8x8-gb256k-rf32-int8"] > area["npu-8x8-gb64k-rf32-int8"]
    assert area["npu-8x8-gb64k-rf32-int8-fp16"] > area["npu-8x8-gb64k-rf32-int8"]
    # precisions change the area, not the simulation: one spec is simulated for both
    assert space["npu-8x8-gb64k-rf32-int8"].simulated == space["npu-8x8-gb64k-rf32-int8-fp16"].simulated
    assert space["npu-8x8-gb64k-rf32-int8"].spec.precisions == ("int8",)


# ---- the integer program ---------------------------------------------------------------------------
def three_layers() -> Network:
    """conv -> dw -> project, with a skip add around the last two (formats cross the add)."""
    return Network("three", (8, 8, 8), (
        conv("c1", "input", 8, 16, 8, k=3, op=Op.CONV),
        conv("dw", "c1", 16, 16, 8, k=3, groups=16, op=Op.DEPTHWISE),
        conv("pw", "dw", 16, 16, 8),
        Layer("add", Op.ADD, ("c1", "pw"), (16, 8, 8), (16, 8, 8)),
    ))


@pytest.fixture(scope="module")
def roofline_options():
    """Four small NPUs priced by their roofline model (fast, and exact costs are all that matters here)."""
    space = design_space(arrays=((8, 8), (16, 16)), global_buffers_kib=(64,), register_files=((32, 16, 16),))
    options = []
    for h in space:
        target = NpuTarget(h.simulated)
        options.append(HardwareOption(h, CostTable(NpuRooflineModel(h.simulated), target.search_space()), h.spec.precisions))
    return options


def every_deployment(network: Network, options):
    """(option, latency ms, energy mJ with leakage) of every deployment on every NPU, evaluated."""
    layers = network.searchable_layers
    for option in options:
        per_layer = [[c for c in option.table.space.valid_choices(l) if c.quant in option.precisions] for l in layers]
        for combo in itertools.product(*per_layer):
            cost = evaluate(network, {l.name: c for l, c in zip(layers, combo)}, option.table)
            yield option, cost.latency_ms, cost.energy_mj + option.candidate.leakage_mw * cost.latency_ms * 1e-3


def brute_force(network: Network, options, budget: Budget, objective: str):
    """Every NPU within the area and every deployment on it; the best (value, npu)."""
    best = None
    for option, latency, energy in every_deployment(network, [o for o in options if o.candidate.area_mm2 <= budget.area_mm2]):
        if budget.power_mw is not None and 1000 * energy / latency > budget.power_mw:
            continue
        value = {"latency": latency, "energy": energy, "edp": energy * latency}[objective]
        if best is None or value < best[0]:
            best = (value, option.candidate.name)
    return best


@pytest.mark.parametrize("objective,area_mm2,power_share", [
    ("latency", 100.0, None),
    ("latency", 3.0, None),
    ("energy", 100.0, None),
    ("latency", 100.0, 0.97),  # 97% of the average power of the fastest design
    ("edp", 100.0, None),
])
def test_the_integer_program_finds_what_brute_force_finds(roofline_options, objective, area_mm2, power_share):
    network = three_layers()
    budget = Budget(area_mm2)
    if power_share is not None:
        budget = Budget(area_mm2, power_share * solve(network, roofline_options, budget).power_mw)
    design = solve(network, roofline_options, budget, objective)
    value, npu = brute_force(network, roofline_options, budget, objective)
    got = {"latency": design.cost.latency_ms, "energy": design.energy_mj, "edp": design.energy_mj * design.cost.latency_ms}[objective]
    assert got == pytest.approx(value, rel=1e-6)
    assert design.objective_value == pytest.approx(value, rel=1e-6)
    assert design.option.candidate.area_mm2 <= budget.area_mm2
    if budget.power_mw is not None:
        assert design.power_mw <= budget.power_mw * (1 + 1e-9)
    if objective != "edp":
        assert design.option.candidate.name == npu or got == pytest.approx(value, rel=1e-9)


def test_the_power_budget_binds(roofline_options):
    network = three_layers()
    free = solve(network, roofline_options, Budget(100.0), "latency")
    capped = solve(network, roofline_options, Budget(100.0, power_mw=0.9 * free.power_mw), "latency")
    assert capped.power_mw <= 0.9 * free.power_mw * (1 + 1e-9)
    assert capped.cost.latency_ms > free.cost.latency_ms


def test_an_area_budget_below_every_npu_names_the_smallest(roofline_options):
    smallest = min(o.candidate.area_mm2 for o in roofline_options)
    with pytest.raises(InfeasibleBudget, match=r"npu-8x8-gb64k-rf32-int8, takes .* mm\^2 \(--area-mm2 [\d.]+ is feasible\)"):
        solve(three_layers(), roofline_options, Budget(smallest * 0.9))


def test_a_power_budget_below_every_deployment_names_the_least_power(roofline_options):
    network = three_layers()
    least = least_power(network, roofline_options, Budget(100.0))
    powers = [1000 * energy / latency for _, latency, energy in every_deployment(network, roofline_options)]
    assert least.power_mw == pytest.approx(min(powers), rel=1e-6)
    with pytest.raises(InfeasibleBudget, match=rf"averages 1 mW or less; the least is {least.power_mw:.2f} mW, on npu-.* \(--power-mw [\d.]+ is feasible\)"):
        solve(network, roofline_options, Budget(100.0, power_mw=1.0))
    assert solve(network, roofline_options, Budget(100.0, power_mw=math.ceil(least.power_mw * 10) / 10)).power_mw <= least.power_mw + 0.1


# ---- architecture, precision, dataflow and NPU together (HAO's front) ----------------------------------
@pytest.fixture(scope="module")
def predictor(supernet_oracle):
    from envs.accuracy_predictor import fit_predictor

    return fit_predictor(supernet_oracle, samples=40, seed=0)


def test_the_programs_accuracy_weights_are_the_predictors_model(predictor):
    from deploy.codesign_pareto import ArchProblem

    problem = ArchProblem(predictor.space, predictor)
    rng = np.random.default_rng(0)
    for _ in range(6):
        blocks = predictor.space.sample(rng)
        network = predictor.space.network(blocks)
        quants = [("int8", "fp16")[i] for i in rng.integers(2, size=len(network.searchable_layers))]
        choices = {l.name: Choice(q, "direct", NpuDataflow("ws", "auto")) for l, q in zip(network.searchable_layers, quants)}
        predicted = predictor.accuracy(quants, blocks)
        if 0 < predicted < 1:  # the predictor clips; the program's row does not
            assert problem.linear_accuracy(blocks, choices) == pytest.approx(predicted, abs=1e-9)


ALLOWED = {2: (MBBlock(3, 3, False), MBBlock(7, 6, False), MBBlock(3, 6, True)), 4: (MBBlock(3, 3, False), MBBlock(5, 6, False))}
"""Two free blocks (the third, which may be skipped, and the fifth): six architectures."""


def test_the_architecture_program_finds_the_fastest_of_every_architecture(predictor, roofline_options):
    from deploy.codesign_pareto import ArchProblem, solve_arch

    problem = ArchProblem(predictor.space, predictor, allowed=ALLOWED)
    design = solve_arch(problem, roofline_options, Budget(100.0))
    space = predictor.space
    each = {}
    for a, b in itertools.product(ALLOWED[2], ALLOWED[4]):
        blocks = tuple(a if i == 2 else b if i == 4 else o for i, o in enumerate(space.ORIGINAL))
        each[blocks] = solve(space.network(blocks), roofline_options, Budget(100.0)).cost.latency_ms
    assert design.cost.latency_ms == pytest.approx(min(each.values()), rel=1e-6)
    assert design.cost.latency_ms == pytest.approx(design.objective_value, rel=1e-6)
    assert each[design.blocks] == pytest.approx(design.cost.latency_ms, rel=1e-6)


def test_the_front_trades_latency_for_predicted_accuracy(predictor, roofline_options):
    from deploy.codesign_pareto import ArchProblem, front

    problem = ArchProblem(predictor.space, predictor, allowed=ALLOWED)
    points = front(problem, roofline_options, Budget(100.0), points=4)
    assert len(points) >= 2
    for lower, higher in zip(points, points[1:]):
        assert higher.predicted_accuracy > lower.predicted_accuracy and higher.cost.latency_ms > lower.cost.latency_ms
    for point in points:
        assert problem.linear_accuracy(point.blocks, point.choices) == pytest.approx(point.predicted_accuracy, abs=1e-9)


# ---- the joint space as an environment (PPO's side of the comparison) -------------------------------
def test_the_codesign_environment_passes_gymnasiums_checks_and_replays_the_optimum(roofline_options):
    from gymnasium.utils.env_checker import check_env

    from envs.codesign_env import CodesignEnv

    network = three_layers()
    design = solve(network, roofline_options, Budget(100.0))
    env = CodesignEnv(network, roofline_options, reference_ms=design.cost.latency_ms)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    total, info = 0.0, {}
    actions = [roofline_options.index(design.option)] + [env.choices.index(design.choices[l.name]) for l in network.searchable_layers]
    for action in actions:
        assert env.action_masks()[action]
        _, reward, done, _, info = env.step(action)
        total += reward
    assert done and info["npu"] == design.option.candidate.name
    assert info["latency_ms"] == pytest.approx(design.cost.latency_ms, rel=1e-9) and total == pytest.approx(-1.0, rel=1e-9)
    assert env.simulations == len(network.searchable_layers)
    env.reset()
    _, reward, done, _, info = env.step(len(roofline_options))  # not an NPU
    assert done and reward < 0 and "not a valid NPU" in info["invalid_action"]

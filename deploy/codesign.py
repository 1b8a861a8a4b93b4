"""HAO-style co-design: one integer program picks the NPU and every layer's precision and dataflow.

As in HAO (Dong et al., FCCM 2021), the accelerator's configuration and the network's deployment on it
are chosen together by integer programming under hardware budgets. The program, over candidate NPUs
h (each with the cost table of its simulations):

- y_h = 1 for the one NPU picked (sum of y_h = 1; NPUs over the area budget are left out before);
- x_{h,l,c} = 1 for layer l's choice c (precision x dataflow) on NPU h (sum over c = y_h);
- a tensor's format is a sum of the x of its producer's choices that leave it in that format; a
  conversion between two tensors' formats is a product of two such sums, linearised exactly by a
  continuous w with w <= each factor and w >= their sum - 1 (both factors are 0 or 1);
- non-searchable layers (adds, pools) run in the format of their first input, as `deploy.deployment`
  prices them; so the program's latency and energy of any assignment are `evaluate`'s exactly.

Objectives: latency (ms), energy (dynamic energy + SRAM leakage x latency, mJ) or EDP (their product,
minimised over an epsilon-constraint sweep of the latency with a proven bound: `solve_edp`). The power
budget bounds the average power of one inference, 1000 E / T <= P mW, a linear constraint. Without a
power budget, choices dominated in (latency, energy) for their layer and output format are dropped
first (no optimum uses them). Solved by HiGHS through `scipy.optimize.milp`; its optimality gap is
reported.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from deploy.cost import NETWORK_IO_FORMAT, ChoiceRejected, Cost
from deploy.cost_table import CostTable
from deploy.deployment import NetworkCost, evaluate
from deploy.npu_backend import ZigZagBackend
from deploy.npu_design_space import HardwareCandidate
from deploy.targets import NpuTarget
from deploy.workers import Pool
from deploy.zigzag_sim import SimulationSettings
from envs.network import NETWORK_INPUT, Layer, Network
from envs.space import Choice

if TYPE_CHECKING:
    from deploy.db import MeasurementDB

OBJECTIVES = ("latency", "energy", "edp")
EDP_STEPS = 16
"""Latency bounds of the EDP sweep."""


class InfeasibleBudget(ValueError):
    """No candidate NPU and deployment meets the budget; the message names the smallest feasible one."""


@dataclass(frozen=True)
class Budget:
    """What the silicon may take: core area, and the average power of an inference (None: unbounded)."""

    area_mm2: float
    power_mw: float | None = None


@dataclass(frozen=True)
class HardwareOption:
    """A candidate NPU, the cost table its layers are priced in, and the precisions it computes in."""

    candidate: HardwareCandidate
    table: CostTable
    precisions: tuple[str, ...]


@dataclass
class Design:
    """The co-design's answer: the NPU, the deployment, what it costs and how the solver did."""

    option: HardwareOption
    choices: dict[str, Choice]
    cost: NetworkCost
    objective: str
    objective_value: float
    gap: float
    """relative optimality gap the solver proved (for EDP: of the sweep)"""
    solve_s: float
    variables: int
    constraints: int
    solver: dict[str, Any] = field(default_factory=dict)

    @property
    def energy_mj(self) -> float:
        """Dynamic energy of one inference plus the SRAMs' leakage over its latency."""
        return self.cost.energy_mj + self.option.candidate.leakage_mw * self.cost.latency_ms * 1e-3

    @property
    def power_mw(self) -> float:
        """Average power over one inference."""
        return 1000 * self.energy_mj / self.cost.latency_ms


class Program:
    """The integer program under construction: variables with their latency and energy, rows of
    constraints."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.energy: list[float] = []
        self.leakage: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self.block_leakage_mw = 0.0
        """leakage of the NPU whose variables are being added"""
        self.build_s = self.highs_s = 0.0

    def var(self, latency: float = 0.0, energy: float = 0.0, integer: bool = True) -> int:
        self.latency.append(latency)
        self.energy.append(energy)
        self.leakage.append(self.block_leakage_mw)
        self.integer.append(int(integer))
        return len(self.latency) - 1

    def pick(self, option: "HardwareOption") -> int:
        """The variable that picks `option`'s NPU (its later variables leak its SRAMs' power)."""
        self.block_leakage_mw = option.candidate.leakage_mw
        return self.var()

    def charge(self, expr: dict[int, float], latency: float, energy: float) -> None:
        """Add a cost paid when the 0/1 expression `expr` is 1."""
        for v, coef in expr.items():
            self.latency[v] += coef * latency
            self.energy[v] += coef * energy

    def row(self, expr: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((expr, lo, hi))

    def minimise(self, objective: str, budget: Budget, latency_bound_ms: float | None = None, time_limit_s: float = 300.0,
                 extra: Sequence[tuple[dict[int, float], float, float]] = (), weights: np.ndarray | None = None) -> Any:
        """Solve for the least latency or energy (dynamic + leakage), or of `weights` . x if given, under
        the power budget, the latency bound and the `extra` rows; SciPy's result, or None if infeasible."""
        start = time.perf_counter()
        latency, total_energy = self.vectors()
        rows = list(self.rows) + list(extra)
        if budget.power_mw is not None:
            rows.append((dict(enumerate(1000 * total_energy - budget.power_mw * latency)), -np.inf, 0.0))
        if latency_bound_ms is not None:
            rows.append((dict(enumerate(latency)), -np.inf, latency_bound_ms))
        r, c, v, lo, hi = [], [], [], [], []
        for i, (expr, a, b) in enumerate(rows):
            for var, coef in expr.items():
                r.append(i), c.append(var), v.append(coef)
            lo.append(a), hi.append(b)
        n = len(latency)
        matrix = coo_array((v, (r, c)), shape=(len(rows), n)).tocsr()
        self.build_s = time.perf_counter() - start
        if weights is None:
            weights = latency if objective == "latency" else total_energy
        start = time.perf_counter()
        result = milp(weights, integrality=np.array(self.integer),
                      bounds=Bounds(np.zeros(n), np.ones(n)), constraints=LinearConstraint(matrix, lo, hi),
                      options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6})
        self.highs_s = time.perf_counter() - start
        return result if result.x is not None else None

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every variable's latency (ms) and energy with its NPU's leakage over that latency (mJ)."""
        latency, energy, leak = (np.array(a) for a in (self.latency, self.energy, self.leakage))
        return latency, energy + leak * latency * 1e-3

    def report(self, result: Any) -> dict[str, Any]:
        """What the solver said, for the record."""
        return {"status": result.message, "matrix_s": round(self.build_s, 3), "highs_s": round(self.highs_s, 3),
                "nodes": int(getattr(result, "mip_node_count", 0) or 0)}

    def product(self, a: dict[int, float], b: dict[int, float], gate: int) -> dict[int, float]:
        """An expression equal to a * b for 0/1 expressions a, b that are 0 whenever variable `gate` is."""
        if a == {gate: 1.0}:
            return b
        if b == {gate: 1.0}:
            return a
        w = self.var(integer=False)
        self.row({w: 1.0, **{v: -c for v, c in a.items()}}, -np.inf, 0.0)
        self.row({w: 1.0, **{v: -c for v, c in b.items()}}, -np.inf, 0.0)
        both = {w: 1.0}
        for expr in (a, b):
            for v, c in expr.items():
                both[v] = both.get(v, 0.0) - c
        self.row(both, -1.0, np.inf)
        return {w: 1.0}


def priced_choices(option: HardwareOption, layers: Sequence[Layer], prune: bool) -> dict[Layer, list[tuple[Choice, Cost]]]:
    """Each searchable layer's admitted choices with their costs (every one priced first, in one batch);
    with `prune`, only those no other choice of the same output format beats in both latency and energy."""
    table = option.table
    layers = [layer for layer in dict.fromkeys(layers) if layer.op.searchable]
    admitted = {layer: [c for c in table.space.valid_choices(layer) if c.quant in option.precisions] for layer in layers}
    table.prefetch([(layer, c) for layer in layers for c in admitted[layer]])
    out: dict[Layer, list[tuple[Choice, Cost]]] = {}
    for layer in layers:
        priced = []
        for c in admitted[layer]:
            try:
                priced.append((c, table.cost(layer, c)))
            except ChoiceRejected:
                continue
        if not priced:
            raise InfeasibleBudget(f"no admitted choice deploys layer {layer.name!r} on {option.candidate.name}")
        if prune:
            priced = [(c, cost) for c, cost in priced if not any(
                table.io_format(o) == table.io_format(c) and o_cost.latency_ms <= cost.latency_ms
                and o_cost.energy_mj <= cost.energy_mj
                and (o_cost.latency_ms, o_cost.energy_mj, o.key) < (cost.latency_ms, cost.energy_mj, c.key)
                for o, o_cost in priced)]
        out[layer] = priced
    return out


Tensors = dict[str, dict[int, dict[int, float]]]
"""Per tensor name: its format states (`CostTable.states` index) with the 0/1 expression that it is in each."""


def _add_option(program: Program, option: HardwareOption, network: Network, prune: bool) -> tuple[int, dict[str, list[tuple[int, Choice]]]]:
    """The variables and rows of one candidate NPU; its pick variable and each layer's (variable, choice)."""
    table = option.table
    states, _ = table.states()
    y = program.pick(option)
    tensor: Tensors = {NETWORK_INPUT: {states.index((NETWORK_IO_FORMAT, 1)): {y: 1.0}}}
    picks: dict[str, list[tuple[int, Choice]]] = {}
    add_layers(program, table, network, network.layers, priced_choices(option, network.layers, prune), tensor, y, picks)
    convert_output(program, table, network, tensor)
    return y, picks


def convert_output(program: Program, table: CostTable, network: Network, tensor: Tensors) -> None:
    """The cost of converting the network's output into the logits' format, in each format it may be in."""
    states, _ = table.states()
    out = network.layers[-1]
    for f, a in tensor[out.name].items():
        cost = table.conversion_cost(out.out_elements, states[f][0], NETWORK_IO_FORMAT, states[f][1])
        program.charge(a, cost.latency_ms, cost.energy_mj or 0.0)


def _decode(built: list[tuple[HardwareOption, int, dict[str, list[tuple[int, Choice]]]]], x: np.ndarray) -> tuple[HardwareOption, dict[str, Choice]]:
    """The NPU and the choice of every layer a solution `x` picks."""
    option, picks = next((o, p) for o, y, p in built if x[y] > 0.5)
    return option, {name: next(c for v, c in layer if x[v] > 0.5) for name, layer in picks.items()}


def add_layers(program: Program, table: CostTable, network: Network, layers: Sequence[Layer],
                costs: dict[Layer, list[tuple[Choice, Cost]]], tensor: Tensors, gate: int,
                picks: dict[str, list[tuple[int, Choice]]]) -> None:
    """Variables and costs of `layers` (of `network`, in order), which exist when variable `gate` is 1:
    one choice variable per priced choice of each searchable layer (they sum to `gate`), the costs of
    the non-searchable ones in their first input's format, and every conversion between formats.
    `tensor` gives the formats of the tensors they read and receives those of the tensors they write."""
    states, _ = table.states()
    fmt_state = {s: i for i, s in enumerate(states)}

    def conversion(elements: int, f: int, g: int) -> Cost:
        return table.conversion_cost(elements, states[f][0], states[g][0], states[g][1])

    def convert(src: dict[int, dict[int, float]], dst: dict[int, dict[int, float]], elements: int) -> None:
        for f, a in src.items():
            for g, b in dst.items():
                cost = conversion(elements, f, g)
                if cost.latency_ms or cost.energy_mj:
                    program.charge(program.product(a, b, gate), cost.latency_ms, cost.energy_mj or 0.0)

    for layer in layers:
        sizes = [int(np.prod(network.producer_shape(src))) for src in layer.inputs]
        if layer.op.searchable:
            picks[layer.name] = []
            own: dict[int, dict[int, float]] = {}
            for c, cost in costs[layer]:
                v = program.var(cost.latency_ms, cost.energy_mj or 0.0)
                picks[layer.name].append((v, c))
                own.setdefault(fmt_state[(table.io_format(c), c.dataflow.threads)], {})[v] = 1.0
            program.row({**{v: 1.0 for v, _ in picks[layer.name]}, gate: -1.0}, 0.0, 0.0)
            convert(tensor[layer.inputs[0]], own, sizes[0])
            tensor[layer.name] = own
        else:
            first = tensor[layer.inputs[0]]
            for f, a in first.items():
                cost = table.fixed_layer_cost(layer, *states[f])
                program.charge(a, cost.latency_ms, cost.energy_mj or 0.0)
            for src, size in zip(layer.inputs[1:], sizes[1:]):
                if tensor[src] is first:
                    for f, a in first.items():
                        cost = conversion(size, f, f)
                        program.charge(a, cost.latency_ms, cost.energy_mj or 0.0)
                else:
                    convert(tensor[src], first, size)
            tensor[layer.name] = first


def feasible_options(options: Sequence[HardwareOption], budget: Budget) -> list[HardwareOption]:
    """The options within the area budget; InfeasibleBudget naming the smallest NPU if none is."""
    within = [o for o in options if o.candidate.area_mm2 <= budget.area_mm2]
    if not within:
        smallest = min(options, key=lambda o: o.candidate.area_mm2)
        raise InfeasibleBudget(
            f"no candidate NPU fits in {budget.area_mm2:g} mm^2: the smallest, {smallest.candidate.name}, "
            f"takes {smallest.candidate.area_mm2:.3f} mm^2 (--area-mm2 {math.ceil(smallest.candidate.area_mm2 * 1000) / 1000:g} is feasible)"
        )
    return within


def solve(network: Network, options: Sequence[HardwareOption], budget: Budget, objective: str = "latency",
          latency_bound_ms: float | None = None, time_limit_s: float = 300.0) -> Design:
    """The NPU among `options` and the deployment of `network` on it that minimise `objective`
    ("latency" or "energy"; "edp" goes through `solve_edp`) within `budget` (and, if given, a bound
    on the latency). InfeasibleBudget if nothing meets the budget."""
    if objective == "edp":
        return solve_edp(network, options, budget, time_limit_s=time_limit_s)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    options = feasible_options(options, budget)
    start = time.perf_counter()
    program = Program()
    prune = budget.power_mw is None  # a latency bound keeps it exact: a dominated choice is slower too
    built = [(option, *_add_option(program, option, network, prune)) for option in options]
    program.row({y: 1.0 for _, y, _ in built}, 1.0, 1.0)
    result = program.minimise(objective, budget, latency_bound_ms, time_limit_s)
    if result is None:
        raise InfeasibleBudget(_why_infeasible(network, options, budget, latency_bound_ms))
    option, choices = _decode(built, result.x)
    return Design(option, choices, evaluate(network, choices, option.table), objective, float(result.fun),
                  float(getattr(result, "mip_gap", 0.0) or 0.0), time.perf_counter() - start, len(program.latency),
                  len(program.rows), program.report(result))


def _why_infeasible(network: Network, options: Sequence[HardwareOption], budget: Budget, latency_bound_ms: float | None) -> str:
    """The budget no deployment meets, and what would be feasible: the least average power any
    deployment on any NPU within the area draws."""
    if budget.power_mw is None:
        return f"no deployment of {network.name} within {latency_bound_ms} ms fits in {budget.area_mm2:g} mm^2"
    least = least_power(network, options, Budget(budget.area_mm2))
    feasible = math.ceil(least.power_mw * 10) / 10
    return (f"no deployment of {network.name} on an NPU within {budget.area_mm2:g} mm^2 averages {budget.power_mw:g} mW or less; "
            f"the least is {least.power_mw:.2f} mW, on {least.option.candidate.name} (--power-mw {feasible:g} is feasible)")


def least_power(network: Network, options: Sequence[HardwareOption], budget: Budget, time_limit_s: float = 300.0) -> Design:
    """The design of least average power (energy / latency) within the area, by Dinkelbach's method:
    minimise E - p T at the power p of the last design until nothing goes below zero."""
    options = feasible_options(options, budget)
    start = time.perf_counter()
    program = Program()
    built = [(option, *_add_option(program, option, network, prune=False)) for option in options]
    program.row({y: 1.0 for _, y, _ in built}, 1.0, 1.0)
    latency, energy = program.vectors()
    power = solve(network, options, budget, "energy", time_limit_s=time_limit_s).power_mw
    while True:
        result = program.minimise("latency", Budget(budget.area_mm2), time_limit_s=time_limit_s, weights=1000 * energy - power * latency)
        option, choices = _decode(built, result.x)
        design = Design(option, choices, evaluate(network, choices, option.table), "power", 0.0, 0.0, time.perf_counter() - start,
                        len(program.latency), len(program.rows), program.report(result))
        if design.power_mw >= power * (1 - 1e-9):
            return design
        power = design.power_mw


def solve_edp(network: Network, options: Sequence[HardwareOption], budget: Budget, steps: int = EDP_STEPS,
              time_limit_s: float = 300.0) -> Design:
    """Least energy-delay product: least energy under latency bounds swept geometrically from the
    fastest design's latency to the least-energy design's; the bound on the EDP of anything between
    two bounds gives the gap reported."""
    start = time.perf_counter()
    fastest = solve(network, options, budget, "latency", time_limit_s=time_limit_s)
    frugal = solve(network, options, budget, "energy", time_limit_s=time_limit_s)
    lo, hi = fastest.cost.latency_ms, max(frugal.cost.latency_ms, fastest.cost.latency_ms)
    bounds = [lo * (hi / lo) ** (k / steps) for k in range(1, steps + 1)] if hi > lo else [lo]
    designs = [fastest, frugal]
    lower = math.inf
    previous = lo
    for bound in bounds:
        design = solve(network, options, budget, "energy", latency_bound_ms=bound * (1 + 1e-9), time_limit_s=time_limit_s)
        designs.append(design)
        lower = min(lower, previous * design.energy_mj * (1 - design.gap))  # anything with latency in (previous, bound]
        previous = bound
    lower = min(lower, hi * frugal.energy_mj * (1 - frugal.gap))  # anything slower than the least-energy design
    best = min(designs, key=lambda d: d.energy_mj * d.cost.latency_ms)
    edp = best.energy_mj * best.cost.latency_ms
    return Design(best.option, best.choices, best.cost, "edp", edp, max(0.0, 1 - lower / edp), time.perf_counter() - start,
                  best.variables, best.constraints, {"sweep": len(bounds), "lower_bound": lower})


def hardware_options(candidates: Sequence[HardwareCandidate], precisions: Sequence[str], db: "MeasurementDB | None" = None,
                     settings: SimulationSettings = SimulationSettings(), pool: Pool | None = None) -> list[HardwareOption]:
    """Each candidate with the cost table of its simulations (ZigZag through `db`, workers from `pool`),
    computing in the `precisions` it supports; candidates of one simulated hardware share a table."""
    tables: dict[str, CostTable] = {}
    options = []
    for h in candidates:
        admitted = tuple(p for p in h.spec.precisions if p in precisions)
        if not admitted:
            continue
        key = json.dumps(h.simulated.to_dict(), sort_keys=True)
        table = tables.get(key)
        if table is None:
            target = NpuTarget(h.simulated)
            backend = ZigZagBackend(h.simulated, settings, pool=pool)
            table = tables[key] = CostTable(backend, target.search_space(), db, estimator=target.model())
            if db is not None:
                db.register_target(table.fingerprint, {**target.describe(), "provenance": backend.provenance, "codesign": True})
        options.append(HardwareOption(h, table, admitted))
    return options

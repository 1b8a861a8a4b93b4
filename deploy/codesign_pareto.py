"""HAO's accuracy-latency Pareto front: architecture, per-layer precision, dataflow and NPU in one program.

HAO (Dong et al., FCCM 2021) turns its integer program into accuracy-latency fronts with an accuracy
predictor over subgraphs of different quantization. Here the predictor is `envs.accuracy_predictor`'s
ridge model, linear in each block's option, the fractions of the block's layers in fp16 and int8, and
the precision of each layer outside the blocks; so a bound on the predicted accuracy is one more
linear row of `deploy.codesign`'s program. Every option o of block b has its own layers, which exist
when u_{h,b,o} = 1 (sum over o = y_h): their input is the block's input gated by u (w <= each, w >=
their sum - 1), and the block's output is the sum of its options' outputs (a skipped block passes its
input on). `front` sweeps the bound between the fastest design's predicted accuracy and the most
accurate design's; every point is exact for the predictor, and its accuracy is measured afterwards
by whoever has the oracle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from deploy.codesign import (Budget, Design, HardwareOption, InfeasibleBudget, Program, Tensors, add_layers, convert_output,
                             feasible_options, priced_choices)
from deploy.cost import NETWORK_IO_FORMAT
from deploy.deployment import evaluate
from envs.accuracy_predictor import PredictedAccuracy
from envs.arch_space import ArchSpace
from envs.network import NETWORK_INPUT, Layer, Network
from envs.space import QUANTS, Choice

FRONT_POINTS = 10
"""Accuracy bounds of the sweep (besides the fastest design)."""


@dataclass
class ArchDesign(Design):
    """A co-design that also chose the architecture: its blocks, network and predicted accuracy."""

    blocks: tuple = ()
    network: Network | None = None
    predicted_accuracy: float = float("nan")


class ArchProblem:
    """The layers every block option brings, at the size latency is priced at, and the predictor's
    coefficients on them.

    Args:
        space: the architecture space (its options per block).
        predictor: the accuracy predictor of its supernet.
        input_size, num_classes: the networks whose latency counts (the supernet's are smaller).
        allowed: block -> the options it may take; the blocks it leaves out keep their original setting
            (default: every block takes any option of the space).
    """

    def __init__(self, space: ArchSpace, predictor: PredictedAccuracy, input_size: int = 224, num_classes: int = 1000,
                 allowed: Mapping[int, Sequence] | None = None) -> None:
        self.space, self.predictor = space, predictor
        self.input_size, self.num_classes = input_size, num_classes
        self.original = space.network(space.ORIGINAL, input_size, num_classes)
        in_block = [space.block_of(l.name) for l in self.original.layers]
        first = in_block.index(0)
        self.prefix = list(self.original.layers[:first])
        self.suffix = [l for l, b in zip(self.original.layers, in_block) if b is None and self.original.layers.index(l) > first]
        in_original = {b: [l for l, lb in zip(self.original.layers, in_block) if lb == b] for b in range(space.blocks)}
        self.block_input = {b: layers[0].inputs[0] for b, layers in in_original.items()}
        """the tensor each block reads, as the original network names it (every option reads it so)"""
        self.block_output = {b: layers[-1].name for b, layers in in_original.items()}
        self.options: dict[int, dict[object, tuple[Network, list[Layer]]]] = {}
        for b in range(space.blocks):
            self.options[b] = {}
            for o in space.options(b) if allowed is None else allowed.get(b, (space.ORIGINAL[b],)):
                space.check((*space.ORIGINAL[:b], o, *space.ORIGINAL[b + 1:]))
                arch = (*space.ORIGINAL[:b], o, *space.ORIGINAL[b + 1:])
                net = space.network(arch, input_size, num_classes)
                self.options[b][o] = (net, [l for l in net.layers if space.block_of(l.name) == b])
        coef = np.asarray(predictor.model.coef_, dtype=float)
        width = len(space.OPTIONS) + 2
        self.block_coef = coef[: space.blocks * width].reshape(space.blocks, width)
        self.outside_coef = coef[space.blocks * width:].reshape(-1, len(QUANTS))
        self.outside = list(predictor.outside)
        self.intercept = float(predictor.model.intercept_)

    def layers(self) -> list[Layer]:
        """Every layer any architecture of the space has (to price them all in one batch)."""
        out = self.prefix + self.suffix
        for options in self.options.values():
            for _, layers in options.values():
                out += layers
        return out

    def linear_accuracy(self, blocks: tuple, choices: Mapping[str, Choice]) -> float:
        """The predictor's value for an architecture and its deployment, from the program's weights."""
        network = self.space.network(blocks, self.input_size, self.num_classes)
        total = self.intercept + sum(self.option_weight(b, o) for b, o in enumerate(blocks))
        for b in [None, *range(self.space.blocks)]:
            layers = [l for l in network.searchable_layers if self.space.block_of(l.name) == b]
            total += sum(self.layer_weight(l, b, choices[l.name].quant, len(layers)) for l in layers)
        return total

    def layer_weight(self, layer: Layer, block: int | None, quant: str, layers_in_block: int) -> float:
        """The predictor's weight on `layer` computing in `quant`."""
        if block is None:
            return float(self.outside_coef[self.outside.index(layer.name), QUANTS.index(quant)])
        k = len(self.space.OPTIONS)
        share = {"fp16": self.block_coef[block, k], "int8": self.block_coef[block, k + 1]}.get(quant, 0.0)
        return float(share) / layers_in_block

    def option_weight(self, block: int, option: object) -> float:
        """The predictor's weight on block `block` taking `option` (none for a block without a choice)."""
        return float(self.block_coef[block, self.space.OPTIONS.index(option)]) if option in self.space.OPTIONS else 0.0


def _add_arch_option(program: Program, option: HardwareOption, problem: ArchProblem, prune: bool, accuracy: dict[int, float]):
    """One NPU's variables over every architecture; its pick variable, the block options' variables and
    each layer's (variable, choice) per (block, option) (None, None for the layers outside blocks).
    Adds the predictor's weights of its variables to `accuracy`."""
    table = option.table
    states, _ = table.states()
    costs = priced_choices(option, problem.layers(), prune)
    y = program.pick(option)
    tensor: Tensors = {NETWORK_INPUT: {states.index((NETWORK_IO_FORMAT, 1)): {y: 1.0}}}
    picks: dict[tuple, dict[str, list[tuple[int, Choice]]]] = {(None, None): {}}
    add_layers(program, table, problem.original, problem.prefix, costs, tensor, y, picks[(None, None)])
    gates: dict[tuple, int] = {}
    for b, options in problem.options.items():
        entry = problem.block_input[b]
        block_in = tensor[entry]
        merged: dict[int, dict[int, float]] = {}
        for o, (net, layers) in options.items():
            u = y if len(options) == 1 else program.var()
            gates[(b, o)] = u
            accuracy[u] = accuracy.get(u, 0.0) + problem.option_weight(b, o)
            gated = {f: program.product(a, {u: 1.0}, y) for f, a in block_in.items()}
            local = dict(tensor)
            local[entry] = gated
            picks[(b, o)] = {}
            add_layers(program, table, net, layers, costs, local, u, picks[(b, o)])
            searchable = [l for l in layers if l.op.searchable]
            for layer in searchable:
                for v, c in picks[(b, o)][layer.name]:
                    accuracy[v] = accuracy.get(v, 0.0) + problem.layer_weight(layer, b, c.quant, len(searchable))
            for f, expr in (local[layers[-1].name] if layers else gated).items():
                merged.setdefault(f, {}).update(expr)  # options' variables are distinct: a sum is a union
        if len(options) > 1:
            program.row({**{gates[(b, o)]: 1.0 for o in options}, y: -1.0}, 0.0, 0.0)
        tensor[problem.block_output[b]] = merged
    add_layers(program, table, problem.original, problem.suffix, costs, tensor, y, picks[(None, None)])
    for layer in problem.prefix + problem.suffix:
        if layer.op.searchable:
            for v, c in picks[(None, None)][layer.name]:
                accuracy[v] = accuracy.get(v, 0.0) + problem.layer_weight(layer, None, c.quant, 1)
    convert_output(program, table, problem.original, tensor)
    return y, gates, picks


def solve_arch(problem: ArchProblem, options: Sequence[HardwareOption], budget: Budget, objective: str = "latency",
               min_accuracy: float | None = None, time_limit_s: float = 300.0) -> ArchDesign:
    """The NPU, architecture and deployment that minimise `objective` ("latency", "energy", or
    "accuracy" to maximise the predicted accuracy) within `budget` and, if given, with a predicted
    accuracy of at least `min_accuracy`."""
    options = feasible_options(options, budget)
    start = time.perf_counter()
    program = Program()
    accuracy: dict[int, float] = {}
    prune = budget.power_mw is None
    built = [(option, *_add_arch_option(program, option, problem, prune, accuracy)) for option in options]
    program.row({y: 1.0 for _, y, _, _ in built}, 1.0, 1.0)
    extra = []
    if min_accuracy is not None:
        extra.append((accuracy, min_accuracy - problem.intercept, np.inf))
    weights = None
    if objective == "accuracy":
        weights = np.zeros(len(program.latency))
        for v, w in accuracy.items():
            weights[v] = -w
    result = program.minimise("latency" if objective == "accuracy" else objective, budget, None, time_limit_s, extra, weights)
    if result is None:
        raise InfeasibleBudget(f"no architecture and deployment on an NPU within {budget.area_mm2:g} mm^2 reaches a predicted "
                               f"accuracy of {min_accuracy}")
    option, y, gates, picks = next(item for item in built if result.x[item[1]] > 0.5)
    blocks = tuple(next(o for o in problem.options[b] if result.x[gates[(b, o)]] > 0.5) for b in problem.options)
    network = problem.space.network(blocks, problem.input_size, problem.num_classes)
    chosen = [(None, None)] + [(b, o) for b, o in enumerate(blocks)]
    choices = {name: next(c for v, c in layer if result.x[v] > 0.5) for key in chosen for name, layer in picks[key].items()}
    precisions = [choices[l.name].quant for l in network.searchable_layers]
    return ArchDesign(option, choices, evaluate(network, choices, option.table), objective, float(result.fun),
                      float(getattr(result, "mip_gap", 0.0) or 0.0), time.perf_counter() - start, len(program.latency),
                      len(program.rows), program.report(result), blocks=blocks, network=network,
                      predicted_accuracy=problem.predictor.accuracy(precisions, blocks))


def front(problem: ArchProblem, options: Sequence[HardwareOption], budget: Budget, points: int = FRONT_POINTS,
          objective: str = "latency") -> list[ArchDesign]:
    """The accuracy-`objective` Pareto front: the best design at each of `points` predicted-accuracy
    bounds spread from the fastest (or least-energy) design's to the most accurate design's, dominated
    points dropped, in order of predicted accuracy."""
    fastest = solve_arch(problem, options, budget, objective)
    best = solve_arch(problem, options, budget, "accuracy")
    lo, hi = fastest.predicted_accuracy, best.predicted_accuracy
    designs = [fastest] + [solve_arch(problem, options, budget, objective, min_accuracy=lo + (hi - lo) * k / points)
                           for k in range(1, points + 1)]
    value = (lambda d: d.cost.latency_ms) if objective == "latency" else (lambda d: d.energy_mj)
    kept = [d for d in designs if not any(
        value(o) <= value(d) and o.predicted_accuracy >= d.predicted_accuracy
        and (value(o), -o.predicted_accuracy) < (value(d), -d.predicted_accuracy) for o in designs)]
    unique = {(d.blocks, tuple(sorted((k, c.key) for k, c in d.choices.items())), d.option.candidate.name): d for d in kept}
    return sorted(unique.values(), key=lambda d: d.predicted_accuracy)

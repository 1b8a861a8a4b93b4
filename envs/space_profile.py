"""Profile an architecture space on one device from end-to-end numbers only, and reduce it.

As Mills et al. (CIKM 2021) profile neural blocks on a black-box device: sample architectures of the
space, price each end to end on the target (its fastest deployment in one precision: the A72 model,
ZigZag simulation or TVM measurement) and score it with the supernet, then regress latency and
accuracy on one-hot block options. Each coefficient is an option's contribution at its block,
relative to the block's reference option (skipped or dropped where the block may be, else its
smallest option), with a 95% confidence interval (ordinary least squares, t quantiles). On a measured
device the architectures are timed in groups, in turns, and the latency regression gives each group
its own constant: a shared machine's speed drifts over minutes (here 2-5%), and the drift is then a
group's, not noise on the options' contributions. From these:
an option's friendliness (accuracy points per ms of latency it adds over the reference), how often
it appears on the sampled accuracy-latency front, and its placement effect (the same option's
contributions per stage).

`reduce_space` turns a profile into a reduced space (`envs.reduced_space`): at every block an option
is kept only if it is more accurate than every faster option (by the estimates) by `aggressiveness`
standard errors of the difference: 0 keeps the block's Pareto-optimal options, more drops options
that buy too little accuracy for their latency, less (negative) drops only options clearly beaten.
A higher aggressiveness always keeps a subset; the fastest option is always kept. `aggressiveness_for_size`
finds the least aggressive reduction that holds at most a given number of architectures: two
devices' reductions compared at equal size differ only in which options each device's profile keeps.

The regression never sees per-layer costs. Each sample also records the per-layer costs the backend
gave for its blocks, and `SpaceProfile.recovery` compares the two: how well end-to-end profiling
recovers each option's latency contribution (the check that it would work on a black box). On a
measured device the per-layer costs are kernels timed alone (and the fixed layers and conversions as
the target's model prices them), timed once each, minutes apart from the network: on a shared machine
the same kernel took 3x longer in one such timing than in another. So there each sample also records
where its network's time went, block by block, measured in the same turns as the network (the
runtime's per-call times, `deploy.whole_network.in_network_layers`), and `recovery(in_network=True)`
checks the profile against those.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from scipy import stats

from deploy.cost_table import CostTable
from deploy.deployment import NetworkCost, evaluate
from deploy.optimum import best_choices
from deploy.whole_network import priced_as_measured
from envs.arch_space import ArchSpace
from envs.arch_state import ArchitectureState
from envs.network import Network
from envs.reduced_space import ReducedArchSpace, architectures
from envs.space import Choice
from envs.subnet_accuracy import SupernetOracle

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CONFIDENCE = 0.95
"""Confidence of the intervals the profile reports."""
PRECISION = "int8"
"""Every layer's precision while profiling (the precision NPUs run and the A72 is fastest in)."""
RECOVERY_TOLERANCE = 0.10
"""How close (relative to an option's per-layer cost) an end-to-end estimate should come to it."""
EXACT_MS = 1e-9
"""An estimate this close to the per-layer contribution is exact (an additive backend's fit, to rounding),
whatever its interval."""
NETWORK_INPUT_SIZE, NETWORK_CLASSES = 224, 1000
"""The networks priced (ImageNet shape by default); accuracy is the supernet's at 32x32 on its proxy data."""


@dataclass(frozen=True)
class ProfiledArchitecture:
    """One architecture priced end to end."""

    architecture: tuple[str, ...]
    """Every block's option label."""
    latency_ms: float
    accuracy: float
    block_latency_ms: tuple[float, ...] = field(default=(), compare=False)
    """Per block, what the backend's per-layer costs of its layers sum to (for `SpaceProfile.recovery` only)."""
    block_in_network_ms: tuple[float, ...] = field(default=(), compare=False)
    """On a measured device, per block, the time its layers took inside the network as timed (for
    `SpaceProfile.recovery` only; empty where the device gives no per-call times)."""
    group: str | None = field(default=None, compare=False)
    """On a measured device, the architectures timed together in turns (`deploy.validation.time_libraries`):
    `fit_profile` gives each group its own constant, so the device's drift between groups is not taken
    for the options'."""


WholeNetworkTimer = Callable[[Sequence[tuple[Network, Mapping[str, Choice]]]], list[dict[str, Any]]]
"""Builds deployments as one network each and times them on the device together, in turns
(`deploy.whole_network.measured_whole_networks`)."""


class ArchitecturePricer:
    """Prices an architecture of `space` on one target: the latency of its fastest deployment with
    every layer in `precision` (exact dynamic programming over the cost table; with `own_dataflow`,
    every layer in the target's own dataflow, as an NPU with a fixed dataflow runs it), accuracy
    from `oracle`.

    The latency is the table's sum over the deployment's layers, or, with `whole_network` (a measured
    target), the deployment the target's model finds fastest, built as one network and timed end to
    end, as a black box is, `group_size` architectures at a time in turns; the per-layer costs then are
    its kernels timed alone just before."""

    def __init__(self, space: ArchSpace, table: CostTable, oracle: SupernetOracle, precision: str = PRECISION,
                 input_size: int = NETWORK_INPUT_SIZE, whole_network: WholeNetworkTimer | None = None,
                 own_dataflow: bool = False, group_size: int = 1) -> None:
        if group_size < 1:
            raise ValueError(f"a group of {group_size} architectures: time at least one at a time")
        self.space, self.table, self.oracle, self.precision = space, table, oracle, precision
        self.input_size, self.whole_network, self.group_size = input_size, whole_network, group_size
        self.dataflow = table.space.baseline_choice().dataflow if own_dataflow else None
        self.latency_provenance = table.backend.provenance + (":whole-network" if whole_network else "")
        self.accuracy_provenance = oracle.provenance

    def admits(self, choice: Choice) -> bool:
        """Whether a deployment may use `choice`: in `precision`, and in the target's own dataflow if so asked."""
        return choice.quant == self.precision and (self.dataflow is None or choice.dataflow == self.dataflow)

    def prefetch(self) -> None:
        """Price every layer any architecture of the space has, in every admitted choice, now (a
        simulator runs them in parallel)."""
        layers = ArchitectureState(self.space, self.input_size, NETWORK_CLASSES).all_layers()
        valid = self.table.space.valid_choices
        self.table.prefetch([(layer, c) for layer in layers for c in valid(layer) if self.admits(c)])

    def __call__(self, blocks: tuple) -> ProfiledArchitecture:
        return self.price([blocks])[0]

    def price(self, architectures: Sequence[tuple]) -> list[ProfiledArchitecture]:
        """Every architecture (block options) priced: on a measured target, `group_size` at a time."""
        if self.whole_network is None:
            return [self._profiled(blocks, *self._table_priced(blocks)) for blocks in architectures]
        out = []
        for start in range(0, len(architectures), self.group_size):
            group = architectures[start:start + self.group_size]
            networks = [self.space.network(tuple(blocks), self.input_size, NETWORK_CLASSES) for blocks in group]
            deployments = [(network, best_choices(network, self.table.estimates, self.admits)) for network in networks]
            for blocks, (network, choices), measured in zip(group, deployments, self.whole_network(deployments)):
                # deployed as the target's model finds fastest, whichever kernels were measured before
                out.append(self._profiled(blocks, priced_as_measured(network, choices, self.table, measured),
                                          measured["median_ms"], measured.get("group"), measured.get("layers_ms")))
        return out

    def _table_priced(self, blocks: tuple) -> tuple[NetworkCost, float]:
        network = self.space.network(tuple(blocks), self.input_size, NETWORK_CLASSES)
        cost = evaluate(network, best_choices(network, self.table, self.admits), self.table)
        return cost, cost.latency_ms

    def _profiled(self, blocks: tuple, cost: NetworkCost, latency: float, group: str | None = None,
                  in_network: Mapping[str, float] | None = None) -> ProfiledArchitecture:
        """The architecture with its latency, its accuracy, its blocks' per-layer costs in `cost` and, given
        the layers' times inside the network (`in_network`), its blocks' times there."""
        per_block = self._per_block((layer.name, layer.latency_ms + layer.conversion_ms) for layer in cost.layers)
        inside = self._per_block(in_network.items()) if in_network else ()
        layers = len(self.oracle.supernet.subnetwork(tuple(blocks)).searchable_layers)
        accuracy = self.oracle.accuracy((self.precision,) * layers, tuple(blocks))
        return ProfiledArchitecture(self.space.labels(tuple(blocks)), latency, accuracy, per_block, group=group, block_in_network_ms=inside)

    def _per_block(self, layer_ms: Iterable[tuple[str, float]]) -> tuple[float, ...]:
        """Milliseconds per layer summed per block (layers outside every block left out)."""
        per_block = np.zeros(self.space.blocks)
        for name, ms in layer_ms:
            block = self.space.block_of(name)
            if block is not None:
                per_block[block] += ms
        return tuple(per_block.tolist())


def sample_architectures(space: ArchSpace, count: int, rng: np.random.Generator, cover: bool = True) -> list[tuple]:
    """`count` distinct architectures drawn uniformly; with `cover`, the first few together take every
    option of every block (block b takes its i-th option in the i-th), so the profile sees each."""
    most = max(len(space.options(b)) for b in range(space.blocks))
    covering = [tuple(space.options(b)[i % len(space.options(b))] for b in range(space.blocks)) for i in range(most)]
    drawn: dict[tuple, None] = dict.fromkeys(covering[:count] if cover else [])
    limit = 100 * count
    while len(drawn) < count and limit:
        drawn.setdefault(space.sample(rng))
        limit -= 1
    if len(drawn) < count:
        raise ValueError(f"the space holds fewer than {count} distinct architectures ({architectures(space)})")
    return list(drawn)


@dataclass(frozen=True)
class OptionEffect:
    """One option's contribution at one block, relative to the block's reference option."""

    block: str
    stage: int
    option: str
    reference: bool
    latency_ms: float
    """Latency it adds over the reference (0 for the reference), with the half-width of its interval."""
    latency_ci_ms: float
    accuracy_points: float
    """Accuracy (percentage points) it adds over the reference."""
    accuracy_ci_points: float
    samples: int
    """Sampled architectures that take it."""
    on_front: int
    """Sampled architectures on the accuracy-latency front that take it."""

    @property
    def points_per_ms(self) -> float | None:
        """Friendliness: accuracy points per ms it adds over the reference (None for the reference,
        or when it saves latency: then it is friendlier than the reference whatever its accuracy)."""
        return self.accuracy_points / self.latency_ms if self.latency_ms > 0 and not self.reference else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"points_per_ms": self.points_per_ms}


@dataclass
class SpaceProfile:
    """What the end-to-end samples say about every block option on one target."""

    space: str
    target: str
    latency_provenance: str
    accuracy_provenance: str
    precision: str
    samples: list[ProfiledArchitecture]
    effects: list[OptionEffect]
    latency_r2: float
    accuracy_r2: float
    latency_residual_ms: float
    """Standard deviation of the latency regression's residuals (non-additive effects)."""
    accuracy_residual_points: float
    t_quantile: float
    """Each accuracy interval's half-width over its standard error (the latency intervals' differs by
    the degrees of freedom the groups' constants take)."""

    def effect(self, block: str, option: str) -> OptionEffect:
        """The effect of `option` at `block` (by name and label)."""
        for e in self.effects:
            if e.block == block and e.option == option:
                return e
        raise KeyError(f"no effect of option {option!r} at block {block!r} in the profile of {self.space} on {self.target}")

    @property
    def in_network(self) -> bool:
        """Whether every sample has its blocks' times inside the measured network (`recovery(in_network=True)`)."""
        return bool(self.samples) and all(s.block_in_network_ms for s in self.samples)

    def front(self) -> list[ProfiledArchitecture]:
        """The sampled architectures no other sample beats in both accuracy and latency, by latency."""
        return _front(self.samples)

    def placement(self) -> dict[str, dict[str, dict[str, float]]]:
        """Option label -> stage -> mean latency (ms) and accuracy (points) it adds there over the
        blocks' references: how the same option's cost and value depend on where it sits."""
        table: dict[str, dict[str, dict[str, float]]] = {}
        for option in dict.fromkeys(e.option for e in self.effects):
            rows = [e for e in self.effects if e.option == option and not e.reference]
            stages = sorted({e.stage for e in rows})
            table[option] = {
                str(s): {"latency_ms": float(np.mean([e.latency_ms for e in rows if e.stage == s])),
                         "accuracy_points": float(np.mean([e.accuracy_points for e in rows if e.stage == s]))}
                for s in stages
            }
        return {o: by_stage for o, by_stage in table.items() if by_stage}

    def recovery(self, space: ArchSpace, in_network: bool = False) -> dict[str, Any]:
        """End-to-end estimates against the per-layer costs the backend gave (with `in_network`, the
        blocks' times inside the measured networks, `ProfiledArchitecture.block_in_network_ms`): for every non-reference
        option, |estimated - per-layer contribution over the reference| / the option's per-layer cost
        (the blocks' per-layer costs, averaged over the samples that take each option), and how often
        the per-layer contribution lies within the estimate's confidence interval (on a measured
        device: whether the errors are what the samples' noise allows, or a bias), and how many samples
        would narrow every option's interval to `RECOVERY_TOLERANCE` of its cost (an interval shrinks
        as one over the root of the samples: what a noisy device needs for every option to come that close)."""
        if in_network and not self.in_network:
            raise ValueError(f"the profile of {self.space} on {self.target} has no blocks' times inside measured networks "
                             "(a model, a simulator, or a board over RPC gives none): check it with in_network=False")
        errors = []
        for block in range(space.blocks):
            name = space.block_name(block)
            per_option = {}
            for option in space.options(block):
                label = space.label(option)
                costs = [(s.block_in_network_ms if in_network else s.block_latency_ms)[block]
                         for s in self.samples if s.architecture[block] == label]
                if costs:
                    per_option[label] = float(np.mean(costs))
            reference = next((e.option for e in self.effects if e.block == name and e.reference), None)
            if reference is None or reference not in per_option:
                continue
            for label, cost in per_option.items():
                if label == reference or cost <= 0:
                    continue
                truth = cost - per_option[reference]
                effect = self.effect(name, label)
                errors.append({"block": name, "option": label, "estimate_ms": effect.latency_ms, "per_layer_ms": truth,
                               "interval_ms": effect.latency_ci_ms, "option_cost_ms": cost,
                               "relative_error": abs(effect.latency_ms - truth) / cost})
        rel = np.array([e["relative_error"] for e in errors])
        return {
            "options": len(errors),
            "median_relative_error": float(np.median(rel)) if len(rel) else None,
            "p90_relative_error": float(np.percentile(rel, 90)) if len(rel) else None,
            "max_relative_error": float(rel.max()) if len(rel) else None,
            "within_10_percent": float(np.mean(rel <= RECOVERY_TOLERANCE)) if len(rel) else None,
            "within_interval": float(np.mean([abs(e["estimate_ms"] - e["per_layer_ms"]) <= e["interval_ms"] + EXACT_MS for e in errors]))
            if errors else None,
            "samples_for_intervals_within_10_percent":
                _samples_for(errors, len(self.samples), minimum_samples(sum(not e.reference for e in self.effects))) if errors else None,
            "worst": sorted(errors, key=lambda e: -e["relative_error"])[:5],
        }

    def likes(self, count: int = 3) -> dict[str, list[str]]:
        """The device's taste in a few words: the options most often on its front, and the
        friendliest and least friendly options (median accuracy points per ms over their blocks)."""
        on_front: dict[str, int] = {}
        rate: dict[str, list[float]] = {}
        for e in self.effects:
            on_front[e.option] = on_front.get(e.option, 0) + e.on_front
            if e.points_per_ms is not None:
                rate.setdefault(e.option, []).append(e.points_per_ms)
        median = {o: float(np.median(r)) for o, r in rate.items()}
        return {
            "most_on_front": sorted(on_front, key=lambda o: -on_front[o])[:count],
            "friendliest": sorted(median, key=lambda o: -median[o])[:count],
            "least_friendly": sorted(median, key=lambda o: median[o])[:count],
        }

    def to_dict(self, space: ArchSpace) -> dict[str, Any]:
        return {
            "space": self.space, "target": self.target, "precision": self.precision,
            "latency_provenance": self.latency_provenance, "accuracy_provenance": self.accuracy_provenance,
            "samples": len(self.samples),
            "fit": {"latency_r2": self.latency_r2, "accuracy_r2": self.accuracy_r2,
                    "latency_residual_ms": self.latency_residual_ms, "accuracy_residual_points": self.accuracy_residual_points,
                    "confidence": CONFIDENCE, "t_quantile": self.t_quantile},
            "likes": self.likes(),
            "recovery": self.recovery(space),
            **({"recovery_in_network": self.recovery(space, in_network=True)} if self.in_network else {}),
            "effects": [e.to_dict() for e in self.effects],
            "placement": self.placement(),
            "front": [{"architecture": list(p.architecture), "latency_ms": p.latency_ms, "accuracy": p.accuracy} for p in self.front()],
            "architectures": [{"architecture": list(p.architecture), "latency_ms": p.latency_ms, "accuracy": p.accuracy}
                              | ({"group": p.group} if p.group is not None else {}) for p in self.samples],
        }


def recovery_summary(recovery: Mapping[str, Any], against: str) -> str:
    """One line on a `SpaceProfile.recovery`: how close the end-to-end estimates came to `against`."""
    return (f"per-block latency from end-to-end numbers vs {against}: median error {100 * recovery['median_relative_error']:.1f}%, "
            f"{100 * recovery['within_10_percent']:.0f}% of {recovery['options']} options within {100 * RECOVERY_TOLERANCE:.0f}%, "
            f"{100 * recovery['within_interval']:.0f}% within their {100 * CONFIDENCE:.0f}% intervals; every interval would be within "
            f"{100 * RECOVERY_TOLERANCE:.0f}% of its option's cost from {recovery['samples_for_intervals_within_10_percent']} samples")


def reference_option(space: ArchSpace, block: int) -> object:
    """The option a block's effects are measured from: its smallest (skipped or dropped where it may be)."""
    return min(space.options(block), key=space.size)


def fit_profile(space: ArchSpace, samples: Sequence[ProfiledArchitecture], target: str,
                latency_provenance: str = "", accuracy_provenance: str = "", precision: str = PRECISION) -> SpaceProfile:
    """Regress latency (ms) and accuracy (points) of `samples` on their block options (module
    docstring); latency also on one constant per group of samples timed together (`ProfiledArchitecture.group`).
    ValueError when there are too few samples for the options (and groups) to be told apart."""
    columns = [(b, o) for b in range(space.blocks) for o in space.options(b) if o != reference_option(space, b)]
    index = {(b, space.label(o)): i + 1 for i, (b, o) in enumerate(columns)}
    groups = _group_columns(samples)
    if len(samples) < minimum_samples(len(columns) + groups.shape[1]):
        raise ValueError(f"{len(samples)} samples cannot profile {len(columns)} block options of {space.name}"
                         + (f" and {groups.shape[1]} group constants" if groups.shape[1] else "")
                         + f": use at least {minimum_samples(len(columns) + groups.shape[1])}")
    x = np.zeros((len(samples), len(columns) + 1))
    x[:, 0] = 1.0
    for row, sample in enumerate(samples):
        for block, label in enumerate(sample.architecture):
            column = index.get((block, label))
            if column is not None:
                x[row, column] = 1.0
    latency = np.array([s.latency_ms for s in samples])
    accuracy = 100.0 * np.array([s.accuracy for s in samples])
    lat_coef, lat_se, lat_r2, lat_sd = _ols(np.hstack([x, groups]), latency)
    acc_coef, acc_se, acc_r2, acc_sd = _ols(x, accuracy)
    t_latency = float(stats.t.ppf(0.5 + CONFIDENCE / 2, max(len(samples) - x.shape[1] - groups.shape[1], 1)))
    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, max(len(samples) - x.shape[1], 1)))
    front = _front(samples)
    effects = []
    for block in range(space.blocks):
        if len(space.options(block)) < 2:
            continue
        for option in space.options(block):
            label = space.label(option)
            column = index.get((block, label))
            taking = [s for s in samples if s.architecture[block] == label]
            on_front = sum(s.architecture[block] == label for s in front)
            if column is None:  # the reference
                effects.append(OptionEffect(space.block_name(block), space.stage(block), label, True, 0.0, 0.0, 0.0, 0.0,
                                            len(taking), on_front))
            else:
                effects.append(OptionEffect(space.block_name(block), space.stage(block), label, False,
                                            float(lat_coef[column]), float(t_latency * lat_se[column]),
                                            float(acc_coef[column]), float(t * acc_se[column]), len(taking), on_front))
    return SpaceProfile(space.name, target, latency_provenance, accuracy_provenance, precision, list(samples), effects,
                        lat_r2, acc_r2, lat_sd, acc_sd, t)


def minimum_samples(options: int) -> int:
    """The fewest samples a regression on `options` non-reference block options (and an intercept) is
    fitted from: ten degrees of freedom left for the residuals."""
    return options + 11


def _group_columns(samples: Sequence[ProfiledArchitecture]) -> np.ndarray:
    """One indicator column per group of samples timed together, but for one group of two or more
    (whose constant is the intercept) when every sample is in such a group: a sample timed alone or in
    no group shares the intercept."""
    labels = [s.group for s in samples]
    shared = sorted(g for g, n in Counter(labels).items() if g is not None and n >= 2)
    if shared and all(g in shared for g in labels):
        shared = shared[1:]
    return np.array([[float(label == g) for g in shared] for label in labels]).reshape(len(samples), len(shared))


def profile_space(space: ArchSpace, pricer: ArchitecturePricer, count: int, seed: int, target: str) -> SpaceProfile:
    """Sample `count` architectures of `space`, price each with `pricer` and fit their profile."""
    samples = pricer.price(sample_architectures(space, count, np.random.default_rng(seed)))
    return fit_profile(space, samples, target, pricer.latency_provenance, pricer.accuracy_provenance, pricer.precision)


def reduce_space(space: ArchSpace, profile: SpaceProfile, aggressiveness: float = 0.0) -> ReducedArchSpace:
    """`space` with, at every block, the options `profile` shows beaten removed (module docstring).
    Blocks the profile did not see (a single option) keep theirs."""
    kept: dict[int, list[object]] = {}
    for block in range(space.blocks):
        effects = {e.option: e for e in profile.effects if e.block == space.block_name(block)}
        if not effects:
            continue
        options = sorted(space.options(block), key=lambda o: (effects[space.label(o)].latency_ms, space.size(o)))
        ordered = [effects[space.label(o)] for o in options]
        # the standard error of a difference of two effects, their covariance ignored
        kept[block] = [option for i, (option, mine) in enumerate(zip(options, ordered))
                       if all(mine.accuracy_points > faster.accuracy_points
                              + aggressiveness * math.hypot(mine.accuracy_ci_points, faster.accuracy_ci_points) / profile.t_quantile
                              for faster in ordered[:i])]
    note = (f"reduced from the profile of {space.name} on {profile.target} ({len(profile.samples)} architectures, "
            f"{profile.latency_provenance}; aggressiveness {aggressiveness:g})")
    return ReducedArchSpace(space, kept, note)


def aggressiveness_for_size(space: ArchSpace, profile: SpaceProfile, most: float) -> float:
    """The least aggressiveness at which `reduce_space` keeps at most `most` architectures of `space`
    (found by bisection to 0.001 over [-64, 64]; the size only falls as aggressiveness rises).
    ValueError when even the most aggressive reduction (every block's fastest and most accurate
    options only) is larger."""
    def size(a: float) -> int:
        return architectures(reduce_space(space, profile, a))

    low, high = -64.0, 64.0
    if size(high) > most:
        raise ValueError(f"no reduction of {space.name} on {profile.target} holds at most {most:.3g} architectures "
                         f"(the most aggressive keeps {size(high):.3g})")
    if size(low) <= most:
        return low
    while high - low > 1e-3:
        middle = (low + high) / 2
        low, high = (low, middle) if size(middle) <= most else (middle, high)
    return high


def _samples_for(errors: Sequence[Mapping[str, float]], samples: int, least: int) -> int:
    """Samples at which every option's interval half-width would be at most `RECOVERY_TOLERANCE` of its
    per-layer cost, from `samples` giving the `errors` rows' widths (at least `least`)."""
    worst = max((e["interval_ms"] / (RECOVERY_TOLERANCE * e["option_cost_ms"])) ** 2 for e in errors)
    return max(least, math.ceil(samples * worst))


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Least-squares coefficients, their standard errors, R² and the residuals' standard deviation."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    dof = max(len(y) - x.shape[1], 1)
    sigma2 = float(residual @ residual) / dof
    se = np.sqrt(np.maximum(np.diag(np.linalg.pinv(x.T @ x)) * sigma2, 0.0))
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else 1.0
    return coef, se, r2, math.sqrt(sigma2)


def _front(samples: Sequence[ProfiledArchitecture]) -> list[ProfiledArchitecture]:
    """The samples no other sample beats in both accuracy and latency, by latency."""
    front: list[ProfiledArchitecture] = []
    for sample in sorted(samples, key=lambda s: (s.latency_ms, -s.accuracy)):
        if not front or sample.accuracy > front[-1].accuracy:
            front.append(sample)
    return front


def heatmap(profiles: Sequence[SpaceProfile], space: ArchSpace) -> Figure:
    """Per profile (target) a row of two maps, block option x block (grouped by stage): the latency
    and the accuracy each option adds over its block's reference; a dot marks options on the front."""
    blocks = [b for b in range(space.blocks) if len(space.options(b)) > 1]
    labels = [space.label(o) for o in space.OPTIONS]
    fig, axes = plt.subplots(len(profiles), 2, figsize=(13, 3.2 * len(profiles) + 0.6), squeeze=False)
    for row, profile in zip(axes, profiles):
        for ax, (what, unit, cmap) in zip(row, (("latency_ms", "ms", "magma_r"), ("accuracy_points", "points", "RdBu"))):
            grid = np.full((len(labels), len(blocks)), np.nan)
            dots = []
            for j, block in enumerate(blocks):
                for e in profile.effects:
                    if e.block == space.block_name(block):
                        grid[labels.index(e.option), j] = getattr(e, what)
                        if e.on_front:
                            dots.append((j, labels.index(e.option)))
            limit = np.nanmax(np.abs(grid)) if what == "accuracy_points" else None
            image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-limit if limit else None, vmax=limit)
            if dots:
                ax.scatter(*zip(*dots), s=6, c="k")
            ax.set_xticks(range(len(blocks)), [space.block_name(b) for b in blocks], fontsize=7, rotation=90)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            for j in range(1, len(blocks)):
                if space.stage(blocks[j]) != space.stage(blocks[j - 1]):
                    ax.axvline(j - 0.5, color="grey", lw=0.8)
            fig.colorbar(image, ax=ax, label=f"{unit} over the block's reference")
            kind = "latency added" if what == "latency_ms" else "accuracy added"
            ax.set_title(f"{profile.target}: {kind} ({len(profile.samples)} architectures; dot: on the front)", fontsize=9)
    fig.tight_layout()
    return fig

"""The Gymnasium environment: one episode deploys a network, one step per searchable layer."""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from deploy.cost import ChoiceRejected, CostUnavailable
from deploy.cost_table import CostTable
from deploy.deployment import Assembler, NetworkCost, evaluate, uniform_choices
from deploy.flow_optimizer import CRITERIA, best_dataflow
from envs.arch_space import ArchSpace
from envs.arch_state import ArchitectureState
from envs.network import NETWORK_INPUT, Layer, Network, Op
from envs.reward import RewardConfig
from envs.space import ALGORITHMS, QUANTS, Choice, SearchSpace

_OPS = (Op.CONV, Op.POINTWISE, Op.DEPTHWISE, Op.DENSE)
INVALID_ACTION_REWARD = -100.0
MEASUREMENT_FAILURE_REWARD = -100.0
OBS_HIGH = 100.0
IMPLEMENTATIONS = ("agent", "fastest")
"""Who picks each layer's algorithm and dataflow: the agent, or the environment (the fastest)."""


class EpisodeChoices(dict):
    """A finished episode's choices (layer name -> `Choice.to_dict()`), built once and never changed:
    copies share it. SB3's DummyVecEnv deep-copies every step's infos, and copying these nested dicts
    at every episode's end was ~5% of a MaskablePPO step on MobileNetV2."""

    def __deepcopy__(self, memo: dict) -> "EpisodeChoices":
        return self


class Accuracy(Protocol):
    """What the environment needs of an accuracy oracle."""

    provenance: str

    @property
    def baseline_accuracy(self) -> float:
        """Accuracy with every layer in fp32."""
        ...

    def accuracy(self, precisions: Sequence[str]) -> float:
        """Held-out accuracy with one precision per searchable layer."""
        ...


class ArchAccuracy(Protocol):
    """What architecture search needs of an accuracy oracle (`envs.subnet_accuracy.SupernetOracle`)."""

    provenance: str

    @property
    def baseline_accuracy(self) -> float:
        """Accuracy of the original architecture with every layer in fp32."""
        ...

    def accuracy(self, precisions: Sequence[str], blocks: tuple | None = None) -> float:
        """Held-out accuracy of architecture `blocks` with one precision per searchable layer of it."""
        ...


class DeploymentEnv(gym.Env):
    """Choose, layer by layer, how a CNN is deployed on a target; score accuracy against latency.

    ## Action space
    `MultiDiscrete([n_arch, n_quant_algo, *dataflow components])` (see `envs.space.SearchSpace`): the
    architecture variant, the (quantization, algorithm) pair, and the dataflow of the current layer:
    on a CPU its loop schedule (register tile, loop order, vectorised axis, parallel axis) and its
    thread count; on an NPU its spatial unrolling x temporal mapping (`envs.space.NpuDataflow`).
    With `dataflow="latency"`, `"energy"` or `"edp"` (FlowOptimizer mode) the environment picks each
    layer's best dataflow by that criterion itself: only the first entry of each dataflow component
    is unmasked, and the agent chooses the other levels. With
    `dataflow="fixed"` every layer keeps the target's own dataflow (e.g. an NPU's fixed one): only its
    entries are unmasked. With `implementation="fastest"`
    the agent chooses only the architecture and the quantization (the second component is valid at one
    entry per quantization the layer admits), and the environment deploys the layer with the algorithm
    and dataflow that add the least latency given the formats so far (`Assembler.fastest_next`):
    the search of the two levels that cost accuracy, over the fastest implementation of each.
    `action_masks()` returns exact per-component masks for MaskablePPO. An invalid action ends the
    episode with reward -100 and `info["invalid_action"]` naming the reason; nothing is priced.
    A choice the cost backend cannot price (a failed compile or measurement, after its retries) also
    ends the episode with reward -100, and `info["measurement_error"]` says what failed; a choice it
    rejects for good (a kernel whose numbers disagree with torch, a layer ZigZag cannot map) has its
    (quantization, algorithm) masked for layers of that shape from then on, and in later runs from
    the start (the measurement database keeps rejections).

    With an architecture space (`arch_space`, joint search) the first component chooses the block
    variant instead (`arch_space.OPTIONS`, e.g. kernel x expansion or skip): at the first layer of
    every block that has a choice, it is masked to the block's options, the other components to
    what is valid for the first layer of every option, and the step then deploys the first layer
    of the chosen variant; a skipped block's step deploys nothing and the episode moves to the next
    block. At every other layer only its first entry is valid (and ignored). The network, and so the
    layers still to come, change as blocks are decided; undecided blocks are the original ones. A
    reduced space (`envs.reduced_space`) masks the options it removed; a block it leaves one option
    is set to that option from the start and never asks.

    ## Observation space
    `Box(0, 100, (33,), float32)` describing the current layer and the deployment so far:
    op one-hot (conv, pointwise, depthwise, dense) [4]; log2 of in-channels, out-channels, output
    height, output width, kernel height, stride, groups (/10) and log10 MACs (/10) [8]; position
    (layer index / layers) [1]; the previous layer's quantization one-hot [3], algorithm one-hot [5] and
    threads / max threads [1]; latency so far / reference, and the fastest possible latency of the
    remaining layers / reference [2] (both clipped at 100); fraction of layers so far in fp16 and in int8 [2]; is last layer [1];
    the tensor that waits for a later layer while this one runs (a residual block's input, which its
    add reads): present [1], its quantization one-hot [3], channel-packed layout [1], threads / max
    threads [1] (zeros when none waits). With it the observation holds every format a later conversion
    depends on. The reference latency is the budget (budget mode) or the trade-off target.

    ## Rewards
    In accuracy points (`envs.reward.RewardConfig`). Budget mode: each step pays `-points_per_ms` times
    the milliseconds its layer added (its own latency, the conversions into it and the layers up to the
    next searchable one), and the last step adds 100 x accuracy minus one point per 1% over budget, so
    an episode's return is 100 x accuracy - points_per_ms x latency - the overrun penalty. Trade-off
    mode pays 100 x accuracy x (latency / target) ** -0.07 at the end only.

    ## Starting state
    The first searchable layer, nothing chosen. Resetting is deterministic; `reset(seed=)` seeds
    `np_random` (the environment itself draws nothing at random).

    ## Episode end
    Terminates after the last searchable layer (or on an invalid action or a failed measurement);
    never truncates. At the end `info` holds `latency_ms`, `latency_provenance`, `accuracy`,
    `accuracy_provenance`, `memory_bytes`, `energy_mj` (None when a measured part has none),
    `conversion_ms`, `feasible`, `speedup` (baseline / latency), `baseline_latency_ms`,
    `baseline_accuracy` and `choices` (layer name -> choice dict); with an architecture space also
    `architecture` (every block's setting label) and `network` (the chosen network's name).
    Every step's `info` has `layer`, `choice`, `step_latency_ms` and `latency_ms` so far (and `block`
    at a block's decision).

    ## Arguments
    network: the network to deploy. space: the target's search space. costs: the target's cost table.
    accuracy: the accuracy oracle (with `arch_space`, an `ArchAccuracy`). reward: scoring
    configuration. dataflow: "agent" (the action chooses it), "fixed" (the target's own) or a
    FlowOptimizer criterion ("latency", "energy", "edp"). implementation: "agent" (the action chooses
    algorithm and dataflow) or "fastest" (the environment does; `dataflow` must then be "agent").
    arch_space: the network's architecture space, for joint search (`network` must be its original
    architecture).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        network: Network,
        space: SearchSpace,
        costs: CostTable,
        accuracy: Accuracy | ArchAccuracy,
        reward: RewardConfig,
        dataflow: str = "agent",
        arch_space: ArchSpace | None = None,
        implementation: str = "agent",
    ) -> None:
        if dataflow not in ("agent", "fixed") and dataflow not in CRITERIA:
            raise ValueError(f"dataflow={dataflow!r}: use 'agent', 'fixed' or a FlowOptimizer criterion {CRITERIA}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation={implementation!r}: use one of {IMPLEMENTATIONS}")
        if implementation == "fastest" and dataflow != "agent":
            raise ValueError(f"implementation='fastest' picks the dataflow too: dataflow={dataflow!r} must be 'agent'")
        self.dataflow_mode = dataflow
        self.implementation = implementation
        self._quant_of = np.array([c.quant for c in costs.choices])
        self._fixed_dataflow = space.dataflows.index(space.baseline_choice().dataflow)
        self._best_flows: dict[tuple[str, str, str, str], Choice] = {}
        self.space = space
        self.costs = costs
        self.oracle = accuracy
        self.reward_config = reward
        self.arch_space = arch_space
        self.arch: ArchitectureState | None = None
        if arch_space is not None:
            self.arch = ArchitectureState(arch_space, network.input_shape[1], network.num_classes)
            original = [(l.name, l.signature) for l in self.arch.network_of(tuple(arch_space.ORIGINAL)).searchable_layers]
            if original != [(l.name, l.signature) for l in network.searchable_layers]:
                raise ValueError(f"network {network.name!r} is not the original architecture of {type(arch_space).__name__}")
            network = self.arch.network
        self.network = network
        self.layers: tuple[Layer, ...] = network.searchable_layers
        self._nvec = np.array(space.nvec if arch_space is None else (len(arch_space.OPTIONS), *space.nvec[1:]))
        self.action_space = spaces.MultiDiscrete(self._nvec)
        self.observation_space = spaces.Box(0.0, OBS_HIGH, shape=(33,), dtype=np.float32)
        self._max_threads = max(d.threads for d in space.dataflows)
        self._offsets = np.cumsum((0,) + tuple(self._nvec[:-1]))
        self._features: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}  # by layer shape; without the architecture part in joint search
        self._fastest: dict[str, float] = {}
        self.baseline_choices = uniform_choices(network, lambda layer: space.baseline_choice())
        self.baseline: NetworkCost = evaluate(network, self.baseline_choices, costs)
        self._assembler = Assembler(network, costs)
        self._set_network(network)
        self.reset()

    # ---- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._assembler.reset()
        if self.arch is not None:
            self.arch.reset()
            self._set_network(self.arch.network)
        self._t = 0
        self._choices: list[Choice] = []
        self._quant_counts = {q: 0 for q in QUANTS}
        return self._observation(), {"layer": self.layers[0].name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= len(self.layers):
            raise RuntimeError("step() called after the episode ended; call reset()")
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        layer = self.layers[self._t]
        if action.shape != self._nvec.shape or (action < 0).any() or (action >= self._nvec).any() or not self.action_masks()[self._offsets + action].all():
            reason = self._invalid_reason(layer, action)
            self._t = len(self.layers)
            return self._observation(), INVALID_ACTION_REWARD, True, False, {"invalid_action": reason, "layer": layer.name}
        info: dict[str, Any] = {}
        block = self.arch.decision(layer) if self.arch is not None else None
        if block is not None:
            option = self.arch_space.OPTIONS[action[0]]
            self._set_network(self.arch.choose(block, option))
            info["block"] = self.arch_space.label(option)
            if self.layers[self._t].name != layer.name:  # skipped: nothing to deploy
                info.update(layer=layer.name, latency_ms=self._assembler.latency_ms)
                return self._observation(), 0.0, False, False, info
            layer = self.layers[self._t]
        choice = self.space.decode(np.concatenate([[0], action[1:]]))
        try:
            if self.dataflow_mode in CRITERIA:
                choice = self._best_dataflow(layer, choice)
            elif self.implementation == "fastest":
                choice = self._assembler.fastest_next(self._quant_of == choice.quant)
            added = self._assembler.add(choice)
        except CostUnavailable as err:
            if isinstance(err, ChoiceRejected):
                self._forbid(layer, action)
            self._t = len(self.layers)
            info.update(measurement_error=str(err), layer=layer.name, choice=choice.key)
            return self._observation(), MEASUREMENT_FAILURE_REWARD, True, False, info
        self._choices.append(choice)
        self._quant_counts[choice.quant] += 1
        self._t += 1
        reward = self.reward_config.step_reward(added)
        info.update(layer=layer.name, choice=choice.key, step_latency_ms=added, latency_ms=self._assembler.latency_ms)
        terminated = self._t == len(self.layers)
        if terminated:
            reward += self._finish(info)
        return self._observation(), float(reward), terminated, False, info

    def replay(self, choices: Mapping[str, Choice], architecture: Sequence[str] | None = None) -> tuple[float, dict[str, Any]]:
        """Run one whole episode with the given choice per searchable layer (and, with an architecture
        space, the given block settings by label; default the original ones); (episode reward, last info)."""
        blocks = None
        if self.arch_space is not None:
            blocks = self.arch_space.ORIGINAL if architecture is None else self.arch_space.parse(architecture)
            network = self.arch.network_of(tuple(blocks))
        elif architecture is not None:
            raise ValueError("this environment has no architecture space: it replays the fixed network only")
        else:
            network = self.network
        missing = [layer.name for layer in network.searchable_layers if layer.name not in choices]
        if missing:
            raise ValueError(f"deployment of {network.name!r} has no choice for layer(s) {missing}")
        self.reset()
        total, info, done = 0.0, {}, False
        while not done:
            layer = self.layers[self._t]
            block = self.arch.decision(layer) if self.arch is not None else None
            action = self.space.encode(choices.get(layer.name, self.space.baseline_choice()))
            action[0] = 0 if block is None else self.arch_space.OPTIONS.index(blocks[block])
            if self.dataflow_mode != "agent":  # the environment picks the dataflow again
                action[2:] = self.space.dataflow_entries(self._fixed_dataflow if self.dataflow_mode == "fixed" else 0)
            if self.implementation == "fastest":  # and the algorithm: only the quantization is the agent's
                quant = choices[layer.name].quant if layer.name in choices else self.space.baseline_choice().quant
                action[1], action[2:] = self._quant_entry(quant), 0
            _, reward, done, _, info = self.step(action)
            total += reward
        return total, info

    def action_masks(self) -> np.ndarray:
        """Exact per-component masks of the current step (all True after the episode ends)."""
        if self._t >= len(self.layers):
            return np.ones(int(self._nvec.sum()), dtype=bool)
        layer = self.layers[self._t]
        if self.arch is None:
            return self._mask(layer)
        block = self.arch.decision(layer)
        arch = np.zeros(self._nvec[0], dtype=bool)
        if block is None:
            arch[0] = True
            return np.concatenate([arch, self._mask(layer)])
        rest = np.logical_and.reduce([self._mask(first) for first in self.arch.first_layers(block)])
        return np.concatenate([self.arch_space.mask(block), rest])

    # ---- internals ---------------------------------------------------------------------------
    def _set_network(self, network: Network) -> None:
        """Deploy `network` from here on (architecture search): its layers so far are those chosen."""
        if network is not self.network:
            self._assembler.rebase(network)
            self.network = network
            self.layers = network.searchable_layers
        fastest = np.array([self._fastest_ms(layer) for layer in self.layers])
        self._remaining_lower_bound = np.concatenate([np.cumsum(fastest[::-1])[::-1], [0.0]])
        self._waiting = self._waiting_tensors(network)

    @staticmethod
    def _waiting_tensors(network: Network) -> list[str | None]:
        """Per searchable layer, the most recent tensor produced before it, other than its input, that a
        layer at or after it still reads (None if there is none)."""
        last_read: dict[str, int] = {}
        for i, layer in enumerate(network.layers):
            for src in layer.inputs:
                last_read[src] = i
        waiting, produced = [], [NETWORK_INPUT]
        for i, layer in enumerate(network.layers):
            if layer.op.searchable:
                live = [t for t in produced if last_read.get(t, -1) >= i and t not in layer.inputs]
                waiting.append(live[-1] if live else None)
            produced.append(layer.name)
        return waiting

    def _fastest_ms(self, layer: Layer) -> float:
        """The layer's fastest latency over every choice (memoised by shape)."""
        fastest = self._fastest.get(layer.signature)
        if fastest is None:
            fastest = self._fastest[layer.signature] = float(np.nanmin(self.costs.latency_array(layer)[0]))
        return fastest

    def _finish(self, info: dict[str, Any]) -> float:
        result = self._assembler.result()
        precisions = [c.quant for c in self._choices]
        if self.arch is not None:
            accuracy = self.oracle.accuracy(precisions, blocks=tuple(self.arch.blocks))
            info.update(architecture=list(self.arch.labels), network=self.network.name)
        else:
            accuracy = self.oracle.accuracy(precisions)
        latency = result.latency_ms
        info.update(
            latency_ms=latency,
            latency_provenance=",".join(result.provenance),
            accuracy=accuracy,
            accuracy_provenance=self.oracle.provenance,
            memory_bytes=result.memory_bytes,
            energy_mj=result.energy_mj,
            conversion_ms=result.conversion_ms,
            feasible=self.reward_config.feasible(latency),
            speedup=self.baseline.latency_ms / latency,
            baseline_latency_ms=self.baseline.latency_ms,
            baseline_accuracy=self.oracle.baseline_accuracy,
            choices=EpisodeChoices((layer.name, c.to_dict()) for layer, c in zip(self.layers, self._choices)),
        )
        return self.reward_config.final_reward(accuracy, latency)

    def _best_dataflow(self, layer: Layer, choice: Choice) -> Choice:
        """FlowOptimizer mode: `choice` with the layer's best dataflow (memoised per layer shape)."""
        key = (layer.signature, choice.arch, choice.quant, choice.algo)
        best = self._best_flows.get(key)
        if best is None:
            best = self._best_flows[key] = best_dataflow(self.costs, layer, choice, self.dataflow_mode)
        return best

    def _mask(self, layer: Layer) -> np.ndarray:
        """The layer's mask: of every component, or without the architecture in joint search. In
        FlowOptimizer mode the dataflow is not the agent's: only its first entry stays valid; with
        the fastest implementation, neither is the algorithm: only the first valid entry of each
        quantization stays. Rejected choices (here or in the database) are masked, unless the
        environment picks among the others (memoised by layer shape)."""
        mask = self._masks.get(layer.signature)
        if mask is None:
            mask = self.space.mask(layer).copy()
            flows = self.space.nvec[0] + self.space.nvec[1]
            if self.dataflow_mode != "agent" or self.implementation == "fastest":
                mask[flows:] = self.space.dataflow_mask(self._fixed_dataflow if self.dataflow_mode == "fixed" else 0)
            if self.implementation == "fastest":
                pairs = mask[self.space.nvec[0] : flows]
                for quant in QUANTS:
                    entries = [i for i, (q, _) in enumerate(self.space.quant_algos) if q == quant and pairs[i]]
                    pairs[entries[1:]] = False
            if self.arch is not None:
                mask = mask[self.space.nvec[0] :]
            self._masks[layer.signature] = mask
            if self.implementation == "agent":
                for key in self.costs.rejected(layer):
                    self._forbid(layer, self.space.encode(Choice.from_key(key)))
        return mask

    def _quant_entry(self, quant: str) -> int:
        """With the fastest implementation: the current step's (quantization, algorithm) entry that stands for `quant`."""
        pairs = self.action_masks()[self._offsets[1] : self._offsets[2]]
        for i, (q, _) in enumerate(self.space.quant_algos):
            if q == quant and pairs[i]:
                return i
        raise ValueError(f"layer {self.layers[self._t].name!r} cannot be deployed in {quant} here")

    def _forbid(self, layer: Layer, action: np.ndarray) -> None:
        """Mask the action's (quantization, algorithm) for every layer of this shape from now on (with
        the fastest implementation: the quantization, once no algorithm is left for it)."""
        mask = self._mask(layer)
        mask[action[1] + (self.space.nvec[0] if self.arch is None else 0)] = False

    def _invalid_reason(self, layer: Layer, action: np.ndarray) -> str:
        if action.shape != self._nvec.shape or (action < 0).any() or (action >= self._nvec).any():
            return f"action {action.tolist()} is outside {self.action_space}"
        block = self.arch.decision(layer) if self.arch is not None else None
        if block is not None and not self.arch_space.mask(block)[action[0]]:
            option = self.arch_space.label(self.arch_space.OPTIONS[action[0]])
            valid = ", ".join(map(self.arch_space.label, self.arch_space.options(block)))
            return f"block {self.arch_space.block_name(block)} cannot be {option}; its options are {valid}"
        if self.arch is not None and block is None and action[0] != 0:
            return f"layer {layer.name!r} decides no block: the architecture entry must be 0, got {action[0]}"
        choice = self.space.decode(np.concatenate([[0], action[1:]]))
        try:
            self.space.check(layer, choice)
        except ValueError as err:
            return str(err)
        return f"layer {layer.name!r}: choice {choice.key} is masked"

    def _layer_features(self, layer: Layer) -> np.ndarray:
        features = self._features.get(layer.signature)
        if features is None:
            features = self._features[layer.signature] = layer_features(layer)
        return features

    def _observation(self) -> np.ndarray:
        t = min(self._t, len(self.layers) - 1)
        prev = np.zeros(9, dtype=np.float32)
        if self._choices:
            last = self._choices[-1]
            prev[QUANTS.index(last.quant)] = 1.0
            prev[3 + ALGORITHMS.index(last.algo)] = 1.0
            prev[8] = last.dataflow.threads / self._max_threads
        ref = self.reward_config.reference_ms
        done = max(len(self._choices), 1)
        dynamic = np.array(
            [
                min(self._assembler.latency_ms / ref, OBS_HIGH),
                min(self._remaining_lower_bound[self._t] / ref, OBS_HIGH),
                self._quant_counts["fp16"] / done,
                self._quant_counts["int8"] / done,
                float(t == len(self.layers) - 1),
            ],
            dtype=np.float32,
        )
        position = np.array([t / len(self.layers)], dtype=np.float32)
        waits = np.zeros(6, dtype=np.float32)
        stored = self._assembler.format_of(self._waiting[t]) if self._waiting[t] else None
        if stored is not None:
            fmt, threads = stored
            waits[0], waits[1 + QUANTS.index(fmt.quant)] = 1.0, 1.0
            waits[4], waits[5] = float(fmt.layout != "NCHW"), threads / self._max_threads
        return np.concatenate([self._layer_features(self.layers[t]), position, prev, dynamic, waits])


def layer_features(layer: Layer) -> np.ndarray:
    """What an agent sees of a layer: its operator (one-hot) and log-scaled shape, kernel, stride,
    groups and MACs (12 numbers)."""
    cout, oh, ow = layer.out_shape
    return np.array(
        [float(layer.op is op) for op in _OPS]
        + [
            math.log2(layer.in_shape[0]) / 10,
            math.log2(cout) / 10,
            math.log2(oh) / 10,
            math.log2(ow) / 10,
            layer.kernel[0] / 10,
            layer.stride[0] / 4,
            math.log2(layer.groups) / 10,
            math.log10(max(layer.macs, 1)) / 10,
        ],
        dtype=np.float32,
    )

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
from envs.network import Layer, Network, Op
from envs.reward import RewardConfig
from envs.space import ALGORITHMS, QUANTS, Choice, SearchSpace

_OPS = (Op.CONV, Op.POINTWISE, Op.DEPTHWISE, Op.DENSE)
INVALID_ACTION_REWARD = -100.0
MEASUREMENT_FAILURE_REWARD = -100.0
OBS_HIGH = 100.0


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


class DeploymentEnv(gym.Env):
    """Choose, layer by layer, how a CNN is deployed on a target; score accuracy against latency.

    ## Action space
    `MultiDiscrete([n_arch, n_quant_algo, n_dataflow])` (see `envs.space.SearchSpace`): the
    architecture variant, the (quantization, algorithm) pair, and the dataflow (on a CPU the loop
    schedule: register tile, loop order, vectorised axis, parallel axis, threads) of the current layer.
    On an NPU the dataflow is the spatial unrolling and temporal mapping (`envs.space.NpuDataflow`).
    With `dataflow="latency"`, `"energy"` or `"edp"` (FlowOptimizer mode) the environment picks each
    layer's best dataflow by that criterion itself: only the first dataflow entry is unmasked, and
    the agent chooses the other levels.
    `action_masks()` returns exact per-component masks for MaskablePPO. An invalid action ends the
    episode with reward -100 and `info["invalid_action"]` naming the reason; nothing is priced.
    A choice the cost backend cannot price (a failed compile or measurement, after its retries) also
    ends the episode with reward -100, and `info["measurement_error"]` says what failed; a choice it
    rejects for good (a kernel whose numbers disagree with torch, a layer ZigZag cannot map) has its
    (quantization, algorithm) masked for layers of that shape from then on, and in later runs from
    the start (the measurement database keeps rejections).

    ## Observation space
    `Box(0, 100, (27,), float32)` describing the current layer and the deployment so far:
    op one-hot (conv, pointwise, depthwise, dense) [4]; log2 of in-channels, out-channels, output
    height, output width, kernel height, stride, groups (/10) and log10 MACs (/10) [8]; position
    (layer index / layers) [1]; the previous layer's quantization one-hot [3], algorithm one-hot [5] and
    threads / max threads [1]; latency so far / reference, and the fastest possible latency of the
    remaining layers / reference [2] (both clipped at 100); fraction of layers so far in fp16 and in int8 [2]; is last layer [1].
    The reference latency is the budget (budget mode) or the trade-off target.

    ## Rewards
    See `envs.reward.RewardConfig`: budget mode pays a small negative reward per layer proportional
    to its latency and, at the end, 100 x accuracy minus one point per 1% over budget; trade-off mode
    pays 100 x accuracy x (latency / target) ** -0.07 at the end only.

    ## Starting state
    The first searchable layer, nothing chosen. Resetting is deterministic; `reset(seed=)` seeds
    `np_random` (the environment itself draws nothing at random).

    ## Episode end
    Terminates after the last searchable layer (or on an invalid action or a failed measurement);
    never truncates. At the end `info` holds `latency_ms`, `latency_provenance`, `accuracy`,
    `accuracy_provenance`, `memory_bytes`, `energy_mj` (None when a measured part has none),
    `conversion_ms`, `feasible`, `speedup` (baseline / latency), `baseline_latency_ms`,
    `baseline_accuracy` and `choices` (layer name -> choice dict).
    Every step's `info` has `layer`, `choice`, `step_latency_ms` and `latency_ms` so far.

    ## Arguments
    network: the network to deploy. space: the target's search space. costs: the target's cost table.
    accuracy: the accuracy oracle. reward: scoring configuration. dataflow: "agent" (the action
    chooses it) or a FlowOptimizer criterion ("latency", "energy", "edp").
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        network: Network,
        space: SearchSpace,
        costs: CostTable,
        accuracy: Accuracy,
        reward: RewardConfig,
        dataflow: str = "agent",
    ) -> None:
        if dataflow != "agent" and dataflow not in CRITERIA:
            raise ValueError(f"dataflow={dataflow!r}: use 'agent' or a FlowOptimizer criterion {CRITERIA}")
        self.dataflow_mode = dataflow
        self._best_flows: dict[tuple[str, str, str, str], Choice] = {}
        self.network = network
        self.space = space
        self.costs = costs
        self.oracle = accuracy
        self.reward_config = reward
        self.layers: tuple[Layer, ...] = network.searchable_layers
        self.action_space = space.action_space
        self.observation_space = spaces.Box(0.0, OBS_HIGH, shape=(27,), dtype=np.float32)
        self._max_threads = max(d.threads for d in space.dataflows)
        self._nvec = np.array(space.nvec)
        self._offsets = np.cumsum((0,) + space.nvec[:-1])
        self._static = np.stack([self._layer_features(i) for i in range(len(self.layers))])
        self._masks = [self._mask(space.mask(layer)) for layer in self.layers]
        for layer in self.layers:  # what the backend rejected in earlier runs is masked from the start
            for key in costs.rejected(layer):
                self._forbid(layer, space.encode(Choice.from_key(key)))
        fastest = np.array([np.nanmin(costs.latency_array(layer)[0]) for layer in self.layers])
        self._remaining_lower_bound = np.concatenate([np.cumsum(fastest[::-1])[::-1], [0.0]])
        self.baseline_choices = uniform_choices(network, lambda layer: space.baseline_choice())
        self.baseline: NetworkCost = evaluate(network, self.baseline_choices, costs)
        self._assembler = Assembler(network, costs)
        self.reset()

    # ---- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._assembler.reset()
        self._t = 0
        self._choices: list[Choice] = []
        self._quant_counts = {q: 0 for q in QUANTS}
        return self._observation(), {"layer": self.layers[0].name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= len(self.layers):
            raise RuntimeError("step() called after the episode ended; call reset()")
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        layer = self.layers[self._t]
        mask = self._masks[self._t]
        if action.shape != (3,) or (action < 0).any() or (action >= self._nvec).any() or not mask[self._offsets + action].all():
            reason = self._invalid_reason(layer, action)
            self._t = len(self.layers)
            return self._observation(), INVALID_ACTION_REWARD, True, False, {"invalid_action": reason, "layer": layer.name}
        choice = self.space.decode(action)
        try:
            if self.dataflow_mode != "agent":
                choice = self._best_dataflow(layer, choice)
            added = self._assembler.add(choice)
        except CostUnavailable as err:
            if isinstance(err, ChoiceRejected):
                self._forbid(layer, action)
            self._t = len(self.layers)
            info = {"measurement_error": str(err), "layer": layer.name, "choice": choice.key}
            return self._observation(), MEASUREMENT_FAILURE_REWARD, True, False, info
        self._choices.append(choice)
        self._quant_counts[choice.quant] += 1
        self._t += 1
        reward = self.reward_config.step_reward(added)
        info: dict[str, Any] = {
            "layer": layer.name,
            "choice": choice.key,
            "step_latency_ms": added,
            "latency_ms": self._assembler.latency_ms,
        }
        terminated = self._t == len(self.layers)
        if terminated:
            reward += self._finish(info)
        return self._observation(), float(reward), terminated, False, info

    def replay(self, choices: Mapping[str, Choice]) -> tuple[float, dict[str, Any]]:
        """Run one whole episode with the given choice per searchable layer; (episode reward, last info)."""
        missing = [layer.name for layer in self.layers if layer.name not in choices]
        if missing:
            raise ValueError(f"deployment of {self.network.name!r} has no choice for layer(s) {missing}")
        self.reset()
        total, info = 0.0, {}
        for layer in self.layers:
            action = self.space.encode(choices[layer.name])
            if self.dataflow_mode != "agent":
                action[2] = 0  # the environment picks the dataflow again
            _, reward, _, _, info = self.step(action)
            total += reward
        return total, info

    def action_masks(self) -> np.ndarray:
        """Exact per-component masks of the current layer (all True after the episode ends)."""
        if self._t >= len(self.layers):
            return np.ones(sum(self.space.nvec), dtype=bool)
        return self._masks[self._t]

    # ---- internals ---------------------------------------------------------------------------
    def _finish(self, info: dict[str, Any]) -> float:
        result = self._assembler.result()
        accuracy = self.oracle.accuracy([c.quant for c in self._choices])
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
            choices={layer.name: c.to_dict() for layer, c in zip(self.layers, self._choices)},
        )
        return self.reward_config.final_reward(accuracy, latency)

    def _best_dataflow(self, layer: Layer, choice: Choice) -> Choice:
        """FlowOptimizer mode: `choice` with the layer's best dataflow (memoised per layer shape)."""
        key = (layer.signature, choice.arch, choice.quant, choice.algo)
        best = self._best_flows.get(key)
        if best is None:
            best = self._best_flows[key] = best_dataflow(self.costs, layer, choice, self.dataflow_mode)
        return best

    def _mask(self, mask: np.ndarray) -> np.ndarray:
        """In FlowOptimizer mode the dataflow is not the agent's: only its first entry stays valid."""
        if self.dataflow_mode == "agent":
            return mask
        mask = mask.copy()
        mask[self._offsets[2] + 1 :] = False
        return mask

    def _forbid(self, layer: Layer, action: np.ndarray) -> None:
        """Mask the action's (quantization, algorithm) for every layer of this shape from now on."""
        entry = self._offsets[1] + action[1]
        for i, other in enumerate(self.layers):
            if other.signature == layer.signature:
                self._masks[i] = self._masks[i].copy()
                self._masks[i][entry] = False

    def _invalid_reason(self, layer: Layer, action: np.ndarray) -> str:
        if action.shape != (3,) or (action < 0).any() or (action >= self._nvec).any():
            return f"action {action.tolist()} is outside {self.action_space}"
        choice = self.space.decode(action)
        try:
            self.space.check(layer, choice)
        except ValueError as err:
            return str(err)
        return f"layer {layer.name!r}: choice {choice.key} is masked"

    def _layer_features(self, i: int) -> np.ndarray:
        layer = self.layers[i]
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
                i / len(self.layers),
            ],
            dtype=np.float32,
        )

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
        return np.concatenate([self._static[t], prev, dynamic])

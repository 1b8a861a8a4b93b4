"""The co-design as a Gymnasium environment: pick an NPU, then how each layer of a network runs on it.

The joint space of `deploy.codesign`'s integer program, for search agents: PPO over it is compared with
the program's exact optimum at an equal simulation budget (`benchmarks/codesign.py`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from deploy.codesign import HardwareOption
from deploy.cost import ChoiceRejected
from deploy.deployment import Assembler
from envs.env import OBS_HIGH, layer_features
from envs.network import Network
from envs.space import QUANTS

INVALID_CHOICE_REWARD = -10.0


class CodesignEnv(gym.Env):
    """Choose an NPU among candidates, then each searchable layer's precision and dataflow on it.

    ## Action space
    `Discrete(max(N, C))`: at the first step one of the N candidate NPUs; at every later step one of
    the C choices of the NPUs' search space (precision x dataflow) for the current layer. `action_masks`
    admits only the N NPUs first, then the choices valid for the layer in a precision the NPU computes
    in and not rejected by its simulator so far.

    ## Observation
    `Box(0, OBS_HIGH, (23,))`: the NPU picked (log2 rows, log2 columns, log2 global buffer KiB, log2
    weight register file bytes, fp16 support, area over the largest candidate's; zeros before the pick),
    the current layer (`envs.env.layer_features`), the position in the network, the latency so far
    over `reference_ms` (at most OBS_HIGH), and the precision of the previous layer (one-hot).

    ## Reward
    Each layer step pays minus the latency it adds (the layer, the conversions into it and the layers up
    to the next searchable one, as `deploy.deployment.Assembler` prices them) over `reference_ms`, so
    an episode returns -latency / reference_ms. A masked action, or a choice the simulator rejects,
    ends the episode with `INVALID_CHOICE_REWARD` and `info["invalid_action"]` saying why.

    ## Episode end
    After the last searchable layer (terminated); `info` then holds `latency_ms`, `energy_mj`, `npu`
    and `choices`. Never truncated.

    ## Budget
    `simulations`: the distinct (NPU hardware, layer shape, choice) triples priced so far, what the
    search would have simulated without the database (the integer program simulates every one).

    Args:
        network: the network.
        options: the candidate NPUs with their cost tables (`deploy.codesign.hardware_options`).
        reference_ms: latency scale of the reward (e.g. the best preset's).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, network: Network, options: Sequence[HardwareOption], reference_ms: float) -> None:
        self.network, self.options, self.reference_ms = network, list(options), reference_ms
        self.layers = network.searchable_layers
        self.choices = self.options[0].table.choices
        if any(o.table.choices != self.choices for o in self.options):
            raise ValueError("every candidate NPU's search space must offer the same choices (one action per choice)")
        self._index = {c.key: i for i, c in enumerate(self.choices)}
        self.action_space = spaces.Discrete(max(len(self.options), len(self.choices)))
        self.observation_space = spaces.Box(0.0, OBS_HIGH, (23,), np.float32)
        largest = max(o.candidate.area_mm2 for o in self.options)
        self._npu_features = [self._describe(o, largest) for o in self.options]
        self._layer_features = [layer_features(layer) for layer in self.layers]
        space = self.options[0].table.space
        allowed = [{c.key for c in space.valid_choices(layer)} for layer in self.layers]
        self._valid = [np.array([c.key in keys for c in self.choices]) for keys in allowed]
        """per layer: which choices its shape allows (the same on every NPU)"""
        self._computes = [np.array([c.quant in o.precisions for c in self.choices]) for o in self.options]
        """per NPU: which choices are in a precision it computes in"""
        self.priced: set[tuple[str, str, str]] = set()
        self._npu: int | None = None
        self._option: HardwareOption | None = None
        self._assembler: Assembler | None = None
        self._t = 0
        self._chosen: list[str] = []

    @property
    def simulations(self) -> int:
        """Distinct simulations this environment's episodes needed so far."""
        return len(self.priced)

    @staticmethod
    def _describe(option: HardwareOption, largest_mm2: float) -> np.ndarray:
        spec = option.candidate.spec
        return np.array([math.log2(spec.rows) / 6, math.log2(spec.cols) / 6, math.log2(spec.global_buffer.bytes / 1024) / 10,
                         math.log2(spec.pe_weights.bytes) / 8, float("fp16" in option.precisions),
                         option.candidate.area_mm2 / largest_mm2], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._npu, self._option, self._assembler, self._t, self._chosen = None, None, None, 0, []
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        if not self.action_masks()[action]:
            what = "NPU" if self._option is None else f"choice for layer {self.layers[self._t].name!r}"
            return self._observation(), INVALID_CHOICE_REWARD, True, False, {"invalid_action": f"action {action} is not a valid {what}"}
        if self._option is None:
            self._npu, self._option = action, self.options[action]
            self._assembler = Assembler(self.network, self._option.table)
            return self._observation(), 0.0, False, False, {}
        layer, choice = self.layers[self._t], self.choices[action]
        self.priced.add((self._option.table.fingerprint, layer.signature, choice.key))
        try:
            added = self._assembler.add(choice)
        except ChoiceRejected as err:
            return self._observation(), INVALID_CHOICE_REWARD, True, False, {"invalid_action": str(err)}
        self._t += 1
        self._chosen.append(choice.key)
        done = self._t == len(self.layers)
        info: dict[str, Any] = {}
        if done:
            cost = self._assembler.result()
            info = {"latency_ms": cost.latency_ms, "energy_mj": cost.energy_mj, "npu": self._option.candidate.name,
                    "choices": dict(zip((l.name for l in self.layers), self._chosen))}
        return self._observation(), -added / self.reference_ms, done, False, info

    def action_masks(self) -> np.ndarray:
        """Which actions are valid now (see the class docstring)."""
        mask = np.zeros(self.action_space.n, dtype=bool)
        if self._option is None:
            mask[: len(self.options)] = True
            return mask
        mask[: len(self.choices)] = self._valid[self._t] & self._computes[self._npu]
        for key in self._option.table.rejected(self.layers[self._t]):
            mask[self._index[key]] = False
        return mask

    def _observation(self) -> np.ndarray:
        npu = self._npu_features[self._npu] if self._npu is not None else np.zeros(6, np.float32)
        t = min(self._t, len(self.layers) - 1)
        previous = np.zeros(len(QUANTS), np.float32)
        if self._chosen:
            previous[QUANTS.index(self.choices[self._index[self._chosen[-1]]].quant)] = 1.0
        so_far = min(self._assembler.latency_ms / self.reference_ms, OBS_HIGH) if self._assembler is not None else 0.0
        return np.concatenate([npu, self._layer_features[t], [t / len(self.layers), so_far], previous]).astype(np.float32)

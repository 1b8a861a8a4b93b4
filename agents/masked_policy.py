"""MaskablePPO's policy with its multi-categorical distribution computed as one padded tensor.

sb3-contrib's `MaskableMultiCategoricalDistribution` builds one torch `Categorical` per action component,
twice per forward pass (once without masks, once with): 36 distribution objects a step on the
deployment space's 12 components, a fifth of MaskablePPO's time here. `PaddedMaskableMultiCategorical`
is the same distribution (the same logits, the same -1e8 for a masked choice, the same log-probabilities
and entropy up to float rounding) computed on a `(batch, components, largest component)` tensor, with
padding masked out; sampling draws every component with one `torch.multinomial` call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution, MaybeMasks
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

MASKED_LOGIT = -1e8
"""What a masked choice's logit becomes (as in sb3-contrib)."""


class PaddedMaskableMultiCategorical(MaskableMultiCategoricalDistribution):
    """A masked MultiDiscrete distribution over `action_dims`, batched in one padded tensor."""

    def __init__(self, action_dims: list[int]) -> None:
        super().__init__(action_dims)
        widest, total = max(action_dims), sum(action_dims)
        starts = np.cumsum([0, *action_dims[:-1]])
        index = np.full((len(action_dims), widest), total)  # column `total` is the padding column
        for d, (start, n) in enumerate(zip(starts, action_dims)):
            index[d, :n] = np.arange(start, start + n)
        self._index = th.as_tensor(index.reshape(-1))
        self._real = th.as_tensor(index != total)
        """(components, widest): True where a column is a real choice, not padding."""
        self._shape = (len(action_dims), widest)
        self._logits: th.Tensor | None = None
        self._mask: th.Tensor | None = None
        self._log_p: th.Tensor | None = None

    def _padded(self, flat: th.Tensor, pad: float | bool) -> th.Tensor:
        """`(batch, sum(action_dims))` -> `(batch, components, widest)`, padding filled with `pad`."""
        filler = th.full((flat.shape[0], 1), pad, dtype=flat.dtype, device=flat.device)
        return th.cat([flat, filler], dim=1)[:, self._index].view(-1, *self._shape)

    def proba_distribution(self, action_logits: th.Tensor) -> "PaddedMaskableMultiCategorical":
        self._logits = self._padded(action_logits.reshape(-1, sum(self.action_dims)), MASKED_LOGIT)
        self.apply_masking(None)
        return self

    def apply_masking(self, masks: MaybeMasks) -> None:
        assert self._logits is not None, "Must set distribution parameters"
        if masks is None:
            self._mask = self._real.expand_as(self._logits)
        else:
            flat = th.as_tensor(masks, dtype=th.bool).reshape(-1, sum(self.action_dims))
            self._mask = self._padded(flat, False)
        self._log_p = None

    @property
    def log_probabilities(self) -> th.Tensor:
        """`(batch, components, widest)` log-probabilities; masked and padding choices near -1e8."""
        if self._log_p is None:
            masked = th.where(self._mask, self._logits, th.tensor(MASKED_LOGIT, dtype=self._logits.dtype))
            self._log_p = th.log_softmax(masked, dim=-1)
        return self._log_p

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        picked = actions.reshape(-1, len(self.action_dims), 1).long()
        return self.log_probabilities.gather(-1, picked).squeeze(-1).sum(dim=1)

    def entropy(self) -> th.Tensor:
        log_p = self.log_probabilities
        return -th.where(self._mask, log_p.exp() * log_p, th.zeros((), dtype=log_p.dtype)).sum(dim=(1, 2))

    def sample(self) -> th.Tensor:
        probs = self.log_probabilities.exp().reshape(-1, self._shape[1])
        return th.multinomial(probs, 1, True).view(-1, len(self.action_dims))

    def mode(self) -> th.Tensor:
        return self.log_probabilities.argmax(dim=-1)


class PaddedMaskablePolicy(MaskableActorCriticPolicy):
    """sb3-contrib's `MaskableActorCriticPolicy` ("MlpPolicy") with `PaddedMaskableMultiCategorical` for
    a MultiDiscrete action space (the same parameters and initialisation; only the distribution's
    arithmetic is batched)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, *args: Any, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, *args, **kwargs)
        if isinstance(action_space, spaces.MultiDiscrete):
            self.action_dist = PaddedMaskableMultiCategorical([int(n) for n in action_space.nvec])

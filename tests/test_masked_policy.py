"""The padded masked distribution is sb3-contrib's, computed in one tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution

from agents.masked_policy import PaddedMaskableMultiCategorical

DIMS = [3, 5, 2, 7, 1, 4]


@pytest.fixture
def logits_and_masks() -> tuple[torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    logits = torch.randn(64, sum(DIMS)) * 3
    masks = np.random.default_rng(0).random((64, sum(DIMS))) > 0.4
    masks[:, np.cumsum([0, *DIMS[:-1]])] = True  # every component keeps a valid choice
    return logits, masks


@pytest.mark.parametrize("masked", [False, True])
def test_log_prob_entropy_and_mode_equal_sb3_contrib(logits_and_masks, masked):
    logits, masks = logits_and_masks
    ours, theirs = PaddedMaskableMultiCategorical(DIMS), MaskableMultiCategoricalDistribution(DIMS)
    for dist in (ours, theirs):
        dist.proba_distribution(logits)
        if masked:
            dist.apply_masking(masks)
    actions = theirs.sample()
    torch.testing.assert_close(ours.log_prob(actions), theirs.log_prob(actions), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.entropy(), theirs.entropy(), atol=1e-5, rtol=1e-6)
    assert torch.equal(ours.mode(), theirs.mode())


def test_samples_take_only_valid_choices_at_the_distribution_frequencies(logits_and_masks):
    logits, masks = logits_and_masks
    dist = PaddedMaskableMultiCategorical(DIMS)
    dist.proba_distribution(logits)
    dist.apply_masking(masks)
    starts = np.cumsum([0, *DIMS[:-1]])
    for _ in range(20):
        sample = dist.sample().numpy()
        assert all(masks[np.arange(64), starts[d] + sample[:, d]].all() for d in range(len(DIMS)))
        assert ((sample >= 0) & (sample < np.array(DIMS))).all()

    torch.manual_seed(1)
    many = 40_000
    dist.proba_distribution(logits[:1].expand(many, -1))
    drawn = dist.sample()[:, 3]  # the 7-way component, unmasked
    expected = torch.softmax(logits[0, 10:17], dim=0)
    frequencies = torch.bincount(drawn, minlength=7).double() / many
    assert torch.allclose(frequencies, expected.double(), atol=0.01)

"""The initial noise of a diffusers pipeline seeded with torch.Generator("cpu"), drawn without torch (issue 33)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_sdk.errors import InvalidInputError
from edge_sdk.runtimes.torch_noise import torch_randn


@pytest.mark.parametrize("shape, seed", [((1, 4, 64, 64), 0), ((2, 4, 8, 8), 42), ((1, 4, 9, 11), 123456789012), ((3, 7), 1)])
def test_noise_is_torch_randn_within_three_ulps(shape, seed):
    """Same uniforms, same Box-Muller pairing, the tail of a size that is not a multiple of 16 drawn
    again as torch does: every value within 3 float32 ulps of torch's, most bit for bit."""
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
    ours = torch_randn(shape, seed)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    ulps = np.abs(ours - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 3, ulps.max()
    assert np.mean(ours == expected) > 0.75
    other = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).numpy()
    assert np.abs(ours - other).max() > 1  # another seed is another draw


def test_noise_refuses_what_torch_draws_another_way():
    with pytest.raises(InvalidInputError, match="at least 16 values"):
        torch_randn((3, 5), 0)
    with pytest.raises(InvalidInputError, match=r"\[0, 2\*\*64\)"):
        torch_randn((4, 4), -1)

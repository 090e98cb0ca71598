"""ScaleNorm against bnbench's contract kit, and one test of its own."""

import pytest
import torch

from bnbench.testing import normalizer_checks


@pytest.mark.parametrize("check", normalizer_checks("scalenorm"), ids=str)
def test_scalenorm_meets_the_contract(check):
    check()


def test_each_channel_vector_has_length_g():
    from bnbench_scalenorm import ScaleNormOptions, scalenorm

    norm = scalenorm(16, "conv", ScaleNormOptions(init=3.0))
    out = norm(torch.randn(2, 16, 4, 4) * 7)
    assert torch.allclose(out.norm(dim=1), torch.full((2, 4, 4), 3.0), atol=1e-4)

"""The Jacobian-spectrum probe against a case with a known answer: a linear network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnbench.plugins.probes.jacobian import _slope, input_output_jacobian, spectrum


def test_the_jacobian_of_a_linear_net_is_the_product_of_its_weights():
    torch.manual_seed(0)
    first, second = nn.Linear(12, 8, bias=True), nn.Linear(8, 5, bias=True)
    model = nn.Sequential(nn.Flatten(), first, second)
    images = torch.randn(4, 3, 2, 2)
    jacobian = input_output_jacobian(model, images, 2)
    product = second.weight @ first.weight
    torch.testing.assert_close(jacobian, product)
    measured = spectrum(jacobian)
    expected = torch.linalg.svdvals(product.double())
    assert measured["singular_values"] == pytest.approx(expected.tolist())
    assert measured["log10_condition"] == pytest.approx(math.log10(expected[0] / expected[-1]))


def test_batch_statistics_are_part_of_the_map():
    # with BN in training mode an input moves its own batch's statistics: over a batch of two, BN maps
    # each example to -1 or +1 per channel whatever it is, so its Jacobian vanishes exactly; in eval
    # mode (fixed statistics) it is the diagonal 1 / sqrt(running var + eps)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3, affine=False, eps=1e-12))
    images = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.5, 1.0]]).view(2, 3, 1, 1)
    torch.testing.assert_close(input_output_jacobian(model, images, 0), torch.zeros(3, 3), atol=1e-5, rtol=0)
    model.eval()
    torch.testing.assert_close(input_output_jacobian(model, images, 0), torch.eye(3) / model[1].running_var.sqrt())


def test_growth_is_the_least_squares_slope_per_hundred_layers():
    assert _slope({20: 1.0, 56: 2.8, 110: 5.5}) == pytest.approx(5.0, rel=1e-2)
    assert _slope({20: 1.0}) is None

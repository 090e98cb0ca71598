"""A fully connected network for MNIST-like data.

Inputs are flattened; each hidden layer is ``Linear → site → activation`` (the site
``activated``: a normalizer that includes its activation replaces the model's); the output
layer is ``Linear → site`` (role ``output``). Normalization sites: one ``fc`` site per hidden
layer and one on the logits, each with its ``Linear`` as ``source``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from bnbench import DataInfo, NormSite, Options

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


MAX_WIDTH = 2**20
"""The widest layer allowed: wider is a typo (a 1e18-unit layer fails at allocation, mid-sweep)."""


class MLPOptions(Options):
    widths: list[int] = Field(
        default_factory=lambda: [256, 256, 256],
        examples=[[32, 16]],
        description="Width of each hidden layer (the depth is the list's length).",
    )
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = Field("relu", description="Hidden nonlinearity.")
    bias: bool = Field(True, description="Give linear layers a bias term.")

    @field_validator("widths")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if not widths or any(w <= 0 for w in widths):
            raise ValueError("widths needs at least one positive layer width, e.g. [256, 256]")
        if any(w > MAX_WIDTH for w in widths) or len(widths) > 10_000:
            raise ValueError(f"widths allows at most 10,000 layers of at most {MAX_WIDTH:,} units")
        return widths


class MLP(nn.Module):
    def __init__(self, options: MLPOptions, data: DataInfo) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(data.input_shape)
        for width in options.widths:
            linear = nn.Linear(fan_in, width, bias=options.bias)
            layers += [linear, NormSite(width, "fc", source=linear, activated=True), ACTIVATIONS[options.activation]()]
            fan_in = width
        logits = nn.Linear(fan_in, data.num_classes, bias=options.bias)
        layers += [logits, NormSite(data.num_classes, "fc", role="output", source=logits)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = None  # the site just passed: the activation after it goes through site.activate
        for layer in self.layers:
            if isinstance(layer, NormSite):
                x, site = layer(x), layer
            elif site is not None and site.activated:
                x, site = site.activate(x, layer), None
            else:
                x = layer(x)
        return x


def build_mlp(options: MLPOptions, data: DataInfo) -> nn.Module:
    """Multi-layer perceptron: Linear → site → activation per hidden layer, sites on the logits."""
    return MLP(options, data)

"""Plugins that misbehave on purpose, for testing how runs record divergence and failure."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import DataInfo, NormSite, Options, hookimpl


class NanOptions(Options):
    at_step: int = Field(3, description="Forward call (1-based, training mode) that returns NaN.")


class NanAfter(nn.Module):
    def __init__(self, options: NanOptions, data: DataInfo) -> None:
        super().__init__()
        self.linear = nn.Linear(int(torch.tensor(data.input_shape).prod()), data.num_classes)
        self.site = NormSite(data.num_classes, "fc", role="output")
        self.at_step = options.at_step
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.site(self.linear(x.flatten(1)))
        if self.training:
            self.calls += 1
            if self.calls >= self.at_step:
                return out * float("nan")
        return out


class CrashOptions(Options):
    message: str = "kaboom"


class Crash(nn.Module):
    def __init__(self, options: CrashOptions, data: DataInfo) -> None:
        super().__init__()
        self.message = options.message
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(self.message)


class WrongShape(nn.Module):
    def __init__(self, options: Options, data: DataInfo) -> None:
        super().__init__()
        self.linear = nn.Linear(int(torch.tensor(data.input_shape).prod()), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def nan_after(options: NanOptions, data: DataInfo) -> nn.Module:
    """Returns NaN logits from a given training step on."""
    return NanAfter(options, data)


def crash(options: CrashOptions, data: DataInfo) -> nn.Module:
    """Raises in forward."""
    return Crash(options, data)


def wrong_shape(options: Options, data: DataInfo) -> nn.Module:
    """Returns 3 logits whatever the class count."""
    return WrongShape(options, data)


@hookimpl
def bnbench_register_models(register):
    register("nan_after", nan_after, options=NanOptions)
    register("crash", crash, options=CrashOptions)
    register("wrong_shape", wrong_shape)

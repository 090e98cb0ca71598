"""Built-in input transforms: additive Gaussian noise on the inputs (Annamalai & Thakur 2022)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bnbench import Options, hookimpl
from bnbench.hookspecs import Register


class GaussianNoiseOptions(Options):
    std: float = Field(0.1, ge=0, description="Standard deviation of the noise, in [0, 1] pixel units.")
    apply_to: Literal["train", "test", "both"] = Field("both", description="Which inputs get noise.")
    clip: bool = Field(False, description="Clip noisy pixels back to [0, 1].")


class GaussianNoise:
    """x + n with n ~ N(0, std² I), drawn per batch from the run's seeded generator."""

    def __init__(self, options: GaussianNoiseOptions) -> None:
        self.std = options.std
        self.splits = ("train", "test") if options.apply_to == "both" else (options.apply_to,)
        self.clip = options.clip

    def __call__(self, images: torch.Tensor, generator: torch.Generator, split: str) -> torch.Tensor:
        if self.std == 0 or split not in self.splits:
            return images
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        noisy = images + self.std * noise
        return noisy.clamp_(0, 1) if self.clip else noisy


def gaussian_noise(options: GaussianNoiseOptions) -> GaussianNoise:
    """Additive Gaussian input noise of a given std on [0, 1] pixels (train, test or both)."""
    return GaussianNoise(options)


@hookimpl
def bnbench_register_transforms(register: Register) -> None:
    register("gaussian_noise", gaussian_noise, options=GaussianNoiseOptions)

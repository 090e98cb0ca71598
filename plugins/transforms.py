"""Built-in input transforms: additive Gaussian noise on the inputs (Annamalai & Thakur 2022)."""

from __future__ import annotations

from collections.abc import Sequence
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

    @staticmethod
    def stack(
        transforms: Sequence[GaussianNoise], images: torch.Tensor, generators: Sequence[torch.Generator], split: str
    ) -> torch.Tensor:
        """A pack's batches at once (``images``: members first): each member's noise drawn from its
        own generator as its run alone would draw it, the arithmetic done once for all."""
        noise = torch.zeros_like(images)
        for i, (transform, generator) in enumerate(zip(transforms, generators, strict=True)):
            if transform.std and split in transform.splits:
                noise[i].normal_(generator=generator)
        shape = (-1,) + (1,) * (images.dim() - 1)
        std = torch.tensor([t.std if split in t.splits else 0.0 for t in transforms], dtype=images.dtype)
        noisy = images + std.to(images.device).view(shape) * noise
        clip = [t.clip and bool(t.std) and split in t.splits for t in transforms]
        if any(clip):
            mask = torch.tensor(clip, device=images.device).view(shape)
            noisy = torch.where(mask, noisy.clamp(0, 1), noisy)
        return noisy


def gaussian_noise(options: GaussianNoiseOptions) -> GaussianNoise:
    """Additive Gaussian input noise of a given std on [0, 1] pixels (train, test or both)."""
    return GaussianNoise(options)


@hookimpl
def bnbench_register_transforms(register: Register) -> None:
    register("gaussian_noise", gaussian_noise, options=GaussianNoiseOptions)

"""SkipInit (De & Smith, 2020): a normalizer-free alternative for residual networks."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import Options, SiteKind


class SkipInitOptions(Options):
    init: float = Field(0.0, description="Initial value of the scalar multiplier α (De & Smith: 0).")


class SkipInit(nn.Module):
    """``α · x`` with one learnable scalar ``α``."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha  # a 0-d parameter keeps x's dtype (bf16 under autocast)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha):.4g}"


def skipinit(num_features: int, kind: SiteKind, options: SkipInitOptions) -> nn.Module:
    """SkipInit: a learnable scalar, initialised to 0, at the end of each residual branch.

    De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in
    Deep Networks", NeurIPS 2020. Every residual block starts as the identity, which is what
    lets deep residual networks train without normalization. Place it with
    ``placement = { name = "tagged", tags = ["residual_branch_end"] }``: at other sites
    (the stem, a plain network's layers) a zero multiplier would cut the signal.
    """
    return SkipInit(options.init)


__all__ = ["SkipInit", "SkipInitOptions", "skipinit"]

"""Root mean square layer normalization (Zhang & Sennrich, 2019)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import Options, SiteKind


class RMSNormOptions(Options):
    eps: float = Field(1e-6, gt=0, description="Added to the mean square for stability.")
    affine: bool = Field(True, description="Learn a per-channel gain g (RMS norm has no shift).")


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · g``, the mean taken per example over ``(C, H, W)`` or ``(C,)``."""

    def __init__(self, num_features: int, kind: SiteKind, eps: float, affine: bool) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.dims: tuple[int, ...] = (1, 2, 3) if kind == "conv" else (1,)
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in at least float32, so bf16/fp16 activations under autocast stay accurate.
        y = x.to(torch.promote_types(x.dtype, torch.float32))
        y = y * torch.rsqrt(y.pow(2).mean(dim=self.dims, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, *([1] * (x.dim() - 2)))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def rmsnorm(num_features: int, kind: SiteKind, options: RMSNormOptions) -> nn.Module:
    """RMS normalization: rescale each example by the root mean square of its features; no centring.

    Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019. At a ``conv`` site
    the mean square is over ``(C, H, W)``, as layer normalization's statistics are.
    """
    return RMSNorm(num_features, kind, options.eps, options.affine)


__all__ = ["RMSNorm", "RMSNormOptions", "rmsnorm"]

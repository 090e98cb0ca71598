"""ScaleNorm as a bnbench normalizer: a complete third-party plugin in one module.

Nguyen & Salazar, "Transformers without Tears: Improving the Normalization of
Self-Attention", IWSLT 2019: ``ScaleNorm(x) = g · x / ‖x‖`` with one learned scalar ``g``
(initialised to ``√C``), the norm taken over the channels of each example (of each position,
at a convolution's site).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, Register, SiteKind, hookimpl

__version__ = "0.1.0"


class ScaleNormOptions(Options):
    """What a manifest may set beside ``name = "scalenorm"``; unknown keys are errors."""

    eps: float = Field(1e-5, gt=0, description="Lower bound on the norm, for stability.")
    init: float | None = Field(None, gt=0, description="Initial g; default √C, as Nguyen & Salazar.")


class ScaleNorm(nn.Module):
    """``g · x / max(‖x‖, eps)``, the norm over dimension 1 (channels)."""

    def __init__(self, num_features: int, options: ScaleNormOptions) -> None:
        super().__init__()
        self.eps = options.eps
        self.g = nn.Parameter(torch.tensor(options.init or math.sqrt(num_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)  # the norm in float32 under autocast
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=wide).clamp(min=self.eps)
        return (x * (self.g / norm)).to(x.dtype)


def scalenorm(num_features: int, kind: SiteKind, options: ScaleNormOptions) -> nn.Module:
    """ScaleNorm: each example's channel vector scaled to one learned length g (Nguyen & Salazar 2019)."""
    return ScaleNorm(num_features, options)


@hookimpl
def bnbench_register_normalizers(register: Register) -> None:
    # traits: what the contract kit (bnbench.testing) checks and the core relies on. ScaleNorm
    # works per example, keeps no running statistics, and supports both site kinds.
    register("scalenorm", scalenorm, options=ScaleNormOptions, traits=NormalizerTraits())

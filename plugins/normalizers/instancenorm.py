"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016): conv sites only."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, SiteKind


class InstanceNormOptions(Options):
    eps: float = Field(1e-5, gt=0, description="Added to each instance's variance for stability.")
    affine: bool = Field(True, description="Learn a per-channel scale γ and shift β.")
    track_running_stats: bool = Field(
        False, description="Keep running statistics and use them in eval mode (else instance statistics)."
    )
    momentum: float = Field(0.1, gt=0, le=1, description="Running-statistics momentum, if tracked.")


def instancenorm(num_features: int, kind: SiteKind, options: InstanceNormOptions) -> nn.Module:
    """Instance normalization: per example and channel, over the spatial positions (conv sites only).

    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast
    Stylization", arXiv:1607.08022, 2016. An ``fc`` site has no positions to normalize over,
    so the traits declare conv sites only and the core refuses fc sites.
    """
    return nn.InstanceNorm2d(
        num_features,
        eps=options.eps,
        momentum=options.momentum,
        affine=options.affine,
        track_running_stats=options.track_running_stats,
    )


def instancenorm_traits(options: InstanceNormOptions) -> NormalizerTraits:
    """Conv sites only; running statistics only if tracked."""
    return NormalizerTraits(site_kinds=frozenset({"conv"}), running_stats=options.track_running_stats)


__all__ = ["InstanceNormOptions", "instancenorm", "instancenorm_traits"]

"""Batch normalization (Ioffe & Szegedy, 2015)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, SiteKind


class BatchNormOptions(Options):
    eps: float = Field(1e-5, gt=0, description="Added to the batch variance for stability.")
    momentum: float | None = Field(
        0.1, gt=0, le=1, description="Running-statistics momentum; null for a cumulative average."
    )
    affine: bool = Field(True, description="Learn a per-channel scale γ and shift β.")
    track_running_stats: bool = Field(
        True, description="Keep running statistics for eval mode (else batch statistics in eval too)."
    )


def batchnorm(num_features: int, kind: SiteKind, options: BatchNormOptions) -> nn.Module:
    """Batch normalization over the batch (and spatial) dimensions, per channel.

    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015.
    """
    cls = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
    return cls(
        num_features,
        eps=options.eps,
        momentum=options.momentum,
        affine=options.affine,
        track_running_stats=options.track_running_stats,
    )


def batchnorm_traits(options: BatchNormOptions) -> NormalizerTraits:
    """Batch statistics in training; running statistics in eval unless they are not tracked."""
    return NormalizerTraits(train_batch_of_one=False, batch_dependent=True, running_stats=options.track_running_stats)


__all__ = ["BatchNormOptions", "batchnorm", "batchnorm_traits"]

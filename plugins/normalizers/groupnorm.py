"""Group normalization (Wu & He, 2018) and layer normalization (Ba, Kiros & Hinton, 2016)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from bnbench import Options, SiteKind


class GroupNormOptions(Options):
    groups: int = Field(
        32,
        ge=1,
        description="Number of channel groups (Wu & He's default 32). Where a site has too few channels, the "
        "largest divisor of its channel count leaving groups of at least 2 channels (conv sites) or 8 (fc sites) "
        "is used.",
    )
    eps: float = Field(1e-5, gt=0, description="Added to each group's variance for stability.")
    affine: bool = Field(True, description="Learn a per-channel scale γ and shift β.")


class LayerNormOptions(Options):
    eps: float = Field(1e-5, gt=0, description="Added to each example's variance for stability.")
    affine: bool = Field(True, description="Learn a per-channel scale γ and shift β.")


MIN_GROUP_CHANNELS: dict[str, int] = {"conv": 2, "fc": 8}
"""Fewest channels per group by site kind. A conv group also averages over positions; an fc
group of 2 would map every pair of values to ±1, which destroys the signal."""


def effective_groups(channels: int, groups: int, kind: SiteKind) -> int:
    """The largest divisor of ``channels`` that is at most ``groups`` and leaves large enough groups.

    Groups hold at least ``MIN_GROUP_CHANNELS[kind]`` channels, or all of them (one group, layer
    normalization) when the site has fewer.
    """
    largest = min(groups, max(1, channels // MIN_GROUP_CHANNELS[kind]))
    return next(g for g in range(largest, 0, -1) if channels % g == 0)


def groupnorm(num_features: int, kind: SiteKind, options: GroupNormOptions) -> nn.Module:
    """Group normalization: per example, over groups of channels (and all positions).

    Wu & He, "Group Normalization", ECCV 2018. Independent of the batch: identical in training
    and eval mode.
    """
    groups = effective_groups(num_features, options.groups, kind)
    return nn.GroupNorm(groups, num_features, options.eps, options.affine)


def layernorm(num_features: int, kind: SiteKind, options: LayerNormOptions) -> nn.Module:
    """Layer normalization: per example, over all channels (and positions), per-channel γ and β.

    Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016. At a ``conv`` site it
    normalizes over ``(C, H, W)`` (group normalization with one group, as Wu & He compare it).
    """
    return nn.GroupNorm(1, num_features, options.eps, options.affine)


__all__ = ["MIN_GROUP_CHANNELS", "GroupNormOptions", "LayerNormOptions", "effective_groups", "groupnorm", "layernorm"]

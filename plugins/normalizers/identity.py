"""The identity normalizer: a site that normalizes nothing."""

from __future__ import annotations

from torch import nn

from bnbench import NoOptions, SiteKind


def identity(num_features: int, kind: SiteKind, options: NoOptions) -> nn.Module:
    """No normalization (the identity), for unnormalized baselines."""
    return nn.Identity()

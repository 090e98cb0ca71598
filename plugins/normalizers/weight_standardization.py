"""Weight standardization combined with group normalization (Qiao et al., 2019)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from bnbench import NormalizerTraits, SiteKind
from bnbench.plugins.normalizers.groupnorm import GroupNormOptions, effective_groups


class WSGroupNormOptions(GroupNormOptions):
    ws_eps: float = Field(1e-5, gt=0, description="Added to each output unit's weight variance.")


class WeightStandardization(nn.Module):
    """A parametrization: each output unit's weights minus their mean, over their standard deviation.

    ``Ŵ[o] = (W[o] − mean(W[o])) / sqrt(var(W[o]) + eps)`` over the fan-in of output unit ``o``
    (``(C_in, kH, kW)`` for a convolution, ``C_in`` for a linear layer).
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, weight.dim()))
        mean = weight.mean(dim=dims, keepdim=True)
        var = weight.var(dim=dims, keepdim=True, unbiased=False)
        return (weight - mean) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class WSGroupNorm(nn.GroupNorm):
    """Group normalization of the activations whose source layer's weight it standardizes."""

    def __init__(self, groups: int, num_features: int, eps: float, affine: bool, ws_eps: float) -> None:
        super().__init__(groups, num_features, eps, affine)
        self.ws_eps = ws_eps

    def bind_source(self, layer: nn.Module) -> None:
        """Standardize ``layer.weight`` (a convolution's or linear layer's) through a parametrization."""
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            raise ValueError(
                "weight standardization needs a source layer with a weight of two or more dimensions "
                f"(a convolution or linear layer), got {type(layer).__name__}"
            )
        if parametrize.is_parametrized(layer, "weight") and any(
            isinstance(p, WeightStandardization) for p in layer.parametrizations["weight"]
        ):
            return  # already standardized (a layer feeding two sites)
        parametrize.register_parametrization(layer, "weight", WeightStandardization(self.ws_eps))


def ws_groupnorm(num_features: int, kind: SiteKind, options: WSGroupNormOptions) -> nn.Module:
    """Weight standardization of the layer feeding the site, then group normalization.

    Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization", arXiv:1903.10520, 2019. Needs the site's source layer (the
    built-in models name it); the layer's weight is reparametrized with
    ``torch.nn.utils.parametrize``, so its ``state_dict`` key becomes
    ``parametrizations.weight.original``.
    """
    groups = effective_groups(num_features, options.groups, kind)
    return WSGroupNorm(groups, num_features, options.eps, options.affine, options.ws_eps)


WS_GROUPNORM_TRAITS = NormalizerTraits(needs_source=True)


__all__ = ["WS_GROUPNORM_TRAITS", "WSGroupNorm", "WSGroupNormOptions", "WeightStandardization", "ws_groupnorm"]

"""Batch renormalization (Ioffe, 2017)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, SiteKind


class BatchRenormOptions(Options):
    eps: float = Field(1e-5, gt=0, description="Added to the batch variance for stability.")
    momentum: float = Field(
        0.1, gt=0, le=1, description="Update rate α of the moving mean and standard deviation (as batchnorm's)."
    )
    rmax: float = Field(3.0, ge=1, description="Clip r = σ_B/σ to [1/rmax, rmax] (Ioffe's final value 3).")
    dmax: float = Field(5.0, ge=0, description="Clip d = (μ_B − μ)/σ to [−dmax, dmax] (Ioffe's final value 5).")
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Relax rmax from 1 and dmax from 0 (plain batch normalization) linearly to their values "
        "over this many training batches, as Ioffe does; 0 uses them from the start.",
    )
    affine: bool = Field(True, description="Learn a per-channel scale γ and shift β.")


class BatchRenorm(nn.Module):
    """Batch renormalization of ``(N, C, H, W)`` or ``(N, C)`` activations, per channel.

    Training: ``x̂ = (x − μ_B)/σ_B · r + d`` with ``r = clip(σ_B/σ, 1/rmax, rmax)`` and
    ``d = clip((μ_B − μ)/σ, −dmax, dmax)`` treated as constants (no gradient through them),
    then the moving averages ``μ, σ`` move towards the batch's by ``momentum``. Eval:
    ``x̂ = (x − μ)/σ``. Both end with ``γ x̂ + β``.
    """

    def __init__(self, num_features: int, kind: SiteKind, options: BatchRenormOptions) -> None:
        super().__init__()
        self.num_features = num_features
        self.kind = kind
        self.eps = options.eps
        self.momentum = options.momentum
        self.rmax = options.rmax
        self.dmax = options.dmax
        self.warmup_steps = options.warmup_steps
        self.weight = nn.Parameter(torch.ones(num_features)) if options.affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if options.affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def limits(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The current ``(rmax, dmax)``: relaxed from ``(1, 0)`` during the warm-up."""
        if self.warmup_steps == 0:
            return self.rmax, self.dmax
        progress = (self.num_batches_tracked.float() / self.warmup_steps).clamp(max=1.0)  # no host sync
        return 1 + (self.rmax - 1) * progress, self.dmax * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        compute = torch.promote_types(x.dtype, torch.float32)  # statistics in float32 or wider
        y = x.to(compute)
        running_mean = self.running_mean.to(compute)
        running_std = self.running_std.to(compute)
        if self.training:
            if x.numel() // x.shape[1] < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            mean = y.mean(dims)
            std = torch.sqrt(y.var(dims, unbiased=False) + self.eps)
            with torch.no_grad():  # r and d are constants for the gradient (stop-gradient)
                rmax, dmax = self.limits()
                r = torch.clamp(std / running_std, min=1 / rmax, max=rmax)
                d = torch.clamp((mean - running_mean) / running_std, min=-dmax, max=dmax)
                # a + m * (b - a), as lerp_, which has no vmap batching rule (packed runs)
                self.running_mean.add_((mean.to(self.running_mean.dtype) - self.running_mean) * self.momentum)
                self.running_std.add_((std.to(self.running_std.dtype) - self.running_std) * self.momentum)
                self.num_batches_tracked.add_(1)
            y = (y - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        else:
            y = (y - running_mean.view(shape)) / running_std.view(shape)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, rmax={self.rmax}, dmax={self.dmax}, "
            f"warmup_steps={self.warmup_steps}, affine={self.weight is not None}"
        )


def batchrenorm(num_features: int, kind: SiteKind, options: BatchRenormOptions) -> nn.Module:
    """Batch renormalization: batch norm corrected towards its moving averages by clipped r and d.

    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
    Models", NeurIPS 2017. Eval mode uses the moving averages, as batch norm does, but the
    training-mode output already matches them up to the clipping.
    """
    return BatchRenorm(num_features, kind, options)


BATCHRENORM_TRAITS = NormalizerTraits(train_batch_of_one=False, batch_dependent=True, running_stats=True)


__all__ = ["BATCHRENORM_TRAITS", "BatchRenorm", "BatchRenormOptions", "batchrenorm"]

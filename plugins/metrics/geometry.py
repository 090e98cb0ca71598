"""Weight-geometry metrics of batch normalization as a constraint (Annamalai & Thakur 2022).

``weight_geometry`` (weight norms, effective learning rates, BN's gain and constraint) and
``implied_regularization`` (the implied multiplier λ̂, the ridge rate, the bound and the
signal-to-noise ratio per hidden unit), measured on a fixed sample of training examples in
training mode, leaving the model's running statistics, random state and gradients untouched.
Layers: every ``nn.Linear`` immediately followed by a hidden ``NormSite``, numbered from 0.

The definitions, their derivation from the constraint, and why λ̂ is a diagnostic and not
evidence of auto-tuning: docs/studies.md, "The weight geometry of BN as a constraint".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbench import EpochContext, NormSite, Options

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class IntervalOptions(Options):
    every: int = Field(
        1, ge=1, description="Record every N epochs (and always at the first and last epoch); other epochs get none."
    )


class GeometryOptions(IntervalOptions):
    sample_size: int = Field(
        512, ge=2, description="Training examples of the fixed sample batch the statistics are measured on."
    )


def due(context: EpochContext, every: int) -> bool:
    """Whether a metric with interval ``every`` records at this epoch (first, every N-th, last)."""
    last = context.step >= context.run.total_steps
    return context.epoch == 1 or context.epoch % every == 0 or last


# -- finding the layers -------------------------------------------------------------------------
@dataclass
class Layer:
    """A hidden fully connected layer followed by a normalization site."""

    index: int
    linear: nn.Linear
    site: NormSite

    @property
    def batchnorm(self) -> _BatchNorm | None:
        """The site's batch normalization, or ``None`` when the site holds another module."""
        return self.site.norm if isinstance(self.site.norm, _BatchNorm) else None


def hidden_layers(model: nn.Module) -> list[Layer]:
    """Every ``nn.Linear`` immediately followed (in registration order) by a hidden ``NormSite``."""
    layers: list[Layer] = []
    previous: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, NormSite):
            if (
                module.role == "hidden"
                and isinstance(previous, nn.Linear)
                and previous.out_features == module.num_features
            ):
                layers.append(Layer(len(layers), previous, module))
            previous = module
        elif not any(True for _ in module.children()):
            previous = module
    return layers


# -- capturing a forward pass -------------------------------------------------------------------
@dataclass
class Captured:
    """One layer's tensors on the sample batch: inputs ``x`` (n, d), pre-normalization ``h``
    (n, m), site outputs ``y`` (n, m) and ``∂L/∂y`` when asked for."""

    x: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    grad_y: torch.Tensor | None = None


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run measurements on ``model`` without changing it: buffers (BN running statistics),
    training mode and the random state are restored afterwards."""
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({b.device.index or 0 for b, _ in buffers if b.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        model.train(was_training)


def capture(
    model: nn.Module,
    layers: list[Layer],
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    loss_fn: LossFunction = F.cross_entropy,
    statistics: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[Captured]:
    """Forward ``images`` as one batch in training mode, capturing each layer's tensors.

    With ``targets``, also ``∂L/∂y`` for ``L = loss_fn(model(images), targets)``. With
    ``statistics`` (per layer: batch mean and biased variance of ``h``), batch-normalized
    sites normalize with those instead of this batch's own (to propagate a clean batch with
    a noisy batch's normalization). Wrap in ``preserved(model)``: running statistics move.
    """
    found: dict[int, dict[str, torch.Tensor]] = {layer.index: {} for layer in layers}
    handles = []

    def on_linear(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            found[index]["x"], found[index]["h"] = inputs[0].detach(), output

        return hook

    def on_site(layer: Layer) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            bn = layer.batchnorm
            if statistics is not None and bn is not None:
                mean, var = statistics[layer.index]
                output = F.batch_norm(inputs[0], mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
            found[layer.index]["y"] = output
            return output

        return hook

    for layer in layers:
        handles.append(layer.linear.register_forward_hook(on_linear(layer.index)))
        handles.append(layer.site.register_forward_hook(on_site(layer)))
    model.train()
    try:
        with torch.set_grad_enabled(targets is not None):
            logits = model(images)
            outputs = [found[layer.index]["y"] for layer in layers]
            grads: list[torch.Tensor | None] = [None] * len(layers)
            if targets is not None:
                loss = loss_fn(logits, targets)
                grads = list(torch.autograd.grad(loss, outputs, allow_unused=True))
    finally:
        for handle in handles:
            handle.remove()
    return [
        Captured(
            x=found[layer.index]["x"],
            h=found[layer.index]["h"].detach(),
            y=outputs[layer.index].detach(),
            grad_y=None if grad is None else grad.detach(),
        )
        for layer, grad in zip(layers, grads, strict=True)
    ]


# -- per-unit quantities ------------------------------------------------------------------------
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def raw_quantities(weight: torch.Tensor, h: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
    """Per unit: ``‖w_j‖``, effective learning rate ``η/‖w_j‖²``, batch std ``σ_B,j`` and the
    Rayleigh quotient ``w_jᵀΣ_B w_j / ‖w_j‖²`` (= ``σ_B,j² / ‖w_j‖²``)."""
    w_norm = weight.detach().to(h.dtype).norm(dim=1)
    var = _flat(h).var(dim=0, unbiased=False)
    return {
        "w_norm": w_norm,
        "eff_lr": lr / w_norm.square(),
        "sigma_b": var.sqrt(),
        "rayleigh": var / w_norm.square(),
    }


def folded_weights(weight: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """``v_j = γ_j w_j / sqrt(σ_B,j² + ε)``: BN folded into the weights (rows are units)."""
    s = (_flat(h).var(dim=0, unbiased=False) + eps).sqrt()
    return gamma.detach().to(h.dtype)[:, None] * weight.detach().to(h.dtype) / s[:, None]


def folded_quantities(
    weight: torch.Tensor, x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, eps: float
) -> dict[str, torch.Tensor]:
    """Per unit: ``‖v_j‖``, the gain ``γ_j/σ_B,j``, and ``v_jᵀΣ_B v_j / γ_j² − 1`` (the constraint's error)."""
    v = folded_weights(weight, h, gamma, eps)
    g = gamma.detach().to(h.dtype)
    xc = _flat(x) - _flat(x).mean(dim=0)
    quadratic = (xc @ v.T).square().mean(dim=0)
    return {
        "v_norm": v.norm(dim=1),
        "gain": g / _flat(h).var(dim=0, unbiased=False).sqrt(),
        "constraint": quadratic / g.square() - 1,
    }


def implied_multiplier(
    weight: torch.Tensor, x: torch.Tensor, h: torch.Tensor, grad_y: torch.Tensor, gamma: torch.Tensor, eps: float
) -> torch.Tensor:
    """``λ̂_j = −v_jᵀ∇_{v_j}L / (2γ_j²)`` with ``∇_{v_j}L = Σ_i (∂L/∂y_ij)(x_i − x̄)``, per unit."""
    v = folded_weights(weight, h, gamma, eps)
    xc = _flat(x) - _flat(x).mean(dim=0)
    grad_v = _flat(grad_y).T @ xc  # (m, d): row j is ∇_{v_j} L
    return -(v * grad_v).sum(dim=1) / (2 * gamma.detach().to(h.dtype).square())


def noise_quantities(weight: torch.Tensor, x_noisy: torch.Tensor, x_clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per unit: noise variance along ``w_j`` per unit norm ``w_jᵀΣ_e w_j/‖w_j‖²`` and ``SNR_j``."""
    w = weight.detach().to(x_clean.dtype)
    clean = _flat(x_clean)
    noise = _flat(x_noisy) - clean
    noise_var = (noise @ w.T).var(dim=0, unbiased=False)
    signal_var = (clean @ w.T).var(dim=0, unbiased=False)
    return {"noise_rq": noise_var / w.square().sum(dim=1), "snr": signal_var / noise_var}


# -- summaries ----------------------------------------------------------------------------------
QUANTILES = {"q10": 0.1, "median": 0.5, "q90": 0.9}


def summarize(values: torch.Tensor, stats: tuple[str, ...] = ("mean", "median", "q10", "q90")) -> dict[str, float]:
    """Mean, quantiles (``q10``, ``median``, ``q90``), ``max`` or ``min`` of the finite values."""
    finite = values[torch.isfinite(values)].double()
    if finite.numel() == 0:
        return {}
    out = {}
    for stat in stats:
        if stat == "mean":
            out[stat] = float(finite.mean())
        elif stat in ("max", "min"):
            out[stat] = float(getattr(finite, stat)())
        else:
            out[stat] = float(torch.quantile(finite, QUANTILES[stat]))
    return out


def _put(out: dict[str, float], prefix: str, values: Mapping[str, float]) -> None:
    out.update({f"{prefix}.{key}": value for key, value in values.items()})


def _gamma(layer: Layer) -> tuple[torch.Tensor, float] | None:
    bn = layer.batchnorm
    if bn is None:
        return None
    gamma = bn.weight if bn.weight is not None else torch.ones(layer.site.num_features, device=bn.running_mean.device)
    return gamma.detach(), bn.eps


# -- the metrics --------------------------------------------------------------------------------
def layer_geometry(layers: list[Layer], captured: list[Captured], lr: float) -> dict[str, float]:
    """The ``weight_geometry`` values of captured layers (see ``weight_geometry``)."""
    out: dict[str, float] = {}
    for layer, c in zip(layers, captured, strict=True):
        prefix = f"layer{layer.index}"
        raw = raw_quantities(layer.linear.weight, c.h, lr)
        _put(out, f"{prefix}.w_norm", summarize(raw["w_norm"]))
        for name in ("eff_lr", "sigma_b", "rayleigh"):
            _put(out, f"{prefix}.{name}", summarize(raw[name], ("median",)))
        folded = _gamma(layer)
        if folded is None:
            continue
        gamma, eps = folded
        quantities = folded_quantities(layer.linear.weight, c.x, c.h, gamma.to(c.h.device), eps)
        _put(out, f"{prefix}.v_norm", summarize(quantities["v_norm"]))
        _put(out, f"{prefix}.gain", summarize(quantities["gain"], ("median",)))
        _put(out, f"{prefix}.constraint_err", summarize(quantities["constraint"].abs(), ("max",)))
        out[f"{prefix}.gamma_norm"] = float(gamma.double().norm())
    return out


def weight_geometry(context: EpochContext, options: GeometryOptions) -> dict[str, float]:
    """Per hidden layer: ‖w‖, η/‖w‖², σ_B, Rayleigh quotient, folded ‖v‖, γ/σ_B, ‖γ‖ (Annamalai & Thakur 2022).

    Keys ``layer<k>.<quantity>.<stat>``: ``w_norm`` (mean, median, q10, q90), ``eff_lr`` (η/‖w_j‖²
    at the current learning rate), ``sigma_b`` and ``rayleigh`` (wᵀΣ_B w/‖w‖²) as medians; with
    batch normalization at the layer also ``v_norm`` (folded weights γw/σ_B; mean, median, q10,
    q90), ``gain`` (γ/σ_B, median), ``gamma_norm`` (‖γ‖) and ``constraint_err.max``
    (max |vᵀΣ_B v/γ² − 1|, ≈ ε/σ_B²). Cost: one extra forward pass of ``sample_size`` examples
    per recorded epoch. docs/studies.md, the Annamalai & Thakur section.
    """
    if not due(context, options.every):
        return {}
    model = context.run.model
    layers = hidden_layers(model)
    if not layers:
        return {}
    images, _ = context.sample(options.sample_size)
    lr = context.run.learning_rate(max(0, context.step - 1))  # of the step that made these weights
    with preserved(model):
        captured = capture(model, layers, images)
    return layer_geometry(layers, captured, lr)


def layer_regularization(
    layers: list[Layer], captured: list[Captured], pair: tuple[list[Captured], list[Captured]] | None
) -> dict[str, float]:
    """The ``implied_regularization`` values of captured layers (see ``implied_regularization``).

    ``captured``: the sample batch with ``∂L/∂y``; ``pair``: the same batch noisy and clean,
    both propagated with the noisy batch's normalization statistics (``None`` without noise).
    """
    out: dict[str, float] = {}
    for layer in layers:
        prefix = f"layer{layer.index}"
        c = captured[layer.index]
        noise = None
        if pair is not None:
            noise = noise_quantities(layer.linear.weight, pair[0][layer.index].x, pair[1][layer.index].x)
            _put(out, f"{prefix}.snr", summarize(noise["snr"], ("median", "q10", "q90")))
        folded = _gamma(layer)
        if folded is None or c.grad_y is None:
            continue
        gamma, eps = folded
        gamma = gamma.to(c.h.device)
        lam = implied_multiplier(layer.linear.weight, c.x, c.h, c.grad_y, gamma, eps)
        _put(out, f"{prefix}.lambda", summarize(lam))
        if noise is None:
            out[f"{prefix}.ridge.median"] = out[f"{prefix}.ridge.mean"] = 0.0
            out[f"{prefix}.bound.median"] = out[f"{prefix}.bound.q90"] = 0.0
            out[f"{prefix}.bound.within"] = 1.0
            continue
        ridge = lam * noise["noise_rq"]
        v_norm = folded_weights(layer.linear.weight, c.h, gamma, eps).norm(dim=1)
        tightness = v_norm.square() * noise["noise_rq"] / gamma.to(v_norm.dtype).square()
        _put(out, f"{prefix}.ridge", summarize(ridge, ("mean", "median")))
        _put(out, f"{prefix}.bound", summarize(tightness, ("median", "q90")))
        out[f"{prefix}.bound.within"] = float((tightness <= 1).double().mean())
    return out


def implied_regularization(context: EpochContext, options: GeometryOptions) -> dict[str, float]:
    """Per hidden BN layer: implied multiplier λ̂, ridge rate, bound ‖v‖²σ² ≤ γ², SNR (Annamalai & Thakur 2022).

    Keys ``layer<k>.<quantity>.<stat>``: ``lambda`` (λ̂_j = −v_jᵀ∇_v L/(2γ_j²) in the folded
    coordinates; mean, median, q10, q90), ``ridge`` (λ̂_j · v_jᵀΣ_e v_j/‖v_j‖², the ridge rate
    the input noise adds; mean, median), ``bound`` (‖v_j‖²σ²_e,j/γ_j², the bound's tightness;
    median, q90, and ``bound.within``: share of units with tightness ≤ 1) and ``snr``
    (var(wᵀs)/var(wᵀe); median, q10, q90; also for unnormalized layers). Without noise on
    the training inputs ``ridge`` and ``bound`` are 0 and ``snr`` is absent. ``L`` is the mean
    cross-entropy on the sample batch. Cost per recorded epoch: a forward and backward pass of
    ``sample_size`` examples, plus two forward passes (the sample noisy and clean) when training
    inputs are noisy. Diagnostics, not evidence (docs/studies.md).
    """
    if not due(context, options.every):
        return {}
    model = context.run.model
    layers = hidden_layers(model)
    if not layers:
        return {}
    images, labels = context.sample(options.sample_size)
    clean_images, _ = context.sample(options.sample_size, transformed=False)
    with preserved(model):
        captured = capture(model, layers, images, labels)
        pair = None
        if not torch.equal(images, clean_images):  # noise on the training inputs
            stats = [(c.h.mean(dim=0), c.h.var(dim=0, unbiased=False)) for c in captured]
            pair = (
                capture(model, layers, images, statistics=stats),
                capture(model, layers, clean_images, statistics=stats),
            )
    return layer_regularization(layers, captured, pair)

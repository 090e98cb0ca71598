"""Gradient statistics at initialization (Bjorck et al. 2018, section 3, Figures 3 and 6).

Without BN, the gradients of a deep network at initialization are much larger and
heavy-tailed (the paper's histograms of layer 55 of ResNet-110), and the gradient of a
convolution kernel barely depends on the input: the per-example gradients point the same way,
so |Σ_i g_i| ≈ Σ_i |g_i|. RQ2.

Per-example gradients come from one backward pass: for a layer with input x_i and output
gradient δ_i of the *batch* loss, the batch gradient is Σ_i δ_i ⊗ x_i (unfolded for a
convolution), and example i's term δ_i ⊗ x_i is its per-example gradient. With BN the batch
statistics couple the examples through δ_i; the decomposition stays exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness import Options
from harness.api import AnalysisResult, Figure, ProbeContext, StudyResults, Table
from plugins.probes.common import (
    CompareOptions,
    finite_or_nan,
    fmt,
    geomean,
    geomean_or_inf,
    group_runs,
    mean,
    mean_curve,
    panel_grid,
    probe_runs,
    put,
    put_group_ratio,
    take_batches,
)


class GradientOptions(Options):
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    layer: int | None = Field(
        None,
        ge=0,
        description="Index (among conv and linear layers, in order) of the layer whose gradient histogram is "
        "stored; default the middle one (layer 55 of ResNet-110, as in the paper).",
    )
    bins: int = Field(81, ge=3, description="Bins of the gradient histogram (symmetric around 0).")


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolution and linear layers in registration order (their index is the depth)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def per_example_gradients(module: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor | None:
    """``(N, *weight.shape)``: example i's term of the batch gradient of ``module.weight``.

    ``None`` for a convolution this decomposition does not cover (groups, string padding,
    non-zero padding modes).
    """
    n = inputs.shape[0]
    if isinstance(module, nn.Linear):
        x = inputs.reshape(n, -1, module.in_features)
        delta = grad_output.reshape(n, -1, module.out_features)
        return torch.einsum("nlo,nli->noi", delta, x)
    if (
        not isinstance(module, nn.Conv2d)
        or module.groups != 1
        or isinstance(module.padding, str)
        or module.padding_mode != "zeros"
    ):
        return None
    cols = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
    delta = grad_output.reshape(n, module.out_channels, -1)
    return torch.einsum("nol,nil->noi", delta, cols).reshape(n, *module.weight.shape)


def sum_ratio(per_example: torch.Tensor) -> float:
    """|Σ_i g_i| / Σ_i |g_i| summed over the weight's entries: 1 when every example's gradient has
    the same sign pattern (the gradient does not depend on the input), near 0 when they cancel."""
    total = per_example.sum(0).abs().sum()
    spread = per_example.abs().sum()
    return float(total / spread) if float(spread) > 0 else math.nan


def excess_kurtosis(values: torch.Tensor) -> float:
    """Fourth standardized moment minus 3 of the finite values: 0 for a Gaussian, large for heavy tails."""
    x = values.detach().double().flatten()
    x = x[torch.isfinite(x)]
    centred = x - x.mean()
    var = centred.pow(2).mean()
    return float(centred.pow(4).mean() / var.pow(2) - 3) if float(var) > 0 else math.nan


def histogram(values: torch.Tensor, bins: int) -> dict[str, list[float]]:
    """Counts of ``values`` in ``bins`` equal bins spanning ±max|value|."""
    x = values.detach().double().flatten()
    x = x[torch.isfinite(x)]
    edge = float(x.abs().max()) if x.numel() else 1.0
    edge = edge if edge > 0 else 1.0
    counts = torch.histc(x, bins=bins, min=-edge, max=edge)
    return {"edges": torch.linspace(-edge, edge, bins + 1).tolist(), "counts": counts.tolist()}


def gradient_stats(context: ProbeContext, options: GradientOptions) -> dict[str, Any]:
    """Gradient norms, histogram and per-example agreement per layer at init (Bjorck Figs. 3, 6).

    For every conv and linear layer, in order: the norm of the weight and of its gradient on one
    mini-batch, the gradient's excess kurtosis (heavy tails), and ``sum_ratio`` =
    |Σ_i g_i| / Σ_i |g_i| over the batch's per-example gradients (close to 1: the gradient barely
    depends on the input). Also the histogram of one layer's gradient entries.
    """
    model = context.build_model()
    layers = weight_layers(model)
    if not layers:
        raise ValueError("the model has no convolution or linear layers")
    ratios: dict[str, float] = {}
    handles = []

    def capture(name: str) -> Any:
        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()

            def backward_hook(grad: torch.Tensor) -> None:
                per_example = per_example_gradients(module, x, grad.detach())
                ratios[name] = math.nan if per_example is None else sum_ratio(per_example)

            if output.requires_grad:
                output.register_hook(backward_hook)

        return forward_hook

    for name, module in layers:
        handles.append(module.register_forward_hook(capture(name)))
    ((images, labels),) = take_batches(context, options.batch_size, 1)
    try:
        loss = F.cross_entropy(model(images), labels)
        model.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    index = len(layers) // 2 if options.layer is None else options.layer
    if index >= len(layers):
        raise ValueError(f"layer {index} does not exist: the model has {len(layers)} conv and linear layers")
    grads = [m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight) for _, m in layers]
    return {
        "layers": [name for name, _ in layers],
        "kind": ["conv" if isinstance(m, nn.Conv2d) else "linear" for _, m in layers],
        "loss": float(loss.detach()),
        "grad_norm": [float(g.norm()) for g in grads],
        "weight_norm": [float(m.weight.detach().norm()) for _, m in layers],
        "kurtosis": [excess_kurtosis(g) for g in grads],
        "sum_ratio": [ratios.get(name, math.nan) for name, _ in layers],
        "histogram": {"layer": index, "name": layers[index][0], **histogram(grads[index], options.bins)},
    }


def gradient_analysis(study: StudyResults, options: CompareOptions) -> AnalysisResult:
    """Gradient size, tails and input dependence at initialization (Figs. 3 and 6).

    Values: ``grad_norm.<group>`` (gradient norm of the histogram layer, geometric mean over
    seeds), ``kurtosis.<group>`` (its excess kurtosis), ``sum_ratio.<group>`` (mean over conv
    layers, or linear layers in a model without convs, of |Σ_i g_i| / Σ_i |g_i|), and
    ``grad_norm_ratio`` and ``sum_ratio_ratio`` (unnormalized ÷ normalized).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    values: dict[str, float] = {}
    rows = []
    for label, runs in groups.items():
        m = [r.measurements for r in runs]
        index = m[0]["histogram"]["layer"]
        norm = geomean_or_inf(x["grad_norm"][index] for x in m)
        kurt = mean(x["kurtosis"][index] for x in m)
        kinds = "conv" if "conv" in m[0]["kind"] else "linear"
        conv = mean(mean(v for v, k in zip(x["sum_ratio"], x["kind"], strict=True) if k == kinds) for x in m)
        put(values, f"grad_norm.{label}", norm)
        put(values, f"kurtosis.{label}", kurt)
        put(values, f"sum_ratio.{label}", conv)
        rows.append(
            [label, m[0]["histogram"]["name"], fmt(norm), fmt(kurt), fmt(conv), fmt(mean(x["loss"] for x in m))]
        )
    put_group_ratio(values, "grad_norm", options.unnormalized, options.normalized)
    put_group_ratio(values, "sum_ratio", options.unnormalized, options.normalized)
    table = Table(
        "Gradients at initialization",
        ["configuration", "histogram layer", "gradient norm", "excess kurtosis", "conv |Σg|/Σ|g|", "loss"],
        rows,
    )
    figures = [
        Figure("gradient_histogram", lambda fig: _draw_histograms(fig, groups)),
        Figure("gradient_norm_vs_depth", lambda fig: _draw_depth(fig, groups, "grad_norm", geomean, True)),
        Figure("conv_gradient_sum_ratio", lambda fig: _draw_depth(fig, groups, "sum_ratio", mean, False)),
    ]
    return AnalysisResult([table], figures, values)


def _draw_histograms(fig: Any, groups: dict[str, list[Any]]) -> None:
    axes = panel_grid(fig, len(groups), columns=3)
    for ax, (label, runs) in zip(axes, groups.items(), strict=True):
        hist = runs[0].measurements["histogram"]
        edges, counts = hist["edges"], hist["counts"]
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        ax.set_yscale("log")
        ax.set_xlabel(f"gradient entry of {hist['name']}")
        ax.set_ylabel("count")
        ax.set_title(f"{label} (seed {runs[0].seed})")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))


def _draw_depth(fig: Any, groups: dict[str, list[Any]], key: str, combine: Any, log: bool) -> None:
    ax = fig.add_subplot()
    for label, runs in groups.items():
        curve = mean_curve([r.measurements[key] for r in runs], combine)
        ax.plot(range(len(curve)), finite_or_nan(curve), marker=".", label=label)
    ax.set_xlabel("depth (conv / linear layer index)")
    if log:
        ax.set_yscale("log")
        ax.set_ylabel("gradient norm")
        ax.set_title("Gradient norm per layer at initialization")
    else:
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("|Σ_i g_i| / Σ_i |g_i|")
        ax.set_title("Per-example gradient agreement (1: independent of the input)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()

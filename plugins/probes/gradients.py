"""Gradient statistics at initialization (Bjorck et al. 2018, section 3, Figures 3 and 6).

Without BN, the gradients of a deep network at initialization are much larger and
heavy-tailed (the paper's histograms of layer 55 of ResNet-110), and the gradient of a
convolution kernel barely depends on the input: its contributions point the same way, so
|Σ g| ≈ Σ |g|. RQ2.

Contributions come from one backward pass. For a convolution with unfolded input patches
x_{i,p} and output gradient δ_{i,p} of the *batch* loss (example i, output position p), the
weight gradient is Σ_{i,p} δ_{i,p} ⊗ x_{i,p}. The paper's ratio (its eq. 4 and table) groups the
terms by example *and* position: |Σ_{i,p} g_{i,p}| / Σ_{i,p} |g_{i,p}|, elementwise per kernel
weight (``grouping="positions"``); ``grouping="examples"`` sums each example's positions first,
|Σ_i g_i| / Σ_i |g_i| with g_i = Σ_p g_{i,p}, which keeps a ~1/√B floor under any value. A linear
layer has no positions: both groupings coincide. With BN the batch statistics couple the
examples through δ; the decomposition stays exact. Since |δ x| = |δ| |x|, the position-grouped
Σ|g| is one contraction of |δ| with |x|.

The analysis reports, per group, Estimates over seeds (one run is one seed): ``grad_norm``,
``kurtosis`` and ``sum_ratio``; and, paired by seed, BN against no BN: ``grad_norm_ratio``,
``kurtosis_difference`` and ``sum_ratio_difference``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bnbench import Options
from bnbench.analysis import (
    finite_or_nan,
    fmt,
    geomean,
    group_runs,
    mean,
    mean_curve,
    over_seeds,
    paired_difference,
    paired_ratio,
    per_seed,
    put,
)
from bnbench.api import AnalysisResult, Estimate, Figure, ProbeContext, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, panel_grid, probe_runs, take_batches

Grouping = Literal["positions", "examples"]


class GradientOptions(Options):
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    layer: int | None = Field(
        None,
        ge=0,
        description="Index (among conv and linear layers, in order) of the layer whose gradient histogram is "
        "stored; default the middle one (layer 55 of ResNet-110, as in the paper).",
    )
    bins: int = Field(81, ge=3, description="Bins of the gradient histogram (symmetric around 0).")
    grouping: Grouping = Field(
        "positions",
        description="Terms of |Σ g| / Σ |g|: positions: one per example and output position (the paper's eq. 4); "
        "examples: one per example (its positions summed first; a ~1/sqrt(batch) floor).",
    )


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolution and linear layers in registration order (their index is the depth)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def unfolded(
    module: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(δ, x)``: output gradients ``(N, out, L)`` and input patches ``(N, in, L)`` at the L output
    positions, so that the weight gradient is Σ_{i,p} δ[i, :, p] ⊗ x[i, :, p].

    ``None`` for a convolution this decomposition does not cover (groups, string padding,
    non-zero padding modes).
    """
    n = inputs.shape[0]
    if isinstance(module, nn.Linear):
        x = inputs.reshape(n, -1, module.in_features).transpose(1, 2)
        return grad_output.reshape(n, -1, module.out_features).transpose(1, 2), x
    if (
        not isinstance(module, nn.Conv2d)
        or module.groups != 1
        or isinstance(module.padding, str)
        or module.padding_mode != "zeros"
    ):
        return None
    cols = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
    return grad_output.reshape(n, module.out_channels, -1), cols


def per_example_gradients(module: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor | None:
    """``(N, *weight.shape)``: example i's term of the batch gradient of ``module.weight``
    (``None`` where ``unfolded`` is)."""
    parts = unfolded(module, inputs, grad_output)
    if parts is None:
        return None
    delta, cols = parts
    return torch.einsum("nol,nil->noi", delta, cols).reshape(inputs.shape[0], *module.weight.shape)


def contribution_sums(
    module: nn.Module,
    inputs: torch.Tensor,
    grad_output: torch.Tensor,
    grouping: Grouping = "positions",
    chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(Σ g, Σ |g|)`` per weight entry (shape ``(out, in·k·k)``) over the ``grouping``'s terms
    (module doc); ``None`` where ``unfolded`` is. The example grouping materializes the
    per-example gradients ``chunk_elements`` entries at a time."""
    parts = unfolded(module, inputs, grad_output)
    if parts is None:
        return None
    delta, cols = parts
    total = torch.einsum("nol,nil->oi", delta, cols)
    if grouping == "positions":
        return total, torch.einsum("nol,nil->oi", delta.abs(), cols.abs())
    step = max(1, chunk_elements // max(1, total.numel()))
    spread = torch.zeros_like(total)
    for start in range(0, delta.shape[0], step):
        spread += torch.einsum("nol,nil->noi", delta[start : start + step], cols[start : start + step]).abs().sum(0)
    return total, spread


def sum_ratio(contributions: torch.Tensor) -> float:
    """|Σ_k g_k| / Σ_k |g_k| of stacked terms ``(K, ...)``, each side summed over the weight's entries:
    1 when every term has the same sign pattern (the gradient does not depend on the input),
    near 0 when they cancel."""
    return _ratio(contributions.sum(0), contributions.abs().sum(0))


def _ratio(total: torch.Tensor, spread: torch.Tensor) -> float:
    denominator = float(spread.sum())
    return float(total.abs().sum()) / denominator if denominator > 0 else math.nan


def grouped_sum_ratio(
    module: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor, grouping: Grouping = "positions"
) -> float:
    """``sum_ratio`` of ``module.weight``'s gradient terms under ``grouping`` (NaN where not covered)."""
    sums = contribution_sums(module, inputs, grad_output, grouping)
    return math.nan if sums is None else _ratio(*sums)


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
    """Gradient norms, histogram and input dependence per layer at init (Bjorck Figs. 3, 6).

    For every conv and linear layer, in order: the norm of the weight and of its gradient on one
    mini-batch, the gradient's excess kurtosis (heavy tails), and ``sum_ratio`` = |Σ g| / Σ |g|
    over the gradient's terms grouped by ``options.grouping`` (close to 1: the gradient barely
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
                ratios[name] = grouped_sum_ratio(module, x, grad.detach(), options.grouping)

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
        "grouping": options.grouping,
        "loss": float(loss.detach()),
        "grad_norm": [float(g.norm()) for g in grads],
        "weight_norm": [float(m.weight.detach().norm()) for _, m in layers],
        "kurtosis": [excess_kurtosis(g) for g in grads],
        "sum_ratio": [ratios.get(name, math.nan) for name, _ in layers],
        "histogram": {"layer": index, "name": layers[index][0], **histogram(grads[index], options.bins)},
    }


def _histogram_layer(run: RunRecord, key: str) -> float | None:
    """The run's ``key`` at its histogram layer."""
    m = run.measurements
    value = m[key][m["histogram"]["layer"]]
    return None if value is None else float(value)


def _mean_sum_ratio(run: RunRecord) -> float | None:
    """Mean ``sum_ratio`` over the run's conv layers (its linear layers in a model without convs)."""
    m = run.measurements
    kind = "conv" if "conv" in m["kind"] else "linear"
    return mean(v for v, k in zip(m["sum_ratio"], m["kind"], strict=True) if k == kind)


def _grouping_label(runs: list[RunRecord]) -> str:
    groupings = {r.measurements.get("grouping", "examples") for r in runs}
    return "/".join(sorted(groupings))


def gradient_analysis(study: StudyResults, options: CompareOptions) -> AnalysisResult:
    """Gradient size, tails and input dependence at initialization (Figs. 3 and 6).

    Per group, Estimates over seeds (one replicate per run): ``grad_norm.<group>`` (gradient norm
    of the histogram layer; log scale), ``kurtosis.<group>`` (its excess kurtosis; linear) and
    ``sum_ratio.<group>`` (|Σ g| / Σ |g| averaged over conv layers, or linear layers in a model
    without convs, under the probe's grouping; linear). Paired by seed, unnormalized against
    normalized: ``grad_norm_ratio`` (no BN ÷ BN; log scale), ``kurtosis_difference`` and
    ``sum_ratio_difference`` (no BN − BN; linear).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    values: dict[str, float | Estimate] = {}
    seeds: dict[str, dict[str, dict[int, float]]] = {"grad_norm": {}, "kurtosis": {}, "sum_ratio": {}}
    rows = []
    for label, runs in groups.items():
        seeds["grad_norm"][label] = per_seed(runs, lambda r: _histogram_layer(r, "grad_norm"))
        seeds["kurtosis"][label] = per_seed(runs, lambda r: _histogram_layer(r, "kurtosis"))
        seeds["sum_ratio"][label] = per_seed(runs, _mean_sum_ratio)
        norm = over_seeds(seeds["grad_norm"][label].values(), scale="log")
        kurt = over_seeds(seeds["kurtosis"][label].values())
        ratio = over_seeds(seeds["sum_ratio"][label].values())
        put(values, f"grad_norm.{label}", norm)
        put(values, f"kurtosis.{label}", kurt)
        put(values, f"sum_ratio.{label}", ratio)
        rows.append(
            [
                label,
                runs[0].measurements["histogram"]["name"],
                len(runs),
                *(fmt(None if e is None else e.value) for e in (norm, kurt, ratio)),
                _grouping_label(runs),
                fmt(mean(r.measurements["loss"] for r in runs)),
            ]
        )
    none, bn = options.unnormalized, options.normalized
    if none in groups and bn in groups:
        put(values, "grad_norm_ratio", paired_ratio(seeds["grad_norm"][none], seeds["grad_norm"][bn]))
        put(values, "kurtosis_difference", paired_difference(seeds["kurtosis"][none], seeds["kurtosis"][bn]))
        put(values, "sum_ratio_difference", paired_difference(seeds["sum_ratio"][none], seeds["sum_ratio"][bn]))
    table = Table(
        "Gradients at initialization (means over seeds; gradient norm: geometric mean)",
        [
            "configuration",
            "histogram layer",
            "seeds",
            "gradient norm",
            "excess kurtosis",
            "conv |Σg|/Σ|g|",
            "terms of Σ",
            "loss",
        ],
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
        ax.set_ylabel("|Σ g| / Σ |g|")
        ax.set_title("Agreement of the gradient terms (1: independent of the input)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()

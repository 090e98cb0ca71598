"""Class bias at initialization (Bjorck et al. 2018, section 3.3, Figure 5 (heat map)).

An unnormalized deep network at initialization predicts (almost) the same class for every
input, and the gradients of the loss with respect to its outputs are nearly the same for all
inputs (the images × classes heat map has constant columns); with BN the predictions spread
over the classes and the gradients depend on the input. RQ2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from harness import Options
from harness.api import AnalysisResult, Figure, ProbeContext, StudyResults, Table
from plugins.probes.common import (
    CompareOptions,
    fmt,
    group_runs,
    mean,
    panel_grid,
    probe_runs,
    put,
    put_group_ratio,
    take_batches,
)


class ClassBiasOptions(Options):
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    batches: int = Field(1, gt=0, description="Mini-batches measured (the shares and correlations are averaged).")
    heatmap_images: int = Field(
        64, ge=1, description="Rows (images) of the output-gradient matrix stored for the heat map."
    )


def top_class_share(logits: torch.Tensor) -> tuple[float, list[int]]:
    """Share of the batch predicted as its most frequent class, and the predicted-class counts."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
    return float(counts.max()) / logits.shape[0], counts.tolist()


def row_correlation(matrix: torch.Tensor) -> float:
    """Mean Pearson correlation between distinct rows of ``matrix`` (rows with no variance left out)."""
    x = matrix.detach().double()
    x = x - x.mean(1, keepdim=True)
    norms = x.norm(dim=1)
    x = x[norms > 0] / norms[norms > 0, None]
    n = x.shape[0]
    if n < 2:
        return math.nan
    gram = x @ x.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def class_bias(context: ProbeContext, options: ClassBiasOptions) -> dict[str, Any]:
    """Share of inputs predicted as one class, output-gradient correlation at init (Bjorck Fig. 5).

    Per mini-batch, in training mode: the predicted-class counts, ``top_class_share`` (the most
    frequent class's share), and the gradient of the mean cross-entropy with respect to the
    model's outputs, an images × classes matrix, summarized by ``gradient_correlation`` (mean
    Pearson correlation between its rows: near 1 when every input gets the same gradient).
    """
    model = context.build_model()
    shares, correlations, counts = [], [], []
    heatmap: list[list[float]] = []
    heatmap_labels: list[int] = []
    for images, labels in take_batches(context, options.batch_size, options.batches):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(loss, logits)
        share, batch_counts = top_class_share(logits.detach())
        shares.append(share)
        counts.append(batch_counts)
        correlations.append(row_correlation(grad))
        if not heatmap:
            heatmap = (grad[: options.heatmap_images] * images.shape[0]).tolist()
            heatmap_labels = labels[: options.heatmap_images].tolist()
    return {
        "top_class_share": sum(shares) / len(shares),
        "gradient_correlation": mean(correlations),
        "predicted_counts": [sum(c) for c in zip(*counts, strict=True)],
        "output_gradients": heatmap,
        "labels": heatmap_labels,
    }


def class_bias_analysis(study: StudyResults, options: CompareOptions) -> AnalysisResult:
    """Predictions and output gradients at initialization per configuration (Fig. 5).

    Values: ``top_class_share.<group>`` (mean over seeds; 1.0 when every input gets one class),
    ``gradient_correlation.<group>`` and ``gradient_correlation_ratio`` (unnormalized ÷
    normalized).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    values: dict[str, float] = {}
    rows = []
    for label, runs in groups.items():
        share = mean(r.measurements["top_class_share"] for r in runs)
        corr = mean(r.measurements["gradient_correlation"] for r in runs)
        put(values, f"top_class_share.{label}", share)
        put(values, f"gradient_correlation.{label}", corr)
        classes = sum(1 for c in runs[0].measurements["predicted_counts"] if c)
        rows.append([label, fmt(share), classes, fmt(corr)])
    put_group_ratio(values, "gradient_correlation", options.unnormalized, options.normalized)
    table = Table(
        "Class bias at initialization",
        ["configuration", "share of the top class", "classes predicted (first seed)", "output-gradient correlation"],
        rows,
    )

    def draw(fig: Any) -> None:
        axes = panel_grid(fig, len(groups), columns=3)
        for ax, (label, runs) in zip(axes, groups.items(), strict=True):
            grads = torch.tensor(runs[0].measurements["output_gradients"])
            limit = float(grads.abs().max()) or 1.0
            shown = ax.imshow(
                grads.numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
            )
            fig.colorbar(shown, ax=ax, label="∂loss/∂output × batch size")
            ax.set_xlabel("class")
            ax.set_ylabel("image")
            ax.set_title(f"{label}: top class {runs[0].measurements['top_class_share']:.0%}")

    return AnalysisResult([table], [Figure("class_bias_heatmap", draw)], values)

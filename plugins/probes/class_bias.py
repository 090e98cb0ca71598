"""Class bias at initialization (Bjorck et al. 2018, section 3.3, Figure 5 (heat map)).

An unnormalized deep network at initialization predicts (almost) the same class for every
input, and the gradients of the loss with respect to its outputs are nearly the same for all
inputs (the images × classes heat map has constant columns); with BN the gradients depend on
the input. RQ2.

The heat map's agreement is measured by ``gradient_cosine``: the mean cosine similarity between
the output gradients g_i = ∂loss_i/∂logits_i of distinct inputs, in [−1, 1]. It is 1 when every
row is the same. For cross-entropy g_i = p_i − e_{y_i}, so the label's term always differs
between inputs of different labels: a saturated one-class predictor (p_i = e_k, y_i ≠ k) gives
½ between different labels and 1 between equal ones, about ½ + ½·P(same label) in all; uniform
logits give 1 between equal labels and −1/(C−1) between different ones, 0 in expectation over
uniform labels. Rows of g sum to 0, so this is also their mean Pearson correlation.

The analysis reports per group, as Estimates over seeds (one run is one seed; linear scale):
``gradient_cosine`` and ``top_class_share`` (a diagnostic), and ``gradient_cosine_difference``
(no BN − BN, paired by seed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from bnbench import Options
from bnbench.analysis import fmt, group_runs, mean, over_seeds, paired_difference, per_seed, put
from bnbench.api import AnalysisResult, Estimate, Figure, ProbeContext, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, panel_grid, probe_runs, take_batches


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


def gradient_cosine(matrix: torch.Tensor) -> float:
    """Mean cosine similarity between distinct rows of ``matrix`` (zero rows left out), exactly:
    with unit rows u_i, (‖Σ u_i‖² − Σ ‖u_i‖²) / (N (N − 1)). NaN with fewer than two rows."""
    x = matrix.detach().double()
    norms = x.norm(dim=1)
    u = x[norms > 0] / norms[norms > 0, None]
    n = u.shape[0]
    if n < 2:
        return math.nan
    return float((u.sum(0).pow(2).sum() - n) / (n * (n - 1)))


def class_bias(context: ProbeContext, options: ClassBiasOptions) -> dict[str, Any]:
    """Share of inputs predicted as one class, output-gradient agreement at init (Bjorck Fig. 5).

    Per mini-batch, in training mode: the predicted-class counts, ``top_class_share`` (the most
    frequent class's share), and the gradient of the mean cross-entropy with respect to the
    model's outputs, an images × classes matrix, summarized by ``gradient_cosine`` (mean cosine
    similarity between its rows, module doc). Both are averaged over the mini-batches.
    """
    model = context.build_model()
    shares, cosines, counts = [], [], []
    heatmap: list[list[float]] = []
    heatmap_labels: list[int] = []
    for images, labels in take_batches(context, options.batch_size, options.batches):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(loss, logits)
        share, batch_counts = top_class_share(logits.detach())
        shares.append(share)
        counts.append(batch_counts)
        cosines.append(gradient_cosine(grad))
        if not heatmap:
            heatmap = (grad[: options.heatmap_images] * images.shape[0]).tolist()
            heatmap_labels = labels[: options.heatmap_images].tolist()
    return {
        "top_class_share": sum(shares) / len(shares),
        "gradient_cosine": mean(cosines),
        "predicted_counts": [sum(c) for c in zip(*counts, strict=True)],
        "output_gradients": heatmap,
        "labels": heatmap_labels,
    }


def _cosine(run: RunRecord) -> float | None:
    """The run's ``gradient_cosine`` (runs stored before it was named ``gradient_correlation``: the
    mean Pearson correlation of the rows, the same number since each row sums to 0)."""
    m = run.measurements
    value = m.get("gradient_cosine", m.get("gradient_correlation"))
    return None if value is None else float(value)


def class_bias_analysis(study: StudyResults, options: CompareOptions) -> AnalysisResult:
    """Predictions and output gradients at initialization per configuration (Fig. 5).

    Values, Estimates over seeds (linear scale): ``gradient_cosine.<group>`` (mean cosine
    similarity of the output gradients of distinct inputs, in [−1, 1]; module doc for its known
    values), ``top_class_share.<group>`` (a diagnostic: 1.0 when every input gets one class), and
    ``gradient_cosine_difference`` (unnormalized − normalized, paired by seed).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    values: dict[str, float | Estimate] = {}
    cosines: dict[str, dict[int, float]] = {}
    rows = []
    for label, runs in groups.items():
        shares = per_seed(runs, lambda r: r.measurements["top_class_share"])
        cosines[label] = per_seed(runs, _cosine)
        share, cosine = over_seeds(shares.values()), over_seeds(cosines[label].values())
        put(values, f"top_class_share.{label}", share)
        put(values, f"gradient_cosine.{label}", cosine)
        classes = sum(1 for c in runs[0].measurements["predicted_counts"] if c)
        rows.append([label, len(runs), *(fmt(None if e is None else e.value) for e in (share, cosine)), classes])
    if options.unnormalized in cosines and options.normalized in cosines:
        difference = paired_difference(cosines[options.unnormalized], cosines[options.normalized])
        put(values, "gradient_cosine_difference", difference)
    table = Table(
        "Class bias at initialization (means over seeds)",
        [
            "configuration",
            "seeds",
            "share of the top class",
            "output-gradient cosine",
            "classes predicted (first seed)",
        ],
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

"""The input-output Jacobian's singular values at initialization, with and without BN, against depth.

Bjorck et al. 2018 (section 4) explain with random-matrix theory why a deep unnormalized
network is ill-conditioned at initialization: a product of many random layers spreads its
singular values exponentially in depth. Their point about BN is that it makes the network
robust to that ill-conditioning. Products of i.i.d. matrices (``random_matrix``) involve no
normalizer, so they cannot test it; this probe measures the network itself: for a few inputs
of a training batch, the Jacobian of the logits with respect to the input (in training mode,
so BN's batch statistics, and their dependence on the input, are part of the map), and the
spread of its singular values, for each placement and depth.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from pydantic import Field

from bnbench import Options
from bnbench.analysis import axis_value, fmt, group_runs, over_seeds, paired_difference, put
from bnbench.api import AnalysisResult, ClaimValue, Figure, ProbeContext, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, probe_runs, take_batches


class JacobianOptions(Options):
    batch_size: int = Field(32, ge=2, description="The batch the inputs come from (BN's statistics are its).")
    examples: int = Field(4, ge=1, description="Inputs of the batch whose Jacobian is measured.")


def input_output_jacobian(model: torch.nn.Module, images: torch.Tensor, index: int) -> torch.Tensor:
    """d logits[index] / d images[index], flattened to (classes, input size), with the rest of the
    batch held fixed (in training mode the batch statistics move with the input)."""

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([images[:index], x.unsqueeze(0), images[index + 1 :]])
        return model(batch)[index]

    jacobian = torch.autograd.functional.jacobian(logits_of, images[index].detach())
    return jacobian.reshape(jacobian.shape[0], -1)


def spectrum(jacobian: torch.Tensor) -> dict[str, Any]:
    """Singular values (descending) and their spread: log10 condition number, std of log10 values."""
    values = torch.linalg.svdvals(jacobian.double())
    logs = torch.log10(values.clamp_min(torch.finfo(torch.float64).tiny))
    return {
        "singular_values": values.tolist(),
        "log10_condition": float(logs[0] - logs[-1]),
        "log10_spread": float(logs.std()) if len(logs) > 1 else 0.0,
    }


def jacobian_spectrum(context: ProbeContext, options: JacobianOptions) -> dict[str, Any]:
    """Singular values of the input-output Jacobian of ``examples`` inputs of one training batch at
    initialization (training mode: BN normalizes with the batch's statistics)."""
    model = context.build_model()
    ((images, _),) = take_batches(context, options.batch_size, 1)
    measured = [spectrum(input_output_jacobian(model, images, i)) for i in range(min(options.examples, len(images)))]
    return {
        "examples": measured,
        "log10_condition": statistics.fmean(m["log10_condition"] for m in measured),
        "log10_spread": statistics.fmean(m["log10_spread"] for m in measured),
    }


class JacobianAnalysisOptions(CompareOptions):
    depth_axis: str = Field("model.depth", description="The study's depth axis (dotted path).")


def jacobian_analysis(study: StudyResults, options: JacobianAnalysisOptions) -> AnalysisResult:
    """Conditioning of the input-output Jacobian against depth, with and without BN.

    Per group and depth, Estimates over seeds (each seed the mean over its inputs):
    ``log10_condition.<group>.<depth>``. Per group, ``condition_growth.<group>``: per seed the
    least-squares slope of log10 condition number against depth, in decades per 100 layers (one
    depth: not reported). Paired by seed: ``condition_growth_difference`` (unnormalized −
    normalized) and, at the deepest depth, ``log10_condition_difference``.
    """
    groups = group_runs(probe_runs(study), exclude={options.depth_axis})
    if not groups:
        return AnalysisResult()
    per_seed: dict[str, dict[int, dict[int, float]]] = {}  # group → seed → depth → log10 condition
    for label, runs in groups.items():
        for run in runs:
            depth = axis_value(run, options.depth_axis)
            key = int(depth) if depth is not None else 0
            per_seed.setdefault(label, {}).setdefault(run.seed, {})[key] = float(run.measurements["log10_condition"])
    values: dict[str, ClaimValue] = {}
    growth: dict[str, dict[int, float]] = {}
    depths = sorted({d for seeds in per_seed.values() for by_depth in seeds.values() for d in by_depth})
    rows = []
    for label, seeds in per_seed.items():
        for depth in depths:
            put(
                values,
                f"log10_condition.{label}.{depth}",
                over_seeds((s[depth] for s in seeds.values() if depth in s), unit="decades"),
            )
        growth[label] = {seed: slope for seed, by_depth in seeds.items() if (slope := _slope(by_depth)) is not None}
        put(values, f"condition_growth.{label}", over_seeds(growth[label].values(), unit="decades/100 layers"))
        rows.append(
            [
                label,
                *(
                    fmt(
                        statistics.fmean(s[d] for s in seeds.values() if d in s)
                        if any(d in s for s in seeds.values())
                        else None
                    )
                    for d in depths
                ),
                fmt(statistics.fmean(growth[label].values()) if growth[label] else None),
            ]
        )
    none, bn = options.unnormalized, options.normalized
    if none in per_seed and bn in per_seed:
        put(values, "condition_growth_difference",
            paired_difference(growth.get(none, {}), growth.get(bn, {}), unit="decades/100 layers"))  # fmt: skip
        deepest = depths[-1]
        put(
            values,
            "log10_condition_difference",
            paired_difference(
                {s: d[deepest] for s, d in per_seed[none].items() if deepest in d},
                {s: d[deepest] for s, d in per_seed[bn].items() if deepest in d},
                unit="decades",
            ),
        )
    table = Table(
        "Input-output Jacobian at initialization: log10 condition number (mean over seeds and inputs)",
        ["configuration", *(f"depth {d}" for d in depths), "growth (decades / 100 layers)"],
        rows,
    )

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for label, seeds in per_seed.items():
            shown = [statistics.fmean(s[d] for s in seeds.values() if d in s) for d in depths
                     if any(d in s for s in seeds.values())]  # fmt: skip
            ax.plot(depths[: len(shown)], shown, marker="o", label=label)
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("log10 condition number of d logits / d input")
        ax.set_title("Conditioning of the network at initialization")
        ax.grid(True, alpha=0.3)
        ax.legend()

    return AnalysisResult([table], [Figure("jacobian_condition_vs_depth", draw)], values)


def _slope(by_depth: dict[int, float]) -> float | None:
    """Least-squares slope of the values against depth, per 100 layers (``None`` under two depths)."""
    if len(by_depth) < 2:
        return None
    xs, ys = list(by_depth), list(by_depth.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mx) ** 2 for x in xs)
    if denominator == 0 or not all(math.isfinite(y) for y in ys):
        return None
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / denominator

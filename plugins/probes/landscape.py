"""One-step loss landscape at initialization (Bjorck et al. 2018, section 3.1, Figure 2).

For a mini-batch B and the network's parameters θ at initialization, the relative loss of a
step of size η along the mini-batch gradient is L_B(θ − η ∇L_B(θ)) / L_B(θ). With BN it stays
near or below 1 up to large steps; without BN it explodes (the paper: to 1e6 beyond ~1e-3).
RQ1 and RQ5: BN permits larger steps, and large steps make unnormalized networks diverge.

Divergence criterion: the paper's is absolute (a mini-batch loss above 10^3 counts as
diverged); a relative rule (loss grows 1000x) calls a BN step that multiplies the loss by ~190
"stable" and moves the BN ÷ no-BN ratio with the threshold. The analysis uses the absolute
rule by default and tabulates the ratio at several thresholds.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.func import functional_call

from bnbench import Options
from bnbench.analysis import bracket_ratio, bracketed, fmt, grid_bracket, group_runs, put
from bnbench.api import AnalysisResult, ClaimValue, Estimate, Figure, ProbeContext, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, loss_ratio, probe_runs, take_batches


class LandscapeOptions(Options):
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    batches: int = Field(4, gt=0, description="Mini-batches probe_runs, each with its own gradient and curve.")
    min_step: float = Field(1e-5, gt=0, description="Smallest step size of the log-spaced grid.")
    max_step: float = Field(10.0, gt=0, description="Largest step size of the log-spaced grid.")
    num_steps: int = Field(25, ge=2, description="Number of step sizes in the grid (log-spaced, ends included).")

    @model_validator(mode="after")
    def _ordered(self) -> LandscapeOptions:
        if self.max_step <= self.min_step:
            raise ValueError("max_step must be larger than min_step")
        return self


def step_grid(options: LandscapeOptions) -> torch.Tensor:
    """The log-spaced step sizes, ends included."""
    return torch.logspace(
        math.log10(options.min_step), math.log10(options.max_step), options.num_steps, dtype=torch.float64
    )


@torch.no_grad()
def relative_losses(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: torch.Tensor
) -> tuple[float, float, list[float]]:
    """``(loss, gradient norm, [L(θ − η g) / L(θ) for η in steps])`` on one mini-batch.

    The gradient is computed once; each step size costs one forward pass (no backward), the
    parameters evaluated functionally so the model keeps its initial weights.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    with torch.enable_grad():
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    ratios = []
    for eta in steps.tolist():
        moved = {name: p - eta * g for (name, p), g in zip(params.items(), grads, strict=True)}
        after = F.cross_entropy(functional_call(model, moved, (images,)), labels)
        ratios.append(loss_ratio(after, loss))
    return float(loss), norm, ratios


def loss_landscape(context: ProbeContext, options: LandscapeOptions) -> dict[str, Any]:
    """Relative loss of one SGD step against step size at initialization (Bjorck et al. Fig. 2).

    Measures, per mini-batch: the loss at initialization, the gradient norm, and the relative
    loss L(θ − ηg)/L(θ) on a log-spaced grid of step sizes η (the same mini-batch before and
    after; training mode, so BN uses the batch's statistics). A non-finite loss after the step
    is stored as infinity.
    """
    model = context.build_model()
    steps = step_grid(options)
    batches = []
    for images, labels in take_batches(context, options.batch_size, options.batches):
        loss, norm, ratios = relative_losses(model, images, labels, steps)
        batches.append({"loss": loss, "gradient_norm": norm, "relative_loss": ratios})
    return {"step_sizes": steps.tolist(), "batches": batches}


class LandscapeAnalysisOptions(CompareOptions):
    criterion: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute (the paper's): a step diverges when the mini-batch loss after it exceeds "
        "`threshold`; relative: when the loss after ÷ before exceeds it.",
    )
    threshold: float = Field(1e3, gt=0, description="The divergence limit (the paper's: a loss of 1e3).")
    sensitivity: list[float] = Field(
        default_factory=lambda: [10.0, 100.0, 1e3, 1e4, 1e6],
        description="Thresholds at which the report also shows the largest stable steps and their ratio, "
        "so a reader sees how much the finding depends on the limit.",
    )


def _exploded(value: float | None) -> float:
    """A relative loss with missing or NaN values read as infinite (the loss overflowed)."""
    return math.inf if value is None or math.isnan(value) else value


def largest_stable_step(steps: list[float], curve: list[float | None], threshold: float) -> float:
    """The largest step size of the grid up to which ``curve`` stays at or below ``threshold``
    (0 when even the smallest step exceeds it)."""
    stable = 0.0
    for eta, value in zip(steps, curve, strict=False):
        if value is None or not value <= threshold:
            break
        stable = eta
    return stable


def run_curve(run: RunRecord, criterion: str) -> list[float]:
    """A probe run's curve on the criterion's scale (loss after the step, or after ÷ before),
    the median over its mini-batches; an overflowed loss is infinite."""
    batches = run.measurements["batches"]
    scale = [b["loss"] if criterion == "absolute" else 1.0 for b in batches]
    steps = run.measurements["step_sizes"]
    return [
        statistics.median(_exploded(b["relative_loss"][i]) * k for b, k in zip(batches, scale, strict=True))
        for i in range(len(steps))
    ]


def _stable_steps(
    runs: list[RunRecord], criterion: str, threshold: float
) -> dict[int, tuple[float, tuple[float, float]]]:
    """Seed → the largest stable step of its run (0 when even the grid's smallest is unstable) and
    the bracket the grid allows for it (``bnbench.intervals.grid_bracket``)."""
    out = {}
    for run in runs:
        steps = run.measurements["step_sizes"]
        stable = largest_stable_step(steps, run_curve(run, criterion), threshold)
        out[run.seed] = (stable, grid_bracket(stable, steps, "largest_passing"))
    return out


def _step_ratio(normalized: dict, unnormalized: dict) -> Estimate | None:
    seeds = sorted(normalized.keys() & unnormalized.keys())
    return bracketed(
        [normalized[s][0] / unnormalized[s][0] if unnormalized[s][0] > 0 else math.inf for s in seeds],
        [bracket_ratio(normalized[s][1], unnormalized[s][1]) for s in seeds],
        unit="x",
    )


def landscape_analysis(study: StudyResults, options: LandscapeAnalysisOptions) -> AnalysisResult:
    """Largest stable step per configuration and loss against step size (Bjorck et al. Fig. 2).

    A step is stable when the mini-batch loss after it stays at or below ``threshold`` (the
    paper's absolute rule; ``criterion="relative"`` divides by the loss before). Per seed, the
    run's curve is the median over its mini-batches and its largest stable step the largest
    grid step up to which the curve stays stable (0 when none is), with the bracket the grid
    allows (between it and the next step; below the grid's first step when none is stable).
    Values (bracketed over seeds): ``max_stable_step.<group>``,
    ``stable_step_ratio`` (normalized ÷ unnormalized, paired by seed), and
    ``stable_step_ratio_at_<threshold>`` for each ``sensitivity`` threshold; point value
    ``relative_loss_at_max.<group>`` (median relative loss at the grid's largest step).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    unit = "loss after the step" if options.criterion == "absolute" else "loss after ÷ before"
    curves: dict[str, tuple[list[float], list[float], list[list[float]]]] = {}
    for label, runs in groups.items():
        steps = runs[0].measurements["step_sizes"]
        all_curves = [run_curve(r, options.criterion) for r in runs]
        med = [statistics.median(c[i] for c in all_curves) for i in range(len(steps))]
        curves[label] = (steps, med, all_curves)
    values: dict[str, ClaimValue] = {}
    decades = sorted({round(math.log10(s)) for _, (steps, _, _) in curves.items() for s in steps})
    rows = []
    for label, (steps, med, _) in curves.items():
        per_seed = _stable_steps(groups[label], options.criterion, options.threshold)
        put(
            values,
            f"max_stable_step.{label}",
            bracketed([v for v, _ in per_seed.values()], [b for _, b in per_seed.values()]),
        )
        relative = [run_curve(r, "relative")[-1] for r in groups[label]]
        put(values, f"relative_loss_at_max.{label}", statistics.median(relative))
        at = []
        for decade in decades:
            nearest = min(range(len(steps)), key=lambda i, d=decade: abs(math.log10(steps[i]) - d))
            at.append(fmt(med[nearest]) if abs(math.log10(steps[nearest]) - decade) < 0.2 else "")
        stable = largest_stable_step(steps, med, options.threshold)
        shown = fmt(stable)
        if stable == steps[-1]:
            shown = f"≥ {fmt(stable)} (grid end)"
        elif stable == 0:
            shown = f"< {fmt(steps[0])} (grid start)"
        rows.append([label, len(groups[label]), shown, *at])
    sensitivity_rows = []
    if options.normalized in groups and options.unnormalized in groups:
        for threshold in sorted({*options.sensitivity, options.threshold}):
            normalized = _stable_steps(groups[options.normalized], options.criterion, threshold)
            unnormalized = _stable_steps(groups[options.unnormalized], options.criterion, threshold)
            ratios = _step_ratio(normalized, unnormalized)
            if threshold == options.threshold:
                put(values, "stable_step_ratio", ratios)
            if threshold in options.sensitivity:
                put(values, f"stable_step_ratio_at_{threshold:g}", ratios)
            sensitivity_rows.append(
                [
                    f"{threshold:g}" + (" (default)" if threshold == options.threshold else ""),
                    fmt(statistics.median(v for v, _ in normalized.values())),
                    fmt(statistics.median(v for v, _ in unnormalized.values())),
                    fmt(None if ratios is None else ratios.value),
                ]
            )
    tables = [
        Table(
            f"One SGD step at initialization: {unit} (median over mini-batches and seeds; "
            f"stable: ≤ {options.threshold:g}, the {options.criterion} rule)",
            ["configuration", "seeds", "largest stable step", *(f"η=1e{d}" for d in decades)],
            rows,
        )
    ]
    if sensitivity_rows:
        tables.append(
            Table(
                f"How the largest stable step depends on the divergence threshold ({options.criterion} rule)",
                [
                    "threshold",
                    f"{options.normalized}: stable step (median)",
                    f"{options.unnormalized}: stable step (median)",
                    "ratio (geometric mean over seeds)",
                ],
                sensitivity_rows,
            )
        )

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for label, (steps, med, all_curves) in curves.items():
            finite = [[v if math.isfinite(v) else math.nan for v in c] for c in all_curves]
            low = [min((c[i] for c in finite if not math.isnan(c[i])), default=math.nan) for i in range(len(steps))]
            high = [max((c[i] for c in finite if not math.isnan(c[i])), default=math.nan) for i in range(len(steps))]
            line = ax.plot(steps, [m if math.isfinite(m) else math.nan for m in med], marker=".", label=label)
            ax.fill_between(steps, low, high, color=line[0].get_color(), alpha=0.15)
        ax.axhline(
            options.threshold, color="k", linestyle="--", linewidth=0.8, label=f"threshold {options.threshold:g}"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step size η")
        ax.set_ylabel("loss after the step" if options.criterion == "absolute" else "L(θ − η∇L) / L(θ)")
        ax.set_title("One SGD step at initialization (median over seeds, min–max band)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()

    return AnalysisResult(tables, [Figure("relative_loss_vs_step", draw)], values)

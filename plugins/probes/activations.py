"""Activation statistics against depth (Bjorck et al. 2018, section 3.2, Figures 4 and 5).

Without BN, the channel means and variances of a deep residual network grow exponentially
with depth at initialization, and a large gradient step makes them explode (a diverging
update); with BN they stay bounded. RQ2 and RQ5.

"Depth" is the index of a model's normalization site (``bnbench.find_sites``): the probe
hooks every hidden ``NormSite``. By default it measures the site's *input*, the layer output
before the normalizer (the paper plots the convolution outputs): after a normalizer the
statistics are flat by construction, and a claim that they stay flat could not fail.
``where="output"`` measures what leaves the site instead.

The analysis reports per group, as Estimates over seeds (one run is one seed, log scale):
``std_growth``, ``mean_growth`` (last ÷ first site at initialization), ``std_growth_after_step``,
``max_std_after_step`` and ``loss_ratio_after_step`` (the one large step, the paper's
"diverging update"), and ``std_growth_ratio`` (no BN ÷ BN, paired by seed); its figure draws
the per-site mean and std curves at initialization and after the step.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bnbench import Options, find_sites
from bnbench.analysis import (
    by_seed,
    finite_or_nan,
    fmt,
    geomean_or_inf,
    group_runs,
    mean_curve,
    over_seeds,
    paired_ratio,
    put,
)
from bnbench.api import AnalysisResult, Estimate, Figure, ProbeContext, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, panel_grid, probe_runs, take_batches


class ActivationOptions(Options):
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    where: Literal["input", "output"] = Field(
        "input",
        description="input: what enters each site, the layer output before the normalizer (the paper's); "
        "output: what leaves it (after the normalizer, what the next layer sees; flat with BN by construction).",
    )
    step_size: float = Field(
        0.1, ge=0, description="Learning rate of the one large SGD step measured after initialization (0: none)."
    )
    include_output_site: bool = Field(False, description="Also measure the site on the logits (role output).")


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of ``(N, C, ...)`` activations."""
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x.detach().float(), dim=dims, unbiased=False)
    return mean, var


def _overflow(x: torch.Tensor) -> torch.Tensor:
    """Non-finite statistics (inf, or NaN from inf − inf) come from an overflow: report them as inf."""
    return torch.where(torch.isfinite(x), x, torch.full_like(x, math.inf))


def _summary(means: list[torch.Tensor], variances: list[torch.Tensor]) -> dict[str, Any]:
    return {
        "channel_mean": [m.tolist() for m in means],
        "channel_var": [_overflow(v).tolist() for v in variances],
        "layer_abs_mean": [float(_overflow(m.abs()).mean()) for m in means],
        "layer_std": [float(_overflow(v).mean().sqrt()) for v in variances],
    }


def activation_stats(context: ProbeContext, options: ActivationOptions) -> dict[str, Any]:
    """Channel means and variances per layer at initialization and after a large step (Bjorck Figs. 4–5).

    For every hidden normalization site, in order of depth, at its input (the layer output
    before the normalizer) or output (``options.where``): each channel's mean and variance over
    the batch (and positions), and per layer the mean absolute channel mean and the root mean
    channel variance (``layer_std``). Measured on one mini-batch in training mode, then
    again on the same mini-batch after one plain SGD step of ``step_size`` along its gradient.
    """
    model = context.build_model()
    sites = [(info, site) for info, site in find_sites(model) if options.include_output_site or info.role == "hidden"]
    if not sites:
        raise ValueError("the model has no hidden normalization sites to measure")
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append(channel_stats(output if options.where == "output" else inputs[0]))

    handles = [site.register_forward_hook(hook) for _, site in sites]
    ((images, labels),) = take_batches(context, options.batch_size, 1)
    try:
        loss = F.cross_entropy(model(images), labels)
        phases = {"init": _summary(*zip(*captured, strict=True))}
        measured: dict[str, Any] = {
            "sites": [info.name for info, _ in sites],
            "where": options.where,
            "loss_init": float(loss.detach()),
        }
        if options.step_size > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(options.step_size * g)
                captured.clear()
                after = F.cross_entropy(model(images), labels)
            phases["after_step"] = _summary(*zip(*captured, strict=True))
            measured["loss_after_step"] = float(after) if math.isfinite(float(after)) else math.inf
    finally:
        for handle in handles:
            handle.remove()
    measured["phases"] = phases
    return measured


def _growth(curve: list[float]) -> float | None:
    """Last site's value ÷ first site's: ``None`` when the first is not finite and positive, +inf
    when the last overflowed."""
    if not curve or not (math.isfinite(curve[0]) and curve[0] > 0) or math.isnan(curve[-1]):
        return None
    return curve[-1] / curve[0]


def _phase(run: RunRecord, phase: str) -> dict[str, list[float]] | None:
    return run.measurements["phases"].get(phase)


def _seed_values(run: RunRecord) -> dict[str, float | None]:
    """The run's (one seed's) claimable statistics."""
    init, after = _phase(run, "init"), _phase(run, "after_step")
    after_std = [v for v in (after or {}).get("layer_std", []) if not math.isnan(v)]
    m = run.measurements
    loss_ratio = None
    if m.get("loss_after_step") is not None and m["loss_init"]:
        loss_ratio = m["loss_after_step"] / m["loss_init"]
    return {
        "std_growth": _growth(init["layer_std"]) if init else None,
        "mean_growth": _growth(init["layer_abs_mean"]) if init else None,
        "std_growth_after_step": _growth(after["layer_std"]) if after else None,
        "max_std_after_step": max(after_std) if after_std else None,
        "loss_ratio_after_step": loss_ratio,
    }


CLAIMABLE = ("std_growth", "mean_growth", "std_growth_after_step", "max_std_after_step", "loss_ratio_after_step")


def activation_depth(study: StudyResults, options: CompareOptions) -> AnalysisResult:
    """Activation mean and std against depth at initialization and after a large step (Figs. 4–5).

    Curves are geometric means over seeds, drawn at initialization and after the step. Values,
    per group, Estimates over seeds (log scale; an overflow is +inf): ``std_growth.<group>``
    (last site's std ÷ first site's at initialization), ``mean_growth.<group>`` (same for the
    mean absolute channel mean), ``std_growth_after_step.<group>`` (the same growth after the
    large step), ``max_std_after_step.<group>`` (largest site std after the step),
    ``loss_ratio_after_step.<group>`` (loss after ÷ before the step); and ``std_growth_ratio``
    (unnormalized ÷ normalized growth, paired by seed).
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    values: dict[str, float | Estimate] = {}
    growth: dict[str, dict[int, float]] = {}
    rows = []
    for label, runs in groups.items():
        per_phase: dict[str, dict[str, list[float]]] = {}
        for phase in ("init", "after_step"):
            present = [p for p in (_phase(r, phase) for r in runs) if p is not None]
            if present:
                per_phase[phase] = {
                    key: mean_curve([p[key] for p in present], geomean_or_inf)
                    for key in ("layer_std", "layer_abs_mean")
                }
        curves[label] = per_phase
        seeds = by_seed((r.seed, _seed_values(r)) for r in runs)
        growth[label] = seeds.get("std_growth", {})
        estimates = {name: over_seeds(seeds.get(name, {}).values(), scale="log") for name in CLAIMABLE}
        for name, estimate in estimates.items():
            put(values, f"{name}.{label}", estimate)
        init, after = per_phase["init"], per_phase.get("after_step")
        shown = {name: None if e is None else e.value for name, e in estimates.items()}
        rows.append(
            [
                label,
                "/".join(sorted({r.measurements.get("where", "output") for r in runs})),
                len(init["layer_std"]),
                fmt(init["layer_std"][0]),
                fmt(init["layer_std"][-1]),
                fmt(shown["std_growth"]),
                fmt(max(init["layer_abs_mean"], default=None)),
                fmt(after["layer_std"][-1]) if after else "—",
                fmt(shown["std_growth_after_step"]),
                fmt(shown["loss_ratio_after_step"]),
            ]
        )
    if options.unnormalized in growth and options.normalized in growth:
        put(values, "std_growth_ratio", paired_ratio(growth[options.unnormalized], growth[options.normalized]))
    table = Table(
        "Activations against depth (site std = root mean channel variance; geometric mean over seeds)",
        [
            "configuration",
            "measured at site",
            "sites",
            "first site std",
            "last site std",
            "growth (last/first)",
            "max site mean |channel mean|",
            "last site std after step",
            "growth after step",
            "loss after/before step",
        ],
        rows,
    )
    figures = [
        Figure("activation_stats_vs_depth", lambda fig: _draw_depth(fig, curves)),
        Figure("channel_variance", lambda fig: _draw_channels(fig, groups)),
    ]
    return AnalysisResult([table], figures, values)


def _draw_depth(fig: Any, curves: dict[str, dict[str, dict[str, list[float]]]]) -> None:
    mean_ax, std_ax = panel_grid(fig, 2, columns=2)
    for label, per_phase in curves.items():
        color = None
        for phase, style in (("init", "-"), ("after_step", "--")):
            if phase not in per_phase:
                continue
            for ax, key in ((mean_ax, "layer_abs_mean"), (std_ax, "layer_std")):
                ys = finite_or_nan(per_phase[phase][key])
                line = ax.plot(range(len(ys)), ys, style, color=color, label=f"{label} ({phase.replace('_', ' ')})")
                color = line[0].get_color()
    for ax, what in ((mean_ax, "mean |channel mean|"), (std_ax, "std (root mean channel variance)")):
        ax.set_yscale("log")
        ax.set_xlabel("depth (normalization site index)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    mean_ax.set_title("Activation mean against depth")
    std_ax.set_title("Activation std against depth")
    std_ax.legend(fontsize="small")


def _draw_channels(fig: Any, groups: dict[str, list[Any]]) -> None:
    import numpy as np

    panels = []
    for label, runs in groups.items():
        phases = runs[0].measurements["phases"]
        for phase in ("init", "after_step"):
            if phase in phases:
                panels.append((f"{label}, {phase.replace('_', ' ')}", phases[phase]["channel_var"]))
    images = []
    for _, variances in panels:
        width = max(len(v) for v in variances)
        image = np.full((len(variances), width), np.nan)
        for i, layer in enumerate(variances):
            row = np.array([v if v is not None else np.nan for v in layer], dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                image[i, : len(row)] = np.log10(row)
        image[~np.isfinite(image)] = np.nan
        images.append(image)
    finite = np.concatenate([i[np.isfinite(i)] for i in images]) if images else np.array([])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    axes = panel_grid(fig, len(panels), columns=2)
    for ax, (title, _), image in zip(axes, panels, images, strict=True):
        shown = ax.imshow(
            image.T, aspect="auto", origin="lower", interpolation="nearest", cmap="magma", vmin=low, vmax=high
        )
        fig.colorbar(shown, ax=ax, label="log10 channel variance")
        ax.set_xlabel("depth (normalization site index)")
        ax.set_ylabel("channel")
        ax.set_title(title)

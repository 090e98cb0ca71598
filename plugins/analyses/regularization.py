"""Analyses of the regularization study: implied regularization against input noise, BN against
tuned L2, and weight-norm trajectories (Annamalai & Thakur 2022; the reading in STUDIES.md).

Runs are grouped by *configuration*: the values of the study's axes other than the seed and
the axis an analysis puts on its x-axis, written ``short_axis=value`` joined by ``,`` (e.g.
``placement=all,weight_decay=0.0``). A run's value of a metric is its last recorded one; numbers
in tables are means over seeds (± std). Diverged runs count as accuracy 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from pydantic import Field

from harness import Options
from harness.api import AnalysisResult, Figure, RunRecord, StudyResults, Table
from plugins.probes.common import axis_value, mean
from plugins.probes.common import clean as finite

NOISE_AXIS = "input_transform.std"


# -- shared helpers -----------------------------------------------------------------------------
def noise_level(run: RunRecord, axis: str) -> float:
    """The run's input-noise level (0 when the run has no transform)."""
    value = axis_value(run, axis)
    return float(value) if value is not None else 0.0


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
    return str(a) == str(b)


def selected(runs: Iterable[RunRecord], select: Mapping[str, Any]) -> list[RunRecord]:
    """The finished runs whose value of every ``select`` axis is the given value (or one of a list)."""
    out = []
    for run in runs:
        if run.status not in ("done", "diverged") or not run.epochs:
            continue
        keep = True
        for axis, wanted in select.items():
            value = axis_value(run, axis)
            options = wanted if isinstance(wanted, list) else [wanted]
            keep = keep and any(_same(value, w) for w in options)
        if keep:
            out.append(run)
    return out


def _short(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def config_label(run: RunRecord, exclude: Collection[str] = ()) -> str:
    """``short_axis=value`` of the run's axes except ``exclude`` and the seed, joined by ``,``."""
    parts = [f"{_short(axis)}={value}" for axis, value in run.axes.items() if axis not in exclude and axis != "seed"]
    return ",".join(parts) or "runs"


def grouped(runs: Iterable[RunRecord], key: Callable[[RunRecord], Any]) -> dict[Any, list[RunRecord]]:
    """Runs by ``key(run)``, in the order keys first appear."""
    groups: dict[Any, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    numbers = finite(values)
    if not numbers:
        return None, None
    return statistics.fmean(numbers), statistics.stdev(numbers) if len(numbers) > 1 else 0.0


def fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if value is None else f"{value * scale:.{digits}g}"


def pm(values: Iterable[float | None], scale: float = 1.0, digits: int = 3, fixed: bool = False) -> str:
    """``mean ± std`` of the finite values (``—`` when none)."""
    m, s = mean_std(values)
    if m is None:
        return "—"
    spec = f".{digits}{'f' if fixed else 'g'}"
    return f"{m * scale:{spec}} ± {(s or 0.0) * scale:{spec}}"


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman rank correlation; ``None`` with fewer than two points or a constant side."""
    if len(xs) < 2 or len(xs) != len(ys):
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((r - mx) ** 2 for r in rx))
    sy = math.sqrt(sum((r - my) ** 2 for r in ry))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)


def score(run: RunRecord, metric: str) -> float | None:
    """The run's final ``metric``; a diverged run scores 0."""
    return 0.0 if run.status == "diverged" else run.final(metric)


def put(values: dict[str, float], name: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        values[name] = float(value)


def _noise_key(level: float) -> str:
    return f"{level:g}"


class SelectOptions(Options):
    select: dict[str, Any] = Field(
        default_factory=dict,
        description="Only runs whose axis (dotted path) has the given value or one of a list, "
        'e.g. { "optimizer.weight_decay" = 0.0 }.',
    )
    noise_axis: str = Field(NOISE_AXIS, description="The axis holding the input-noise level.")


# -- implied regularization against noise -------------------------------------------------------
class ImpliedRegularizationOptions(SelectOptions):
    layers: list[int] = Field(default_factory=lambda: [0], description="Hidden layers shown (0: the first).")
    trend_excludes_zero: bool = Field(
        True, description="Trends over positive noise levels only (at 0 the ridge rate is 0 by definition)."
    )
    metric: str = Field("implied_regularization", description="The metric recording λ̂, ridge, SNR, bound.")
    geometry_metric: str = Field("weight_geometry", description="The metric recording ‖v‖ and ‖w‖.")


QUANTITIES = (
    ("λ̂ median", "{m}.layer{k}.lambda.median"),
    ("ridge rate ρ median", "{m}.layer{k}.ridge.median"),
    ("SNR median", "{m}.layer{k}.snr.median"),
    ("bound ‖v‖²σ²/γ² q90", "{m}.layer{k}.bound.q90"),
    ("units within bound", "{m}.layer{k}.bound.within"),
    ("‖v‖ median", "{g}.layer{k}.v_norm.median"),
    ("‖w‖ median", "{g}.layer{k}.w_norm.median"),
)


def implied_regularization_analysis(study: StudyResults, options: ImpliedRegularizationOptions) -> AnalysisResult:
    """BN's implied multiplier λ̂ and ridge rate against input noise (Annamalai & Thakur 2022; STUDIES.md).

    One table per study, columns the noise levels, rows per BN configuration and layer:
    λ̂ (median over units), the ridge rate ρ = λ̂·vᵀΣ_e v/‖v‖², SNR, the bound's tightness,
    ‖v‖ and ‖w‖ (means over seeds of final values). Values, for each configuration ``c``
    (and without the suffix when there is one configuration), for the first listed layer:
    ``ridge_trend.c`` and ``lambda_trend.c`` (Spearman correlation of noise level with the
    seed-mean ρ and λ̂), ``ridge_rate.c.<noise>``, ``lambda.c.<noise>``, ``ridge_rate_min.c``
    (the smallest seed-mean ρ over positive noise levels: > 0 when BN acts as a ridge
    regularizer at every level), and ``bound_within_min.c`` (the smallest share of units inside
    ‖v‖²σ_n² ≤ γ² over noisy runs). Every value also for each listed layer ``k``, as
    ``<name>.c.layer<k>`` (``<name>.layer<k>`` with one configuration).
    """
    runs = [
        r
        for r in selected(study.runs, options.select)
        if any(k.startswith(f"{options.metric}.") and k.endswith(".lambda.median") for k in _last(r))
    ]
    configs = grouped(runs, lambda r: config_label(r, {options.noise_axis}))
    levels = sorted({noise_level(r, options.noise_axis) for r in runs})
    rows: list[list[Any]] = []
    values: dict[str, float] = {}
    curves: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    single = len(configs) == 1
    for label, members in configs.items():
        by_level = grouped(members, lambda r: noise_level(r, options.noise_axis))
        for k in options.layers:
            for name, template in QUANTITIES:
                key = template.format(m=options.metric, g=options.geometry_metric, k=k)
                cells = [pm(r.final(key) for r in by_level.get(level, [])) for level in levels]
                if all(c == "—" for c in cells):
                    continue
                rows.append([label, f"layer {k}", name, *cells])
                points = [
                    (level, *mean_std(r.final(key) for r in by_level[level])) for level in levels if level in by_level
                ]
                curves.setdefault(f"{label} layer {k}", {})[name] = [
                    (x, m, s or 0.0) for x, m, s in points if m is not None
                ]
        for position, k in enumerate(options.layers):
            # the first listed layer's values also without the layer suffix; one configuration's also without its label
            bases = [f".{label}", ""] if single else [f".{label}"]
            suffixes = [f"{b}.layer{k}" for b in bases] + (bases if position == 0 else [])
            _trend_values(values, members, levels, k, suffixes, options)
    tables = [
        Table(
            "Implied regularization against input noise (BN runs; mean ± std over seeds, final epoch)",
            ["configuration", "layer", "quantity", *(f"σ_n={level:g}" for level in levels)],
            rows,
        )
    ]
    figures = [Figure("noise_sweep", lambda fig: _draw_noise_sweep(fig, curves))] if curves else []
    return AnalysisResult(tables, figures, values)


def _trend_values(
    values: dict[str, float],
    members: list[RunRecord],
    levels: list[float],
    k: int,
    suffixes: list[str],
    options: ImpliedRegularizationOptions,
) -> None:
    """The claimable values of one configuration's layer ``k`` (``implied_regularization_analysis``)."""
    by_level = grouped(members, lambda r: noise_level(r, options.noise_axis))
    for short, trend, quantity in (("ridge_rate", "ridge_trend", "ridge"), ("lambda", "lambda_trend", "lambda")):
        key = f"{options.metric}.layer{k}.{quantity}.median"
        xs, ys = [], []
        for level in levels:
            m = mean(r.final(key) for r in by_level.get(level, []))
            if m is not None and (level > 0 or not options.trend_excludes_zero):
                xs.append(level)
                ys.append(m)
            for suffix in suffixes:
                put(values, f"{short}{suffix}.{_noise_key(level)}", m)
        for suffix in suffixes:
            put(values, f"{trend}{suffix}", spearman(xs, ys))
            if quantity == "ridge":
                put(
                    values,
                    f"ridge_rate_min{suffix}",
                    min((y for x, y in zip(xs, ys, strict=True) if x > 0), default=None),
                )
    noisy = [
        r.final(f"{options.metric}.layer{k}.bound.within") for r in members if noise_level(r, options.noise_axis) > 0
    ]
    for suffix in suffixes:
        put(values, f"bound_within_min{suffix}", min(finite(noisy)) if finite(noisy) else None)


def _last(run: RunRecord) -> dict[str, float]:
    """The metrics of the run's last recorded epochs, latest value per key."""
    merged: dict[str, float] = {}
    for _, _, metrics in run.epochs:
        merged.update({k: v for k, v in metrics.items() if v is not None})
    return merged


def _draw_noise_sweep(fig: Any, curves: dict[str, dict[str, list[tuple[float, float, float]]]]) -> None:
    panels = ("λ̂ median", "ridge rate ρ median", "SNR median", "bound ‖v‖²σ²/γ² q90")
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(len(panels))]
    for ax, panel in zip(axes, panels, strict=True):
        for label, quantities in curves.items():
            points = quantities.get(panel, [])
            if points:
                xs, ms, ss = zip(*points, strict=True)
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("input noise σ_n", fontsize=8)
        ax.grid(True, alpha=0.3)
        if panel == "SNR median":
            ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Implied regularization against input noise")
    fig.tight_layout()


# -- BN against tuned L2 ------------------------------------------------------------------------
class TunedL2Options(Options):
    noise_axis: str = Field(NOISE_AXIS, description="The axis holding the input-noise level.")
    placement_axis: str = Field("placement", description="The axis telling BN runs from unnormalized ones.")
    normalized: str = Field("all", description="Placement value of the BN network.")
    unnormalized: str = Field("none", description="Placement value of the unnormalized network.")
    decay_axis: str = Field("optimizer.weight_decay", description="The L2 weight-decay axis tuned.")
    untuned_decay: float = Field(0.0, ge=0, description="Weight decay of the untuned BN and no-BN networks.")
    selection_metric: str = Field(
        "validation_accuracy", description="Chooses the weight decay (mean over seeds); never a test metric."
    )
    metric: str = Field("test_accuracy", description="Reported accuracy (inputs transformed like training).")
    clean_metric: str = Field("robustness.clean_test_accuracy", description="Reported clean-input accuracy.")


def tune(
    runs: Iterable[RunRecord], decay_axis: str, selection_metric: str
) -> tuple[float, float, list[RunRecord]] | None:
    """``(weight decay, mean selection score, its runs)`` of the decay whose mean ``selection_metric``
    (validation accuracy) is best; ties go to the smaller decay. Reads no other metric.

    A finished run without the selection metric is an error: tuning never falls back to test data.
    """
    by_decay = grouped(runs, lambda r: float(axis_value(r, decay_axis) or 0.0))
    scored = []
    for decay, members in by_decay.items():
        scores = [score(r, selection_metric) for r in members]
        if any(s is None for s in scores):
            raise ValueError(
                f"tuning needs {selection_metric!r} for every run (weight decay {decay:g} lacks it): "
                "set validation_size in the study and record the metric"
            )
        scored.append((statistics.fmean(float(s) for s in scores if s is not None), -decay, decay, members))
    if not scored:
        return None
    best = max(scored, key=lambda item: (item[0], item[1]))
    return best[2], best[0], best[3]


def tuned_l2_comparison(study: StudyResults, options: TunedL2Options) -> AnalysisResult:
    """Accuracy under input noise: BN, no BN, and no BN with L2 tuned on the validation split (Annamalai & Thakur 2022).

    For each noise level: the BN network and the unnormalized one at ``untuned_decay``, and
    the unnormalized network at the weight decay whose mean validation accuracy is best
    (its test accuracy reported; the test set plays no part in the choice); also BN with its
    own tuned decay, and clean-input accuracies when ``robustness`` is recorded. Values (in
    percentage points): ``gap_points.<noise>`` = tuned L2 − BN, ``max_gap_points`` (the worst
    level: "BN is within X points of the best-tuned L2 at every noise level" is
    ``max_gap_points <= X``), ``mean_gap_points``, ``bn_gain_points.<noise>`` = BN − no BN,
    ``min_bn_gain_points``, and ``tuned_decay.<noise>``.
    """
    runs = [r for r in study.runs if r.status in ("done", "diverged") and r.epochs]
    levels = sorted({noise_level(r, options.noise_axis) for r in runs})

    def members(level: float, placement: str) -> list[RunRecord]:
        return [
            r
            for r in runs
            if noise_level(r, options.noise_axis) == level and str(axis_value(r, options.placement_axis)) == placement
        ]

    def untuned(group: list[RunRecord]) -> list[RunRecord]:
        return [r for r in group if _same(float(axis_value(r, options.decay_axis) or 0.0), options.untuned_decay)]

    rows: list[list[Any]] = []
    values: dict[str, float] = {}
    curves: dict[str, list[tuple[float, float, float]]] = {}
    gaps, gains = [], []
    for level in levels:
        bn_runs, none_runs = members(level, options.normalized), members(level, options.unnormalized)
        bn, none = untuned(bn_runs), untuned(none_runs)
        l2 = tune(none_runs, options.decay_axis, options.selection_metric) if none_runs else None
        bn_l2 = tune(bn_runs, options.decay_axis, options.selection_metric) if bn_runs else None
        acc = {
            "BN": mean(score(r, options.metric) for r in bn),
            "no BN": mean(score(r, options.metric) for r in none),
            "no BN + tuned L2": mean(score(r, options.metric) for r in l2[2]) if l2 else None,
            "BN + tuned L2": mean(score(r, options.metric) for r in bn_l2[2]) if bn_l2 else None,
        }
        for name, group in (
            ("BN", bn),
            ("no BN", none),
            ("no BN + tuned L2", l2[2] if l2 else []),
            ("BN + tuned L2", bn_l2[2] if bn_l2 else []),
        ):
            m, s = mean_std(score(r, options.metric) for r in group)
            if m is not None:
                curves.setdefault(name, []).append((level, 100 * m, 100 * (s or 0.0)))
            m = mean(r.final(options.clean_metric) for r in group)
            if m is not None and name in ("BN", "no BN + tuned L2"):
                curves.setdefault(f"{name} (clean inputs)", []).append((level, 100 * m, 0.0))
        gap = None if acc["BN"] is None or acc["no BN + tuned L2"] is None else acc["no BN + tuned L2"] - acc["BN"]
        gain = None if acc["BN"] is None or acc["no BN"] is None else acc["BN"] - acc["no BN"]
        key = _noise_key(level)
        put(values, f"gap_points.{key}", None if gap is None else 100 * gap)
        put(values, f"bn_gain_points.{key}", None if gain is None else 100 * gain)
        put(values, f"tuned_decay.{key}", l2[0] if l2 else None)
        if gap is not None:
            gaps.append(100 * gap)
        if gain is not None:
            gains.append(100 * gain)
        rows.append(
            [
                f"{level:g}",
                pm((score(r, options.metric) for r in bn), 100, 2, fixed=True),
                pm((score(r, options.metric) for r in none), 100, 2, fixed=True),
                "—" if l2 is None else f"{l2[0]:g} ({100 * l2[1]:.2f})",
                "—" if l2 is None else pm((score(r, options.metric) for r in l2[2]), 100, 2, fixed=True),
                "—" if gap is None else f"{-100 * gap:+.2f}",
                "—"
                if bn_l2 is None
                else f"{bn_l2[0]:g}: " + pm((score(r, options.metric) for r in bn_l2[2]), 100, 2, True),
                pm((r.final(options.clean_metric) for r in bn), 100, 2, fixed=True),
                "—" if l2 is None else pm((r.final(options.clean_metric) for r in l2[2]), 100, 2, fixed=True),
            ]
        )
    if gaps:
        values["max_gap_points"] = max(gaps)
        values["mean_gap_points"] = statistics.fmean(gaps)
    if gains:
        values["min_bn_gain_points"] = min(gains)
    metric = options.metric.replace("_", " ")
    tables = [
        Table(
            f"Accuracy under input noise: BN vs no BN vs no BN + L2 tuned on {options.selection_metric} "
            f"({metric} %, mean ± std over seeds)",
            [
                "σ_n",
                "BN",
                "no BN",
                "tuned wd (val %)",
                "no BN + tuned L2",
                "BN − tuned L2 (points)",
                "BN + tuned L2 (wd: acc)",
                "BN clean",
                "tuned L2 clean",
            ],
            rows,
        )
    ]
    figures = [Figure("noise_accuracy", lambda fig: _draw_accuracy(fig, curves, metric))] if curves else []
    return AnalysisResult(tables, figures, values)


def _draw_accuracy(fig: Any, curves: dict[str, list[tuple[float, float, float]]], metric: str) -> None:
    ax = fig.add_subplot()
    for name, points in curves.items():
        xs, ms, ss = zip(*points, strict=True)
        style = "--" if "clean" in name else "-"
        ax.errorbar(xs, ms, yerr=ss, marker="o", linestyle=style, capsize=3, label=name)
    ax.set_xlabel("input noise σ_n")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("Accuracy under input noise (L2 tuned on the validation split)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


# -- trajectories -------------------------------------------------------------------------------
class TrajectoryOptions(SelectOptions):
    layer: int = Field(0, ge=0, description="Hidden layer whose norms are followed (0: the first).")
    geometry_metric: str = Field("weight_geometry", description="The metric recording ‖w‖, ‖γ‖, ‖v‖.")
    trend_axis: str = Field("batch_size", description="Axis against which the final ‖γ‖ and ‖w‖ are correlated.")


def _curve(runs: list[RunRecord], key: str) -> list[tuple[int, float]]:
    """Seed-mean of ``key`` per epoch, over the epochs where it was recorded."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, _, metrics in run.epochs:
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    return [(epoch, statistics.fmean(v)) for epoch, v in sorted(by_epoch.items())]


def trajectories(study: StudyResults, options: TrajectoryOptions) -> AnalysisResult:
    """Raw weight norms ‖w‖ and ‖γ‖ over training, against batch size (Annamalai & Thakur 2022; STUDIES.md).

    A row per configuration: median ‖w_j‖, ‖γ‖ and median ‖v_j‖ of the chosen layer at the
    first and last recorded epoch (seed means), and η/‖w‖² at the end. Values:
    ``gamma_ratio.<c>`` and ``w_ratio.<c>`` (last / first), ``gamma_final.<c>``, and
    ``gamma_trend`` / ``w_trend`` (Spearman correlation of ``trend_axis`` with the final
    ‖γ‖ / ‖w‖, averaged over the other configurations; also ``.<c>`` per configuration).
    """
    g, k = options.geometry_metric, options.layer
    keys = {
        "w": f"{g}.layer{k}.w_norm.median",
        "gamma": f"{g}.layer{k}.gamma_norm",
        "v": f"{g}.layer{k}.v_norm.median",
        "eff_lr": f"{g}.layer{k}.eff_lr.median",
    }
    runs = selected(study.runs, options.select)
    groups = grouped(runs, config_label)
    rows: list[list[Any]] = []
    values: dict[str, float] = {}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    finals: dict[str, dict[str, float | None]] = {}
    for label, members in groups.items():
        series = {name: _curve(members, key) for name, key in keys.items()}
        curves[label] = series
        if not series["w"]:
            continue
        first = {n: (s[0][1] if s else None) for n, s in series.items()}
        last = {n: (s[-1][1] if s else None) for n, s in series.items()}
        finals[label] = last
        gamma_ratio = last["gamma"] / first["gamma"] if first["gamma"] and last["gamma"] is not None else None
        w_ratio = last["w"] / first["w"] if first["w"] and last["w"] is not None else None
        rows.append(
            [
                label,
                f"{fmt(first['w'])} → {fmt(last['w'])}",
                "—" if first["gamma"] is None else f"{fmt(first['gamma'])} → {fmt(last['gamma'])}",
                fmt(gamma_ratio),
                "—" if first["v"] is None else f"{fmt(first['v'])} → {fmt(last['v'])}",
                fmt(last["eff_lr"]),
            ]
        )
        put(values, f"gamma_ratio.{label}", gamma_ratio)
        put(values, f"w_ratio.{label}", w_ratio)
        put(values, f"gamma_final.{label}", last["gamma"])
    if options.trend_axis in study.axes:
        for name in ("gamma", "w"):
            trends = []
            others = grouped(
                (r for r in runs if config_label(r) in finals), lambda r: config_label(r, {options.trend_axis})
            )
            for other, members in others.items():
                points = {float(axis_value(r, options.trend_axis)): finals[config_label(r)][name] for r in members}
                xs = [x for x, y in sorted(points.items()) if y is not None]
                ys = [y for _, y in sorted(points.items()) if y is not None]
                trend = spearman(xs, ys)
                put(values, f"{name}_trend.{other}", trend)
                if trend is not None:
                    trends.append(trend)
            put(values, f"{name}_trend", statistics.fmean(trends) if trends else None)
    tables = [
        Table(
            f"Weight-norm trajectories, layer {k} (first → last recorded epoch, seed means)",
            ["configuration", "median ‖w‖", "‖γ‖", "‖γ‖ last/first", "median ‖v‖", "η/‖w‖² (last)"],
            rows,
        )
    ]
    figures = [Figure("weight_trajectories", lambda fig: _draw_trajectories(fig, curves, k))] if rows else []
    return AnalysisResult(tables, figures, values)


def _draw_trajectories(fig: Any, curves: dict[str, dict[str, list[tuple[int, float]]]], layer: int) -> None:
    panels = (("w", "median ‖w_j‖"), ("gamma", "‖γ‖"), ("v", "median ‖v_j‖ (folded)"), ("eff_lr", "median η/‖w_j‖²"))
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(len(panels))]
    for ax, (name, title) in zip(axes, panels, strict=True):
        for label, series in curves.items():
            points = series.get(name, [])
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=".", label=label)
        ax.set_title(f"{title}, layer {layer}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=5)
    fig.tight_layout()

"""Analyses of the regularization study: implied regularization against input noise, BN against
tuned L2, and weight-norm trajectories (Annamalai & Thakur 2022; our reading in docs/studies.md).

Runs are grouped by *configuration*: the values of the study's axes other than the seed and
the axis an analysis puts on its x-axis, written ``short_axis=value`` joined by ``,`` (e.g.
``placement=all,weight_decay=0.0``). A run's value of a metric is its last recorded one; numbers
in tables are means over seeds (± std). Diverged runs count as accuracy 0 and training loss +inf.

Claimable values are ``bnbench.api.Estimate``s built from one replicate per seed
(``bnbench.analysis.over_seeds``): a per-seed quantity is computed within each seed first (a
seed's own tuned weight decay, its own trend over noise levels, its own worst level) and the
estimate summarizes those replicates, so the report's interval reflects seed-to-seed variation.

What the paper's claim (BN tunes its regularization to the data and the input noise) can be
tested by is the ``tuned_l2_comparison``: the weight decay κ* explicit L2 needs at each noise
level (``kappa_trend``) and whether untuned BN stays close to L2 tuned that way
(``bn_minus_tuned_l2_min`` / ``_max``). The ``implied_regularization`` values are diagnostics
(docs/studies.md says why).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pydantic import Field

from bnbench import Options
from bnbench.analysis import (
    average,
    axis_value,
    config_label,
    finite,
    fmt,
    grouped,
    interval,
    mean,
    mean_std,
    over_seeds,
    pm,
    point,
    put,
    rank_trend,
    runs_by_seed,
    share,
    spearman,
)
from bnbench.api import AnalysisResult, ClaimValue, Estimate, Figure, RunRecord, StudyResults, Table

NOISE_AXIS = "input_transform.std"
MIN_LEVELS = 3
"""A rank trend over fewer levels can only be ±1 (or 0): it is reported but undecidable."""


LR_AXIS = "optimizer.lr"


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


def seed_trends(
    series: Mapping[int, Sequence[tuple[float, float]]], min_levels: int = MIN_LEVELS
) -> tuple[dict[int, float], str]:
    """Per seed, the Spearman correlation of its ``(x, y)`` points, and why they cannot decide a claim.

    ``bnbench.analysis.spearman`` per seed; a seed whose ``y`` is the same at every one of two
    or more levels has trend 0 (it did not move: no trend, rather than no value); a seed with
    fewer than two levels has none. The reason is not empty when a seed has fewer than
    ``min_levels`` levels (a rank trend over two levels can only be ±1 or 0).
    """
    rhos: dict[int, float] = {}
    reason = ""
    for seed, points in series.items():
        xs = [float(x) for x, _ in points]
        ys = [float(y) for _, y in points]
        levels = len(set(xs))
        if levels < 2:
            continue
        if levels < min_levels and not reason:
            reason = f"a rank trend over {levels} levels (fewer than {min_levels}) can only be ±1 or 0"
        if len(set(ys)) == 1:
            rhos[seed] = 0.0
            continue
        estimate = spearman(xs, ys, min_levels)
        if estimate is not None:
            rhos[seed] = estimate.value
            reason = reason or estimate.undecidable
    return rhos, reason


def seed_trend(series: Mapping[Any, Sequence[tuple[float, float]]], min_levels: int = MIN_LEVELS) -> Estimate | None:
    """The mean per-seed rank trend as a ``rank`` estimate (``bnbench.intervals.rank_trend``: an exact
    permutation test, not a t-interval over a handful of possible values; undecidable under
    ``min_levels`` levels)."""
    return rank_trend(dict(series), min_levels)


def score(run: RunRecord, metric: str) -> float | None:
    """The run's final ``metric``; a diverged run scores 0."""
    return 0.0 if run.status == "diverged" else run.final(metric)


def final_loss(run: RunRecord, metric: str) -> float | None:
    """The run's final ``metric`` (a loss); a diverged run's is +inf."""
    return math.inf if run.status == "diverged" else run.final(metric)


def _noise_key(level: float) -> str:
    return f"{level:g}"


def _shown(estimate: ClaimValue | None, digits: int = 2) -> str:
    """An estimate as ``value [low, high]`` (95% t-interval over seeds) or ``value (n=1)``."""
    if estimate is None:
        return "—"
    if not isinstance(estimate, Estimate):
        return f"{estimate:+.{digits}f}"
    bounds = interval(estimate)
    text = f"{estimate.value:+.{digits}f}"
    if bounds is not None:
        return f"{text} [{bounds.low:+.{digits}f}, {bounds.high:+.{digits}f}]"
    return f"{text} (n={len(estimate.replicates)})" if estimate.replicates else text


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

DEGENERACY = (
    "diagnostic only: λ̂ = −(∂L/∂γ)/(2γ) is 0, or half the weight decay on γ, at any stationary point "
    "whatever the noise, so λ̂ and ρ = λ̂·σ² cannot show auto-tuning (see tuned_l2_comparison)"
)


def implied_regularization_analysis(study: StudyResults, options: ImpliedRegularizationOptions) -> AnalysisResult:
    """BN's implied multiplier λ̂ and ridge rate against input noise: a diagnostic (Annamalai & Thakur 2022).

    One table per study, columns the noise levels, rows per BN configuration and layer:
    λ̂ (median over units), the ridge rate ρ = λ̂·vᵀΣ_e v/‖v‖², SNR, the bound's tightness,
    ‖v‖ and ‖w‖ (means over seeds of final values).

    These are diagnostics: they cannot test the paper's claim (docs/studies.md says why); the
    report shows the reason beside them. What can is ``tuned_l2_comparison``.

    Values (diagnostics; ``Estimate`` over seeds, linear scale), for each configuration ``c``
    (and without the suffix when there is one configuration), for the first listed layer:
    ``lambda.c.<noise>`` and ``ridge_rate.c.<noise>`` (seed means of the final λ̂ and ρ
    medians), ``lambda_trend.c`` and ``ridge_trend.c`` (per seed, the Spearman correlation of
    noise level with the seed's λ̂ / ρ over the levels, over positive levels only with
    ``trend_excludes_zero``; a seed whose value is constant has trend 0; undecidable with fewer
    than 3 levels), ``ridge_rate_min.c`` (per seed, the smallest ρ over positive noise levels)
    and ``bound_within_min.c`` (per seed, the smallest share of units inside ‖v‖²σ_n² ≤ γ² over
    noisy runs). Every value also for each listed layer ``k``, as ``<name>.c.layer<k>``
    (``<name>.layer<k>`` with one configuration).
    """
    runs = [
        r
        for r in selected(study.runs, options.select)
        if any(k.startswith(f"{options.metric}.") and k.endswith(".lambda.median") for k in _last(r))
    ]
    configs = grouped(runs, lambda r: config_label(r, {options.noise_axis}))
    levels = sorted({noise_level(r, options.noise_axis) for r in runs})
    rows: list[list[Any]] = []
    values: dict[str, ClaimValue] = {}
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
            f"Implied regularization against input noise (BN runs; mean ± std over seeds, final epoch; {DEGENERACY})",
            ["configuration", "layer", "quantity", *(f"σ_n={level:g}" for level in levels)],
            rows,
        )
    ]
    figures = [Figure("noise_sweep", lambda fig: _draw_noise_sweep(fig, curves))] if curves else []
    return AnalysisResult(tables, figures, values)


def _trend_values(
    values: dict[str, ClaimValue],
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
        series: dict[int, list[tuple[float, float]]] = {}
        for level in levels:
            per_seed = {s: mean(r.final(key) for r in rs) for s, rs in runs_by_seed(by_level.get(level, [])).items()}
            per_seed = {s: v for s, v in per_seed.items() if v is not None}
            for suffix in suffixes:
                put(values, f"{short}{suffix}.{_noise_key(level)}", over_seeds(per_seed.values()))
            if level > 0 or not options.trend_excludes_zero:
                for s, v in per_seed.items():
                    series.setdefault(s, []).append((level, v))
        for suffix in suffixes:
            put(values, f"{trend}{suffix}", seed_trend(series))
            if quantity == "ridge":
                lowest = (min((y for x, y in points if x > 0), default=None) for points in series.values())
                put(values, f"ridge_rate_min{suffix}", over_seeds(lowest))
    noisy = runs_by_seed(r for r in members if noise_level(r, options.noise_axis) > 0)
    within = [finite(r.final(f"{options.metric}.layer{k}.bound.within") for r in rs) for rs in noisy.values()]
    for suffix in suffixes:
        put(values, f"bound_within_min{suffix}", over_seeds(min(w) if w else None for w in within))


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
    lr_axis: str = Field(
        LR_AXIS, description="The learning-rate axis, when swept: each arm and decay is read at its own best rate."
    )
    untuned_decay: float = Field(0.0, ge=0, description="Weight decay of the untuned BN and no-BN networks.")
    selection_metric: str = Field(
        "validation_accuracy",
        description="Chooses each seed's weight decay at each noise level (final epoch); never a test metric.",
    )
    metric: str = Field("test_accuracy", description="Reported accuracy (inputs transformed like training).")
    clean_metric: str = Field("robustness.clean_test_accuracy", description="Reported clean-input accuracy.")
    train_loss_metric: str = Field(
        "train_loss", description="Final training loss shown beside accuracy and used for the undertrained flag."
    )
    train_accuracy_metric: str = Field("train_accuracy", description="Final training accuracy shown when recorded.")
    undertrained_ratio: float = Field(
        2.0,
        gt=1,
        description="Flag the tuned-L2 baseline undertrained when its training loss exceeds BN's by this factor…",
    )
    undertrained_nats: float = Field(
        0.1, ge=0, description="…and by more than this many nats (both conditions, per seed and noise level)."
    )
    geometry_metric: str = Field(
        "weight_geometry.layer0", description="Prefix of the first layer's recorded geometry (the function match)."
    )


def _selection(members: list[RunRecord], selection_metric: str, what: str) -> float:
    scores = [score(r, selection_metric) for r in members]
    if any(v is None for v in scores):
        raise ValueError(
            f"tuning needs {selection_metric!r} for every run ({what} lacks it): "
            "set validation_size in the study and record the metric"
        )
    return statistics.fmean(float(v) for v in scores if v is not None)


def best_per_decay(
    runs: Iterable[RunRecord], decay_axis: str, selection_metric: str, lr_axis: str = LR_AXIS
) -> dict[float, tuple[float, list[RunRecord]]]:
    """Weight decay → ``(mean selection score, runs)`` at the learning rate best on ``selection_metric``
    for that decay (ties to the smaller rate): each arm gets its own tuned learning rate. A study
    without a learning-rate axis has one rate and this is a plain grouping by decay."""
    out = {}
    for decay, members in grouped(runs, lambda r: float(axis_value(r, decay_axis) or 0.0)).items():
        by_lr = grouped(members, lambda r: float(axis_value(r, lr_axis) or 0.0))
        scored = [
            (_selection(rs, selection_metric, f"weight decay {decay:g}, lr {lr:g}"), -lr, rs)
            for lr, rs in by_lr.items()
        ]
        best = max(scored, key=lambda item: (item[0], item[1]))
        out[decay] = (best[0], best[2])
    return out


def tune(
    runs: Iterable[RunRecord], decay_axis: str, selection_metric: str, lr_axis: str = LR_AXIS
) -> tuple[float, float, list[RunRecord]] | None:
    """``(weight decay, mean selection score, its runs)`` of the decay whose mean ``selection_metric``
    (validation accuracy, final epoch) over ``runs`` is best, each decay at its own best learning
    rate (``best_per_decay``); ties go to the smaller decay. Reads no other metric.
    ``tuned_l2_comparison`` calls it on one seed's runs at one noise level (and on the untuned
    runs alone, which tunes their learning rate).

    A finished run without the selection metric is an error: tuning never falls back to test data.
    """
    scored = [(value, -decay, decay, members) for decay, (value, members) in
              best_per_decay(runs, decay_axis, selection_metric, lr_axis).items()]  # fmt: skip
    if not scored:
        return None
    best = max(scored, key=lambda item: (item[0], item[1]))
    return best[2], best[0], best[3]


def kappa_estimate(kappas: Sequence[float]) -> Estimate | None:
    """The seeds' chosen weight decays κ*_s as a geometric-mean estimate (log scale).

    When a seed chose weight decay 0 the geometric mean is 0 and a log-scale interval does not
    exist: the value is then 0, undecidable, with the reason (``kappa_trend`` uses ranks and
    needs no log).
    """
    if not kappas:
        return None
    if all(k > 0 for k in kappas):
        return over_seeds(kappas, "log")
    zeros = sum(k == 0 for k in kappas)
    return Estimate(
        0.0,
        basis=f"geometric mean over {len(kappas)} seeds",
        undecidable=f"{zeros} of {len(kappas)} seeds chose weight decay 0: no log-scale interval",
    )


def _loss_ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or math.isnan(numerator) or math.isnan(denominator):
        return None
    if math.isinf(numerator) and math.isinf(denominator):
        return None
    if denominator == 0:
        return math.inf if numerator > 0 else None
    return numerator / denominator


def _differences(a: Mapping[int, float | None], b: Mapping[int, float | None], scale: float) -> dict[int, float]:
    """Per seed measured in both, ``scale · (a − b)``."""
    out = {}
    for seed, x in a.items():
        y = b.get(seed)
        if x is not None and y is not None:
            out[seed] = scale * (x - y)
    return out


def _excess(a: float | None, b: float | None) -> float:
    """``a − b``, ``-inf`` when either is missing or the difference is undefined."""
    if a is None or b is None or (math.isinf(a) and math.isinf(b)):
        return -math.inf
    return a - b


def _joined(cells: Iterable[str]) -> str:
    cells = list(cells)
    return "—" if all(c == "—" for c in cells) else " / ".join(cells)


def _decays(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "—"


def _complete(per_level: Mapping[float, Mapping[int, float]]) -> dict[int, list[float]]:
    """Per seed, its values at every level of ``per_level`` (seeds missing a level left out)."""
    levels = [level for level, seeds in per_level.items() if seeds]
    seeds = set.intersection(*(set(per_level[level]) for level in levels)) if levels else set()
    return {s: [per_level[level][s] for level in levels] for s in sorted(seeds)}


def l2_effect(runs: list[RunRecord], options: TunedL2Options) -> tuple[float, float] | None:
    """How much weight decay moves accuracy at one level, against the seed spread: ``(range over the
    decay grid of the mean-over-seeds selection accuracy, mean over decays of its std over seeds)``,
    in points; ``None`` with fewer than two decays or seeds."""
    by_decay = best_per_decay(runs, options.decay_axis, options.selection_metric, options.lr_axis)
    means, spreads = [], []
    for _, members in by_decay.values():
        scores = [v for r in members if (v := score(r, options.selection_metric)) is not None]
        if len(scores) < 2:
            return None
        means.append(100 * statistics.fmean(scores))
        spreads.append(100 * statistics.stdev(scores))
    if len(means) < 2:
        return None
    return max(means) - min(means), statistics.fmean(spreads)


def _first_layer_norm(runs: list[RunRecord], options: TunedL2Options, quantity: str) -> float | None:
    return mean(r.final(f"{options.geometry_metric}.{quantity}.median") for r in runs)


def kappa_match(runs: list[RunRecord], target: float | None, options: TunedL2Options) -> tuple[float, str] | None:
    """The weight decay at which one seed's unnormalized net has the first-layer row norm ``target``
    (BN's folded ‖v‖, median over units): log-linear interpolation of ‖w‖ over the decay grid (the
    lowest decay counting as the grid's first point); at the grid's ends, the end and a basis saying
    it is censored. ``None`` when the norms were not recorded."""
    if target is None:
        return None
    # one learning rate for every decay (the untuned net's best), so the norms differ by decay alone
    untuned = tune([r for r in runs if float(axis_value(r, options.decay_axis) or 0.0) == options.untuned_decay],
                   options.decay_axis, options.selection_metric, options.lr_axis)  # fmt: skip
    if untuned is not None and untuned[2]:
        rate = axis_value(untuned[2][0], options.lr_axis)
        runs = [r for r in runs if axis_value(r, options.lr_axis) == rate]
    by_decay = grouped(runs, lambda r: float(axis_value(r, options.decay_axis) or 0.0))
    points = sorted(
        (decay, norm) for decay, rs in by_decay.items() if (norm := _first_layer_norm(rs, options, "w_norm"))
    )
    if len(points) < 2:
        return None
    if any(n1 > n0 for (_, n0), (_, n1) in itertools.pairwise(points)):
        return None  # the norm does not fall with the decay: no single decay matches it
    if target >= points[0][1]:
        return points[0][0], f"at or below the grid's smallest decay {points[0][0]:g} (censored)"
    if target <= points[-1][1]:
        return points[-1][0], f"at or above the grid's largest decay {points[-1][0]:g} (censored)"
    for (k0, n0), (k1, n1) in itertools.pairwise(points):
        if n1 <= target <= n0 and n0 != n1:
            if k0 <= 0:  # between no decay and the first positive one: below it, censored
                return k1, f"below the grid's first positive decay {k1:g} (censored)"
            t = (math.log(n0) - math.log(target)) / (math.log(n0) - math.log(n1))
            return math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0))), "interpolated on the grid"
    return None


def _movement(series: list[tuple[float, float]], grid: list[float]) -> int:
    """How many steps of the decay grid a seed's chosen decay spans over the noise levels."""
    steps = [grid.index(k) for _, k in series if k in grid]
    return max(steps) - min(steps) if steps else 0


def tuned_l2_comparison(study: StudyResults, options: TunedL2Options) -> AnalysisResult:
    """BN against unnormalized nets with L2 tuned per seed on the validation split (Annamalai & Thakur 2022).

    The paper's claim, that BN tunes its regularization to the data and to the input noise, is
    tested here by what can be measured (docs/studies.md says why λ̂ cannot):

    * κ*(σ): for the unnormalized network, the weight decay explicit L2 needs at noise level σ.
      Per seed, κ*_s(σ) is the grid's weight decay with the best ``selection_metric``
      (validation accuracy, final epoch; ties to the smaller decay): the test set plays no part.
    * whether κ* grows with the noise: per seed, the Spearman correlation of κ*_s with the noise
      level over the levels. A rank correlation needs no log, so weight decay 0 enters as the
      smallest rank; a seed whose κ* is the same at every level has trend 0 (κ* did not move).
    * whether untuned BN stays within a margin of tuned L2 at every level, in both directions:
      per level and seed, ``gap_s = acc(BN, untuned decay) − acc(no BN, κ*_s)`` in accuracy points
      (``metric``: test accuracy, final epoch, at the validation-chosen κ*_s), paired by seed.
    * whether a BN win is only an undertrained baseline: the final ``train_loss_metric`` (and
      ``train_accuracy_metric`` when recorded) of BN, of no BN and of tuned L2 beside the accuracy;
      a seed's tuned-L2 net is flagged *undertrained* at a level when its final training loss is
      more than ``undertrained_ratio`` × BN's and more than ``undertrained_nats`` above it.

    Diverged runs score accuracy 0 and training loss +inf. Values (``Estimate`` over seeds):

    ``kappa.<noise>``                 κ*_s (log scale: geometric mean; undecidable when a seed chose 0)
    ``kappa_trend``                   mean per-seed Spearman(noise, κ*_s), an exact permutation test
                                      (``bnbench.intervals``); undecidable under 3 levels, and where weight
                                      decay moves accuracy by no more than the seed spread at some level
    ``l2_effect_points.<noise>``      range of validation accuracy over the decay grid (points; basis: seed spread)
    ``bn_kappa_trend``                the same trend of the extra L2 BN is best with (auto-tuning: flat)
    ``l2_moves_more_without_bn``      share of seeds whose κ* spans more grid steps over the levels without BN
                                      than with it (exact binomial interval)
    ``kappa_match.<noise>.seed<s>``   the decay at which the unnormalized net's first-layer row norm equals
                                      BN's folded ‖v‖ (log-linear interpolation; censored at the grid's ends)
    ``kappa_match_trend``             its rank trend with the noise (exact permutation test)
    ``bn_minus_tuned_l2.<noise>``     gap_s in points (linear)
    ``bn_minus_tuned_l2_min``         per seed, its smallest gap over the levels (the worst level for BN)
    ``bn_minus_tuned_l2_max``         per seed, its largest gap over the levels; "BN is within ±m points
                                      of tuned L2 at every level" is ``_min >= -m`` and ``_max <= m``
    ``bn_minus_tuned_l2_mean``        per seed, its mean gap over the levels
    ``bn_gain_points.<noise>``        acc(BN) − acc(no BN), both untuned, in points (linear)
    ``min_bn_gain_points``            per seed, its smallest such gain over the levels
    ``baseline_train_loss_ratio.<noise>``  tuned-L2 final training loss ÷ BN's (log scale)
    ``baseline_train_loss_ratio``     per seed, its largest ratio over the levels (log scale)
    ``undertrained.<noise>``          share of seeds whose tuned-L2 net is flagged (a point value)

    The ``_min`` / ``_max`` / ``_mean`` values and ``baseline_train_loss_ratio`` use the seeds
    measured at every level. Tables: the accuracies (mean ± std over seeds, the gap with its 95%
    t-interval), training losses and the undertrained flag per level; κ* per level (geometric
    mean, per seed, validation accuracy at it) and ``kappa_trend``.
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

    def acc(group: Iterable[RunRecord]) -> float | None:
        return average(score(r, options.metric) for r in group)

    def loss(group: Iterable[RunRecord]) -> float | None:
        return average(final_loss(r, options.train_loss_metric) for r in group)

    rows: list[list[Any]] = []
    kappa_rows: list[list[Any]] = []
    values: dict[str, ClaimValue] = {}
    curves: dict[str, list[tuple[float, float, float]]] = {}
    kappa_series: dict[int, list[tuple[float, float]]] = {}
    bn_kappa_series: dict[int, list[tuple[float, float]]] = {}
    match_series: dict[int, list[tuple[float, float]]] = {}
    effect: dict[float, tuple[float, float] | None] = {}
    gaps: dict[float, dict[int, float]] = {}
    gains: dict[float, dict[int, float]] = {}
    ratios: dict[float, dict[int, float]] = {}
    for level in levels:
        bn_seeds, none_seeds = (
            runs_by_seed(members(level, options.normalized)),
            runs_by_seed(members(level, options.unnormalized)),
        )

        def tuned_on(group: list[RunRecord]) -> tuple[float, float, list[RunRecord]] | None:
            return tune(group, options.decay_axis, options.selection_metric, options.lr_axis)

        tuned = {s: t for s, rs in none_seeds.items() if (t := tuned_on(rs))}
        bn_tuned = {s: t for s, rs in bn_seeds.items() if (t := tuned_on(rs))}
        # the untuned arms (no weight decay) at their own best learning rate
        bn = {s: t[2] for s, rs in bn_seeds.items() if untuned(rs) and (t := tuned_on(untuned(rs)))}
        none = {s: t[2] for s, rs in none_seeds.items() if untuned(rs) and (t := tuned_on(untuned(rs)))}
        accuracy = {
            "BN": {s: acc(rs) for s, rs in bn.items()},
            "no BN": {s: acc(rs) for s, rs in none.items()},
            "no BN + tuned L2": {s: acc(t[2]) for s, t in tuned.items()},
            "BN + tuned L2": {s: acc(t[2]) for s, t in bn_tuned.items()},
        }
        losses = {
            "BN": {s: loss(rs) for s, rs in bn.items()},
            "no BN": {s: loss(rs) for s, rs in none.items()},
            "no BN + tuned L2": {s: loss(t[2]) for s, t in tuned.items()},
        }
        train_acc = {
            "BN": [average(score(r, options.train_accuracy_metric) for r in rs) for rs in bn.values()],
            "no BN": [average(score(r, options.train_accuracy_metric) for r in rs) for rs in none.values()],
            "no BN + tuned L2": [
                average(score(r, options.train_accuracy_metric) for r in t[2]) for t in tuned.values()
            ],
        }
        for name, per_seed in accuracy.items():
            m, sd = mean_std(per_seed.values())
            if m is not None:
                curves.setdefault(name, []).append((level, 100 * m, 100 * (sd or 0.0)))
        for name, group in (("BN", bn), ("no BN + tuned L2", {s: t[2] for s, t in tuned.items()})):
            m = mean(r.final(options.clean_metric) for rs in group.values() for r in rs)
            if m is not None:
                curves.setdefault(f"{name} (clean inputs)", []).append((level, 100 * m, 0.0))

        key = _noise_key(level)
        bn_acc, l2_acc, none_acc = accuracy["BN"], accuracy["no BN + tuned L2"], accuracy["no BN"]
        gaps[level] = _differences(bn_acc, l2_acc, 100)
        gains[level] = _differences(bn_acc, none_acc, 100)
        ratios[level] = {
            s: r
            for s in losses["BN"]
            if (r := _loss_ratio(losses["no BN + tuned L2"].get(s), losses["BN"][s])) is not None
        }
        flags = {
            s: bool(
                ratio > options.undertrained_ratio
                and _excess(losses["no BN + tuned L2"].get(s), losses["BN"].get(s)) > options.undertrained_nats
            )
            for s, ratio in ratios[level].items()
        }
        kappas = {s: t[0] for s, t in tuned.items()}
        for s, kappa in kappas.items():
            kappa_series.setdefault(s, []).append((level, kappa))
        for s, t in bn_tuned.items():
            bn_kappa_series.setdefault(s, []).append((level, t[0]))
        effect[level] = l2_effect(members(level, options.unnormalized), options)
        bn_norm = {s: _first_layer_norm(rs, options, "v_norm") for s, rs in bn.items()}
        for s, rs in none_seeds.items():
            matched = kappa_match(rs, bn_norm.get(s), options)
            if matched is not None:
                match_series.setdefault(s, []).append((level, matched[0]))
                put(values, f"kappa_match.{_noise_key(level)}.seed{s}", point(matched[0], matched[1]))
        gap = over_seeds(gaps[level].values())
        put(values, f"kappa.{key}", kappa_estimate(list(kappas.values())))
        put(values, f"bn_minus_tuned_l2.{key}", gap)
        put(values, f"bn_gain_points.{key}", over_seeds(gains[level].values()))
        put(values, f"baseline_train_loss_ratio.{key}", over_seeds(ratios[level].values(), "log"))
        if flags:
            put(values, f"undertrained.{key}", share(flags.values()))
        flag = "—" if not flags else ("yes" if all(flags.values()) else "no" if not any(flags.values()) else "some")
        if flags and len(flags) > 1:
            flag += f" ({sum(flags.values())}/{len(flags)} seeds)"
        rows.append(
            [
                f"{level:g}",
                pm(bn_acc.values(), 100, 2, fixed=True),
                pm(none_acc.values(), 100, 2, fixed=True),
                _decays(kappas.values()),
                pm(l2_acc.values(), 100, 2, fixed=True),
                _shown(gap),
                "—"
                if not bn_tuned
                else f"{_decays(t[0] for t in bn_tuned.values())}: "
                + pm(accuracy["BN + tuned L2"].values(), 100, 2, fixed=True),
                pm(losses["BN"].values()),
                pm(losses["no BN"].values()),
                pm(losses["no BN + tuned L2"].values()),
                _joined(pm(v, 100, 1, fixed=True) for v in train_acc.values()),
                flag,
                pm((r.final(options.clean_metric) for rs in bn.values() for r in rs), 100, 2, fixed=True),
                pm((r.final(options.clean_metric) for t in tuned.values() for r in t[2]), 100, 2, fixed=True),
            ]
        )
        if kappas:
            estimate = kappa_estimate(list(kappas.values()))
            kappa_rows.append(
                [
                    f"{level:g}",
                    "—"
                    if estimate is None
                    else f"{estimate.value:.3g}"
                    + (f" ({estimate.undecidable.split(':')[0]})" if estimate.undecidable else ""),
                    _decays(kappas.values()),
                    f"{min(kappas.values()):g} – {max(kappas.values()):g}",
                    pm((t[1] for t in tuned.values()), 100, 2, fixed=True),
                ]
            )
    trend = rank_trend(kappa_series)
    weak = {level: e for level, e in effect.items() if e is not None and e[0] <= e[1]}
    unmeasured = [level for level, e in effect.items() if e is None]
    for level, e in effect.items():
        if e is not None:
            put(values, f"l2_effect_points.{_noise_key(level)}", point(e[0], f"seed spread {e[1]:.2f} points"))
    if trend is not None and not trend.undecidable and unmeasured and not weak:
        shown = ", ".join(f"{lv:g}" for lv in unmeasured)
        trend = replace(
            trend,
            undecidable=f"the effect of weight decay could not be measured at σ = {shown} (fewer than two seeds "
            "at a decay): κ* may be chosen by seed noise",
        )
    if trend is not None and not trend.undecidable and weak:
        shown = "; ".join(f"σ={lv:g}: {e[0]:.2f} ≤ {e[1]:.2f}" for lv, e in weak.items())
        trend = replace(
            trend,
            undecidable="weight decay moves the unnormalized net's accuracy by no more than the seed spread "
            f"(points, range over the grid vs mean std over seeds: {shown}): κ* is chosen by seed noise",
        )
    put(values, "kappa_trend", trend)
    put(values, "bn_kappa_trend", rank_trend(bn_kappa_series))
    grid = sorted({float(axis_value(r, options.decay_axis) or 0.0) for r in runs})
    moves = [
        _movement(kappa_series[s], grid) > _movement(bn_kappa_series[s], grid)
        for s in sorted(kappa_series.keys() & bn_kappa_series.keys())
    ]
    put(values, "l2_moves_more_without_bn", share(moves))
    put(values, "kappa_match_trend", rank_trend(match_series))
    for name, per_level, combine in (
        ("bn_minus_tuned_l2_min", gaps, min),
        ("bn_minus_tuned_l2_max", gaps, max),
        ("bn_minus_tuned_l2_mean", gaps, statistics.fmean),
        ("min_bn_gain_points", gains, min),
    ):
        put(values, name, over_seeds(combine(v) for v in _complete(per_level).values()))
    put(values, "baseline_train_loss_ratio", over_seeds((max(v) for v in _complete(ratios).values()), "log"))
    if kappa_rows:
        rhos, reason = seed_trends(kappa_series)
        summary = (
            "—" if trend is None else f"{trend.value:+.2f} (per seed: {', '.join(f'{r:+.2f}' for r in rhos.values())})"
        )
        kappa_rows.append(
            [
                "kappa_trend",
                summary,
                "Spearman(σ_n, κ*_s) per seed; weight decay 0 is the smallest rank",
                reason or "",
                "",
            ]
        )
    metric = options.metric.replace("_", " ")
    tables = [
        Table(
            f"Accuracy under input noise: BN vs no BN vs no BN + L2 tuned per seed on {options.selection_metric} "
            f"({metric} %, mean ± std over seeds; BN − tuned L2 in points with its 95% t-interval over seeds; "
            f"{options.train_loss_metric} final epoch, nats; baseline undertrained: tuned-L2 training loss "
            f"> {options.undertrained_ratio:g}× BN's and > BN's + {options.undertrained_nats:g} nats)",
            [
                "σ_n",
                "BN",
                "no BN",
                "κ* per seed",
                "no BN + tuned L2",
                "BN − tuned L2 (points)",
                "BN + tuned L2 (wd: acc)",
                "train loss BN",
                "train loss no BN",
                "train loss tuned L2",
                "train acc % BN / no BN / tuned L2",
                "baseline undertrained",
                "BN clean",
                "tuned L2 clean",
            ],
            rows,
        ),
        Table(
            f"Weight decay κ* explicit L2 needs (no BN; chosen per seed on {options.selection_metric}, final epoch)",
            ["σ_n", "κ* (geometric mean)", "κ* per seed", "range", f"{options.selection_metric} % at κ*"],
            kappa_rows,
        ),
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
    ax.set_title("Accuracy under input noise (L2 tuned per seed on the validation split)")
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


def _ends(runs: list[RunRecord], key: str) -> tuple[float, float] | None:
    """First and last recorded value of ``key`` (mean over ``runs`` per epoch), ``None`` if never recorded."""
    curve = _curve(runs, key)
    return (curve[0][1], curve[-1][1]) if curve else None


def _ratio(ends: tuple[float, float] | None) -> float | None:
    return ends[1] / ends[0] if ends is not None and ends[0] else None


def trajectories(study: StudyResults, options: TrajectoryOptions) -> AnalysisResult:
    """Raw weight norms ‖w‖ and ‖γ‖ over training, against batch size (Annamalai & Thakur 2022; docs/studies.md).

    A row per configuration: median ‖w_j‖, ‖γ‖ and median ‖v_j‖ of the chosen layer at the
    first and last recorded epoch (seed means), ‖γ‖ last/first (geometric mean over seeds of
    each seed's ratio), and η/‖w‖² at the end. Values (``Estimate`` over seeds, one replicate
    per seed): ``gamma_ratio.<c>`` and ``w_ratio.<c>`` (last / first; log scale),
    ``gamma_final.<c>`` (log scale), and ``gamma_trend`` / ``w_trend`` (per seed, the Spearman
    correlation of ``trend_axis`` with the seed's final ‖γ‖ / ‖w‖, averaged over the other
    configurations; linear; undecidable with fewer than 3 levels of ``trend_axis``; also
    ``.<c>`` per other configuration ``c``).
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
    values: dict[str, ClaimValue] = {}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    finals: dict[str, dict[int, dict[str, float | None]]] = {}
    for label, members in groups.items():
        series = {name: _curve(members, key) for name, key in keys.items()}
        curves[label] = series
        if not series["w"]:
            continue
        first = {n: (s[0][1] if s else None) for n, s in series.items()}
        last = {n: (s[-1][1] if s else None) for n, s in series.items()}
        seeds = {s: {n: _ends(rs, keys[n]) for n in ("w", "gamma")} for s, rs in runs_by_seed(members).items()}
        finals[label] = {s: {n: e[1] if e else None for n, e in ends.items()} for s, ends in seeds.items()}
        gamma_ratio = over_seeds((_ratio(ends["gamma"]) for ends in seeds.values()), "log")
        rows.append(
            [
                label,
                f"{fmt(first['w'])} → {fmt(last['w'])}",
                "—" if first["gamma"] is None else f"{fmt(first['gamma'])} → {fmt(last['gamma'])}",
                fmt(None if gamma_ratio is None else gamma_ratio.value),
                "—" if first["v"] is None else f"{fmt(first['v'])} → {fmt(last['v'])}",
                fmt(last["eff_lr"]),
            ]
        )
        put(values, f"gamma_ratio.{label}", gamma_ratio)
        put(values, f"w_ratio.{label}", over_seeds((_ratio(ends["w"]) for ends in seeds.values()), "log"))
        put(values, f"gamma_final.{label}", over_seeds((f["gamma"] for f in finals[label].values()), "log"))
    if options.trend_axis in study.axes:
        for name in ("gamma", "w"):
            pooled: dict[tuple[int, str], list[tuple[float, float]]] = {}
            others = grouped(
                (r for r in runs if config_label(r) in finals), lambda r: config_label(r, {options.trend_axis})
            )
            for other, members in others.items():
                series: dict[int, list[tuple[float, float]]] = {}
                for label, same in grouped(members, config_label).items():
                    x = float(axis_value(same[0], options.trend_axis))
                    for seed, final in finals[label].items():
                        if final[name] is not None:
                            series.setdefault(seed, []).append((x, final[name]))
                put(values, f"{name}_trend.{other}", seed_trend(series))
                pooled.update({(seed, other): points for seed, points in series.items()})
            # every (seed, configuration) is one unit of the permutation test
            put(values, f"{name}_trend", seed_trend(pooled))
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

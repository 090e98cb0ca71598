"""Analyses of training studies: accuracy against learning rate, and the final layer's share.

Bjorck et al. 2018, section 2 and Figure 1 (RQ1: BN trains at larger learning rates, which
converge faster and generalize better) and the final-layer question (RQ4: how much of BN's
benefit normalizing only the logits recovers).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from bnbench.analysis import (
    axis_value,
    bracket_ratio,
    bracketed,
    finished,
    finite_or_nan,
    fmt,
    grid_bracket,
    group_runs,
    mean,
    mean_curve,
    over_seeds,
    paired_difference,
    put,
    ratio_of_means,
    share,
)
from bnbench.api import AnalysisResult, ClaimValue, Estimate, Figure, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, learned, panel_grid

LR_AXIS = "optimizer.lr"


class LrSweepOptions(CompareOptions):
    metric: str = Field("test_accuracy", description="The per-epoch metric reported at the chosen learning rate.")
    select_on: str = Field(
        "validation_accuracy",
        description="The per-epoch metric the best learning rate is chosen on: a held-out validation split "
        "(the study's validation_size), never the test set.",
    )
    statistic: Literal["final", "best"] = Field(
        "final", description="final: the metric after the last epoch (the paper's); best: its maximum over epochs."
    )
    lr_axis: str = Field(LR_AXIS, description="The study's learning-rate axis.")
    learned_margin: float = Field(
        0.1,
        ge=0,
        description="A run learned when its final training loss is below ln(classes) minus this (nats): "
        "`learned_share.<group>.lr=<lr>`. 'Trains' in the paper means learning, not only not diverging.",
    )
    classes: int = Field(10, gt=1, description="Classes, for ln(classes) when the dataset's options do not say.")
    matched_lr: float | None = Field(
        1e-4,
        description="The matched-lr control (Bjorck et al. Fig. 1): normalized and unnormalized compared at this "
        "same small learning rate. None: no control.",
    )


def _learned(run: RunRecord, options: LrSweepOptions) -> bool:
    """Whether a finished run learned, on its final training loss (``bnbench.plugins.probes.common.learned``)."""
    loss = run.final("train_loss")
    classes = (run.spec.get("dataset") or {}).get("options", {}).get("num_classes") or options.classes
    return run.status == "done" and loss is not None and learned([loss], classes, options.learned_margin)


def _statistic(run: RunRecord, metric: str, options: LrSweepOptions) -> float | None:
    return run.final(metric) if options.statistic == "final" else run.best(metric)


def _score(run: RunRecord, metric: str, options: LrSweepOptions) -> float | None:
    """A run's ``metric``: a diverged run counts as 0 (a learning rate at which it diverged is never best)."""
    return 0.0 if run.status == "diverged" else _statistic(run, metric, options)


def sweep_table(study: StudyResults, options: LrSweepOptions) -> dict[str, dict[float, list[RunRecord]]]:
    """Group label (every axis but the learning rate) → learning rate → runs."""
    table: dict[str, dict[float, list[RunRecord]]] = {}
    for label, runs in group_runs(finished(study), exclude={options.lr_axis}).items():
        by_lr = table.setdefault(label, {})
        for run in runs:
            by_lr.setdefault(float(axis_value(run, options.lr_axis)), []).append(run)
    return table


def choose_lr(by_lr: dict[float, list[RunRecord]], options: LrSweepOptions, seed: int | None = None) -> float | None:
    """The learning rate with the highest ``select_on`` (mean over the group's seeds, or one seed's).

    Only a learning rate at which a run finished (``done``) with a ``select_on`` value is a
    candidate: a group in which every run diverged or failed has no best learning rate. Ties
    go to the smaller learning rate (the conservative choice).
    """
    scored = []
    for lr, runs in by_lr.items():
        runs = [r for r in runs if seed is None or r.seed == seed]
        if not any(r.status == "done" and _statistic(r, options.select_on, options) is not None for r in runs):
            continue
        score = mean(_score(r, options.select_on, options) for r in runs)
        if score is not None:
            scored.append((score, -lr))
    if not scored:
        return None
    return -max(scored)[1]


def per_seed_at_best(by_lr: dict[float, list[RunRecord]], options: LrSweepOptions) -> dict[int, tuple[float, float]]:
    """Seed → ``(its best learning rate on select_on, its metric there)``: one replicate of the
    whole protocol "tune the learning rate on validation, report the test metric" per seed."""
    out: dict[int, tuple[float, float]] = {}
    for seed in sorted({r.seed for runs in by_lr.values() for r in runs}):
        lr = choose_lr(by_lr, options, seed)
        if lr is None:
            continue
        value = next((_score(r, options.metric, options) for r in by_lr[lr] if r.seed == seed), None)
        if value is not None:
            out[seed] = (lr, value)
    return out


def _runs_at(by_lr: dict[float, list[RunRecord]], lr: float) -> list[RunRecord]:
    return next((rs for value, rs in by_lr.items() if math.isclose(value, lr, rel_tol=1e-9)), [])


def per_seed_at(by_lr: dict[float, list[RunRecord]], lr: float, options: LrSweepOptions) -> dict[int, float]:
    """Seed → the metric at learning rate ``lr`` (a diverged run counts as 0)."""
    scores = {r.seed: _score(r, options.metric, options) for r in _runs_at(by_lr, lr)}
    return {seed: v for seed, v in scores.items() if v is not None}


def _has_selection_metric(table: dict[str, dict[float, list[RunRecord]]], options: LrSweepOptions) -> bool:
    return any(
        _statistic(r, options.select_on, options) is not None
        for by_lr in table.values()
        for runs in by_lr.values()
        for r in runs
    )


def lr_sweep(study: StudyResults, options: LrSweepOptions) -> AnalysisResult:
    """Accuracy against learning rate per configuration, training curves (Bjorck et al. Fig. 1).

    Each seed is one replicate of the protocol: its best learning rate is chosen on
    ``select_on`` (validation accuracy; a diverged run scores 0 and a learning rate with no
    finished run is no candidate) and its ``metric`` (test accuracy) is read at that rate.
    Values (Estimates over seeds): ``accuracy.<group>`` (0..1), ``best_lr.<group>`` (geometric
    mean of the per-seed best rates), ``best_lr_ratio`` (normalized ÷ unnormalized, paired by
    seed) and ``accuracy_gain`` (normalized − unnormalized, paired by seed). The matched-lr
    control at ``matched_lr``: ``accuracy_at_matched_lr.<group>`` and
    ``accuracy_gain_at_matched_lr``. ``diverged_share.<group>.lr=<lr>``: the share of seeds that
    diverged at each learning rate (``lr=0.0001``). Also ``largest_stable_lr.<group>`` (largest learning rate
    no seed of which diverged) and ``diverged_runs.<group>``. A group with no finished run has
    none of these: claims on them are "not measured".
    """
    table = sweep_table(study, options)
    if not table:
        return AnalysisResult()  # nothing run yet: no table, no figure, claims "not measured"
    if not _has_selection_metric(table, options):
        return AnalysisResult(
            [
                Table(
                    f"Accuracy against learning rate: not measured (no run records {options.select_on!r}; "
                    "give the study a validation_size and that metric: the best learning rate is chosen on a "
                    "validation split, never on the test set)",
                    [],
                    [],
                )
            ]
        )
    lrs = sorted({lr for by_lr in table.values() for lr in by_lr}, reverse=True)
    values: dict[str, ClaimValue] = {}
    rows = []
    at_best: dict[str, dict[int, tuple[float, float]]] = {}
    for label, by_lr in table.items():
        at_best[label] = per_seed_at_best(by_lr, options)
        best_lr = choose_lr(by_lr, options)
        stable = [lr for lr, runs in by_lr.items() if all(r.status != "diverged" for r in runs)]
        diverged = sum(r.status == "diverged" for runs in by_lr.values() for r in runs)
        cells = []
        for lr in lrs:
            runs = by_lr.get(lr, [])
            score = mean(_score(r, options.metric, options) for r in runs)
            down = sum(r.status == "diverged" for r in runs)
            cells.append(
                ""
                if not runs
                else f"{fmt(None if score is None else 100 * score, 4)}" + (f" ({down} div)" if down else "")
            )
        accuracy = over_seeds((100 * v for _, v in at_best[label].values()), unit="%")
        rows.append([label, *cells, fmt(best_lr), fmt(None if accuracy is None else accuracy.value, 4)])
        put(values, f"accuracy.{label}", accuracy)
        grid = sorted(by_lr)
        chosen = [lr for lr, _ in at_best[label].values()]
        put(values, f"best_lr.{label}", bracketed(chosen, [grid_bracket(lr, grid, "argmax") for lr in chosen]))
        put(values, f"largest_stable_lr.{label}", max(stable) if stable else None)
        values[f"diverged_runs.{label}"] = float(diverged)
        for lr, runs in by_lr.items():
            put(values, f"diverged_share.{label}.lr={lr:g}", share(r.status == "diverged" for r in runs))
            put(values, f"learned_share.{label}.lr={lr:g}", share(_learned(r, options) for r in runs))
        if options.matched_lr is not None:
            at_matched = per_seed_at(by_lr, options.matched_lr, options)
            put(values, f"accuracy_at_matched_lr.{label}", over_seeds((100 * v for v in at_matched.values()), unit="%"))
    normalized, unnormalized = table.get(options.normalized), table.get(options.unnormalized)
    if normalized and unnormalized:
        n, u = at_best[options.normalized], at_best[options.unnormalized]
        grid_n, grid_u = sorted(normalized), sorted(unnormalized)
        seeds = sorted(n.keys() & u.keys())
        put(
            values,
            "best_lr_ratio",
            bracketed(
                [n[s][0] / u[s][0] for s in seeds],
                [
                    bracket_ratio(grid_bracket(n[s][0], grid_n, "argmax"), grid_bracket(u[s][0], grid_u, "argmax"))
                    for s in seeds
                ],
                unit="x",
            ),
        )
        acc_n, acc_u = ({s: 100 * acc for s, (_, acc) in g.items()} for g in (n, u))
        put(values, "accuracy_gain", paired_difference(acc_n, acc_u, unit="points"))
        if options.matched_lr is not None:
            gain = paired_difference(
                {s: 100 * v for s, v in per_seed_at(normalized, options.matched_lr, options).items()},
                {s: 100 * v for s, v in per_seed_at(unnormalized, options.matched_lr, options).items()},
                unit="points",
            )
            put(values, "accuracy_gain_at_matched_lr", gain)
    metric = f"{options.statistic} {options.metric.replace('_', ' ')} %"
    tables = [
        Table(
            f"Accuracy against learning rate ({metric}, mean over seeds; best lr chosen on "
            f"{options.select_on.replace('_', ' ')}, never on the test set)",
            ["configuration", *(f"lr {lr:g}" for lr in lrs), "best lr", f"at best lr (per seed, {metric})"],
            rows,
        )
    ]
    figures = [
        Figure("accuracy_vs_lr", lambda fig: _draw_accuracy(fig, table, options)),
        Figure("training_curves", lambda fig: _draw_curves(fig, table)),
    ]
    return AnalysisResult(tables, figures, values)


def _draw_accuracy(fig: Any, table: dict[str, dict[float, list[RunRecord]]], options: LrSweepOptions) -> None:
    ax = fig.add_subplot()
    for label, by_lr in table.items():
        lrs = sorted(by_lr)
        # the line joins the finished runs only: a rate where every run diverged is a gap, not a 0
        scores = [mean(_statistic(r, options.metric, options) for r in by_lr[lr] if r.status == "done") for lr in lrs]
        ax.plot(lrs, [100 * s if s is not None else math.nan for s in scores], marker="o", label=label)
        diverged = [lr for lr in lrs if any(r.status == "diverged" for r in by_lr[lr])]
        if diverged:  # marked apart, at the foot of the axis, with how many of the seeds diverged
            color = ax.lines[-1].get_color()
            ax.plot(diverged, [0] * len(diverged), "x", linestyle="none", color=color, markersize=9)
            for lr in diverged:
                share = f"{sum(r.status == 'diverged' for r in by_lr[lr])}/{len(by_lr[lr])}"
                ax.annotate(share, (lr, 0), textcoords="offset points", xytext=(0, 6), ha="center", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{options.statistic} {options.metric.replace('_', ' ')} (%)")
    ax.set_title("Accuracy against learning rate (x: diverged seeds, not drawn as 0%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="configuration")


CURVES = (
    ("train_accuracy", "accuracy (%)", 100.0),
    ("test_accuracy", "accuracy (%)", 100.0),
    ("train_loss", "loss", 1.0),
    ("test_loss", "loss", 1.0),
)
"""The training curves' rows: metric, axis label, scale."""


def _draw_curves(fig: Any, table: dict[str, dict[float, list[RunRecord]]]) -> None:
    """Accuracy and loss against epoch, one column per configuration, one line per learning rate
    (mean over seeds); a metric no run recorded leaves its row out."""
    import matplotlib

    labels = list(table)
    runs_all = [r for by_lr in table.values() for runs in by_lr.values() for r in runs]
    rows = [row for row in CURVES if any(r.series(row[0]) for r in runs_all)]
    axes = panel_grid(fig, len(rows) * len(labels), columns=len(labels)) if labels and rows else []
    all_lrs = sorted({lr for by_lr in table.values() for lr in by_lr})
    colors = matplotlib.colormaps["viridis"]
    color = {lr: colors(i / max(1, len(all_lrs) - 1)) for i, lr in enumerate(all_lrs)}
    for column, label in enumerate(labels):
        for row, (metric, unit, scale) in enumerate(rows):
            ax = axes[row * len(labels) + column]
            for lr in sorted(table[label]):
                runs = table[label][lr]
                curve = mean_curve([r.series(metric) for r in runs])
                if curve:
                    ax.plot(
                        range(1, len(curve) + 1),
                        finite_or_nan(scale * v for v in curve),
                        color=color[lr],
                        label=f"{lr:g}",
                    )
            values = [v for line in ax.get_lines() for v in line.get_ydata() if math.isfinite(v) and v > 0]
            if unit == "loss" and values and max(values) > 10 * min(values):  # log only across decades
                ax.set_yscale("log")
            ax.set_title(f"{label}: {metric.replace('_', ' ')}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(unit)
            ax.grid(True, alpha=0.3)
            if column == len(labels) - 1 and row == 0:
                ax.legend(title="learning rate", fontsize="small")


class PlacementShareOptions(LrSweepOptions):
    full: str = Field("all", description="Group label of BN at every hidden site.")
    partial: str = Field("final", description="Group label of BN on the logits only.")
    baseline: str = Field("none", description="Group label of the unnormalized network.")


def placement_share(study: StudyResults, options: PlacementShareOptions) -> AnalysisResult:
    """Share of BN's benefit that normalizing only the final layer recovers (Bjorck et al., RQ4).

    Per seed, at each placement's best learning rate for that seed (chosen on ``select_on``):
    ``gain = acc[full] − acc[baseline]`` and ``partial = acc[partial] − acc[baseline]`` (points).
    Values: ``normalization_gain`` (Estimate over seeds) and ``final_layer_share``, the ratio of
    the mean partial gain to the mean gain over every seed (a seed where BN does not help counts),
    with Fieller's interval (``bnbench.intervals``).
    """
    table = sweep_table(study, options)
    if not table:
        return AnalysisResult()
    at_best = {label: per_seed_at_best(by_lr, options) for label, by_lr in table.items()}
    empty: dict[int, tuple[float, float]] = {}
    full, partial, base = (at_best.get(k, empty) for k in (options.full, options.partial, options.baseline))
    gains = {s: 100 * (full[s][1] - base[s][1]) for s in full.keys() & base.keys()}
    partial_gains = {s: 100 * (partial[s][1] - base[s][1]) for s in partial.keys() & base.keys()}
    values: dict[str, ClaimValue] = {}
    put(values, "normalization_gain", over_seeds(gains.values(), unit="points"))
    # every seed counts, a seed where BN does not help too: the ratio of the mean gains (Fieller)
    put(values, "final_layer_share", ratio_of_means(partial_gains, gains, unit="of BN's gain"))
    accuracy = {label: over_seeds(v for _, v in at_best.get(label, empty).values()) for label in table}
    base_acc = accuracy.get(options.baseline)
    rows = []
    for label in (options.full, options.partial, options.baseline):
        acc = accuracy.get(label)
        best_lrs = sorted({lr for lr, _ in at_best.get(label, empty).values()})
        gain = None if acc is None or base_acc is None else acc.value - base_acc.value
        rows.append(
            [
                label,
                ", ".join(fmt(lr) for lr in best_lrs) or "—",
                fmt(None if acc is None else 100 * acc.value, 4),
                fmt(None if gain is None else 100 * gain, 3),
            ]
        )
    share = values.get("final_layer_share")
    if isinstance(share, Estimate) and math.isfinite(share.value):
        verdict = f"the final layer alone recovers {100 * share.value:.0f}% of BN's gain (ratio of mean gains)"
    elif "normalization_gain" in values:
        verdict = "BN's mean gain over the baseline is 0 here, so there is no share to measure"
    else:
        verdict = "not measured"
    tables = [
        Table(
            f"Normalizing only the final layer (at each placement's best lr per seed): {verdict}",
            ["placement", "best lr (per seed)", "accuracy %", "gain over baseline (points)"],
            rows,
        )
    ]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        labels = [options.full, options.partial, options.baseline]
        accs = [accuracy.get(label) for label in labels]
        ax.bar(
            labels, [100 * a.value if a is not None else 0 for a in accs], color=["tab:blue", "tab:orange", "tab:gray"]
        )
        ax.set_xlabel("placement")
        ax.set_ylabel(f"{options.statistic} {options.metric.replace('_', ' ')} at best lr (%)")
        ax.set_title(f"Normalizing only the final layer: {verdict}", fontsize="medium")

    return AnalysisResult(tables, [Figure("placement_share", draw)], values)

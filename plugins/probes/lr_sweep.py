"""Analyses of training studies: accuracy against learning rate, and the final layer's share.

Bjorck et al. 2018, section 2 and Figure 1 (RQ1: BN trains at larger learning rates, which
converge faster and generalize better) and the final-layer question (RQ4: how much of BN's
benefit normalizing only the logits recovers).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from harness.api import AnalysisResult, Figure, RunRecord, StudyResults, Table
from plugins.probes.common import (
    CompareOptions,
    axis_value,
    finished,
    finite_or_nan,
    fmt,
    group_runs,
    mean,
    mean_curve,
    panel_grid,
    put,
    ratio,
)

LR_AXIS = "optimizer.lr"


class LrSweepOptions(CompareOptions):
    metric: str = Field("test_accuracy", description="The per-epoch metric compared across learning rates.")
    statistic: Literal["final", "best"] = Field(
        "final", description="final: the metric after the last epoch (the paper's); best: its maximum over epochs."
    )
    lr_axis: str = Field(LR_AXIS, description="The study's learning-rate axis.")


def _score(run: RunRecord, options: LrSweepOptions) -> float | None:
    """A run's accuracy; a diverged run counts as 0 (so it is never the best learning rate)."""
    if run.status == "diverged":
        return 0.0
    return run.final(options.metric) if options.statistic == "final" else run.best(options.metric)


def sweep_table(study: StudyResults, options: LrSweepOptions) -> dict[str, dict[float, list[RunRecord]]]:
    """Group label (every axis but the learning rate) → learning rate → runs."""
    table: dict[str, dict[float, list[RunRecord]]] = {}
    for label, runs in group_runs(finished(study), exclude={options.lr_axis}).items():
        by_lr = table.setdefault(label, {})
        for run in runs:
            by_lr.setdefault(float(axis_value(run, options.lr_axis)), []).append(run)
    return table


def best_point(by_lr: dict[float, list[RunRecord]], options: LrSweepOptions) -> tuple[float | None, float | None]:
    """``(learning rate, mean score)`` of the best learning rate of one group."""
    scored = [(lr, mean(_score(r, options) for r in runs)) for lr, runs in by_lr.items()]
    scored = [(lr, s) for lr, s in scored if s is not None]
    if not scored:
        return None, None
    lr, score = max(scored, key=lambda item: (item[1], item[0]))
    return lr, score


def lr_sweep(study: StudyResults, options: LrSweepOptions) -> AnalysisResult:
    """Accuracy against learning rate per configuration, training curves (Bjorck et al. Fig. 1).

    Values: ``accuracy.<group>`` (mean over seeds at the group's best learning rate, 0..1),
    ``best_lr.<group>``, ``largest_stable_lr.<group>`` (largest learning rate no seed of which
    diverged), ``diverged_runs.<group>``, and comparing ``normalized`` with ``unnormalized``:
    ``best_lr_ratio`` and ``accuracy_gain``.
    """
    table = sweep_table(study, options)
    if not table:
        return AnalysisResult()  # nothing run yet: no table, no figure, claims "not measured"
    lrs = sorted({lr for by_lr in table.values() for lr in by_lr}, reverse=True)
    values: dict[str, float] = {}
    rows = []
    for label, by_lr in table.items():
        best_lr, best = best_point(by_lr, options)
        stable = [lr for lr, runs in by_lr.items() if all(r.status != "diverged" for r in runs)]
        diverged = sum(r.status == "diverged" for runs in by_lr.values() for r in runs)
        cells = []
        for lr in lrs:
            runs = by_lr.get(lr, [])
            score = mean(_score(r, options) for r in runs)
            down = sum(r.status == "diverged" for r in runs)
            cells.append(
                ""
                if not runs
                else f"{fmt(None if score is None else 100 * score, 4)}" + (f" ({down} div)" if down else "")
            )
        rows.append([label, *cells, fmt(best_lr), fmt(None if best is None else 100 * best, 4)])
        put(values, f"accuracy.{label}", best)
        put(values, f"best_lr.{label}", best_lr)
        put(values, f"largest_stable_lr.{label}", max(stable) if stable else None)
        values[f"diverged_runs.{label}"] = float(diverged)
    normalized, unnormalized = table.get(options.normalized), table.get(options.unnormalized)
    if normalized and unnormalized:
        (lr_n, acc_n), (lr_u, acc_u) = best_point(normalized, options), best_point(unnormalized, options)
        put(values, "best_lr_ratio", ratio(lr_n, lr_u))
        if acc_n is not None and acc_u is not None:
            values["accuracy_gain"] = acc_n - acc_u
    metric = f"{options.statistic} {options.metric.replace('_', ' ')} %"
    tables = [
        Table(
            f"Accuracy against learning rate ({metric}, mean over seeds)",
            ["configuration", *(f"lr {lr:g}" for lr in lrs), "best lr", "at best lr"],
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
        scores = [mean(_score(r, options) for r in by_lr[lr]) for lr in lrs]
        ax.plot(lrs, [100 * s if s is not None else math.nan for s in scores], marker="o", label=label)
        diverged = [lr for lr in lrs if any(r.status == "diverged" for r in by_lr[lr])]
        if diverged:
            ax.plot(diverged, [0] * len(diverged), "x", color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{options.statistic} {options.metric.replace('_', ' ')} (%)")
    ax.set_title("Accuracy against learning rate (x: diverged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="configuration")


def _draw_curves(fig: Any, table: dict[str, dict[float, list[RunRecord]]]) -> None:
    import matplotlib

    labels = list(table)
    axes = panel_grid(fig, 2 * len(labels), columns=len(labels)) if labels else []
    all_lrs = sorted({lr for by_lr in table.values() for lr in by_lr})
    colors = matplotlib.colormaps["viridis"]
    color = {lr: colors(i / max(1, len(all_lrs) - 1)) for i, lr in enumerate(all_lrs)}
    for column, label in enumerate(labels):
        for row, metric in enumerate(("train_accuracy", "test_accuracy")):
            ax = axes[row * len(labels) + column]
            for lr in sorted(table[label]):
                runs = table[label][lr]
                curve = mean_curve([r.series(metric) for r in runs])
                if curve:
                    ax.plot(
                        range(1, len(curve) + 1),
                        finite_or_nan(100 * v for v in curve),
                        color=color[lr],
                        label=f"{lr:g}",
                    )
            ax.set_title(f"{label}: {metric.replace('_', ' ')}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (%)")
            ax.grid(True, alpha=0.3)
            if column == len(labels) - 1 and row == 0:
                ax.legend(title="learning rate", fontsize="small")


class PlacementShareOptions(LrSweepOptions):
    full: str = Field("all", description="Group label of BN at every hidden site.")
    partial: str = Field("final", description="Group label of BN on the logits only.")
    baseline: str = Field("none", description="Group label of the unnormalized network.")


def placement_share(study: StudyResults, options: PlacementShareOptions) -> AnalysisResult:
    """Share of BN's benefit that normalizing only the final layer recovers (Bjorck et al., RQ4).

    At each group's best learning rate: ``normalization_gain = acc[full] - acc[baseline]`` and,
    when that gain is positive (else there is no benefit to share), ``final_layer_share =
    (acc[partial] - acc[baseline]) / (acc[full] - acc[baseline])``.
    """
    table = sweep_table(study, options)
    if not table:
        return AnalysisResult()
    best = {label: best_point(by_lr, options) for label, by_lr in table.items()}
    base = best.get(options.baseline, (None, None))[1]
    rows = []
    for label in (options.full, options.partial, options.baseline):
        lr, acc = best.get(label, (None, None))
        gain = None if acc is None or base is None else acc - base
        rows.append(
            [label, fmt(lr), fmt(None if acc is None else 100 * acc, 4), fmt(None if gain is None else 100 * gain, 3)]
        )
    values: dict[str, float] = {}
    full, partial = best.get(options.full, (None, None))[1], best.get(options.partial, (None, None))[1]
    if full is not None and base is not None:
        values["normalization_gain"] = full - base
        if partial is not None and full - base > 0:
            values["final_layer_share"] = (partial - base) / (full - base)
    share = values.get("final_layer_share")
    if share is not None:
        verdict = f"the final layer alone recovers {100 * share:.0f}% of BN's gain"
    elif "normalization_gain" in values:
        verdict = "BN gives no gain over the baseline here, so there is no share to measure"
    else:
        verdict = "not measured"
    tables = [
        Table(
            f"Normalizing only the final layer (at each placement's best lr): {verdict}",
            ["placement", "best lr", "accuracy %", "gain over baseline (points)"],
            rows,
        )
    ]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        labels = [options.full, options.partial, options.baseline]
        accs = [best.get(label, (None, None))[1] for label in labels]
        ax.bar(labels, [100 * a if a is not None else 0 for a in accs], color=["tab:blue", "tab:orange", "tab:gray"])
        ax.set_xlabel("placement")
        ax.set_ylabel(f"{options.statistic} {options.metric.replace('_', ' ')} at best lr (%)")
        ax.set_title(f"Normalizing only the final layer: {verdict}", fontsize="medium")

    return AnalysisResult(tables, [Figure("placement_share", draw)], values)

"""Every other metric a training study recorded: those none of its analyses shows.

Registered with ``standard="after"``: the report runs it on every training study, after the study's
own analyses. A metric a plugin
records (a third party's own included) thus always appears in the report: its final value per
configuration (mean ± std over the seeds that finished, or the value itself for one seed) and,
with figures, its mean curve over epochs per configuration. Metrics an analysis declares it
shows (``reads=`` at registration, ``StudyResults.shown``) are left out.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bnbench import Options
from bnbench.analysis import finite, finite_or_nan, mean_curve, mean_std
from bnbench.api import AnalysisResult, Figure, StudyResults, Table
from bnbench.plugins.analyses.results_table import Row, group_rows
from bnbench.plugins.probes.common import panel_grid

TABLE_METRICS = 6
"""Metrics per table (a table per six keeps each one readable on a terminal)."""


class OtherMetricsOptions(Options):
    max_curves: int = Field(
        12, ge=0, le=100, description="Metrics drawn as curves (one panel each; the table lists them all)."
    )


def other_metrics(study: StudyResults, options: OtherMetricsOptions) -> AnalysisResult:
    """The final value of each metric no other analysis of the study shows, per configuration
    (mean ± std over the seeds that finished, n of them), and their curves over epochs."""
    metrics = _unshown(study)
    rows = [row for row in group_rows(study) if row.done or row.diverged]
    if not metrics or not rows:
        return AnalysisResult()
    tables, records = [], []
    chunks = [metrics[i : i + TABLE_METRICS] for i in range(0, len(metrics), TABLE_METRICS)]
    for number, chunk in enumerate(chunks, 1):
        body = []
        for row in rows:
            finished = row.done + row.diverged
            cells = []
            for metric in chunk:
                values = finite(r.final(metric) for r in finished)
                cells.append(_cell(values))
                mean, std = mean_std(values)
                config = {a: row.config.get(a, "") for a in study.axes}
                records.append({**config, "metric": metric, "mean": mean, "std": std, "n": len(values)})
            body.append([*([row.config.get(a, "") for a in study.axes] or ["—"]), str(len(finished)), *cells])
        part = f" ({number}/{len(chunks)})" if len(chunks) > 1 else ""
        headers = [*(study.axes or ["(single configuration)"]), "n", *chunk]
        tables.append(Table(f"Other metrics, final epoch{part}", headers, body, records=None))
    if tables:
        tables[0].records = records
    shown = metrics[: options.max_curves]
    return AnalysisResult(tables=tables, figures=[Figure("other_metrics", lambda fig: _draw(fig, study, rows, shown))])


def _unshown(study: StudyResults) -> list[str]:
    """The metrics the study's runs recorded that none of its analyses shows, in recorded order."""
    seen: dict[str, None] = {}
    for run in study.runs:
        for _, _, metrics in run.epochs:
            for name in metrics:
                seen.setdefault(name)
    return [name for name in seen if not study.is_shown(name)]


def _cell(values: list[float]) -> str:
    """A value for one seed (no ± 0 that only says n = 1), else mean ± std; — for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    mean, std = mean_std(values)
    return f"{mean:.4g} ± {std:.2g}"


def _label(study: StudyResults, row: Row) -> str:
    return ", ".join(f"{a.split('.')[-1]}={row.config.get(a, '')}" for a in study.axes) or study.name


def _draw(fig: Any, study: StudyResults, rows: list[Row], metrics: list[str]) -> None:
    axes = panel_grid(fig, len(metrics), columns=3)
    for ax, metric in zip(axes, metrics, strict=True):
        for index, row in enumerate(rows):
            curve = mean_curve([r.series(metric) for r in row.done + row.diverged])
            if curve:  # markers: a one-epoch curve is a visible point, not an empty axis
                ax.plot(
                    range(1, len(curve) + 1),
                    finite_or_nan(curve),
                    marker="o",
                    markersize=3,
                    linestyle=("-", "--", ":", "-.")[index // 10 % 4],
                    label=_label(study, row),
                )
        ax.set_title(metric, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    if axes and len(rows) > 1:
        axes[0].legend(fontsize="x-small")

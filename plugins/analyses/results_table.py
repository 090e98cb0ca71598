"""The standard results table of a training study: a row per configuration, seeds aggregated.

Registered with ``standard=True``: the report runs it on every training study, before the
study's own analyses, and ``bnbench report --format csv`` gathers its machine-readable rows
(``Table.records``) across studies into one table.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from bnbench import Options
from bnbench.analysis import mean_std, pm
from bnbench.api import AnalysisResult, RunRecord, StudyResults, Table
from bnbench.progress import duration_text


class ResultsTableOptions(Options):
    accuracy: str = Field("test_accuracy", description="The metric shown as accuracy (final and best, in %).")
    loss: str = Field("train_loss", description="The metric shown as the final loss.")


@dataclass
class Row:
    """One configuration of the study: its runs by how they ended."""

    config: dict[str, Any]
    seeds: int = 0
    done: list[RunRecord] = field(default_factory=list)
    diverged: list[RunRecord] = field(default_factory=list)
    failed: int = 0
    pending: int = 0
    failures: list[RunRecord] = field(default_factory=list)
    """The failed runs (their ``error`` says why)."""


def group_rows(study: StudyResults) -> list[Row]:
    """The study's planned runs by configuration (their axis values), in plan order."""
    stored = {run.run_id: run for run in study.runs}
    rows: dict[str, Row] = {}
    for run_id, axes, _seed in study.plan:
        key = repr(sorted((k, repr(v)) for k, v in axes.items()))
        row = rows.setdefault(key, Row(config=axes))
        row.seeds += 1
        run = stored.get(run_id)
        if run is None or run.status in ("running", "interrupted"):
            row.pending += 1
        elif run.status == "done":
            row.done.append(run)
        elif run.status == "diverged":
            row.diverged.append(run)
        else:
            row.failed += 1
            row.failures.append(run)
    return list(rows.values())


COUNTS = ("seeds", "finished", "diverged", "failed", "pending", "seconds_per_run", "images_per_second")


def csv_measures(options: ResultsTableOptions) -> tuple[str, ...]:
    """The names of a configuration's record (the CSV's columns), after the metrics it shows:
    ``final_test_acc_mean`` … ``final_train_loss_std`` with the default metrics, else named after
    the chosen ones (``final_validation_accuracy_mean``)."""
    accuracy = "test_acc" if options.accuracy == "test_accuracy" else options.accuracy
    names = [
        f"{kind}_{metric}_{stat}"
        for kind, metric in (("final", accuracy), ("best", accuracy), ("final", options.loss))
        for stat in ("mean", "std")
    ]
    return (*names, *COUNTS)


def results_table(study: StudyResults, options: ResultsTableOptions) -> AnalysisResult:
    """Final and best accuracy, final loss (mean ± std over seeds), seeds finished, divergences
    (and at which step), failures, time per run and throughput, per configuration."""
    accuracy = "test acc" if options.accuracy == "test_accuracy" else options.accuracy
    loss = "train loss" if options.loss == "train_loss" else options.loss
    columns = [f"final {accuracy} %", f"best {accuracy} %", f"final {loss}", "seeds", "diverged", "failed"]
    columns += ["time/run", "img/s", "device"]
    body, records = [], []
    grouped = group_rows(study)
    for row in grouped:
        finals = [r.final(options.accuracy) for r in row.done]
        bests = [r.best(options.accuracy) for r in row.done]
        losses = [r.final(options.loss) for r in row.done]
        body.append(
            [
                *([row.config.get(a, "") for a in study.axes] or ["—"]),
                pm(finals, 100, 2, fixed=True),
                pm(bests, 100, 2, fixed=True),
                pm(losses, 1, 4, fixed=True),
                f"{len(row.done) + len(row.diverged)}/{row.seeds}",
                _diverged_cell(row),
                str(row.failed) if row.failed else "",
                *_cost_cells(row),
            ]
        )
        measures = dict(zip(csv_measures(options), _measures(row, finals, bests, losses), strict=True))
        records.append({**{a: row.config.get(a, "") for a in study.axes}, **measures})
    headers = [*(study.axes or ["(single configuration)"]), *columns]
    tables = [Table("Results", headers, body, records=records)]
    failures = [(row, run) for row in grouped for run in row.failures]
    if failures:  # why they failed: the store has each error, and the report shows it
        rows = [
            [*([row.config.get(a, "") for a in study.axes] or ["—"]), run.seed, _first_line(run.error)]
            for row, run in failures
        ]
        tables.append(Table("Failed runs", [*(study.axes or ["(single configuration)"]), "seed", "error"], rows))
    return AnalysisResult(tables=tables)


def _first_line(error: str | None, width: int = 160) -> str:
    lines = (error or "").strip().splitlines()
    line = lines[0] if lines else "no error recorded"
    return line if len(line) <= width else line[: width - 1] + "…"


def _measures(row: Row, finals: list, bests: list, losses: list) -> list[Any]:
    cells: list[Any] = []
    for values in (finals, bests, losses):
        cells += ["" if v is None else f"{v:.6g}" for v in mean_std(values)]
    cells += [row.seeds, len(row.done) + len(row.diverged), len(row.diverged), row.failed, row.pending]
    durations = [r.duration_s for r in row.done + row.diverged if r.duration_s]
    speeds = [r.images_per_second for r in row.done if r.images_per_second]
    cells += [f"{statistics.fmean(d):.6g}" if d else "" for d in (durations, speeds)]
    return cells


def _cost_cells(row: Row) -> list[str]:
    """Mean wall time per finished run, training images per second, and the devices used."""
    runs = row.done + row.diverged
    durations = [r.duration_s for r in runs if r.duration_s]
    speeds = [r.images_per_second for r in row.done if r.images_per_second]
    devices = sorted({str(r.environment.get("gpu") or r.environment.get("device", "?")) for r in runs})
    return [
        duration_text(statistics.fmean(durations), digits=1) if durations else "—",
        f"{statistics.fmean(speeds):.0f}" if speeds else "—",
        ", ".join(devices) or "—",
    ]


def _diverged_cell(row: Row) -> str:
    if not row.diverged:
        return "0"
    steps = sorted(r.diverged_step for r in row.diverged if r.diverged_step is not None)
    at = f" (step {steps[0]})" if len(steps) == 1 else (f" (steps {steps[0]}–{steps[-1]})" if steps else "")
    return f"{len(row.diverged)}{at}"

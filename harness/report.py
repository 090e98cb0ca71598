"""Comparison tables: one per study, a row per configuration, seeds aggregated."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from harness.manifest import Manifest
from harness.store import Store, StoredRun

FORMATS = ("github", "latex", "plain", "csv")
ACCURACY = "test_accuracy"


@dataclass
class StudyRuns:
    """The runs of one study: ``(run id, axes, seed)`` planned, and what the store holds."""

    name: str
    axes: list[str]
    planned: list[tuple[str, dict[str, Any], int]]
    stored: dict[str, StoredRun]
    description: str = ""


@dataclass
class Row:
    config: dict[str, Any]
    seeds: int = 0
    done: list[StoredRun] = field(default_factory=list)
    diverged: list[StoredRun] = field(default_factory=list)
    failed: int = 0
    pending: int = 0


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return None, None
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def _pm(stats: tuple[float | None, float | None], scale: float = 1.0, digits: int = 2) -> str:
    mean, std = stats
    if mean is None:
        return "—"
    return f"{mean * scale:.{digits}f} ± {(std or 0.0) * scale:.{digits}f}"


def group_rows(study: StudyRuns) -> list[Row]:
    rows: dict[str, Row] = {}
    for run_id, axes, _seed in study.planned:
        key = repr(sorted((k, repr(v)) for k, v in axes.items()))
        row = rows.setdefault(key, Row(config=axes))
        row.seeds += 1
        stored = study.stored.get(run_id)
        if stored is None or stored.status in ("running", "interrupted"):
            row.pending += 1
        elif stored.status == "done":
            row.done.append(stored)
        elif stored.status == "diverged":
            row.diverged.append(stored)
        else:
            row.failed += 1
    return list(rows.values())


COLUMNS = ("final test acc %", "best test acc %", "final train loss", "seeds", "diverged", "failed")


def study_table(study: StudyRuns, fmt: str = "github") -> str:
    """The study's comparison table in ``fmt`` (github, latex, plain or csv)."""
    rows = group_rows(study)
    axes = study.axes or ["(single configuration)"]
    if fmt == "csv":
        return _csv(study, rows)
    body = []
    for row in rows:
        config = [row.config.get(a, "") for a in study.axes] or ["—"]
        body.append(
            [
                *config,
                _pm(_stats([r.final(ACCURACY) for r in row.done]), 100),
                _pm(_stats([r.best(ACCURACY) for r in row.done]), 100),
                _pm(_stats([r.final("train_loss") for r in row.done]), 1, 4),
                f"{len(row.done) + len(row.diverged)}/{row.seeds}",
                _diverged_cell(row),
                str(row.failed) if row.failed else "",
            ]
        )
    return tabulate(body, headers=[*axes, *COLUMNS], tablefmt={"latex": "latex_booktabs"}.get(fmt, fmt))


def _diverged_cell(row: Row) -> str:
    if not row.diverged:
        return "0"
    steps = sorted(r.diverged_step for r in row.diverged if r.diverged_step is not None)
    at = f" (step {steps[0]})" if len(steps) == 1 else (f" (steps {steps[0]}–{steps[-1]})" if steps else "")
    return f"{len(row.diverged)}{at}"


def _csv(study: StudyRuns, rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "study",
            *study.axes,
            "final_test_acc_mean",
            "final_test_acc_std",
            "best_test_acc_mean",
            "best_test_acc_std",
            "final_train_loss_mean",
            "final_train_loss_std",
            "seeds",
            "finished",
            "diverged",
            "failed",
            "pending",
        ]
    )
    for row in rows:
        cells: list[Any] = [study.name, *(row.config.get(a, "") for a in study.axes)]
        for stats in (
            _stats([r.final(ACCURACY) for r in row.done]),
            _stats([r.best(ACCURACY) for r in row.done]),
            _stats([r.final("train_loss") for r in row.done]),
        ):
            cells += ["" if v is None else f"{v:.6g}" for v in stats]
        cells += [row.seeds, len(row.done) + len(row.diverged), len(row.diverged), row.failed, row.pending]
        writer.writerow(cells)
    return out.getvalue()


def render(studies: Sequence[StudyRuns], fmt: str = "github") -> str:
    """All studies' tables, each under its name (csv: one table with a study column)."""
    if fmt == "csv":
        parts = [study_table(s, "csv") for s in studies]
        return parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:]) if parts else ""
    sections = []
    for study in studies:
        heading = f"## {study.name}" if fmt == "github" else study.name
        if fmt == "latex":
            heading = f"% {study.name}"
        text = [heading]
        if study.description and fmt != "latex":
            text.append(study.description)
        pending = sum(1 for run_id, _, _ in study.planned if run_id not in study.stored)
        if pending and fmt != "latex":
            text.append(f"({pending} of {len(study.planned)} runs not yet run)")
        text.append(study_table(study, fmt))
        sections.append("\n\n".join(text))
    return "\n\n".join(sections) + "\n"


def from_manifest(manifest: Manifest, store: Store) -> list[StudyRuns]:
    """The manifest's studies (as expanded now) with whatever the store holds of them."""
    stored = store.load(run.run_id for run in manifest.runs())
    return [
        StudyRuns(
            name=study.name,
            axes=study.axes,
            planned=[(r.run_id, r.axes, r.spec.seed) for r in study.runs],
            stored={r.run_id: stored[r.run_id] for r in study.runs if r.run_id in stored},
            description=study.description,
        )
        for study in manifest.studies
    ]


def from_store(store: Store) -> list[StudyRuns]:
    """Every study the store has runs of, as the sweeps that ran them described them."""
    result = []
    for name, members in store.studies().items():
        stored = store.load(run_id for run_id, _ in members)
        axes: list[str] = []
        for _, run_axes in members:
            axes += [a for a in run_axes if a not in axes]
        planned = [
            (run_id, run_axes, int(stored[run_id].spec.get("seed", 0)) if run_id in stored else 0)
            for run_id, run_axes in members
        ]
        result.append(StudyRuns(name=name, axes=axes, planned=planned, stored=stored))
    return result

"""The report: each study's analyses (the standard ones first, for training studies: the
comparison table, a row per configuration), the claims and their verdicts, and figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.analysis import as_estimate, interval, verdict
from harness.api import AnalysisResult, Estimate, RunRecord, StudyResults
from harness.errors import BnbenchError
from harness.manifest import Manifest
from harness.registry import Registry
from harness.spec import ClaimSpec, Component
from harness.store import Store

FORMATS = ("github", "latex", "plain", "csv")


@dataclass
class StudyRuns:
    """The runs of one study: ``(run id, axes, seed)`` planned, and what the store holds."""

    name: str
    axes: list[str]
    planned: list[tuple[str, dict[str, Any], int]]
    stored: dict[str, RunRecord]
    description: str = ""
    analyses: list[Component] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """How many of the study's planned runs the store holds nothing of yet."""
        return sum(1 for run_id, _, _ in self.planned if run_id not in self.stored)

    @property
    def is_training(self) -> bool:
        """Whether the study trains (else it only probes): probes have no accuracy table."""
        return any(not r.spec.get("probe") for r in self.stored.values()) or not self.stored

    def results(self) -> StudyResults:
        return StudyResults(
            self.name, self.axes, list(self.stored.values()), planned=len(self.planned), plan=list(self.planned)
        )


@dataclass
class Report:
    """Everything ``bnbench report`` shows: per-study tables, analyses, claims, figures."""

    studies: list[StudyRuns]
    registry: Registry
    claims: list[ClaimSpec] = field(default_factory=list)
    analyses: dict[str, list[tuple[Component, AnalysisResult | str]]] = field(default_factory=dict)
    """Study → its analyses' results (or the error message of an analysis that failed)."""
    scale_note: str = ""
    """What the claims' verdicts are worth at this scale (a profile's note, e.g. a smoke profile's)."""

    def standard(self) -> list[Component]:
        """The analyses registered as standard (``standard=True``): every training study gets them first."""
        return [Component(name=e.name) for e in self.registry.entries("analysis") if e.extras.get("standard")]

    def analyze(self) -> Report:
        standard = self.standard()
        for study in self.studies:
            outcomes: list[tuple[Component, AnalysisResult | str]] = []
            for component in (standard if study.is_training else []) + study.analyses:
                entry = self.registry.get("analysis", component.name)
                try:
                    result = entry.factory(study.results(), entry.options.model_validate(component.all_options))
                    if not isinstance(result, AnalysisResult):
                        raise TypeError(f"returned {type(result).__name__}, not an AnalysisResult")
                    outcomes.append((component, result))
                except Exception as exc:
                    outcomes.append((component, f"analysis {component.name!r} failed: {type(exc).__name__}: {exc}"))
            self.analyses[study.name] = outcomes
        return self

    def value(self, study: str, name: str) -> Estimate | None:
        """The value ``name`` of ``study``'s analyses (the first analysis reporting it), as an estimate."""
        for _, result in self.analyses.get(study, []):
            if isinstance(result, AnalysisResult) and name in result.values:
                return as_estimate(result.values[name])
        return None

    def reported_values(self, study: str) -> set[str]:
        """The names of the values ``study``'s analyses reported."""
        return {name for _, r in self.analyses.get(study, []) if isinstance(r, AnalysisResult) for name in r.values}

    def claims_rows(self) -> list[list[Any]]:
        """A row per claim: claim, study, measured, interval, threshold, source, verdict."""
        rows = []
        for claim in self.claims:
            estimate = self.value(claim.study, claim.value)
            decision, reason = verdict(estimate, claim.at_least, claim.at_most, claim.confidence)
            reported = self.reported_values(claim.study)
            if estimate is None and reported and claim.value not in reported:
                shown_names = ", ".join(sorted(reported)[:12]) + (", ..." if len(reported) > 12 else "")
                reason = f"its analyses report no value {claim.value!r} (a typo?); they report: {shown_names}"
            shown = "—" if estimate is None else _number(estimate.value)
            if estimate is None:
                spread = ""
            elif not estimate.replicates:
                spread = f"point value: {estimate.basis}" if estimate.basis else "point value"
            else:
                bounds = interval(estimate, claim.confidence)
                n = len(estimate.replicates)
                spread = (
                    f"n={n}, no interval"
                    if bounds is None
                    else f"[{_number(bounds.low)}, {_number(bounds.high)}] ({100 * claim.confidence:g}%, n={n})"
                )
            label = decision + (f" ({reason})" if reason else "")
            if self.scale_note:
                label += f" [{self.scale_note}]"
            rows.append(
                [
                    claim.claim,
                    claim.study,
                    f"{claim.value} = {shown}",
                    spread,
                    claim.threshold(),
                    claim.source or "not given",
                    label,
                ]
            )
        return rows

    @property
    def claims_title(self) -> str:
        return f"Claims ({self.scale_note})" if self.scale_note else "Claims"

    def render(self, fmt: str = "github") -> str:
        """All tables in ``fmt``: github, latex, plain or csv."""
        if fmt == "csv":
            return self._render_csv()
        tablefmt = {"latex": "latex_booktabs"}.get(fmt, fmt)
        sections = []
        for study in self.studies:
            text = [_heading(study.name, fmt, 2)]
            if study.description and fmt != "latex":
                text.append(study.description)
            pending = study.pending
            if pending and fmt != "latex":
                text.append(f"({pending} of {len(study.planned)} runs not yet run)")
            for _, result in self.analyses.get(study.name, []):
                if isinstance(result, str):
                    text.append(result)
                    continue
                for table in result.tables:
                    text.append(_heading(table.title, fmt, 3))
                    text.append(tabulate(table.rows, headers=table.headers, tablefmt=tablefmt))
            sections.append("\n\n".join(text))
        if self.claims:
            sections.append(_heading(self.claims_title, fmt, 2))
            sections.append(tabulate(self.claims_rows(), headers=CLAIM_HEADERS, tablefmt=tablefmt))
        return "\n\n".join(sections) + "\n"

    def _render_csv(self) -> str:
        """One CSV table of the standard analyses' records across studies (a column per axis of
        any study, empty where a study lacks it), then every other table, each under a title row."""
        standard = {c.name for c in self.standard()}
        combined: list[tuple[StudyRuns, dict[str, Any]]] = []
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for study in self.studies:
            for component, result in self.analyses.get(study.name, []):
                if not isinstance(result, AnalysisResult):
                    continue
                for table in result.tables:
                    if component.name in standard and table.records is not None:
                        combined += [(study, record) for record in table.records]
                        continue
                    writer.writerow([])
                    writer.writerow([f"# {study.name}: {table.title}"])
                    writer.writerow(table.headers)
                    writer.writerows(table.rows)
        if self.claims:
            writer.writerow([])
            writer.writerow([f"# {self.claims_title}"])
            writer.writerow(CLAIM_HEADERS)
            writer.writerows(self.claims_rows())
        return _combined_csv(combined) + buffer.getvalue()

    def figure_images(self, study: StudyRuns) -> Iterator[tuple[str, bytes]]:
        """Each figure of ``study``'s analyses as ``(name, PNG bytes)``, drawn with matplotlib."""
        try:
            import matplotlib
        except ImportError:
            raise BnbenchError("figures need matplotlib: pip install 'bnbench[figures]'") from None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for _, result in self.analyses.get(study.name, []):
            if not isinstance(result, AnalysisResult):
                continue
            for figure in result.figures:
                fig = plt.figure(figsize=(6.4, 4.8))
                try:
                    figure.draw(fig)
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
                finally:
                    plt.close(fig)
                yield figure.name, buffer.getvalue()

    def save_figures(self, directory: Path) -> list[Path]:
        """Write every analysis figure as ``DIRECTORY/<study>__<name>.png``; return the paths."""
        written = []
        for study in self.studies:
            for name, png in self.figure_images(study):
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"{_safe(study.name)}__{_safe(name)}.png"
                path.write_bytes(png)
                written.append(path)
        return written


CLAIM_HEADERS = ["claim", "study", "measured", "interval", "threshold", "source", "verdict"]


def _combined_csv(rows: list[tuple[StudyRuns, dict[str, Any]]]) -> str:
    """``study``, every axis of any study, then the measures, one line per record."""
    if not rows:
        return ""
    axes = list(dict.fromkeys(a for study, _ in rows for a in study.axes))
    measures = list(dict.fromkeys(k for study, record in rows for k in record if k not in study.axes))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["study", *axes, *measures])
    for study, record in rows:
        writer.writerow([study.name, *(record.get(a, "") if a in study.axes else "" for a in axes)]
                        + [record.get(m, "") for m in measures])  # fmt: skip
    return out.getvalue()


def _number(value: float) -> str:
    return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:.4g}"


def _heading(title: str, fmt: str, level: int) -> str:
    if fmt == "github":
        return f"{'#' * level} {title}"
    if fmt == "latex":
        return f"% {title}"
    return title


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def from_manifest(manifest: Manifest, store: Store, registry: Registry) -> Report:
    """The manifest's studies (as planned) with whatever the store holds of them, analysed with
    ``registry`` (the session's: the plan is not expanded again nor the plugins reloaded)."""
    stored = store.load(run.run_id for run in manifest.runs())
    studies = [
        StudyRuns(
            name=study.name,
            axes=study.axes,
            planned=[(r.run_id, r.axes, r.spec.seed) for r in study.runs],
            stored={r.run_id: replace(stored[r.run_id], axes=r.axes) for r in study.runs if r.run_id in stored},
            description=study.description,
            analyses=study.analyses,
        )
        for study in manifest.studies
    ]
    note = manifest.settings.profile_notes.get(manifest.profile or "", "")
    return Report(studies, registry, manifest.claims, scale_note=note).analyze()


def from_store(store: Store, registry: Registry) -> Report:
    """Every study the store has runs of, as the sweeps that ran them described them.

    Probe studies get their probes' default analyses; a manifest's own analyses and claims
    need the manifest (``from_manifest``).
    """
    studies = []
    for name, members in store.studies().items():
        stored = store.load(run_id for run_id, _ in members)
        axes: list[str] = []
        for _, run_axes in members:
            axes += [a for a in run_axes if a not in axes]
        planned = [
            (run_id, run_axes, int(stored[run_id].spec.get("seed", 0)) if run_id in stored else 0)
            for run_id, run_axes in members
        ]
        records = {
            run_id: replace(stored[run_id], axes=run_axes) for run_id, run_axes, _ in planned if run_id in stored
        }
        probes = dict.fromkeys(r.spec["probe"]["name"] for r in records.values() if r.spec.get("probe"))
        analyses = [
            Component(name=a)
            for p in probes
            if registry.has("probe", p)
            for a in registry.get("probe", p).extras.get("analyses", ())
            if registry.has("analysis", a)
        ]
        studies.append(StudyRuns(name=name, axes=axes, planned=planned, stored=records, analyses=analyses))
    return Report(studies, registry).analyze()

"""The report: each study's analyses (the standard ones first, for training studies: the
comparison table, a row per configuration), the claims and their verdicts, and figures."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bnbench.analysis import Verdict, as_estimate, fmt, interval, spec_value, verdict
from bnbench.api import AnalysisResult, Estimate, Figure, RunRecord, StudyResults, Table
from bnbench.errors import BnbenchError
from bnbench.figures import FigureCache
from bnbench.files import OutputError, write_atomically
from bnbench.intervals import agree_exactly
from bnbench.manifest import Manifest, read_toml
from bnbench.records import FINISHED
from bnbench.registry import Registry
from bnbench.session import open_session
from bnbench.spec import CheckSpec, ClaimSpec, Component, ThresholdSpec
from bnbench.store import Store, definition_hash


@dataclass
class StudyRuns:
    """The runs of one study: ``(run id, axes, seed)`` planned, and what the store holds."""

    name: str
    axes: list[str]
    planned: list[tuple[str, dict[str, Any], int]]
    stored: dict[str, RunRecord]
    description: str = ""
    analyses: list[Component] = field(default_factory=list)
    reading_axis: str = ""
    """The axis whose values are readings: analysed one by one (``StudyHeader.reading_axis``)."""

    def signature(self) -> str:
        """What the study's analyses read, as text: its plan and each stored run's outcome (a
        figure's cache key: a rerun or a new result changes it)."""
        runs = [
            (run_id, axes, seed, *(
                (r.status, len(r.epochs), r.duration_s, r.diverged_step) if (r := self.stored.get(run_id)) else ()
            ))
            for run_id, axes, seed in self.planned
        ]  # fmt: skip
        return json.dumps([self.name, self.axes, self.reading_axis, runs], sort_keys=True, default=str)

    @property
    def pending(self) -> int:
        """How many of the study's planned runs the store holds nothing of yet."""
        return sum(1 for run_id, _, _ in self.planned if run_id not in self.stored)

    @property
    def is_training(self) -> bool:
        """Whether the study trains (else it only probes): probes have no accuracy table."""
        return any(not r.spec.get("probe") for r in self.stored.values()) or not self.stored

    def readings(self) -> dict[str, str]:
        """The reading axis's values (as the axes show them) → short labels, in plan order; empty
        without a reading axis. A component's label keeps only the options that differ between readings."""
        if not self.reading_axis:
            return {}
        values = list(dict.fromkeys(str(axes.get(self.reading_axis)) for _, axes, _ in self.planned))
        return dict(zip(values, reading_labels(values), strict=True))

    def results(self, reading: str | None = None) -> StudyResults:
        """The study's runs (at one reading, with the reading axis taken out of the axes)."""
        if reading is None:
            return StudyResults(
                self.name, self.axes, list(self.stored.values()), planned=len(self.planned), plan=list(self.planned)
            )
        axis = self.reading_axis
        plan = [
            (run_id, {k: v for k, v in axes.items() if k != axis}, seed)
            for run_id, axes, seed in self.planned
            if str(axes.get(axis)) == reading
        ]
        ids = {run_id for run_id, _, _ in plan}
        runs = [
            replace(r, axes={k: v for k, v in r.axes.items() if k != axis})
            for run_id, r in self.stored.items()
            if run_id in ids
        ]
        return StudyResults(self.name, [a for a in self.axes if a != axis], runs, planned=len(plan), plan=plan)


def _top_level_parts(text: str) -> list[str]:
    """``a=1, b=[2, 3], c=f(x=1, y=2)`` split at its top-level commas."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def reading_labels(values: list[str]) -> list[str]:
    """Short labels of readings: for component labels ``name(k=v, ...)`` the options that differ."""
    parsed = []
    for value in values:
        head, _, rest = value.partition("(")
        if not rest.endswith(")"):
            return values
        parsed.append((head, _top_level_parts(rest[:-1])))
    common = set.intersection(*(set(parts) for _, parts in parsed)) if parsed else set()
    heads = {head for head, _ in parsed}
    kept = [[p for p in parts if p not in common] for _, parts in parsed]
    # an option every reading sets shows its value alone ("pytorch_default", not "init=pytorch_default")
    keys = [{p.partition("=")[0] for p in parts} for parts in kept]
    everywhere = set.intersection(*keys) if keys else set()
    labels = []
    for (head, _), parts in zip(parsed, kept, strict=True):
        shown = [p.partition("=")[2] if p.partition("=")[0] in everywhere else p for p in parts]
        labels.append((f"{head}: " if len(heads) > 1 else "") + (" ".join(shown) or head))
    return labels


@dataclass(frozen=True)
class Decision:
    """A claim's or a check's verdict at one reading (``reading`` empty without one)."""

    test: ThresholdSpec
    reading: str
    """The reading's key (the reading axis's value; empty without one)."""
    shown: str
    """The reading's short label."""
    estimate: Estimate | None
    verdict: Verdict
    reason: str

    @property
    def label(self) -> str:
        return self.verdict + (f" ({self.reason})" if self.reason else "")


Outcome = tuple[Component, AnalysisResult | str]


@dataclass
class Report:
    """Everything ``bnbench report`` shows: per-study tables, analyses, claims, checks, figures."""

    studies: list[StudyRuns]
    registry: Registry
    claims: list[ClaimSpec] = field(default_factory=list)
    checks: list[CheckSpec] = field(default_factory=list)
    analyses: dict[str, list[Outcome]] = field(default_factory=dict)
    """Study → its analyses' results (or the error message of an analysis that failed), for a study
    without a reading axis."""
    readings: dict[str, dict[str, list[Outcome]]] = field(default_factory=dict)
    """Study with a reading axis → reading → its analyses' results at that reading."""
    scale_note: str = ""
    """What the claims' verdicts are worth at this scale (a profile's note, e.g. a smoke profile's)."""
    registrations: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    """The store's claim registrations (``Store.registrations``)."""
    results_held: dict[str, int] = field(default_factory=dict)
    """Study → finished results the store holds (pre-registration only matters once there are some)."""
    unprofiled: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Study → axis → the values the manifest without a profile has that this profile drops."""
    figure_cache: FigureCache | None = None
    """Where rendered figures are kept between reports (beside the store), if anywhere."""
    _drawn: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Figures drawn by ``draw_figures``, by cache key."""

    def standard(self, when: bool | str = True) -> list[Component]:
        """The analyses registered as standard: every training study gets those of ``standard=True``
        before its own analyses, and those of ``standard="after"`` after them."""
        entries = self.registry.entries("analysis")
        return [Component(name=e.name) for e in entries if e.extras.get("standard", False) == when]

    def _shown(self, components: list[Component]) -> frozenset[str]:
        """The metrics ``components`` declare they show (``reads=``, resolved with their options)."""
        shown: set[str] = set()
        for component in components:
            reads = self.registry.get("analysis", component.name).extras.get("reads", ())
            with contextlib.suppress(Exception):  # bad options fail the analysis itself, with its message
                shown |= set(reads(self.registry.options("analysis", component)) if callable(reads) else reads)
        return frozenset(shown)

    def _run_analyses(self, study: StudyRuns, results: StudyResults) -> list[Outcome]:
        outcomes: list[Outcome] = []
        if study.is_training:
            components = [*self.standard(), *study.analyses, *self.standard("after")]
        else:
            components = list(study.analyses)
        results = replace(results, shown=self._shown(components))
        for component in components:
            try:
                result = self.registry.build("analysis", component, results)
                if not isinstance(result, AnalysisResult):
                    raise TypeError(f"returned {type(result).__name__}, not an AnalysisResult")
                outcomes.append((component, result))
            except Exception as exc:
                outcomes.append((component, f"analysis {component.name!r} failed: {type(exc).__name__}: {exc}"))
        if not study.is_training:  # a training study's standard table lists its failed runs; a probe's has none
            failed = failed_runs(results)
            if failed is not None:
                outcomes.append((Component(name="failed_runs"), failed))
        return outcomes

    def analyze(self) -> Report:
        for study in self.studies:
            readings = study.readings()
            if readings:
                self.readings[study.name] = {
                    reading: self._run_analyses(study, study.results(reading)) for reading in readings
                }
            else:
                self.analyses[study.name] = self._run_analyses(study, study.results())
        return self

    def outcomes(self, study: str) -> Iterator[tuple[str, Outcome]]:
        """``(reading label, outcome)`` of every analysis of ``study`` (label empty without readings)."""
        runs = next((s for s in self.studies if s.name == study), None)
        labels = runs.readings() if runs is not None else {}
        if study in self.readings:
            for reading, outcomes in self.readings[study].items():
                for outcome in outcomes:
                    yield labels.get(reading, reading), outcome
        for outcome in self.analyses.get(study, []):
            yield "", outcome

    def _results_at(self, study: str, reading: str) -> list[Outcome]:
        if study in self.readings:
            return self.readings[study].get(reading, [])
        return self.analyses.get(study, [])

    def value(self, study: str, name: str, reading: str = "") -> Estimate | None:
        """The value ``name`` of ``study``'s analyses (the first analysis reporting it), as an estimate."""
        for _, result in self._results_at(study, reading):
            if isinstance(result, AnalysisResult) and name in result.values:
                return as_estimate(result.values[name])
        return None

    def reported_values(self, study: str) -> set[str]:
        """The names of the values ``study``'s analyses reported (at any reading)."""
        return {name for _, (_, r) in self.outcomes(study) if isinstance(r, AnalysisResult) for name in r.values}

    def _study_readings(self, study: str) -> list[str]:
        return list(self.readings[study]) if study in self.readings else [""]

    def _missing_reason(self, test: ThresholdSpec) -> str:
        reported = self.reported_values(test.study)
        if not reported or test.value in reported:
            return ""
        for axis, dropped in self.unprofiled.get(test.study, {}).items():
            named = [v for v in dropped if v in test.value.split(".")]
            if named:
                return (
                    f"this profile does not run {axis} = {', '.join(named)}, which the value needs "
                    "(the manifest without a profile does)"
                )
        shown = ", ".join(sorted(reported)[:12]) + (", ..." if len(reported) > 12 else "")
        return f"its analyses report no value {test.value!r}; they report: {shown}"

    def _decide(self, test: ThresholdSpec, reading: str) -> Decision:
        estimate = self.value(test.study, test.value, reading)
        decision, reason = verdict(estimate, test.at_least, test.at_most, test.confidence)
        if estimate is None:
            reason = self._missing_reason(test) or reason
        runs = next((st for st in self.studies if st.name == test.study), None)
        shown = runs.readings().get(reading, reading) if runs is not None else reading
        return Decision(test, reading, shown, estimate, decision, reason)

    def check_decisions(self) -> list[Decision]:
        return [self._decide(check, r) for check in self.checks for r in self._study_readings(check.study)]

    def claim_decisions(self) -> list[Decision]:
        """Every claim at every reading of its study, preconditions applied."""
        checks = {c.key: c for c in self.checks}
        out = []
        for claim in self.claims:
            for reading in self._study_readings(claim.study):
                decision = self._decide(claim, reading)
                unmet = []
                for key in claim.requires:
                    check = checks.get(key)
                    if check is None:
                        continue
                    required = self._check_summary(check, reading)
                    if not required.startswith("holds at every") and required != "holds":
                        unmet.append(f"{key}: {required}")
                if unmet and decision.verdict != "not measured":
                    failed = any("does not hold" in u for u in unmet)
                    reason = ("precondition failed: " if failed else "precondition not established: ") + "; ".join(
                        unmet
                    )
                    decision = replace(
                        decision, verdict="inconclusive", reason=f"{reason}; on its own: {decision.label}"
                    )
                out.append(decision)
        return out

    def _check_summary(self, check: CheckSpec, reading: str) -> str:
        """A required check's verdict at the claim's reading, or over all its study's readings."""
        at_reading = self.readings.get(check.study, {})
        readings = [reading] if reading in at_reading else self._study_readings(check.study)
        return self._summary([self._decide(check, r) for r in readings])

    @staticmethod
    def _summary(decisions: list[Decision]) -> str:
        """One verdict over readings: 'holds' without readings, else 'holds at every reading (n)',
        'holds at A, B only (...)', 'does not hold at any reading (n)' or 'inconclusive at every ...'."""
        if len(decisions) == 1 and not decisions[0].reading:
            return decisions[0].verdict
        by: dict[str, list[str]] = {}
        for d in decisions:
            by.setdefault(d.verdict, []).append(d.shown)
        n = len(decisions)
        if len(by) == 1:
            only = next(iter(by))
            where = "any" if only == "does not hold" else "every"
            return f"{only} at {where} reading ({n})"
        parts = [f"holds at {', '.join(by['holds'])} only"] if "holds" in by else ["holds at no reading"]
        parts += [f"{v} at {', '.join(rs)}" for v, rs in by.items() if v != "holds"]
        return "; ".join(parts)

    def summaries(self) -> list[tuple[ThresholdSpec, str]]:
        """Each claim's verdict over its readings (``_summary``)."""
        decisions = self.claim_decisions()
        return [(claim, self._summary([d for d in decisions if d.test is claim])) for claim in self.claims]

    def registration(self, test: ThresholdSpec) -> str:
        """'pre-registered DATE', 'post hoc (...)' or '' when its study has no results yet."""
        found = self.registrations.get((test.key, definition_hash(test.definition())))
        if found is not None:
            at, before = found
            date = time.strftime("%Y-%m-%d", time.gmtime(at))
            return f"pre-registered {date}" if before == 0 else f"post hoc (defined {date}, after {before} results)"
        if not self.results_held.get(test.study):
            return ""
        return "post hoc (this definition was never registered before results: edited after them)"

    def _rows(self, decisions: list[Decision], verbose: bool, noted: bool = True) -> list[list[Any]]:
        """The claims or checks table's rows; ``noted``: each verdict carries the scale note (the
        terminal's compact table leaves it to the table's title)."""
        rows = []
        for d in decisions:
            test = d.test
            estimate = d.estimate
            unit = f" {estimate.unit}" if estimate is not None and estimate.unit else ""
            shown = "—" if estimate is None else fmt(estimate.value, digits=4) + unit
            spread = _spread(estimate, test.confidence)
            label = d.label
            registered = self.registration(test)
            if registered.startswith("post hoc"):
                label += " [post hoc]"
            if self.scale_note and noted:
                label += f" [{self.scale_note}]"
            row = [test.key, d.shown, shown, spread, test.threshold(), label]
            if verbose:
                text = test.claim if isinstance(test, ClaimSpec) else test.check
                kind = "claim" if isinstance(test, ClaimSpec) else test.kind
                row = [text, kind, test.study, *row, test.source or "not given", registered]
            rows.append(row)
        return rows

    def claims_rows(self, verbose: bool = True, noted: bool = True) -> list[list[Any]]:
        """A row per claim and reading: (verbose: claim, kind, study,) id, reading, measured, interval,
        threshold, verdict (, verbose: source, registered)."""
        return self._rows(self.claim_decisions(), verbose, noted)

    def checks_rows(self, verbose: bool = True, noted: bool = True) -> list[list[Any]]:
        return self._rows(self.check_decisions(), verbose, noted)

    def findings_rows(self) -> list[list[Any]]:
        """Key findings: each claim's verdict over readings, the claim in words."""
        return [[claim.key, claim.study, summary, claim.claim] for claim, summary in self.summaries()]

    @property
    def claims_title(self) -> str:
        return f"Claims ({self.scale_note})" if self.scale_note else "Claims"

    @property
    def checks_title(self) -> str:
        note = f"; {self.scale_note}" if self.scale_note else ""
        return f"Checks (identities, preconditions, guards: not findings{note})"

    def render(self, fmt: str = "github", verbose: bool = False) -> str:
        """All tables in ``fmt``: github, latex, plain or csv. The terminal formats (github, plain) show
        the claims compact unless ``verbose``: id, reading (when there are readings), value with unit,
        interval, threshold and verdict, wrapped to ``TERMINAL_WIDTH`` columns; the claims' text and
        source are in the verbose, LaTeX, CSV and HTML reports."""
        if fmt == "csv":
            return self._render_csv()
        tablefmt = {"latex": "latex_booktabs"}.get(fmt, fmt)
        verbose = verbose or fmt == "latex"

        def claims_table(rows: list[list[Any]], headers: list[str]) -> str:
            if verbose:
                return tabulate(rows, headers=headers, tablefmt=tablefmt)
            if not any(row[1] for row in rows):  # no readings: no reading column
                rows, headers = [[row[0], *row[2:]] for row in rows], [headers[0], *headers[2:]]
            return fit_table(rows, headers, tablefmt, prose=-1)

        sections = []
        for study in self.studies:
            text = [_heading(study.name, fmt, 2)]
            if study.description and fmt != "latex":
                text.append(study.description)
            pending = study.pending
            if pending and fmt != "latex":
                text.append(f"({pending} of {len(study.planned)} runs not yet run)")
            for reading, (_, result) in self.outcomes(study.name):
                if isinstance(result, str):
                    text.append(result)
                    continue
                for table in result.tables:
                    title = f"{table.title} [reading: {reading}]" if reading else table.title
                    text.append(_heading(title, fmt, 3))
                    text.append(tabulate(table.rows, headers=table.headers, tablefmt=tablefmt))
            sections.append("\n\n".join(text))
        headers = claim_headers(verbose)
        if self.claims:
            sections.append(_heading(f"Key findings{f' ({self.scale_note})' if self.scale_note else ''}", fmt, 2))
            if verbose:
                sections.append(tabulate(self.findings_rows(), headers=FINDINGS_HEADERS, tablefmt=tablefmt))
            else:  # the claims in words are the verbose report's
                findings = [row[:3] for row in self.findings_rows()]
                sections.append(fit_table(findings, FINDINGS_HEADERS[:3], tablefmt, prose=2))
            sections.append(_heading(self.claims_title, fmt, 2))
            sections.append(claims_table(self.claims_rows(verbose, noted=verbose), headers))
        if self.checks:
            sections.append(_heading(self.checks_title, fmt, 2))
            sections.append(claims_table(self.checks_rows(verbose, noted=verbose), headers))
        if (self.claims or self.checks) and not verbose:
            sections.append(COMPACT_NOTE)
        return "\n\n".join(sections) + "\n"

    def _render_csv(self) -> str:
        """One CSV table of the standard analyses' records across studies (a column per axis of
        any study, empty where a study lacks it), then every other table, each under a title row."""
        combined: list[tuple[StudyRuns, dict[str, Any]]] = []
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for study in self.studies:
            for reading, (component, result) in self.outcomes(study.name):
                if not isinstance(result, AnalysisResult):
                    continue
                as_registered = self._as_registered(component)
                for table in result.tables:
                    if as_registered and table.records is not None and not reading:
                        combined += [(study, record) for record in table.records]
                        continue
                    # a standard analysis run again with other options (another metric): its own table,
                    # under its own headers (its records are named after the standard metrics)
                    label = f" ({component.label()})" if component.name in self._standard_names else ""
                    writer.writerow([])
                    writer.writerow(
                        [f"# {study.name}: {table.title}{label}" + (f" [reading: {reading}]" if reading else "")]
                    )
                    writer.writerow(table.headers)
                    writer.writerows(table.rows)
        for title, rows in ((self.claims_title, self.claims_rows()), ("Checks", self.checks_rows())):
            if rows:
                writer.writerow([])
                writer.writerow([f"# {title}"])
                writer.writerow(claim_headers(True))
                writer.writerows(rows)
        return _combined_csv(combined) + buffer.getvalue()

    @property
    def _standard_names(self) -> set[str]:
        return {c.name for c in self.standard()}

    def _as_registered(self, component: Component) -> bool:
        """Whether ``component`` is a standard analysis with its default options: the one whose records
        (named after the metrics it reads by default) the CSV report gathers across studies."""
        if component.name not in self._standard_names:
            return False
        try:
            registered = self.registry.options("analysis", Component(name=component.name))
            return self.registry.options("analysis", component) == registered
        except Exception:  # options that do not validate: the analysis failed, with its message
            return False

    def _figures(self, study: StudyRuns) -> Iterator[tuple[str, Figure, str]]:
        """``(cache key, figure, reading)`` of each figure of ``study``'s analyses; a study with
        readings draws them at its first reading (its figures' names say which)."""
        from bnbench.figures import content_key

        first = next(iter(study.readings().values()), "")
        signature = study.signature()
        for reading, (component, result) in self.outcomes(study.name):
            if not isinstance(result, AnalysisResult) or reading != first:
                continue
            for figure in result.figures:
                yield content_key(figure, signature, component.model_dump_json(), reading), figure, reading

    def draw_figures(self, processes: int | None = None) -> None:
        """Draw every figure of the report that the cache does not hold, ``processes`` at a time
        (default: one per core; ``bnbench.figures.render_many``), and keep them for ``figure_images``."""
        _need_matplotlib()
        from bnbench.figures import render_many

        cache = self.figure_cache
        jobs = [
            job
            for study in self.studies
            for job in self._figures(study)
            if job[0] not in self._drawn and (cache is None or not cache.has(job[0]))
        ]
        for key, png in render_many(jobs, processes).items():
            self._drawn[key] = png
            if cache is not None:
                cache.put(key, png)

    def figure_images(self, study: StudyRuns) -> Iterator[tuple[str, bytes]]:
        """Each figure of ``study``'s analyses as ``(name, PNG bytes)``: drawn (``draw_figures`` draws
        a whole report's at once, in parallel), else cached beside the store, else drawn now."""
        _need_matplotlib()
        from bnbench.figures import render_png

        cache = self.figure_cache
        for key, figure, reading in self._figures(study):
            png = self._drawn.get(key) or (cache.get(key) if cache is not None else None)
            if png is None:
                png = render_png(figure, reading)
                if cache is not None:
                    cache.put(key, png)
            yield figure.name, png

    def save_figures(self, directory: Path) -> list[Path]:
        """Write every analysis figure as ``DIRECTORY/<study>__<name>.png``; return the paths."""
        self.draw_figures()
        written = []
        for study in self.studies:
            for name, png in self.figure_images(study):
                try:
                    directory.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise OutputError(f"cannot write figures to {directory}: {exc.strerror or exc}") from None
                path = directory / f"{_safe(study.name)}__{_safe(name)}.png"
                write_atomically(path, png)
                written.append(path)
        return written


TERMINAL_WIDTH = 120
"""The most columns the compact claims tables of the terminal formats take (``fit_table``)."""
COMPACT_NOTE = "(Each claim's text, source and registration: `bnbench report --verbose`, --html or --format csv.)"
COMPACT_HEADERS = ["id", "reading", "measured", "interval", "threshold", "verdict"]
CLAIM_HEADERS = ["claim", "kind", "study", *COMPACT_HEADERS, "source", "registered"]
FINDINGS_HEADERS = ["id", "study", "verdict", "claim"]


def claim_headers(verbose: bool) -> list[str]:
    return CLAIM_HEADERS if verbose else COMPACT_HEADERS


_PIECE = re.compile(r"(?:[^\s_=,;/.]|\.(?=\d))*(?:[_=,;/]|\.(?!\d))*\s*")
"""A piece of text up to where a line may break: after spaces, and after ``_ = , ; /`` or a ``.``
that is not a decimal point (``learned_share.none.lr=0.1`` breaks as ``learned_ share. none. lr= 0.1``)."""


def wrap_cell(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken where ``_PIECE`` allows (prose at its
    spaces, an id after its separators); a piece longer than a line is cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in _PIECE.findall(paragraph):
            if line and len(line + piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += piece if line or piece.strip() else ""
            while len(line.rstrip()) > width:
                lines.append(line[:width])
                line = line[width:]
        lines.append(line.rstrip())
    return "\n".join(lines)


def fit_table(
    rows: list[list[Any]], headers: list[str], tablefmt: str, width: int = TERMINAL_WIDTH, prose: int = -1
) -> str:
    """``rows`` as a table of at most ``width`` columns: the widest columns narrowed to one width
    (the ``prose`` column, a verdict with its reason, to twice that), their cells wrapped
    (``wrap_cell``); no column is narrowed below its header or 12 characters, the first (an id) 20."""
    cells = [[str(cell) for cell in row] for row in rows]
    natural = [
        max([len(header), *(len(line) for row in cells for line in row[i].split("\n"))])
        for i, header in enumerate(headers)
    ]
    floors = [min(n, max(len(header), 12)) for n, header in zip(natural, headers, strict=True)]
    floors[0] = min(natural[0], max(floors[0], 20))
    weights = [2 if i == prose % len(headers) else 1 for i in range(len(headers))]
    level = max(natural, default=0)
    while True:
        limits = [min(n, max(weight * level, floor)) for n, weight, floor in zip(natural, weights, floors, strict=True)]
        wrapped = [[wrap_cell(cell, limit) for cell, limit in zip(row, limits, strict=True)] for row in cells]
        text = tabulate(wrapped, headers=headers, tablefmt=tablefmt, disable_numparse=True)
        widest = max((len(line) for line in text.splitlines()), default=0)
        if widest <= width or limits == floors:
            return text
        level = min(level, max(limits)) - max(1, (widest - width) // (2 * len(headers)))


def failed_runs(results: StudyResults) -> AnalysisResult | None:
    """A table of the study's failed runs and why each failed (``None`` when none failed)."""
    failed = [run for run in results.runs if run.status == "failed"]
    if not failed:
        return None
    rows = []
    for run in failed:
        lines = (run.error or "").strip().splitlines()
        rows.append(
            [*(run.axes.get(a, "") for a in results.axes), run.seed, lines[0] if lines else "no error recorded"]
        )
    return AnalysisResult(tables=[Table("Failed runs", [*results.axes, "seed", "error"], rows)])


def _spread(estimate: Estimate | None, confidence: float) -> str:
    if estimate is None:
        return ""
    if not estimate.replicates:
        return f"point value: {estimate.basis}" if estimate.basis else "point value"
    bounds = interval(estimate, confidence)
    if bounds is None:
        n = len(estimate.replicates)
        return f"n={n}, no interval" + (" (the seeds agree exactly)" if agree_exactly(estimate) else "")
    return bounds.text(partial(fmt, digits=4))


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


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - checked here for the one clear message
    except ImportError:
        raise BnbenchError("figures need matplotlib: pip install 'bnbench[figures]'") from None


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
            reading_axis=study.reading_axis,
        )
        for study in manifest.studies
    ]
    note = manifest.settings.profile_notes.get(manifest.profile or "", "")
    report = Report(
        studies,
        registry,
        manifest.claims,
        manifest.checks,
        scale_note=note,
        registrations=store.registrations(),
        results_held={s.name: sum(r.status in FINISHED for r in s.stored.values()) for s in studies},
        unprofiled=_dropped_by_profile(manifest, registry),
        figure_cache=FigureCache.beside(store.path),
    )
    return report.analyze()


def _dropped_by_profile(manifest: Manifest, registry: Registry) -> dict[str, dict[str, list[str]]]:
    """Study → axis → the axis values the manifest without a profile has and this profile drops."""
    if manifest.profile is None:
        return {}
    try:
        full = open_session(manifest.path, None, registry=registry).manifest
    except BnbenchError:  # the full protocol may need what this machine lacks: nothing to compare
        return {}
    out: dict[str, dict[str, list[str]]] = {}
    for study in manifest.studies:
        base = next((s for s in full.studies if s.name == study.name), None)
        if base is None:
            continue
        for axis in base.axes:
            have = {str(r.axes[axis]) if axis in r.axes else str(spec_value(r.spec.model_dump(mode="json"), axis))
                    for r in study.runs}  # fmt: skip
            dropped = [str(v) for v in dict.fromkeys(r.axes.get(axis) for r in base.runs) if str(v) not in have]
            if dropped:
                out.setdefault(study.name, {})[axis] = dropped
    return out


def from_store(store: Store, registry: Registry) -> Report:
    """Every study the store has runs of, as the sweeps that ran them described them.

    Probe studies get their probes' default analyses; a manifest's own analyses and claims
    need the manifest (``from_manifest``).
    """
    studies = []
    for name, axes, members, records in store.load_studies():
        planned = [
            (run_id, run_axes, int(records[run_id].spec.get("seed", 0)) if run_id in records else 0)
            for run_id, run_axes in members
        ]
        probes = dict.fromkeys(r.spec["probe"]["name"] for r in records.values() if r.spec.get("probe"))
        analyses = [
            Component(name=a)
            for p in probes
            if registry.has("probe", p)
            for a in registry.get("probe", p).extras.get("analyses", ())
            if registry.has("analysis", a)
        ]
        studies.append(StudyRuns(name=name, axes=axes, planned=planned, stored=records, analyses=analyses))
    return Report(studies, registry, figure_cache=FigureCache.beside(store.path)).analyze()


def other_profiles(manifest: Manifest, store: Store, registry: Registry) -> dict[str | None, int]:
    """Profile (``None``: the manifest without one) → how many final results ``store`` holds of that
    profile's runs that ``manifest`` (opened with another profile, or none) does not plan; only the
    profiles with some. ``manifest``'s ``--study`` choice applies to the others too."""
    planned = {run.run_id for run in manifest.runs()}
    try:
        profiles = list(read_toml(manifest.path).get("profiles", {}))
    except BnbenchError:
        return {}
    everything = _chosen_studies(manifest)
    held: dict[str | None, int] = {}
    for profile in [None, *profiles]:
        if profile == manifest.profile:
            continue
        try:
            other = open_session(manifest.path, profile, registry=registry, studies=everything).manifest
        except BnbenchError:  # a profile without these studies, or one this machine cannot expand
            continue
        ids = [run.run_id for run in other.runs() if run.run_id not in planned]
        count = sum(status in FINISHED for status in store.statuses(ids).values())
        if count:
            held[profile] = count
    return held


def _chosen_studies(manifest: Manifest) -> list[str] | None:
    """The studies ``manifest`` was opened with when a ``--study`` choice left some out, else ``None``."""
    try:
        listed = [str(study.get("name")) for study in read_toml(manifest.path).get("studies", [])]
    except BnbenchError:
        return None
    names = [study.name for study in manifest.studies]
    return names if set(names) != set(listed) else None


def other_profiles_note(manifest: Manifest, store: Store, registry: Registry, source: Path | str) -> str:
    """One line saying which other profiles' results the store holds and the command that reports
    them, when ``manifest``'s own plan lacks results; empty otherwise."""
    statuses = store.statuses(run.run_id for run in manifest.runs())
    if all(statuses.get(run.run_id) in FINISHED for run in manifest.runs()):
        return ""
    held = other_profiles(manifest, store, registry)
    if not held:
        return ""
    this = f"profile {manifest.profile!r}" if manifest.profile else "no profile"
    parts = [
        f"{count} of {'profile ' + repr(profile) if profile else 'the manifest without a profile'} "
        f"(`bnbench report {source}{' --profile ' + profile if profile else ''}`)"
        for profile, count in sorted(held.items(), key=lambda item: -item[1])
    ]
    return f"note: the store also holds results this report ({this}) does not show: {'; '.join(parts)}"

"""The report as one self-contained HTML page: every table, the claims with their verdicts, and
every figure embedded (PNG as data URIs), readable offline, each study linkable (``#study-NAME``).
Nothing on the page points outside it."""

from __future__ import annotations

import base64
import html
import re

from tabulate import tabulate

from bnbench.api import AnalysisResult
from bnbench.report import CLAIM_HEADERS, FINDINGS_HEADERS, Report

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
nav { display: flex; flex-wrap: wrap; gap: 0.2em 1.2em; margin-bottom: 1em; }
.wide { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; max-width: 26em; }
th { background: #f2f2f2; }
figure { display: block; margin: 1em 0 1.6em; overflow-x: auto; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; cursor: zoom-in; }
figure img.zoomed { max-width: none; cursor: zoom-out; }
figcaption { color: #555; font-size: 13px; }
.error { color: #a00; }
td.holds, .holds { background: #e3f4e3; } td.fails, .fails { background: #f9e0e0; }
td.open, .open { background: #fff6d9; }
.note { color: #666; }
.scale { background: #fff3cd; border: 1px solid #e0c36a; padding: 0.4em 0.8em; border-radius: 4px; }
.summary span { display: inline-block; padding: 0.2em 0.7em; margin: 0 0.5em 0.4em 0; border-radius: 4px; }
"""

ZOOM = "this.classList.toggle('zoomed')"
"""A figure's click: its natural size (scrolled within its frame) and back."""


VERDICT_CLASS = (("does not hold", "fails"), ("holds", "holds"), ("inconclusive", "open"), ("not measured", "open"))


def _coloured(table: str) -> str:
    """Table cells that start with a verdict get its colour class."""

    def mark(match: re.Match[str]) -> str:
        text = match.group(1)
        for verdict, css in VERDICT_CLASS:
            if text.startswith(verdict):
                return f'<td class="{css}">{text}</td>'
        return match.group(0)

    return re.sub(r"<td>(.*?)</td>", mark, table, flags=re.S)


def _table(rows: list[list[object]], headers: list[str], coloured: bool = False) -> str:
    body = tabulate(rows, headers=headers, tablefmt="html")
    return f'<div class="wide">{_coloured(body) if coloured else body}</div>'


def _verdict_class(summary: str) -> str:
    for verdict, css in VERDICT_CLASS:
        if summary.startswith(verdict):
            return css
    return "open"


def _summary(report: Report) -> str:
    """The claims' verdicts counted, coloured, at the top of the page, with the key findings."""
    summaries = [summary for _, summary in report.summaries()]
    counts: dict[str, int] = {}
    for summary in summaries:
        label = next((verdict for verdict, _ in VERDICT_CLASS if summary.startswith(verdict)), "mixed")
        counts[label] = counts.get(label, 0) + 1
    order = ["holds", "does not hold", "inconclusive", "not measured", "mixed"]
    spans = "".join(
        f'<span class="{_verdict_class(label)}">{counts[label]} {html.escape(label)}</span>'
        for label in order
        if counts.get(label)
    )
    return (
        f'<section id="key-findings"><h2>Key findings</h2><p class="summary">{len(summaries)} claims: {spans}'
        f' (<a href="#claims">each claim with its measurement and interval</a>)</p>'
        + _table(report.findings_rows(), FINDINGS_HEADERS, coloured=True)
        + "</section>"
    )


def anchor(study: str) -> str:
    """The page anchor of a study: ``study-`` and its name with anything but letters, digits, - and _ as -."""
    return "study-" + re.sub(r"[^A-Za-z0-9_-]", "-", study)


def render_html(report: Report, title: str = "bnbench report") -> str:
    """The whole report as one HTML document (figures need matplotlib, as ``--figures`` does)."""
    scale = f'<p class="scale">{html.escape(report.scale_note)}</p>' if report.scale_note else ""
    report.draw_figures()  # every figure the cache lacks, drawn in parallel
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        scale,
        "<nav>"
        + ('<a href="#key-findings">key findings</a>' if report.claims else "")
        + "".join(f'<a href="#{anchor(s.name)}">{html.escape(s.name)}</a>' for s in report.studies)
        + ('<a href="#claims">claims</a>' if report.claims else "")
        + ('<a href="#checks">checks</a>' if report.checks else "")
        + "</nav>",
    ]
    if report.claims:
        parts.append(_summary(report))
    for study in report.studies:
        parts.append(f'<section id="{anchor(study.name)}"><h2>{html.escape(study.name)}</h2>')
        parts.append(scale)
        if study.description:
            parts.append(f"<p>{html.escape(study.description)}</p>")
        pending = study.pending
        if pending:
            parts.append(f'<p class="note">{pending} of {len(study.planned)} runs not yet run</p>')
        for reading, (_, result) in report.outcomes(study.name):
            if not isinstance(result, AnalysisResult):
                parts.append(f'<p class="error">{html.escape(result)}</p>')
                continue
            for table in result.tables:
                title = f"{table.title} [reading: {reading}]" if reading else table.title
                parts.append(f"<h3>{html.escape(title)}</h3>")
                parts.append(_table(table.rows, table.headers))
        for name, png in report.figure_images(study):
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(name)}" title="click: natural size" onclick="{ZOOM}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}</figcaption></figure>'
            )
        parts.append("</section>")
    if report.claims:
        parts.append(f'<section id="claims"><h2>{html.escape(report.claims_title)}</h2>')
        parts.append(_table(report.claims_rows(), CLAIM_HEADERS, coloured=True))
        parts.append("</section>")
    if report.checks:
        parts.append(f'<section id="checks"><h2>{html.escape(report.checks_title)}</h2>')
        parts.append(_table(report.checks_rows(), CLAIM_HEADERS, coloured=True))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

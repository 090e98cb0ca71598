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
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figure img { max-width: 560px; border: 1px solid #ddd; }
.error { color: #a00; }
td.holds { background: #e3f4e3; } td.fails { background: #f9e0e0; } td.open { background: #fff6d9; }
.note { color: #666; }
"""


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


def anchor(study: str) -> str:
    """The page anchor of a study: ``study-`` and its name with anything but letters, digits, - and _ as -."""
    return "study-" + re.sub(r"[^A-Za-z0-9_-]", "-", study)


def render_html(report: Report, title: str = "bnbench report") -> str:
    """The whole report as one HTML document (figures need matplotlib, as ``--figures`` does)."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<nav>"
        + "".join(f'<a href="#{anchor(s.name)}">{html.escape(s.name)}</a>' for s in report.studies)
        + ('<a href="#claims">claims</a>' if report.claims else "")
        + ('<a href="#checks">checks</a>' if report.checks else "")
        + "</nav>",
    ]
    for study in report.studies:
        parts.append(f'<section id="{anchor(study.name)}"><h2>{html.escape(study.name)}</h2>')
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
                parts.append(tabulate(table.rows, headers=table.headers, tablefmt="html"))
        for name, png in report.figure_images(study):
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        parts.append("</section>")
    if report.claims:
        parts.append(f'<section id="claims"><h2>{html.escape(report.claims_title)}</h2>')
        parts.append("<h3>Key findings</h3>")
        parts.append(_coloured(tabulate(report.findings_rows(), headers=FINDINGS_HEADERS, tablefmt="html")))
        parts.append(_coloured(tabulate(report.claims_rows(), headers=CLAIM_HEADERS, tablefmt="html")))
        parts.append("</section>")
    if report.checks:
        parts.append('<section id="checks"><h2>Checks (identities, preconditions, guards: not findings)</h2>')
        parts.append(_coloured(tabulate(report.checks_rows(), headers=CLAIM_HEADERS, tablefmt="html")))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

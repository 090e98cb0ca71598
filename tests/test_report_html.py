"""``bnbench report --html FILE``: one self-contained page, every table and figure present, the
claims with their verdicts, studies linkable, nothing pointing outside the page."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_probes_contract import MANIFEST, ProbePlugin

from bnbench.cli import main
from bnbench.registry import load_registry
from bnbench.report import from_manifest
from bnbench.report_html import anchor, render_html
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest


class Page(HTMLParser):
    """What a browser would fetch or link: every tag's attributes, tables, images and ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def of(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture
def probe_report(write_manifest):
    registry = load_registry(objects=[("probe_plugin", ProbePlugin())])
    manifest = open_session(write_manifest(MANIFEST), registry=registry).manifest
    run_manifest(manifest, registry=registry)
    with Store(manifest.results_path) as store:
        return from_manifest(manifest, store, registry)


def test_the_page_holds_every_table_figure_and_claim_and_links_nothing_outside(probe_report):
    pytest.importorskip("matplotlib")
    text = render_html(probe_report)
    page = Page()
    page.feed(text)
    tables = sum(
        len(r.tables) for outcomes in probe_report.analyses.values() for _, r in outcomes if hasattr(r, "tables")
    )
    assert len(page.of("table")) == tables + 2  # the analyses' tables, the key findings and the claims
    images = page.of("img")
    assert len(images) == 1 and images[0]["alt"] == "logit_norms"
    assert all((img["src"] or "").startswith("data:image/png;base64,") for img in images)
    assert {a["href"] for a in page.of("a")} == {f"#{anchor('logits')}", "#claims", "#key-findings"}
    assert {attrs.get("id") for _, attrs in page.tags} >= {anchor("logits"), "claims"}
    linked = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert not [v for v in linked if not v.startswith(("#", "data:"))]  # readable offline
    assert "unnormalized logits are larger" in text and "not measured (its analyses report no value" in text


def test_names_are_escaped_in_the_page(probe_report):
    probe_report.studies[0].description = "<script>alert(1)</script> & more"
    text = render_html(probe_report, title="a <b> report")
    assert "<script>" not in text and "&lt;script&gt;" in text and "<title>a &lt;b&gt; report</title>" in text


def test_report_html_from_the_command_line(write_manifest, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    path = write_manifest(MANIFEST)
    registry = load_registry(objects=[("probe_plugin", ProbePlugin())])
    run_manifest(open_session(path, registry=registry).manifest, registry=registry)
    import bnbench.session

    original = bnbench.session.read_manifest
    monkeypatch.setattr(bnbench.session, "read_manifest", lambda *a, **k: original(*a, **{**k, "registry": registry}))
    assert main(["report", str(path), "--html", str(tmp_path / "report.html")]) == 0
    assert "HTML report written to" in capsys.readouterr().err
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package to render the page")
def test_chromium_renders_the_page_to_a_screenshot(probe_report, tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    page.write_text(render_html(probe_report))
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1280,2400",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _line_figure(name: str, ys: list[float]):
    from bnbench.api import Figure

    return Figure(name, lambda fig: fig.add_subplot().plot(range(len(ys)), ys))


def test_figures_drawn_in_forked_workers_equal_those_drawn_in_process():
    pytest.importorskip("matplotlib")
    from bnbench.figures import render_many

    jobs = [(f"k{i}", _line_figure(f"f{i}", [i, 2 * i, i * i]), "") for i in range(4)]
    assert render_many(jobs, processes=2) == render_many(jobs, processes=1)


def test_a_figure_is_drawn_once_then_read_from_the_cache_until_its_results_change(probe_report, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from bnbench import figures

    drawn = []
    render = figures.render_png
    monkeypatch.setattr(figures, "render_png", lambda figure, reading="": drawn.append(figure.name) or render(figure))
    probe_report.figure_cache = figures.FigureCache(tmp_path / "cache")
    (study,) = probe_report.studies
    first = dict(probe_report.figure_images(study))
    assert drawn == ["logit_norms"]
    assert dict(probe_report.figure_images(study)) == first and drawn == ["logit_norms"]  # from the cache
    run_id = next(iter(study.stored))
    study.stored[run_id].duration_s = (study.stored[run_id].duration_s or 0) + 1  # a rerun's result
    dict(probe_report.figure_images(study))
    assert drawn == ["logit_norms", "logit_norms"]


def test_one_point_series_get_a_marker_and_coinciding_series_are_told_apart():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnbench.figures import make_legible

    fig = plt.figure()
    ax, narrow = fig.add_subplot(121), fig.add_subplot(122)
    narrow.plot([0, 1, 2], [5.65715, 5.6572, 5.65725])  # matplotlib would label this axis '+5.657'
    (single,) = ax.plot([1], [2.0], label="one epoch")
    (first,) = ax.plot([0, 1], [5.657, 5.6571], label="no BN")
    (same,) = ax.plot([0, 1], [5.657, 5.6571], label="no BN + L2")
    (near,) = ax.plot([0, 1], [5.657, 5.65701], label="close, not equal")
    ax.legend()
    make_legible(fig)
    fig.canvas.draw()
    assert single.get_marker() == "o"
    assert same.get_linestyle() == "--" and same.get_label() == "no BN + L2 (on no BN)"
    assert near.get_linestyle() == "-" and first.get_linestyle() == "-"
    assert [t.get_text() for t in ax.get_legend().get_texts()][2] == "no BN + L2 (on no BN)"
    assert not narrow.yaxis.get_major_formatter().get_offset()  # no '+5.657' above the axis
    plt.close(fig)

"""An analysis figure drawn to PNG, legibly, whatever the analysis drew.

Analyses draw with matplotlib into a figure they are given (``Figure.draw``); here, after they
have drawn, the same fixes apply to every figure so that no analysis has to remember them:

- a multi-panel figure that kept the default single-panel size grows with its grid, so that its
  text stays legible at the page's width;
- a series of one point gets a marker (a line through one point draws nothing);
- a series drawn exactly on top of an earlier one in the same axes is drawn dashed above it, and
  its legend entry says which one it coincides with (else it is hidden and looks missing);
- tick labels never use an offset (``+5.657`` above an axis reads as a value, not a shift).
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bnbench.api import Figure

DEFAULT_SIZE = (6.4, 4.8)
PANEL_SIZE = (4.2, 3.4)
"""Inches per panel of a multi-panel figure (as ``panel_grid`` sizes them)."""
DPI = 100


def render_png(figure: Figure, reading: str = "") -> bytes:
    """``figure`` drawn (with the fixes above) as PNG bytes; ``reading`` titles it when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=DEFAULT_SIZE)
    try:
        figure.draw(fig)
        make_legible(fig)
        if reading:
            fig.suptitle(f"reading: {reading}", fontsize="small", y=1.02)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


_JOBS: list[tuple[str, Figure, str]] = []
"""The figures ``render_many`` hands to its forked workers (inherited, never pickled: analyses'
figures close over their data and draw with lambdas)."""


def _render_job(index: int) -> tuple[str, bytes]:
    return _render_job_of(_JOBS[index])


def render_many(jobs: list[tuple[str, Figure, str]], processes: int | None = None) -> dict[str, bytes]:
    """``(key, figure, reading)`` jobs drawn as ``{key: PNG}``: in ``processes`` forked workers
    (default: one per available core) when there are several jobs and cores and the platform
    forks, else one after another in this process."""
    import multiprocessing
    import os

    if processes is None:
        processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = min(processes, len(jobs))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return dict(_render_job_of(job) for job in jobs)
    _JOBS[:] = jobs
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return dict(pool.imap_unordered(_render_job, range(len(jobs))))
    finally:
        _JOBS.clear()


def _render_job_of(job: tuple[str, Figure, str]) -> tuple[str, bytes]:
    key, figure, reading = job
    return key, render_png(figure, reading)


def make_legible(fig: Any) -> None:
    """Apply the module's fixes to a drawn matplotlib figure."""
    _size_to_grid(fig)
    for ax in fig.axes:
        _no_offsets(ax)
        changed = _mark_single_points(ax) | _separate_overlaps(ax)
        legend = ax.get_legend()
        if changed and legend is not None:  # the legend shows the new markers, styles and labels
            title, texts = legend.get_title().get_text(), legend.get_texts()
            ax.legend(title=title or None, fontsize=texts[0].get_fontsize() if texts else None)


def _size_to_grid(fig: Any) -> None:
    rows = columns = 1
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec is not None:
            grid_rows, grid_columns = spec.get_gridspec().get_geometry()
            rows, columns = max(rows, grid_rows), max(columns, grid_columns)
    if rows * columns == 1:
        return
    width, height = fig.get_size_inches()
    if (width, height) == DEFAULT_SIZE:  # the analysis did not size it for its panels
        fig.set_size_inches(max(width, PANEL_SIZE[0] * columns), max(height, PANEL_SIZE[1] * rows))
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")


def _no_offsets(ax: Any) -> None:
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)


def _has_marker(line: Any) -> bool:
    from matplotlib.lines import Line2D

    return Line2D.markers.get(line.get_marker()) != "nothing"


def _mark_single_points(ax: Any) -> bool:
    changed = False
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        if np.count_nonzero(np.isfinite(y)) == 1 and not _has_marker(line):
            line.set_marker("o")
            changed = True
    return changed


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal to drawing precision (NaN equal to NaN): what would hide one line under the other."""
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))


def _labelled(ax: Any, line: Any) -> Any:
    """The artist whose label the legend shows for ``line``: its error-bar container, if any."""
    for container in ax.containers:
        lines = getattr(container, "lines", None)
        if lines and lines[0] is line:
            return container
    return line


def _separate_overlaps(ax: Any) -> bool:
    changed = False
    seen: list[tuple[Any, np.ndarray, np.ndarray]] = []
    for line in ax.get_lines():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                x = np.asarray(line.get_xdata(), dtype=float)
                y = np.asarray(line.get_ydata(), dtype=float)
            except (TypeError, ValueError):  # dates or categories: nothing to compare
                continue
        if y.size and np.isfinite(y).any():
            for earlier, ex, ey in seen:
                if ex.shape == x.shape and _same(ex, x) and _same(ey, y):
                    line.set_linestyle((0, (4, 3)))
                    line.set_linewidth(max(line.get_linewidth(), 1.5))
                    line.set_zorder(earlier.get_zorder() + 0.1)
                    if not _has_marker(line):
                        line.set_marker("x")
                    labelled, other = _labelled(ax, line), _labelled(ax, earlier)
                    label, other_label = labelled.get_label(), other.get_label()
                    if not label.startswith("_") and not other_label.startswith("_"):
                        labelled.set_label(f"{label} (on {other_label})")
                    changed = True
                    break
        seen.append((line, x, y))
    return changed


class FigureCache:
    """Rendered figures on disk, keyed by what they depend on (``content_key``): a report drawn
    again from the same results and the same code reads its PNGs instead of drawing them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def beside(cls, store: Path) -> FigureCache:
        """The cache of a results store: ``RESULTS.sqlite.figures/`` next to it."""
        return cls(store.with_name(store.name + ".figures"))

    def has(self, key: str) -> bool:
        return (self.directory / f"{key}.png").is_file()

    def get(self, key: str) -> bytes | None:
        try:
            return (self.directory / f"{key}.png").read_bytes()
        except OSError:
            return None

    def put(self, key: str, png: bytes) -> None:
        """Keep ``png`` under ``key``; a cache that cannot be written only costs the next report time."""
        from bnbench.files import write_atomically

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self.directory / f"{key}.png", png)
        except OSError:
            pass


def content_key(figure: Figure, *parts: str) -> str:
    """A figure's cache key: its name, ``parts`` (the study's results, the analysis and its options,
    the reading), the source of the module that draws it and of this one, and matplotlib's version."""
    import matplotlib

    digest = hashlib.sha256()
    for part in (figure.name, *parts, _source_digest(figure.draw), _source_digest(render_png), matplotlib.__version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@functools.cache
def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _source_digest(function: Any) -> str:
    """The digest of the file that defines ``function`` (a lambda: its module's file)."""
    code = getattr(function, "__code__", None)
    if code is None:  # a callable object or a partial: its class's or wrapped function's module
        inner = getattr(function, "func", None) or type(function).__call__
        code = getattr(inner, "__code__", None)
    return _file_digest(code.co_filename) if code is not None else "unknown"

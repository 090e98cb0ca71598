"""Results as data: a store (or a manifest's store) as tidy pandas DataFrames, and their export.

``load_results`` gives one row per run × epoch × metric (every metric a run recorded, a plugin's
own included) and, for probe runs, one row per measured number; ``load_runs`` one row per run.
Both carry the study, run id, seed, status, each of the study's axes as a column, and the run's
resolved spec flattened into ``spec.<dotted.field>`` columns. pandas is the optional extra
``bnbench[data]`` (pyarrow too, for Parquet). The store's tables are in ``docs/results-store.md``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnbench.errors import BnbenchError
from bnbench.records import RunRecord
from bnbench.store import Store, is_store_file

if TYPE_CHECKING:
    import pandas

RUN_COLUMNS = ("study", "run_id", "seed", "status")
"""The columns that name a run, first in every frame; the study's axes follow them."""
RESULT_COLUMNS = ("epoch", "step", "metric", "value")
"""What ``load_results`` adds per row: ``epoch`` and ``step`` are empty for a probe's measurements."""
RUN_FACTS = ("duration_s", "diverged_step", "error")
"""What ``load_runs`` adds per run."""
EXPORT_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise BnbenchError(
            "results as DataFrames need pandas: pip install 'bnbench[data]' (pandas, and pyarrow for Parquet)"
        ) from None
    return pandas


def flatten(value: Any, prefix: str = "", lists: bool = True) -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` pairs of nested mappings; lists of numbers (or of mappings) become
    ``key[i]`` unless ``lists`` is false; other lists are kept whole."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key), lists)
    elif lists and isinstance(value, list) and value and all(isinstance(v, (int, float, dict, list)) for v in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{index}]", lists)
    else:
        yield prefix, value


def _cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything else as compact JSON (one type per column)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _studies(store: Store, only: Sequence[str] | None) -> Iterator[tuple[str, list[str], list[RunRecord]]]:
    """Each study in the store (or among ``only``): its axes and its stored runs, in plan order."""
    for name, axes, members, records in store.load_studies(only):
        yield name, axes, [records[run_id] for run_id, _ in members if run_id in records]


def _identity(study: str, axes: list[str], run: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"study": study, "run_id": run.run_id, "seed": run.seed, "status": run.status}
    for axis in axes:
        row[axis] = _cell(run.axes.get(axis))
    return row


def _spec_columns(run: RunRecord) -> dict[str, Any]:
    return {f"spec.{key}": _cell(value) for key, value in flatten(run.spec)}


def _result_rows(study: str, axes: list[str], run: RunRecord) -> Iterator[tuple[Any, ...]]:
    """``(study, run_id, epoch, step, metric, value)`` for each recorded value of ``run``."""
    for record in run.epochs:
        for metric, value in record.metrics.items():
            yield study, run.run_id, record.epoch, record.step, metric, value
    for key, value in flatten(run.measurements):
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # not a measurement's labels
            yield study, run.run_id, None, None, key, float(value)


def _source(source: str | Path, profile: str | None, studies: Sequence[str] | None) -> tuple[Path, list[str] | None]:
    """The store a source names and the studies to read: a SQLite file is the store itself (every
    study), a manifest names its store and its studies (after ``profile``)."""
    path = Path(source)
    if is_store_file(path):
        return path, list(studies) if studies else None
    from bnbench.session import open_session

    manifest = open_session(path, profile).manifest
    names = [s.name for s in manifest.studies if not studies or s.name in studies]
    return manifest.results_path, names


def _frame(rows: list[dict[str, Any]], leading: Sequence[str]) -> pandas.DataFrame:
    """``rows`` as a frame: ``leading`` columns first, then any others, then ``spec.*`` sorted."""
    pandas = _pandas()
    frame = pandas.DataFrame.from_records(rows)
    if frame.empty:
        return pandas.DataFrame(columns=list(leading))
    spec = sorted(c for c in frame.columns if c.startswith("spec."))
    middle = [c for c in frame.columns if c not in leading and c not in spec]
    return frame[[*[c for c in leading if c in frame.columns], *middle, *spec]]


def load_results(
    source: str | Path, *, profile: str | None = None, studies: Sequence[str] | None = None
) -> pandas.DataFrame:
    """Every recorded value as a tidy DataFrame: one row per run × epoch × metric, and per number a
    probe measured (``epoch`` empty). Columns: study, run_id, seed, status, the studies' axes,
    epoch, step, metric, value, then ``spec.*``. ``source``: a results store, or a manifest (its
    store, its studies under ``profile``); ``studies`` keeps only those."""
    pandas = _pandas()
    path, names = _source(source, profile, studies)
    values: list[tuple[Any, ...]] = []
    runs: list[dict[str, Any]] = []
    with Store(path, read_only=True) as store:
        for study, axes, records in _studies(store, names):
            for run in records:
                runs.append({**_identity(study, axes, run), **_spec_columns(run)})
                values.extend(_result_rows(study, axes, run))
    per_run = _frame(runs, RUN_COLUMNS)  # the axes follow, in the order they first appear
    long = pandas.DataFrame.from_records(values, columns=["study", "run_id", *RESULT_COLUMNS])
    long["epoch"] = long["epoch"].astype("Int64")
    long["step"] = long["step"].astype("Int64")
    long["value"] = long["value"].astype("float64")
    if per_run.empty:
        return long
    frame = per_run.merge(long, on=["study", "run_id"], how="inner", sort=False)
    spec = [c for c in per_run.columns if c.startswith("spec.")]
    identity = [c for c in per_run.columns if c not in spec]
    return frame[[*identity, *RESULT_COLUMNS, *spec]]


def load_runs(
    source: str | Path, *, profile: str | None = None, studies: Sequence[str] | None = None
) -> pandas.DataFrame:
    """One row per run: study, run_id, seed, status, the studies' axes, duration_s,
    diverged_step, error, then ``spec.*`` (failed and unfinished runs included)."""
    path, names = _source(source, profile, studies)
    rows: list[dict[str, Any]] = []
    with Store(path, read_only=True) as store:
        for study, axes, runs in _studies(store, names):
            for run in runs:
                facts = {"duration_s": run.duration_s, "diverged_step": run.diverged_step, "error": run.error}
                rows.append({**_identity(study, axes, run), **facts, **_spec_columns(run)})
    return _frame(rows, [*RUN_COLUMNS, *_axis_columns(rows, RUN_COLUMNS, RUN_FACTS), *RUN_FACTS])


def _axis_columns(rows: list[dict[str, Any]], before: Sequence[str], after: Sequence[str]) -> list[str]:
    """The axis columns of ``rows``, in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in before and key not in after and not key.startswith("spec."):
                seen.setdefault(key)
    return list(seen)


def export(frame: pandas.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as CSV or Parquet (by its suffix), whole or not at all."""
    from bnbench.files import OutputError, write_atomically

    kind = EXPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise OutputError(f"cannot export to {path}: give a file ending in {' or '.join(EXPORT_FORMATS)}")
    if kind == "csv":
        write_atomically(path, frame.to_csv(index=False))
        return
    try:
        import pyarrow  # noqa: F401 - pandas writes Parquet through it
    except ImportError:
        raise BnbenchError("Parquet export needs pyarrow: pip install 'bnbench[data]'") from None
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomically(path, buffer.getvalue())

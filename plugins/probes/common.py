"""What the probes and analyses of Bjorck et al. 2018 share: batches, grouping runs, statistics.

Grouping: an analysis compares *groups* of runs. A run's group label is the values of its
study's axes other than the seed and the axes the analysis puts on a figure's x-axis (the
learning rate, the depth), joined by ``/``; a study whose only axis is ``placement`` has the
groups ``all``, ``final``, ``none``. A study without such axes has one group, labelled by its
placement (or ``runs``). Claimable values are named ``<quantity>.<group label>``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
from pydantic import Field

from harness import Options
from harness.analysis import over_seeds
from harness.api import ClaimValue, Estimate, ProbeContext, RunRecord, StudyResults


class CompareOptions(Options):
    """Options of an analysis that compares a normalized group of runs with an unnormalized one."""

    normalized: str = Field("all", description="Group label of the normalized network (BN at every hidden site).")
    unnormalized: str = Field("none", description="Group label of the unnormalized network.")


# -- probes -------------------------------------------------------------------------------------
def take_batches(context: ProbeContext, batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training mini-batches drawn with the probe's generator (epochs repeat as needed)."""
    data = context.data()
    if data.train_size < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({data.train_size} examples)")
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < count:
        for batch in data.train_batches(batch_size, context.generator):
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def loss_ratio(after: torch.Tensor, before: torch.Tensor) -> float:
    """``after / before`` as a float; a non-finite loss after the step counts as ``inf``."""
    ratio = float(after) / float(before)
    return ratio if math.isfinite(ratio) else math.inf


# -- grouping runs ------------------------------------------------------------------------------
def finished(study: StudyResults) -> list[RunRecord]:
    """The study's training runs with a final result: done or diverged (possibly before any epoch)."""
    return [r for r in study.runs if r.status in ("done", "diverged")]


def probe_runs(study: StudyResults) -> list[RunRecord]:
    """The study's probe runs that finished with measurements."""
    return [r for r in study.runs if r.status == "done" and r.measurements]


def group_label(run: RunRecord, exclude: Collection[str] = ()) -> str:
    """The run's group: its axis values except ``exclude`` joined by ``/`` (see the module doc)."""
    parts = [str(value) for axis, value in run.axes.items() if axis not in exclude]
    if parts:
        return "/".join(parts)
    placement = run.spec.get("placement")
    return str(placement["name"]) if isinstance(placement, dict) else "runs"


def group_runs(runs: Iterable[RunRecord], exclude: Collection[str] = ()) -> dict[str, list[RunRecord]]:
    """Runs by group label, in the order the groups first appear."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(group_label(run, exclude), []).append(run)
    return groups


def axis_value(run: RunRecord, axis: str) -> Any:
    """The run's value of ``axis`` (a dotted path), from its axes or else its resolved spec
    (a plugin component's value is its name)."""
    if axis in run.axes:
        return run.axes[axis]
    node: Any = run.spec
    for part in axis.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and part in node.get("options", {}):
            node = node["options"][part]
        else:
            return None
    return node["name"] if isinstance(node, dict) and "name" in node else node


# -- statistics ---------------------------------------------------------------------------------
def clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, ``None`` when there are none."""
    numbers = clean(values)
    return statistics.fmean(numbers) if numbers else None


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the finite positive values (ratios, scales), ``None`` when there are none."""
    numbers = [v for v in clean(values) if v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in numbers)) if numbers else None


def geomean_or_inf(values: Iterable[float | None]) -> float | None:
    """Geometric mean, but infinite when any value is infinite (an overflow is the strongest result)."""
    numbers = [v for v in values if v is not None]
    if any(math.isinf(v) and v > 0 for v in numbers):
        return math.inf
    return geomean(numbers)


def median(values: Iterable[float | None]) -> float | None:
    numbers = clean(values)
    return statistics.median(numbers) if numbers else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def mean_curve(curves: Sequence[Sequence[float | None]], combine: Callable[..., float | None] = mean) -> list[float]:
    """Elementwise ``combine`` of equally long curves (NaN where no value is finite)."""
    if not curves:
        return []
    length = min(len(c) for c in curves)
    out = []
    for i in range(length):
        value = combine([c[i] for c in curves])
        out.append(math.nan if value is None else value)
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell: ``—`` when missing, ``inf`` when infinite."""
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "—"
    return f"{value:.{digits}g}"


def put(values: dict[str, ClaimValue], name: str, value: ClaimValue | None) -> None:
    """Record a claimable value when it was measured (a NaN or missing value is left out).

    Infinities are kept: an overflow (a diverged loss, exploded activations) is the strongest
    result and the report shows it as ``inf``.
    """
    if value is None or (isinstance(value, Estimate) and math.isnan(value.value)):
        return
    if not isinstance(value, Estimate) and math.isnan(float(value)):
        return
    values[name] = value if isinstance(value, Estimate) else float(value)


# -- figures ------------------------------------------------------------------------------------
def panel_grid(fig: Any, count: int, columns: int = 3) -> list[Any]:
    """``count`` axes in rows of ``columns``, sized to fit."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig.set_size_inches(4.2 * columns, 3.4 * rows)
    fig.set_layout_engine("constrained")
    return [fig.add_subplot(rows, columns, i + 1) for i in range(count)]


def finite_or_nan(values: Iterable[float | None]) -> list[float]:
    """Values for plotting: missing and infinite values become NaN (a gap in the line)."""
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


# -- estimates over seeds -----------------------------------------------------------------------
def by_seed(measured: Iterable[tuple[int, dict[str, float | None]]]) -> dict[str, dict[int, float]]:
    """Named per-run statistics, given as ``(seed, {name: value})``, as ``{name: {seed: value}}``.

    One run is one seed; runs sharing a seed are averaged. Missing and NaN values are left out;
    infinities (overflows) are kept.
    """
    found: dict[str, dict[int, list[float]]] = {}
    for seed, named in measured:
        for name, value in named.items():
            if value is not None and not math.isnan(float(value)):
                found.setdefault(name, {}).setdefault(seed, []).append(float(value))
    return {
        name: {seed: statistics.fmean(vs) if len(vs) > 1 else vs[0] for seed, vs in seeds.items()}
        for name, seeds in found.items()
    }


def per_seed(runs: Iterable[RunRecord], statistic: Callable[[RunRecord], float | None]) -> dict[int, float]:
    """``statistic`` of each run by its seed (``by_seed`` for one statistic)."""
    return by_seed((run.seed, {"": statistic(run)}) for run in runs).get("", {})


def paired_ratio(numerator: dict[int, float], denominator: dict[int, float]) -> Estimate | None:
    """An ``Estimate`` (log scale) of the per-seed ratio ``numerator[s] / denominator[s]`` over the
    seeds both sides measured (a zero or non-finite denominator leaves its seed out)."""
    seeds = sorted(numerator.keys() & denominator.keys())
    ratios = [numerator[s] / denominator[s] for s in seeds if denominator[s] != 0 and math.isfinite(denominator[s])]
    return over_seeds(ratios, scale="log")


def paired_difference(minuend: dict[int, float], subtrahend: dict[int, float]) -> Estimate | None:
    """An ``Estimate`` (linear scale) of the per-seed difference ``minuend[s] − subtrahend[s]`` over
    the seeds both sides measured."""
    return over_seeds([minuend[s] - subtrahend[s] for s in sorted(minuend.keys() & subtrahend.keys())])

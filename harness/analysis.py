"""The statistics claims rest on: estimates over seeds, their intervals, and verdicts.

An analysis reports a claimable value as an ``Estimate`` built from per-seed replicates
(``over_seeds``); the report turns it into an interval at the claim's confidence level
(``interval``) and a four-way verdict against the claim's threshold (``verdict``).

Intervals and verdicts are ``bnbench.intervals``' (re-exported here): each ``Estimate.kind``
(mean, share, grid bracket, ratio of means, rank trend) has the interval that fits it, and an
inconclusive verdict says what would decide it.

The toolkit analysis authors share (``from bnbench.analysis import ...``), one rule each:

- **Grouping runs.** An analysis compares *groups* of runs. ``group_label`` names a run's group by
  the values of its study's axes other than the seed and the axes an analysis puts on a figure's
  x-axis, joined by ``/`` (a study whose only axis is ``placement`` has the groups ``all``,
  ``final``, ``none``; a study without such axes has one group, named by its placement or
  ``runs``); claimable values are named ``<quantity>.<group label>``. ``config_label`` names the
  same group for a table row (``axis=value`` pairs). ``axis_value`` reads any swept or fixed field.
- **Aggregating.** ``mean``, ``median``, ``geomean`` and ``mean_std`` use the finite values only
  (``finite``); ``average`` and ``geomean_or_inf`` keep +inf (an overflow is the strongest result).
  ``by_seed``/``per_seed`` give one value per seed, ``paired_ratio``/``paired_difference`` an
  ``Estimate`` over the seeds both sides measured, ``over_seeds`` an ``Estimate`` of replicates.
- **Infinities.** ``put`` records a claimable value: missing and NaN values are left out,
  infinities kept; ``fmt`` and ``pm`` show them as ``inf``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

from scipy import stats as _stats

from bnbench.api import ClaimValue, Estimate, StudyResults
from bnbench.intervals import (
    Interval,
    Verdict,
    bracket_ratio,
    bracketed,
    decide,
    grid_bracket,
    interval,
    rank_trend,
    ratio_of_means,
    seeds_needed,
    share,
)
from bnbench.records import FINISHED, RunRecord

__all__ = [
    "Interval",
    "Verdict",
    "bracket_ratio",
    "bracketed",
    "decide",
    "grid_bracket",
    "interval",
    "rank_trend",
    "ratio_of_means",
    "seeds_needed",
    "share",
]


def over_seeds(
    replicates: Iterable[float | None],
    scale: Literal["linear", "log"] = "linear",
    undecidable: str = "",
    unit: str = "",
) -> Estimate | None:
    """An ``Estimate`` of per-seed values (missing and NaN values dropped; ``None`` if none is left).

    ``scale="log"``: the estimate is the geometric mean; replicates must be positive (0 and
    negative values are dropped) and may be +inf.
    """
    values = [float(v) for v in replicates if v is not None and not math.isnan(float(v))]
    if scale == "log":
        values = [v for v in values if v > 0]
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        point = statistics.median(values)  # censored replicates: the median (bnbench.intervals)
    elif len(set(values)) == 1:
        point = values[0]  # exactly, without a round trip through log and exp
    elif scale == "log":
        point = math.exp(statistics.fmean(math.log(v) for v in values))
    else:
        point = statistics.fmean(values)
    return Estimate(point, tuple(values), scale, undecidable=undecidable, unit=unit)


def point(value: float, basis: str) -> Estimate:
    """A value that is not an estimate over seeds (a closed form, a pooled statistic); ``basis`` says which."""
    return Estimate(float(value), basis=basis)


def as_estimate(value: ClaimValue | None) -> Estimate | None:
    """A reported value as an ``Estimate``: a plain number is a point value with no stated basis."""
    if value is None:
        return None
    if isinstance(value, Estimate):
        return value if not math.isnan(value.value) else None
    number = float(value)
    return None if math.isnan(number) else Estimate(number, basis="the analysis gave no replicates")


def verdict(
    estimate: Estimate | None, at_least: float | None, at_most: float | None, confidence: float = 0.95
) -> tuple[Verdict, str]:
    """``(verdict, reason)`` of a claim ``at_least <= value <= at_most`` (``bnbench.intervals.decide``)."""
    return decide(estimate, at_least, at_most, confidence)


def spearman(xs: list[float], ys: list[float], min_levels: int = 3) -> Estimate | None:
    """Spearman rank correlation of ``ys`` with ``xs`` as a point value (``scipy.stats.spearmanr``).

    ``None`` when a side is constant or there are fewer than two points; with fewer than
    ``min_levels`` distinct ``xs`` the estimate is undecidable (over two levels a rank
    correlation can only be +1 or -1).
    """
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(_stats.spearmanr(xs, ys).statistic)
    if math.isnan(rho):
        return None
    levels = len(set(xs))
    reason = (
        f"a rank trend over {levels} levels (fewer than {min_levels}) can only be ±1" if levels < min_levels else ""
    )
    return Estimate(rho, basis=f"Spearman over {len(xs)} points", undecidable=reason)


# -- grouping runs ------------------------------------------------------------------------------
def finished(study: StudyResults) -> list[RunRecord]:
    """The study's training runs with a final result: done or diverged (possibly before any epoch)."""
    return [r for r in study.runs if r.status in FINISHED]


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
    return spec_value(run.spec, axis)


def spec_value(spec: dict[str, Any], axis: str) -> Any:
    """The value of ``axis`` (a dotted path) in a resolved spec as a dict (a component's: its name)."""
    node: Any = spec
    for part in axis.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and part in node.get("options", {}):
            node = node["options"][part]
        else:
            return None
    return node["name"] if isinstance(node, dict) and "name" in node else node


def _short(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def config_label(run: RunRecord, exclude: Collection[str] = ()) -> str:
    """``short_axis=value`` of the run's axes except ``exclude`` and the seed, joined by ``,``."""
    parts = [f"{_short(axis)}={value}" for axis, value in run.axes.items() if axis not in exclude and axis != "seed"]
    return ",".join(parts) or "runs"


def grouped(runs: Iterable[RunRecord], key: Callable[[RunRecord], Any]) -> dict[Any, list[RunRecord]]:
    """Runs by ``key(run)``, in the order keys first appear."""
    groups: dict[Any, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def runs_by_seed(runs: Iterable[RunRecord]) -> dict[int, list[RunRecord]]:
    """Runs by seed, seeds in increasing order."""
    return dict(sorted(grouped(runs, lambda r: r.seed).items()))


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    numbers = finite(values)
    if not numbers:
        return None, None
    return statistics.fmean(numbers), statistics.stdev(numbers) if len(numbers) > 1 else 0.0


def pm(values: Iterable[float | None], scale: float = 1.0, digits: int = 3, fixed: bool = False) -> str:
    """``mean ± std`` of the finite values (``—`` when none; ``inf`` when any is +inf; one value
    is itself with ``(n = 1)``: a spread of one value is no spread at all)."""
    values = [v for v in values if v is not None]
    if any(v == math.inf for v in values):
        return "inf"
    m, s = mean_std(values)
    if m is None:
        return "—"
    spec = f".{digits}{'f' if fixed else 'g'}"
    if len(finite(values)) == 1:
        return f"{m * scale:{spec}} (n = 1)"
    return f"{m * scale:{spec}} ± {(s or 0.0) * scale:{spec}}"


def average(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not missing or NaN (+inf kept: an infinite mean); ``None`` if none."""
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.fmean(numbers) if numbers else None


# -- statistics ---------------------------------------------------------------------------------
def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values, as floats (missing, NaN and infinite values left out)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, ``None`` when there are none."""
    numbers = finite(values)
    return statistics.fmean(numbers) if numbers else None


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the finite positive values (ratios, scales), ``None`` when there are none."""
    numbers = [v for v in finite(values) if v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in numbers)) if numbers else None


def geomean_or_inf(values: Iterable[float | None]) -> float | None:
    """Geometric mean, but infinite when any value is infinite (an overflow is the strongest result)."""
    numbers = [v for v in values if v is not None]
    if any(math.isinf(v) and v > 0 for v in numbers):
        return math.inf
    return geomean(numbers)


def median(values: Iterable[float | None]) -> float | None:
    numbers = finite(values)
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


def fmt(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    """A number for a table cell (times ``scale``): ``—`` when missing or NaN, ``inf`` when infinite."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value * scale:.{digits}g}"


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


def paired_ratio(numerator: dict[int, float], denominator: dict[int, float], unit: str = "x") -> Estimate | None:
    """An ``Estimate`` (log scale) of the per-seed ratio ``numerator[s] / denominator[s]`` over the
    seeds both sides measured (a zero or non-finite denominator leaves its seed out)."""
    seeds = sorted(numerator.keys() & denominator.keys())
    ratios = [numerator[s] / denominator[s] for s in seeds if denominator[s] != 0 and math.isfinite(denominator[s])]
    return over_seeds(ratios, scale="log", unit=unit)


def paired_difference(minuend: dict[int, float], subtrahend: dict[int, float], unit: str = "") -> Estimate | None:
    """An ``Estimate`` (linear scale) of the per-seed difference ``minuend[s] − subtrahend[s]`` over
    the seeds both sides measured."""
    return over_seeds([minuend[s] - subtrahend[s] for s in sorted(minuend.keys() & subtrahend.keys())], unit=unit)

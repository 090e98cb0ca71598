"""The statistics claims rest on: estimates over seeds, their intervals, and verdicts.

An analysis reports a claimable value as an ``Estimate`` built from per-seed replicates
(``over_seeds``); the report turns it into an interval at the claim's confidence level
(``interval``) and a four-way verdict against the claim's threshold (``verdict``).

Interval: a two-sided Student-t interval of the mean of the replicates,
``mean ± t_{(1+c)/2, n-1} · s / √n``, computed on ``log`` of the replicates for
``scale="log"`` (a geometric mean and its interval, for ratios). With few seeds a t-interval
is wide, as it should be; a bootstrap over three seeds would be spuriously narrow. With one
replicate there is no interval. Replicates that overflowed (+inf: a diverged loss, exploded
activations) make the upper end infinite and the lower end the smallest finite replicate (or
+inf when all overflowed): an interval that can still decide an ``at_least`` claim.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from scipy import stats as _stats

from harness.api import ClaimValue, Estimate

Verdict = Literal["holds", "does not hold", "inconclusive", "not measured"]


def over_seeds(
    replicates: Iterable[float | None], scale: Literal["linear", "log"] = "linear", undecidable: str = ""
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
        point = math.inf if any(v == math.inf for v in values) else -math.inf
    elif len(set(values)) == 1:
        point = values[0]  # exactly, without a round trip through log and exp
    elif scale == "log":
        point = math.exp(statistics.fmean(math.log(v) for v in values))
    else:
        point = statistics.fmean(values)
    return Estimate(point, tuple(values), scale, undecidable=undecidable)


def point(value: float, basis: str) -> Estimate:
    """A value that is not an estimate over seeds (a closed form, a pooled statistic); ``basis`` says which."""
    return Estimate(float(value), basis=basis)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float
    n: int


def interval(estimate: Estimate, confidence: float = 0.95) -> Interval | None:
    """The t-interval of ``estimate`` over its replicates (module doc); ``None`` with fewer than two."""
    values = list(estimate.replicates)
    n = len(values)
    if n < 2:
        return None
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < n:  # overflowed replicates: a one-sided, conservative interval
        low = min(finite) if finite else math.inf
        return Interval(low, math.inf, confidence, n)
    if estimate.scale == "log":
        values = [math.log(v) for v in values]
    centre = statistics.fmean(values)
    half = float(_stats.t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    low, high = centre - half, centre + half
    if estimate.scale == "log":
        low, high = math.exp(low), math.exp(high)
    return Interval(low, high, confidence, n)


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
    """``(verdict, reason)`` of a claim ``at_least <= value <= at_most``.

    With replicates: ``holds`` when the whole interval is inside the bounds, ``does not hold``
    when it is wholly outside one, else ``inconclusive``. A single replicate is
    ``inconclusive`` (no interval). A point value (no replicates, a stated basis) decides on
    the value alone. ``undecidable`` estimates are ``inconclusive`` with their reason.
    """
    if estimate is None:
        return "not measured", "no finished run gives this value"
    if estimate.undecidable:
        return "inconclusive", estimate.undecidable
    if not estimate.replicates:
        inside = (at_least is None or estimate.value >= at_least) and (at_most is None or estimate.value <= at_most)
        return ("holds" if inside else "does not hold"), estimate.basis or "point value"
    bounds = interval(estimate, confidence)
    if bounds is None:
        return "inconclusive", "one seed: no interval"
    low, high = bounds.low, bounds.high
    if (at_least is not None and high < at_least) or (at_most is not None and low > at_most):
        return "does not hold", ""
    if (at_least is None or low >= at_least) and (at_most is None or high <= at_most):
        return "holds", ""
    return "inconclusive", "the interval straddles the threshold"


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

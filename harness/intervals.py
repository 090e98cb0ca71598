"""Intervals that fit their quantity, verdicts against a claim's bounds, and what would decide one.

An ``Estimate`` says what kind of quantity it is (``Estimate.kind``) and each kind has its
own interval (docs/studies.md, "How a claim is decided", has a worked example of each):

- ``mean``: a Student-t interval of the mean of the replicates (on ``log`` of them for
  ``scale="log"``). When a replicate overflowed (±inf) the values are *censored*: the interval
  is the distribution-free interval of the median from order statistics, which exists only
  with enough replicates (6 at 95%); it is never ``[smallest finite, inf]``.
- ``share``: a 0/1 outcome per replicate (a seed diverged or not): the exact binomial
  (Clopper-Pearson) interval of the share. Agreeing seeds never make it zero-width.
- ``bracket``: a value read off a grid (the best learning rate, the largest stable step):
  each replicate carries the bracket the grid allows (the neighbouring grid points; a value at
  the grid's end is open on that side). The interval runs from the t-lower bound of the
  brackets' low ends to the t-upper bound of their high ends, so agreeing seeds still leave
  the grid's width.
- ``ratio``: a ratio of means over paired seeds (numerators in ``replicates``, denominators in
  ``denominators``): Fieller's interval, unbounded when the denominator is not
  distinguishable from 0.
- ``rank``: a mean per-seed Spearman correlation over few levels (``pairs``: each seed's x and
  y values): an exact permutation test of "no trend" (every arrangement of each seed's y over
  its levels), reported as a p-value; the verdict needs the value on the claim's side of the
  threshold and p below (1 - confidence) / 2.

``decide`` gives the verdict and, for an inconclusive one, what would decide it: how many
seeds at the observed effect and spread, or which grid refinement.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from scipy import stats as _stats

from bnbench.api import Estimate

Verdict = Literal["holds", "does not hold", "inconclusive", "not measured"]

MAX_SEEDS = 10_000
"""Beyond this many seeds a hint says 'more than 10,000': the effect sits too close to the threshold."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float
    n: int
    method: str = "t"
    """``t``, ``median`` (order statistics, censored values), ``exact binomial``, ``grid bracket``,
    ``Fieller`` or ``permutation`` (``low``/``high`` are then the one-sided p-values of no trend:
    ``low`` for a trend below 0, ``high`` for one above)."""

    def text(self, number: Callable[[float], str] | None = None) -> str:
        """The interval for a table cell (``number`` formats each end)."""
        show = number or (lambda v: f"{v:.4g}")
        if self.method == "permutation":
            return (
                f"p = {show(self.high)} for a rising trend, {show(self.low)} for a falling one "
                f"(exact permutation test, n={self.n})"
            )
        level = f"{100 * self.confidence:g}%"
        return f"[{show(self.low)}, {show(self.high)}] ({level} {self.method}, n={self.n})"


# -- constructors -------------------------------------------------------------------------------
def share(outcomes, unit: str = "share") -> Estimate | None:
    """A share of 0/1 outcomes (``True`` counts 1) as a ``share`` estimate; ``None`` if there are none."""
    values = tuple(1.0 if bool(v) else 0.0 for v in outcomes if v is not None)
    if not values:
        return None
    return Estimate(statistics.fmean(values), values, kind="share", unit=unit)


def grid_bracket(value: float, grid, rule: Literal["argmax", "largest_passing"]) -> tuple[float, float]:
    """The bracket a grid allows for a value read off it.

    ``argmax`` (the best of the grid: the true optimum lies between its neighbours), or
    ``largest_passing`` (the largest grid point that passed a test the next one failed: the
    true limit lies between it and the next point). A value at the grid's top is open above
    (``inf``); ``largest_passing`` of 0 (nothing passed) lies below the grid's first point.
    """
    points = sorted({float(g) for g in grid})
    if not points:
        raise ValueError("a grid bracket needs a grid")
    if rule == "largest_passing" and value < points[0]:
        return 0.0, points[0]

    def distance(point: float) -> float:
        return abs(math.log(point / value)) if value > 0 and point > 0 else abs(point - value)

    index = min(range(len(points)), key=lambda i: distance(points[i]))
    below = points[index - 1] if index > 0 else 0.0
    above = points[index + 1] if index + 1 < len(points) else math.inf
    return (below, above) if rule == "argmax" else (points[index], above)


def bracketed(values, brackets, unit: str = "") -> Estimate | None:
    """Grid-valued replicates with their brackets (positive values: a geometric mean)."""
    pairs = [(float(v), (float(lo), float(hi))) for v, (lo, hi) in zip(values, brackets, strict=True) if v is not None]
    if not pairs:
        return None
    points = [v for v, _ in pairs]
    positive = [v for v in points if v > 0]
    if len(set(points)) == 1:
        centre = points[0]
    elif len(positive) == len(points) and all(math.isfinite(v) for v in points):
        centre = math.exp(statistics.fmean(math.log(v) for v in points))
    else:
        centre = statistics.median(points)
    return Estimate(centre, tuple(points), "log", kind="bracket", brackets=tuple(b for _, b in pairs), unit=unit)


def bracket_ratio(numerator: tuple[float, float], denominator: tuple[float, float]) -> tuple[float, float]:
    """The bracket of a ratio of two bracketed positive values: [low / high', high / low']."""
    (a, b), (c, d) = numerator, denominator
    low = 0.0 if d == math.inf or a == 0 else a / d
    high = math.inf if c == 0 or b == math.inf else b / c
    return low, high


def ratio_of_means(numerators: dict[int, float], denominators: dict[int, float], unit: str = "") -> Estimate | None:
    """The ratio of the mean numerator to the mean denominator over the seeds both give (Fieller)."""
    seeds = sorted(s for s in numerators.keys() & denominators.keys()
                   if math.isfinite(numerators[s]) and math.isfinite(denominators[s]))  # fmt: skip
    if not seeds:
        return None
    a = tuple(float(numerators[s]) for s in seeds)
    b = tuple(float(denominators[s]) for s in seeds)
    mean_b = statistics.fmean(b)
    value = statistics.fmean(a) / mean_b if mean_b != 0 else math.nan
    return Estimate(value, a, kind="ratio", denominators=b, unit=unit)


def rank_trend(series: dict[int, list[tuple[float, float]]], min_levels: int = 3) -> Estimate | None:
    """The mean over seeds of each seed's Spearman correlation of y with x, with the data for an
    exact permutation test. A seed whose x or y does not vary has correlation 0 (no trend)."""
    pairs = []
    for _, points in sorted(series.items()):
        xs = tuple(float(x) for x, _ in points)
        ys = tuple(float(y) for _, y in points)
        if len(set(xs)) >= 2:
            pairs.append((xs, ys))
    if not pairs:
        return None
    rhos = tuple(_spearman(xs, ys) for xs, ys in pairs)
    levels = min(len(set(xs)) for xs, _ in pairs)
    reason = ""
    if levels < min_levels:
        reason = f"a rank trend over {levels} levels (fewer than {min_levels}) can only be ±1 or 0"
    return Estimate(statistics.fmean(rhos), rhos, kind="rank", pairs=tuple(pairs), undecidable=reason)


def _spearman(xs, ys) -> float:
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    rho = float(_stats.spearmanr(xs, ys).statistic)
    return 0.0 if math.isnan(rho) else rho


# -- intervals ----------------------------------------------------------------------------------
def _t(confidence: float, n: int) -> float:
    return float(_stats.t.ppf((1 + confidence) / 2, n - 1))


def _t_bounds(values: list[float], confidence: float) -> tuple[float, float]:
    centre = statistics.fmean(values)
    half = _t(confidence, len(values)) * statistics.stdev(values) / math.sqrt(len(values))
    return centre - half, centre + half


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """The exact binomial interval of a share (``scipy.stats.binomtest``)."""
    ci = _stats.binomtest(successes, trials).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def median_rank(n: int, confidence: float) -> int:
    """The order statistic j (1-based) whose [x_(j), x_(n+1-j)] covers the median with at least
    ``confidence``; 0 when no such interval exists with n values."""
    alpha = (1 - confidence) / 2
    j = 0
    while j + 1 <= n / 2 and _stats.binom.cdf(j, n, 0.5) <= alpha:
        j += 1
    return j


def interval(estimate: Estimate, confidence: float = 0.95) -> Interval | None:
    """The interval of ``estimate`` by its kind (module doc); ``None`` where its kind needs more
    replicates than it has (one seed of a mean, a bracket or a ratio)."""
    kind = estimate.kind
    values = list(estimate.replicates)
    n = len(values)
    if kind == "share":
        if n == 0:
            return None
        low, high = clopper_pearson(round(sum(values)), n, confidence)
        return Interval(low, high, confidence, n, "exact binomial")
    if kind == "rank":
        low, high = permutation_p_values(estimate)
        return Interval(low, high, confidence, n, "permutation")
    if n < 2:
        return None
    if kind == "bracket":
        return _bracket_interval(estimate, confidence)
    if agree_exactly(estimate):
        return None  # no spread to build an interval on (decide says so)
    if kind == "ratio":
        return _fieller(estimate, confidence)
    if any(math.isinf(v) for v in values):
        return _median_interval(values, estimate.scale, confidence)
    if estimate.scale == "log" and any(v <= 0 for v in values):
        return None  # no log of 0: such replicates are not a log-scale estimate
    if estimate.scale == "log":
        low, high = _t_bounds([math.log(v) for v in values], confidence)
        return Interval(math.exp(low), math.exp(high), confidence, n)
    low, high = _t_bounds(values, confidence)
    return Interval(low, high, confidence, n)


def agree_exactly(estimate: Estimate) -> bool:
    """Whether two or more seeds of a mean or a ratio gave exactly the same value: their spread of 0
    says nothing about the next seed, so no interval is built on it."""
    values = estimate.replicates
    same = len(values) >= 2 and len(set(values)) == 1 and all(math.isfinite(v) for v in values)
    return same and (estimate.kind != "ratio" or len(set(estimate.denominators)) == 1)


def _median_interval(values: list[float], scale: str, confidence: float) -> Interval:
    ordered = sorted(values)
    n = len(ordered)
    j = median_rank(n, confidence)
    if j == 0:
        return Interval(0.0 if scale == "log" else -math.inf, math.inf, confidence, n, "median")
    return Interval(ordered[j - 1], ordered[n - j], confidence, n, "median")


def _log_bound(values: list[float], confidence: float, side: int) -> float:
    """The t-bound on the log scale of positive values (``side`` -1: lower, +1: upper), with 0 and
    inf passed through (a bracket open on that side)."""
    if side < 0 and any(v <= 0 for v in values):
        return 0.0
    if side > 0 and any(v == math.inf for v in values):
        return math.inf
    logs = [math.log(v) for v in values]
    low, high = _t_bounds(logs, confidence)
    return math.exp(low if side < 0 else high)


def _bracket_interval(estimate: Estimate, confidence: float) -> Interval:
    lows = [lo for lo, _ in estimate.brackets]
    highs = [hi for _, hi in estimate.brackets]
    return Interval(
        _log_bound(lows, confidence, -1), _log_bound(highs, confidence, +1), confidence, len(lows), "grid bracket"
    )


def _fieller_terms(estimate: Estimate, confidence: float) -> tuple[float, float, float]:
    a, b = list(estimate.replicates), list(estimate.denominators)
    n = len(a)
    q = _t(confidence, n) ** 2 / n
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    s_aa, s_bb = statistics.variance(a), statistics.variance(b)
    s_ab = statistics.covariance(a, b)
    return mean_b**2 - q * s_bb, mean_a * mean_b - q * s_ab, mean_a**2 - q * s_aa


def _fieller(estimate: Estimate, confidence: float) -> Interval:
    n = len(estimate.replicates)
    qa, qb, qc = _fieller_terms(estimate, confidence)
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:  # the denominator is not distinguishable from 0: an unbounded set
        return Interval(-math.inf, math.inf, confidence, n, "Fieller")
    root = math.sqrt(disc)
    return Interval((qb - root) / qa, (qb + root) / qa, confidence, n, "Fieller")


EXACT_LIMIT = 200_000
"""Above this many distinct partial sums (or 8 levels per seed) the permutation test draws
``MONTE_CARLO`` seeded arrangements instead of enumerating them all."""
MONTE_CARLO = 20_000


@functools.lru_cache(maxsize=256)
def _per_seed_null(xs: tuple[float, ...], ys: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    """One seed's Spearman correlations over every arrangement of its y values, with their probabilities."""
    counts = Counter(round(_spearman(xs, perm), 12) for perm in set(itertools.permutations(ys)))
    total = sum(counts.values())
    return tuple((rho, k / total) for rho, k in counts.items())


@functools.lru_cache(maxsize=256)
def permutation_p_values_of(pairs: tuple, observed: float) -> tuple[float, float]:
    """``(p for a falling trend, p for a rising one)`` of the summed correlation ``observed``."""
    tolerance = 1e-9 * max(1, len(pairs))
    if all(len(xs) <= 8 for xs, _ in pairs):
        total: dict[float, float] = {0.0: 1.0}
        for xs, ys in pairs:
            step: dict[float, float] = {}
            for partial, p in total.items():
                for rho, q in _per_seed_null(xs, ys):
                    key = round(partial + rho, 9)
                    step[key] = step.get(key, 0.0) + p * q
            total = step
            if len(total) > EXACT_LIMIT:
                break
        else:
            below = sum(p for value, p in total.items() if value <= observed + tolerance)
            above = sum(p for value, p in total.items() if value >= observed - tolerance)
            return min(1.0, below), min(1.0, above)
    rng = random.Random(0)  # seeded: the same data give the same p-values
    below = above = 0
    for _ in range(MONTE_CARLO):
        drawn = sum(_spearman(xs, tuple(rng.sample(ys, len(ys)))) for xs, ys in pairs)
        below += drawn <= observed + tolerance
        above += drawn >= observed - tolerance
    return (below + 1) / (MONTE_CARLO + 1), (above + 1) / (MONTE_CARLO + 1)


def permutation_p_values(estimate: Estimate) -> tuple[float, float]:
    """``(p for a falling trend, p for a rising one)``: the exact probabilities, when each seed's
    y values are arranged over its levels at random, of a summed correlation at most / at least
    the observed one (seeded Monte Carlo beyond ``EXACT_LIMIT``)."""
    return permutation_p_values_of(estimate.pairs, round(sum(estimate.replicates), 9))


def _null_variance(pairs) -> float:
    """The mean per-seed variance of a Spearman correlation under no trend."""
    variances = []
    for xs, ys in pairs:
        null = _per_seed_null(xs, ys) if len(xs) <= 8 else ((0.0, 1.0),)
        mean = sum(rho * p for rho, p in null)
        variances.append(sum(p * (rho - mean) ** 2 for rho, p in null))
    return statistics.fmean(variances)


# -- verdicts -----------------------------------------------------------------------------------
def _inside(low: float, high: float, at_least: float | None, at_most: float | None) -> bool:
    return (at_least is None or low >= at_least) and (at_most is None or high <= at_most)


def _outside(low: float, high: float, at_least: float | None, at_most: float | None) -> bool:
    return (at_least is not None and high < at_least) or (at_most is not None and low > at_most)


def decide(
    estimate: Estimate | None, at_least: float | None, at_most: float | None, confidence: float = 0.95
) -> tuple[Verdict, str]:
    """``(verdict, reason)`` of a claim ``at_least <= value <= at_most``.

    ``holds`` when the whole interval is inside the bounds, ``does not hold`` when it is wholly
    outside one, else ``inconclusive`` with what would decide it. A point value (no replicates,
    a stated basis) decides on the value alone; an ``undecidable`` estimate is inconclusive with
    its reason. Rank estimates decide on their permutation p-values (module doc).
    """
    if estimate is None:
        return "not measured", "no finished run gives this value"
    if estimate.undecidable:
        return "inconclusive", estimate.undecidable
    if not estimate.replicates:
        inside = _inside(estimate.value, estimate.value, at_least, at_most)
        return ("holds" if inside else "does not hold"), estimate.basis or "point value"
    if estimate.kind == "rank":
        return _decide_rank(estimate, at_least, at_most, confidence)
    bounds = interval(estimate, confidence)
    if bounds is None and agree_exactly(estimate):
        return "inconclusive", (
            f"the {len(estimate.replicates)} seeds agree exactly: a spread of 0 says nothing about the next seed, "
            "so agreeing seeds never make a verdict certain; a seed that differs gives the spread (a quantity whose "
            "seeds always agree needs an interval of its own kind: a share, a grid bracket)"
        )
    if bounds is None:
        return "inconclusive", "one seed: no interval; " + (seeds_needed(estimate, at_least, at_most, confidence))
    if _outside(bounds.low, bounds.high, at_least, at_most):
        return "does not hold", ""
    if _inside(bounds.low, bounds.high, at_least, at_most):
        return "holds", ""
    return "inconclusive", "the interval straddles the threshold; " + seeds_needed(
        estimate, at_least, at_most, confidence
    )


def _decide_rank(
    estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float
) -> tuple[Verdict, str]:
    alpha = (1 - confidence) / 2
    p_below, p_above = permutation_p_values(estimate)
    value = estimate.value
    if _inside(value, value, at_least, at_most):
        if at_least is not None and at_least > 0:
            p = p_above  # a rising trend at least this strong: shown by rejecting no trend upwards
        elif at_most is not None and at_most < 0:
            p = p_below
        else:
            return "inconclusive", (
                "a bound at or across 0 cannot be shown by a test of no trend (the permutation test shows a trend "
                "exists, not that it is small)"
            )
        if p <= alpha:
            return "holds", f"p = {p:.3g}"
        return "inconclusive", f"p = {p:.3g} > {alpha:g} against no trend; " + seeds_needed(
            estimate, at_least, at_most, confidence
        )
    if at_least is not None and value < at_least and at_least > 0 and p_below <= alpha:
        return "does not hold", f"a falling trend, p = {p_below:.3g}"
    if at_most is not None and value > at_most and at_most < 0 and p_above <= alpha:
        return "does not hold", f"a rising trend, p = {p_above:.3g}"
    return "inconclusive", (
        f"the trend ({value:.3g}) is on the wrong side of the threshold but not distinguishable from no trend "
        f"(p = {min(p_below, p_above):.3g}); " + seeds_needed(estimate, at_least, at_most, confidence)
    )


# -- what would decide it -----------------------------------------------------------------------
def _nearest_bound(
    centre: float, at_least: float | None, at_most: float | None, crossed: Interval | None = None
) -> float | None:
    """The bound an inconclusive interval straddles (else the nearest to ``centre``)."""
    if crossed is not None:
        if at_least is not None and crossed.low < at_least <= crossed.high:
            return at_least
        if at_most is not None and crossed.low <= at_most < crossed.high:
            return at_most
    bounds = [b for b in (at_least, at_most) if b is not None]
    return min(bounds, key=lambda b: abs(centre - b)) if bounds else None


def _seeds_for_mean(centre: float, spread: float, threshold: float, confidence: float, start: int) -> int | None:
    distance = abs(centre - threshold)
    if distance == 0:
        return None
    if spread == 0:
        return start
    m = max(start, 2)
    while m <= MAX_SEEDS:
        if _t(confidence, m) * spread / math.sqrt(m) < distance:
            return m
        m = m + 1 if m < 100 else int(m * 1.1)
    return None


def _seeds_text(m: int | None, n: int, what: str) -> str:
    if m is None:
        return f"no number of seeds decides it ({what})"
    if m > MAX_SEEDS:
        return f"more than {MAX_SEEDS:,} seeds would be needed ({what})"
    return f"about {m} seeds would decide it (now {n}; {what})"


def seeds_needed(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float = 0.95) -> str:
    """What would decide an inconclusive claim on ``estimate``: seeds at the observed effect and
    spread, or a finer grid (module doc)."""
    n = len(estimate.replicates)
    kind = estimate.kind
    if kind == "share":
        return _share_hint(estimate, at_least, at_most, confidence)
    if kind == "bracket":
        return _bracket_hint(estimate, at_least, at_most, confidence)
    if kind == "rank":
        return _rank_hint(estimate, at_least, at_most, confidence)
    if kind == "ratio":
        return _ratio_hint(estimate, at_least, at_most, confidence)
    values = list(estimate.replicates)
    if any(math.isinf(v) for v in values):
        return _censored_hint(estimate, at_least, at_most, confidence)
    log = estimate.scale == "log"
    if log and any(v <= 0 for v in values):
        return "replicates of 0 have no log: no interval on this scale"
    scaled = [math.log(v) for v in values] if log else values
    centre = statistics.fmean(scaled)
    threshold = _nearest_bound(estimate.value, at_least, at_most, interval(estimate, confidence))
    if threshold is None or (log and threshold <= 0):
        return "no threshold on this scale"
    spread = statistics.stdev(scaled) if n > 1 else math.nan
    if math.isnan(spread):
        return "a second seed gives the spread that says how many more are needed"
    target = math.log(threshold) if log else threshold
    m = _seeds_for_mean(centre, spread, target, confidence, n + 1)
    return _seeds_text(m, n, f"mean {estimate.value:.4g}, spread {spread:.3g}{' in log' if log else ''}")


def _share_hint(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float) -> str:
    n = len(estimate.replicates)
    p = estimate.value
    for bound in (at_least, at_most):
        if bound is not None and p == bound and bound in (0.0, 1.0):
            return (
                f"a share of exactly {bound:g} can never be shown: its exact interval has width at any number of "
                f"seeds (with {n} of {n} agreeing it is {_cp_text(estimate, confidence)}); a threshold short of "
                f"{bound:g} can be"
            )
    m = n + 1
    while m <= MAX_SEEDS:
        k = round(p * m)
        low, high = clopper_pearson(k, m, confidence)
        if _inside(low, high, at_least, at_most) or _outside(low, high, at_least, at_most):
            return _seeds_text(m, n, f"share {p:.3g}")
        m = m + 1 if m < 100 else int(m * 1.1)
    return _seeds_text(None if p in (at_least, at_most) else MAX_SEEDS + 1, n, f"share {p:.3g}")


def _cp_text(estimate: Estimate, confidence: float) -> str:
    low, high = clopper_pearson(round(sum(estimate.replicates)), len(estimate.replicates), confidence)
    return f"[{low:.2g}, {high:.2g}]"


def _bracket_hint(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float) -> str:
    n = len(estimate.brackets)
    threshold = _nearest_bound(estimate.value, at_least, at_most, interval(estimate, confidence))
    if threshold is None or threshold <= 0:
        return "no threshold on this scale"
    lows = [lo for lo, _ in estimate.brackets]
    highs = [hi for _, hi in estimate.brackets]
    # the end that must clear the threshold: the low end for at_least, the high end for at_most
    clearing = lows if (at_least is not None and threshold == at_least) else highs
    finite = [v for v in clearing if 0 < v < math.inf]
    if len(finite) < len(clearing) or not finite:
        return (
            "the grid cannot decide it: a seed's value lies at the grid's end; extend the grid "
            f"{'down' if clearing is lows else 'up'} past {threshold:g}"
        )
    logs = [math.log(v) for v in finite]
    centre = statistics.fmean(logs)
    wrong_side = centre < math.log(threshold) if clearing is lows else centre > math.log(threshold)
    if wrong_side:
        below = statistics.median(lows)
        above = statistics.median(highs)
        if below < threshold < above:
            return (
                f"the grid cannot decide it: refine it between {below:.3g} and {above:.3g}, which bracket {threshold:g}"
            )
        return f"the grid cannot decide it: refine it around {threshold:g}"
    spread = statistics.stdev(logs) if n > 1 else math.nan
    if math.isnan(spread):
        return "a second seed gives the spread that says how many more are needed"
    m = _seeds_for_mean(centre, spread, math.log(threshold), confidence, n + 1)
    return _seeds_text(m, n, "the grid brackets' spread over seeds")


def _censored_hint(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float) -> str:
    values = list(estimate.replicates)
    n = len(values)
    threshold = _nearest_bound(statistics.median(values), at_least, at_most, interval(estimate, confidence))
    if threshold is not None and threshold == at_least:
        beyond, side = sum(v >= at_least for v in values), f">= {at_least:g}"
    else:
        beyond, side = sum(v <= at_most for v in values), f"<= {at_most:g}"
    share_beyond = beyond / n
    for m in range(n + 1, 200):
        j = median_rank(m, confidence)
        k = round(share_beyond * m)
        if j and (k >= m - j + 1 or k <= j - 1):
            return (
                f"censored replicates (an overflow) are decided on the median: about {m} seeds would decide it "
                f"(now {n}, {beyond} of them {side})"
            )
    return f"censored replicates are decided on the median, and {beyond} of {n} {side} is too even to decide"


def _ratio_hint(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float) -> str:
    a, b = list(estimate.replicates), list(estimate.denominators)
    n = len(a)
    if n < 2:
        return "a second seed gives the spread that says how many more are needed"
    mean_b = statistics.fmean(b)
    threshold = _nearest_bound(estimate.value, at_least, at_most)
    if mean_b == 0 or threshold is None:
        return "the denominator's mean is 0: no ratio"
    ratio = statistics.fmean(a) / mean_b
    # the delta method's per-seed spread of the ratio
    spread = math.sqrt(max(0.0, statistics.variance(a) - 2 * ratio * statistics.covariance(a, b)
                           + ratio**2 * statistics.variance(b))) / abs(mean_b)  # fmt: skip
    qa, _, _ = _fieller_terms(estimate, confidence)
    need_den = _seeds_for_mean(mean_b, statistics.stdev(b), 0.0, confidence, n + 1) if qa <= 0 else n
    need = _seeds_for_mean(ratio, spread, threshold, confidence, n + 1)
    m = None if need is None or need_den is None else max(need, need_den)
    return _seeds_text(m, n, f"ratio {ratio:.3g}, denominator {mean_b:.3g}")


def _rank_hint(estimate: Estimate, at_least: float | None, at_most: float | None, confidence: float) -> str:
    n = len(estimate.replicates)
    value = estimate.value
    threshold = _nearest_bound(value, at_least, at_most)
    if value == 0:
        return "no trend at all was observed: no number of seeds shows one"
    if threshold is not None and not _inside(value, value, at_least, at_most):
        return (
            f"the observed trend {value:.3g} is weaker than {threshold:g}: more seeds can show whether a trend exists, "
            "not that it reaches the threshold"
        )
    z = float(_stats.norm.ppf(1 - (1 - confidence) / 2))
    variance = _null_variance(estimate.pairs)
    m = max(n + 1, math.ceil(variance * (z / value) ** 2))
    return _seeds_text(m, n, f"mean trend {value:.3g}, at the same levels")

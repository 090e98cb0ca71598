"""Each kind of quantity gets the interval that fits it, tested against cases with known answers."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from bnbench.analysis import over_seeds
from bnbench.intervals import (
    bracket_ratio,
    bracketed,
    clopper_pearson,
    decide,
    grid_bracket,
    interval,
    median_rank,
    permutation_p_values,
    rank_trend,
    ratio_of_means,
    seeds_needed,
    share,
)


def test_a_share_of_agreeing_seeds_gets_the_exact_binomial_interval_not_zero_width():
    none_of_three = share([False, False, False])
    bounds = interval(none_of_three)
    # Clopper-Pearson for 0 of n: [0, 1 - (alpha/2)^(1/n)]; for n = 3 at 95%: 0.7076
    assert bounds.low == 0.0 and bounds.high == pytest.approx(1 - 0.025 ** (1 / 3))
    assert bounds.method == "exact binomial"
    all_of_five = interval(share([True] * 5))
    assert all_of_five.low == pytest.approx(0.025 ** (1 / 5)) and all_of_five.high == 1.0
    assert clopper_pearson(3, 10, 0.95) == pytest.approx((0.0667, 0.6525), abs=1e-4)  # textbook table


def test_a_share_of_exactly_zero_can_never_be_shown_and_the_hint_says_so():
    verdict, reason = decide(share([0, 0, 0]), None, 0.0)
    assert verdict == "inconclusive" and "can never be shown" in reason


def test_a_share_hint_names_the_seeds_that_would_decide_it():
    # 0 of 5 gives an upper bound 0.522 (> 0.5); 0 of 6 gives 0.459: six agreeing seeds decide "<= 0.5"
    verdict, reason = decide(share([0] * 3), None, 0.5)
    assert verdict == "inconclusive" and "about 6 seeds" in reason
    assert decide(share([0] * 6), None, 0.5)[0] == "holds"


def test_grid_brackets_are_the_neighbouring_points_and_open_at_the_grid_end():
    grid = [0.1, 0.01, 0.001]
    assert grid_bracket(0.01, grid, "argmax") == (0.001, 0.1)
    assert grid_bracket(0.1, grid, "argmax") == (0.01, math.inf)
    assert grid_bracket(0.001, grid, "argmax") == (0.0, 0.01)
    assert grid_bracket(0.01, grid, "largest_passing") == (0.01, 0.1)
    assert grid_bracket(0.1, grid, "largest_passing") == (0.1, math.inf)
    assert grid_bracket(0.0, grid, "largest_passing") == (0.0, 0.001)
    assert bracket_ratio((0.01, 0.1), (0.0001, 0.001)) == pytest.approx((10, 1000))
    assert bracket_ratio((0.01, math.inf), (0.0, 0.001)) == (10.0, math.inf)


def test_agreeing_seeds_on_a_grid_keep_the_grid_width():
    estimate = bracketed([0.01, 0.01], [(0.003, 0.03), (0.003, 0.03)])
    bounds = interval(estimate)
    assert (bounds.low, bounds.high) == pytest.approx((0.003, 0.03)) and bounds.method == "grid bracket"
    # a threshold inside the bracket: the grid cannot decide it, and the hint names the refinement
    verdict, reason = decide(estimate, 0.005, None)
    assert verdict == "inconclusive" and "refine it between 0.003 and 0.03" in reason
    assert decide(estimate, 0.001, None)[0] == "holds" and decide(estimate, 0.05, None)[0] == "does not hold"


def test_a_ratio_at_the_grid_end_is_censored_on_that_side():
    estimate = bracketed([1.0, 1.0], [(0.1, math.inf), (0.1, math.inf)])
    bounds = interval(estimate)
    assert bounds.low == pytest.approx(0.1) and bounds.high == math.inf
    verdict, reason = decide(estimate, None, 10)
    assert verdict == "inconclusive" and "extend the grid up" in reason


def test_overflowed_replicates_are_censored_and_decided_on_the_median():
    three = over_seeds([math.inf, 50.0, math.inf], scale="log")
    assert three.value == math.inf  # the median
    bounds = interval(three)
    assert bounds.method == "median" and (bounds.low, bounds.high) == (0.0, math.inf)  # 3 seeds: none at 95%
    verdict, reason = decide(three, 10, None)
    assert verdict == "inconclusive" and "about 6 seeds" in reason
    six = over_seeds([math.inf] * 4 + [50.0, 80.0], scale="log")
    bounds = interval(six)
    assert (bounds.low, bounds.high) == (50.0, math.inf)  # [x_(1), x_(6)] covers the median with 1 - 2/64
    assert decide(six, 10, None)[0] == "holds"


def test_the_median_rank_has_the_known_coverage():
    assert median_rank(5, 0.95) == 0  # 1 - 2/32 = 0.9375 < 0.95
    assert median_rank(6, 0.95) == 1  # 1 - 2/64 = 0.969
    assert median_rank(17, 0.95) == 5  # binomial tables: [x_(5), x_(13)] for n = 17


def test_the_t_interval_hint_gives_the_textbook_number_of_seeds():
    # mean 0.1, s = 0.1 against 0: t_{n-1} * 0.1 / sqrt(n) < 0.1 first at n = 7 (t_6 = 2.447 < 2.646)
    estimate = over_seeds([0.0, 0.1, 0.2])
    assert decide(estimate, 0.0, None)[0] == "inconclusive"
    assert "about 7 seeds" in seeds_needed(estimate, 0.0, None)


def test_fieller_covers_a_known_ratio_at_its_nominal_rate():
    rng = random.Random(0)
    covered = trials = 0
    for _ in range(2000):
        den = {s: rng.gauss(10.0, 1.0) for s in range(5)}
        num = {s: 0.5 * den[s] + rng.gauss(0.0, 0.5) for s in range(5)}
        bounds = interval(ratio_of_means(num, den))
        trials += 1
        covered += bounds.low <= 0.5 <= bounds.high
    assert 0.93 <= covered / trials <= 0.97


def test_a_ratio_whose_denominator_may_be_zero_is_unbounded():
    estimate = ratio_of_means({0: 0.5, 1: 0.2, 2: 0.1}, {0: 0.3, 1: -0.2, 2: 0.05})
    bounds = interval(estimate)
    assert (bounds.low, bounds.high) == (-math.inf, math.inf)
    assert decide(estimate, 0.5, None)[0] == "inconclusive"


def test_a_ratio_of_means_counts_every_seed():
    # the seed where BN does not help (denominator -0.01) is kept, and pulls the ratio down
    estimate = ratio_of_means({0: 0.08, 1: 0.09, 2: 0.0}, {0: 0.1, 1: 0.1, 2: -0.01})
    assert estimate.value == pytest.approx(0.17 / 0.19)


def test_the_exact_permutation_test_over_three_levels():
    perfect = {s: [(0.0, 1.0), (0.25, 2.0), (0.5, 3.0)] for s in range(3)}
    estimate = rank_trend(perfect)
    assert estimate.value == 1.0
    below, above = permutation_p_values(estimate)
    assert above == pytest.approx(1 / 216) and below == 1.0  # 3! arrangements per seed, 3 seeds
    assert decide(estimate, 0.5, None) == ("holds", "p = 0.00463")
    two = rank_trend({s: perfect[s] for s in range(2)})
    assert permutation_p_values(two)[1] == pytest.approx(1 / 36)
    assert decide(two, 0.5, None)[0] == "inconclusive"  # 1/36 > 0.025: two seeds cannot decide
    flat = rank_trend({s: [(0.0, 1.0), (0.25, 1.0), (0.5, 1.0)] for s in range(4)})
    assert flat.value == 0.0 and decide(flat, 0.5, None)[0] == "inconclusive"
    falling = rank_trend({s: [(0.0, 3.0), (0.25, 2.0), (0.5, 1.0)] for s in range(3)})
    assert decide(falling, 0.5, None)[0] == "does not hold"


def test_a_rank_trend_over_two_levels_is_undecidable():
    estimate = rank_trend({0: [(0.0, 1.0), (0.5, 2.0)]})
    verdict, reason = decide(estimate, 0.5, None)
    assert verdict == "inconclusive" and "2 levels" in reason


def test_the_t_interval_still_covers_a_known_mean():
    rng = random.Random(1)
    covered = 0
    for _ in range(2000):
        values = [rng.gauss(1.0, 2.0) for _ in range(4)]
        bounds = interval(over_seeds(values))
        covered += bounds.low <= 1.0 <= bounds.high
    assert 0.93 <= covered / 2000 <= 0.97
    assert statistics.fmean([1.0]) == 1.0


def test_seeds_that_agree_exactly_never_make_a_mean_certain():
    agreeing = over_seeds([0.9, 0.9, 0.9])
    assert interval(agreeing) is None
    verdict, reason = decide(agreeing, 0.5, None)
    assert verdict == "inconclusive" and "agree exactly" in reason
    assert interval(ratio_of_means({0: 1.0, 1: 1.0}, {0: 2.0, 1: 2.0})) is None
    assert decide(over_seeds([0.9, 0.91, 0.9]), 0.5, None)[0] == "holds"  # any spread gives an interval

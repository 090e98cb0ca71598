"""Claims decided on intervals over seeds: the interval computation and the four verdicts."""

from __future__ import annotations

import math
import statistics

import pytest

from harness.analysis import as_estimate, interval, over_seeds, point, spearman, verdict
from harness.api import AnalysisResult, Estimate
from harness.report import CLAIM_HEADERS, Report, StudyRuns
from harness.spec import ClaimSpec, Component


def test_t_interval_matches_the_textbook_formula():
    # n = 4, mean 2.5, s = 1.2910: t_{0.975, 3} = 3.182446 → half-width 3.182446 * 1.2910 / 2
    bounds = interval(over_seeds([1, 2, 3, 4]), 0.95)
    half = 3.182446305284263 * statistics.stdev([1, 2, 3, 4]) / 2
    assert bounds is not None and bounds.n == 4
    assert (bounds.low, bounds.high) == pytest.approx((2.5 - half, 2.5 + half))
    wider = interval(over_seeds([1, 2, 3, 4]), 0.99)
    assert wider is not None and wider.low < bounds.low and wider.high > bounds.high


def test_log_scale_is_a_geometric_mean_and_its_interval():
    estimate = over_seeds([10, 1000], scale="log")
    assert estimate is not None and estimate.value == pytest.approx(100)
    bounds = interval(estimate)
    assert bounds is not None
    assert math.sqrt(bounds.low * bounds.high) == pytest.approx(100)  # symmetric in log
    assert over_seeds([0.0, -1.0], scale="log") is None  # nothing positive to take a log of


def test_overflowed_replicates_give_a_one_sided_interval():
    estimate = over_seeds([math.inf, 50.0, math.inf], scale="log")
    assert estimate is not None and estimate.value == math.inf
    bounds = interval(estimate)
    assert bounds is not None and (bounds.low, bounds.high) == (50.0, math.inf)
    assert verdict(estimate, 10, None)[0] == "holds" and verdict(estimate, 100, None)[0] == "inconclusive"


def test_four_verdicts():
    tight = over_seeds([0.11, 0.12, 0.10, 0.11])
    assert verdict(tight, 0.05, None) == ("holds", "")
    assert verdict(tight, 0.2, None) == ("does not hold", "")
    assert verdict(tight, None, 0.05) == ("does not hold", "")
    assert verdict(tight, 0.0, 0.2) == ("holds", "")
    straddling = over_seeds([0.02, 0.2, 0.1])
    assert verdict(straddling, 0.1, None) == ("inconclusive", "the interval straddles the threshold")
    assert verdict(over_seeds([0.5]), 0.1, None) == ("inconclusive", "one seed: no interval")
    assert verdict(None, 0.1, None) == ("not measured", "no finished run gives this value")
    assert verdict(point(3.0, "closed form"), 2, None) == ("holds", "closed form")
    assert verdict(point(1.0, "closed form"), 2, None) == ("does not hold", "closed form")


def test_a_trend_over_two_levels_is_inconclusive_whatever_its_value():
    two = spearman([0.0, 0.5], [1.0, 2.0])
    assert two is not None and two.value == pytest.approx(1.0)
    decision, reason = verdict(two, 0.9, None)
    assert decision == "inconclusive" and "2 levels" in reason
    three = spearman([0.0, 0.3, 0.5], [1.0, 2.0, 3.0])
    assert three is not None and not three.undecidable and verdict(three, 0.9, None)[0] == "holds"
    assert spearman([1.0, 1.0], [1.0, 2.0]) is None  # a constant side has no rank correlation


def test_plain_numbers_are_point_values_and_nan_is_not_measured():
    assert as_estimate(2.0) == Estimate(2.0, basis="the analysis gave no replicates")
    assert as_estimate(math.nan) is None and over_seeds([math.nan, None]) is None


def test_claims_table_shows_interval_source_and_verdict(registry, monkeypatch):
    values = {
        "gain": over_seeds([0.11, 0.12, 0.10]),
        "one_seed": over_seeds([0.3]),
        "closed": point(0.01, "closed form vs. Monte Carlo"),
    }
    report = Report([StudyRuns(name="s", axes=[], planned=[], stored={})], registry)
    report.analyses["s"] = [(Component(name="x"), AnalysisResult(values=values))]
    report.claims = [
        ClaimSpec(claim="gain", study="s", value="gain", at_least=0.05, source="Fig. 1"),
        ClaimSpec(claim="one", study="s", value="one_seed", at_least=0.1),
        ClaimSpec(claim="closed", study="s", value="closed", at_most=0.05, source="Sec. 4", confidence=0.99),
        ClaimSpec(claim="missing", study="s", value="nothing", at_most=1, source="our reading"),
    ]
    rows = report.claims_rows()
    assert CLAIM_HEADERS == ["claim", "study", "measured", "interval", "threshold", "source", "verdict"]
    assert rows[0][2] == "gain = 0.11" and rows[0][3].endswith("(95%, n=3)") and rows[0][5] == "Fig. 1"
    assert [row[-1] for row in rows] == [
        "holds",
        "inconclusive (one seed: no interval)",
        "holds (closed form vs. Monte Carlo)",
        "not measured (its analyses report no value 'nothing' (a typo?); they report: closed, gain, one_seed)",
    ]
    assert rows[1][5] == "not given" and rows[2][3] == "point value: closed form vs. Monte Carlo"
    report.scale_note = "smoke scale: checks the software, not the claims"
    assert report.claims_title == "Claims (smoke scale: checks the software, not the claims)"
    assert all(row[-1].endswith("[smoke scale: checks the software, not the claims]") for row in report.claims_rows())


def test_claim_spec_validates_confidence_and_bounds():
    with pytest.raises(ValueError, match="confidence"):
        ClaimSpec(claim="c", study="s", value="v", at_least=1, confidence=1.5)
    with pytest.raises(ValueError, match="larger than at_most"):
        ClaimSpec(claim="c", study="s", value="v", at_least=2, at_most=1)

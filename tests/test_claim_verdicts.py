"""Claims decided on intervals over seeds: the interval computation and the four verdicts."""

from __future__ import annotations

import math
import statistics

import pytest

from bnbench.analysis import as_estimate, interval, over_seeds, point, spearman, verdict
from bnbench.api import AnalysisResult, Estimate
from bnbench.report import CLAIM_HEADERS, Report, StudyRuns
from bnbench.spec import CheckSpec, ClaimSpec, Component
from bnbench.store import definition_hash


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


def test_four_verdicts():
    tight = over_seeds([0.11, 0.12, 0.10, 0.11])
    assert verdict(tight, 0.05, None) == ("holds", "")
    assert verdict(tight, 0.2, None) == ("does not hold", "")
    assert verdict(tight, None, 0.05) == ("does not hold", "")
    assert verdict(tight, 0.0, 0.2) == ("holds", "")
    straddling = over_seeds([0.02, 0.2, 0.1])
    decision, reason = verdict(straddling, 0.1, None)
    assert decision == "inconclusive" and reason.startswith("the interval straddles the threshold; about")
    decision, reason = verdict(over_seeds([0.5]), 0.1, None)
    assert decision == "inconclusive" and reason.startswith("one seed: no interval; a second seed")
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
        "gain": over_seeds([0.11, 0.12, 0.10], unit="points"),
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
    rows = [dict(zip(CLAIM_HEADERS, row, strict=True)) for row in report.claims_rows()]
    assert rows[0]["measured"] == "0.11 points" and rows[0]["interval"].endswith("(95% t, n=3)")
    assert rows[0]["source"] == "Fig. 1" and rows[0]["id"] == "gain" and rows[0]["kind"] == "claim"
    assert rows[0]["verdict"] == "holds"
    assert rows[1]["verdict"].startswith("inconclusive (one seed: no interval")
    assert rows[2]["verdict"] == "holds (closed form vs. Monte Carlo)"
    assert rows[3]["verdict"] == (
        "not measured (its analyses report no value 'nothing'; they report: closed, gain, one_seed)"
    )
    assert rows[1]["source"] == "not given" and rows[2]["interval"] == "point value: closed form vs. Monte Carlo"
    compact = report.claims_rows(verbose=False)
    assert len(compact[0]) == 6 and compact[0][0] == "gain"
    report.scale_note = "smoke scale: checks the software, not the claims"
    assert report.claims_title == "Claims (smoke scale: checks the software, not the claims)"
    assert all("[smoke scale" in row[5] for row in report.claims_rows(verbose=False))


def _report_with(registry, values, claims, checks=()):
    report = Report([StudyRuns(name="s", axes=[], planned=[], stored={})], registry)
    report.analyses["s"] = [(Component(name="x"), AnalysisResult(values=values))]
    report.claims, report.checks = list(claims), list(checks)
    return report


def test_a_failed_precondition_turns_its_dependents_inconclusive(registry):
    guard = CheckSpec(id="fair", check="fair", kind="guard", study="s", value="loss_ratio", at_most=2)
    claim = ClaimSpec(claim="BN wins", study="s", value="gain", at_least=0, requires=["fair"])
    unfair = _report_with(
        registry, {"gain": over_seeds([5.0, 6.0, 5.5]), "loss_ratio": over_seeds([3.4, 3.0, 3.9])}, [claim], [guard]
    )
    (decision,) = unfair.claim_decisions()
    assert decision.verdict == "inconclusive"
    assert decision.reason.startswith("precondition failed: fair: does not hold; on its own: holds")
    assert unfair.checks_rows()[0][1] == "guard"  # shown as a check, not a finding
    fair = _report_with(
        registry, {"gain": over_seeds([5.0, 6.0, 5.5]), "loss_ratio": over_seeds([1.1, 1.2, 1.0])}, [claim], [guard]
    )
    assert fair.claim_decisions()[0].verdict == "holds"
    unsure = _report_with(
        registry, {"gain": over_seeds([5.0, 6.0, 5.5]), "loss_ratio": over_seeds([1.0, 3.0, 1.9])}, [claim], [guard]
    )
    assert unsure.claim_decisions()[0].reason.startswith("precondition not established: fair: inconclusive")


def test_an_edited_claim_is_marked_post_hoc(registry, tmp_path):
    from bnbench.store import Store

    claim = ClaimSpec(claim="gain", study="s", value="gain", at_least=0.05)
    with Store(tmp_path / "r.sqlite") as store:
        store.register([(claim.key, claim.study, claim.definition())])  # before any result
        edited = claim.model_copy(update={"at_least": 0.01})
        store.register([(edited.key, edited.study, edited.definition())])
        registrations = store.registrations()
    report = _report_with(registry, {"gain": over_seeds([0.11, 0.12, 0.10])}, [claim])
    report.registrations, report.results_held = registrations, {"s": 3}
    assert report.registration(claim).startswith("pre-registered ")
    registrations[(edited.key, definition_hash(edited.definition()))] = (0.0, 12)  # registered after 12 results
    assert report.registration(edited) == "post hoc (defined 1970-01-01, after 12 results)"
    never = claim.model_copy(update={"at_least": 0.001})
    assert report.registration(never).startswith("post hoc (this definition was never registered")
    report.claims = [never]
    assert report.claims_rows()[0][CLAIM_HEADERS.index("verdict")].endswith("[post hoc]")


def test_claims_on_a_study_with_readings_are_decided_per_reading_and_summarized(registry):
    planned = [(f"r{i}", {"model": reading, "seed": 0}, 0) for i, reading in enumerate(["m(g=0.4)", "m(g=0.6)"])]
    study = StudyRuns(name="s", axes=["model"], planned=planned, stored={}, reading_axis="model")
    assert study.readings() == {"m(g=0.4)": "0.4", "m(g=0.6)": "0.6"}
    report = Report([study], registry)
    report.readings["s"] = {
        "m(g=0.4)": [(Component(name="x"), AnalysisResult(values={"ratio": over_seeds([0.9, 1.1, 1.0])}))],
        "m(g=0.6)": [(Component(name="x"), AnalysisResult(values={"ratio": over_seeds([90.0, 110.0, 100.0])}))],
    }
    report.claims = [ClaimSpec(claim="ratio", study="s", value="ratio", at_least=10)]
    decisions = report.claim_decisions()
    assert [(d.reading, d.verdict) for d in decisions] == [("m(g=0.4)", "does not hold"), ("m(g=0.6)", "holds")]
    assert report.summaries()[0][1] == "holds at 0.6 only; does not hold at 0.4"
    assert [row[1] for row in report.claims_rows(verbose=False)] == ["0.4", "0.6"]


def test_a_value_the_profile_cannot_produce_says_so(registry):
    report = _report_with(registry, {"diverged_share.none.lr=0.1": over_seeds([0.0])}, [
        ClaimSpec(claim="BN trains", study="s", value="diverged_share.all.lr=0.1", at_most=0.5)
    ])  # fmt: skip
    report.unprofiled = {"s": {"placement": ["all"]}}
    (decision,) = report.claim_decisions()
    assert decision.verdict == "not measured" and "this profile does not run placement = all" in decision.reason


def test_claim_spec_validates_confidence_and_bounds():
    with pytest.raises(ValueError, match="confidence"):
        ClaimSpec(claim="c", study="s", value="v", at_least=1, confidence=1.5)
    with pytest.raises(ValueError, match="larger than at_most"):
        ClaimSpec(claim="c", study="s", value="v", at_least=2, at_most=1)


def test_reading_labels_keep_what_differs():
    from bnbench.report import reading_labels

    values = [
        "resnet_cifar(depth=110, init=pytorch_default)",
        "resnet_cifar(depth=110, init=kaiming_normal_fan_in, init_gain=0.4)",
        "resnet_cifar(depth=110, init=depth_scaled)",
    ]
    assert reading_labels(values) == ["pytorch_default", "kaiming_normal_fan_in init_gain=0.4", "depth_scaled"]

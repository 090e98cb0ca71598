"""The Bjorck et al. criteria as the paper states them: the best learning rate chosen on
validation (never when nothing finished), the absolute divergence rule, and the real
unnormalized ResNet-110, which must train at lr 1e-4 and diverge at large rates."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbench import DataInfo
from bnbench.analysis import verdict
from bnbench.api import Estimate, RunRecord, StudyResults
from bnbench.plugins.analyses.lr_sweep import LrSweepOptions, PlacementShareOptions, lr_sweep, placement_share
from bnbench.plugins.models.resnet_cifar import ResNetCifar, ResNetOptions
from bnbench.plugins.probes.landscape import LandscapeAnalysisOptions, landscape_analysis
from bnbench.plugins.probes.max_lr import MaxLrAnalysisOptions, learned, train_steps


def run(
    placement: str,
    lr: float,
    *,
    seed: int = 0,
    val: float | None = None,
    test: float | None = None,
    status: str = "done",
) -> RunRecord:
    metrics: dict[str, float] = {}
    if val is not None:
        metrics["validation_accuracy"] = val
    if test is not None:
        metrics["test_accuracy"] = test
    return RunRecord(
        run_id=f"{placement}-{lr}-{seed}",
        axes={"placement": placement, "optimizer.lr": lr},
        seed=seed,
        spec={"placement": {"name": placement}, "optimizer": {"lr": lr}},
        status=status,
        diverged_step=5 if status == "diverged" else None,
        epochs=[(1, 10, metrics)] if metrics else [],
        measurements={},
    )


def study(runs: list[RunRecord], axes: list[str] | None = None) -> StudyResults:
    return StudyResults("s", axes or ["placement", "optimizer.lr"], runs, planned=len(runs))


def probe(placement: str, seed: int, measurements: dict[str, Any]) -> RunRecord:
    return RunRecord(
        run_id=f"{placement}-{seed}",
        axes={"placement": placement},
        seed=seed,
        spec={"probe": {"name": "loss_landscape"}},
        status="done",
        diverged_step=None,
        epochs=[],
        measurements=measurements,
    )


# -- best learning rate ---------------------------------------------------------------------------
def test_a_group_in_which_every_run_diverged_has_no_best_learning_rate():
    runs = [run("all", lr, seed=s, val=0.8, test=0.8) for lr in (0.1, 1e-4) for s in (0, 1)]
    runs += [run("none", lr, seed=s, status="diverged") for lr in (0.1, 1e-4) for s in (0, 1)]
    result = lr_sweep(study(runs), LrSweepOptions())
    assert "best_lr.none" not in result.values and "accuracy.none" not in result.values
    assert "best_lr_ratio" not in result.values and "accuracy_gain" not in result.values
    assert result.tables[0].rows[1][-2:] == ["—", "—"]
    assert verdict(None, 10, None)[0] == "not measured"
    share = placement_share(study(runs), PlacementShareOptions())
    assert "final_layer_share" not in share.values and "normalization_gain" not in share.values


def test_best_learning_rate_is_chosen_on_validation_and_test_accuracy_is_reported_there():
    runs = []
    for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
        # the test set would pick lr 0.1 (0.95); validation picks 0.01, where test accuracy is 0.85
        runs += [
            run("all", 0.1, seed=seed, val=0.80 + noise, test=0.95 + noise),
            run("all", 0.01, seed=seed, val=0.90 + noise, test=0.85 + noise),
            run("none", 0.1, seed=seed, status="diverged"),
            run("none", 1e-4, seed=seed, val=0.70 + noise, test=0.72 + noise),
        ]
    values = lr_sweep(study(runs), LrSweepOptions(matched_lr=0.1)).values
    accuracy = values["accuracy.all"]
    assert isinstance(accuracy, Estimate) and accuracy.value == pytest.approx(85) and accuracy.unit == "%"
    assert accuracy.replicates == pytest.approx((85, 86, 84))
    assert values["best_lr.all"].value == pytest.approx(0.01)
    ratio = values["best_lr_ratio"]
    assert ratio.value == pytest.approx(100) and ratio.kind == "bracket" and ratio.unit == "x"
    # BN's best 0.01 lies in (0, 0.1) on its grid {0.01, 0.1}; no BN's 1e-4 in (0, 0.1): the ratio is open
    assert ratio.brackets[0] == (0.0, math.inf)
    assert values["accuracy_gain"].value == pytest.approx(85 - 72) and values["accuracy_gain"].unit == "points"
    decision, reason = verdict(values["accuracy_gain"], 10, None)
    assert decision == "inconclusive" and "agree exactly" in reason  # 13 points at every seed: no spread
    # the matched-lr control: at lr 0.1 the unnormalized runs diverged (score 0)
    assert values["accuracy_gain_at_matched_lr"].value == pytest.approx(95)
    assert values["diverged_share.none.lr=0.1"].value == 1.0 and values["diverged_share.none.lr=0.0001"].value == 0
    assert values["diverged_share.all.lr=0.1"].value == 0.0 and values["diverged_share.all.lr=0.1"].kind == "share"


def test_without_a_validation_metric_the_best_learning_rate_is_not_measured():
    runs = [run(p, lr, test=0.9) for p in ("all", "none") for lr in (0.1, 0.01)]
    result = lr_sweep(study(runs), LrSweepOptions())
    assert not result.values and "validation_size" in result.tables[0].title
    test_chosen = lr_sweep(study(runs), LrSweepOptions(select_on="test_accuracy"))
    assert "accuracy.all" in test_chosen.values and "test accuracy, never" in test_chosen.tables[0].title


def test_ties_go_to_the_smaller_learning_rate():
    runs = [run("all", lr, val=0.9, test=0.9) for lr in (0.1, 0.01)] + [run("none", 0.01, val=0.5, test=0.5)]
    assert lr_sweep(study(runs), LrSweepOptions()).values["best_lr.all"].value == pytest.approx(0.01)


# -- the paper's absolute divergence rule ---------------------------------------------------------
STEPS = [1e-3, 1e-2, 1e-1, 1.0]


def landscape_study(loss: dict[str, float], curves: dict[str, list[float]], seeds: int = 3) -> StudyResults:
    runs = [
        probe(
            p,
            s,
            {"step_sizes": STEPS, "batches": [{"loss": loss[p] * (1 + 0.01 * s), "relative_loss": curves[p]}] * 2},
        )
        for p in curves
        for s in range(seeds)
    ]
    return StudyResults("s", ["placement"], runs, planned=len(runs))


def test_landscape_uses_the_absolute_loss_limit_by_default():
    # BN: the loss grows 188x at step 1 from 2.3 (433 < 1e3: stable under the paper's rule);
    # no BN: from a loss of 20, 100x at step 0.01 is 2000 (> 1e3: diverged), though only 100x relative
    data = landscape_study(
        {"all": 2.3, "none": 20.0}, {"all": [0.9, 0.9, 5.0, 188.0], "none": [0.9, 100.0, 1e5, math.inf]}
    )
    absolute = landscape_analysis(data, LandscapeAnalysisOptions()).values
    assert absolute["max_stable_step.all"].value == pytest.approx(1.0)
    assert absolute["max_stable_step.none"].value == pytest.approx(1e-3)
    assert absolute["stable_step_ratio"].value == pytest.approx(1000)
    relative = landscape_analysis(data, LandscapeAnalysisOptions(criterion="relative")).values
    assert relative["max_stable_step.none"].value == pytest.approx(1e-2)  # today's rule: 100x is "stable"
    assert relative["stable_step_ratio"].value == pytest.approx(100)


def test_landscape_reports_how_the_ratio_depends_on_the_threshold():
    data = landscape_study({"all": 2.0, "none": 2.0}, {"all": [0.9, 0.9, 5.0, 188.0], "none": [0.9, 20.0, 1e5, 1e7]})
    result = landscape_analysis(data, LandscapeAnalysisOptions(sensitivity=[20.0, 1e3, 1e6]))
    (_, sensitivity) = result.tables
    assert [row[0] for row in sensitivity.rows] == ["20", "1000 (default)", "1e+06"]
    # limit 20: BN stable to 0.1, no BN to 1e-3 → 100; 1e3: 1 / 0.01; 1e6: 1 / 0.1
    assert [row[3] for row in sensitivity.rows] == ["100", "100", "10"]
    assert result.values["stable_step_ratio_at_20"].value == pytest.approx(100)
    assert result.values["stable_step_ratio_at_1e+06"].value == pytest.approx(10)


def test_max_lr_counts_only_non_finite_losses_by_default_and_decides_training_on_learning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.mul_(1e4)  # a loss in the thousands from the first step
    batches = [(torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))) for _ in range(3)]
    first = F.cross_entropy(model(batches[0][0]), batches[0][1]).item()
    assert first > 1e3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    default = train_steps(model, batches, 1e-9, 0.0, 0.0, 1e3)
    assert not default["diverged"] and not default["learned"]  # a loss in the thousands learns nothing
    model.load_state_dict(state)
    absolute = train_steps(model, batches, 1e-9, 0.0, 0.0, 1e3, criterion="absolute")
    assert absolute["diverged"] and absolute["diverged_step"] == 1
    model.load_state_dict(state)
    assert not train_steps(model, batches, 1e-9, 0.0, 0.0, 1e3, criterion="relative")["diverged"]
    assert learned([2.3, 1.0, 0.5], 10, 0.1) and not learned([2.3, 2.3, 2.25], 10, 0.1)
    assert MaxLrAnalysisOptions().depth_axis == "model.depth"


# -- the real unnormalized ResNet-110 (Bjorck et al. Fig. 1) --------------------------------------
def cifar_shaped(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    prototypes = F.interpolate(torch.randn(10, 3, 8, 8, generator=generator), size=(32, 32), mode="bilinear")
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = 0.5 * prototypes[labels] + torch.randn(count, 3, 32, 32, generator=generator)
    return (images - images.mean((0, 2, 3), keepdim=True)) / images.std((0, 2, 3), keepdim=True), labels


def bundled_resnet_options() -> dict[str, Any]:
    """The model options of the bundled manifest's Fig. 1 study (the reading under test)."""
    manifest = tomllib.loads((Path(__file__).parents[2] / "benchmarks.toml").read_text())
    (study,) = [s for s in manifest["studies"] if s["name"] == "resnet110_cifar10_lr"]
    return {k: v for k, v in study["model"].items() if k != "name"}


def sgd_losses(options: dict[str, Any], lr: float, steps: int, batch: int = 32) -> list[float]:
    """Mini-batch losses of SGD (the protocol's momentum and weight decay) on the unnormalized
    ResNet of ``options``, stopping at the paper's divergence rule (a loss above 1e3)."""
    torch.manual_seed(0)
    model = ResNetCifar(ResNetOptions(**options), DataInfo((3, 32, 32), 10))
    images, labels = cifar_shaped(batch * steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    losses = []
    for step in range(steps):
        part = slice(step * batch, (step + 1) * batch)
        loss = F.cross_entropy(model(images[part]), labels[part])
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or losses[-1] > 1e3:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


@pytest.mark.slow
def test_the_bundled_unnormalized_resnet110_trains_at_1e4():
    options = bundled_resnet_options()
    assert options["depth"] == 110
    losses = sgd_losses(options, 1e-4, steps=8)
    assert len(losses) == 8 and all(math.isfinite(v) and v < 1e3 for v in losses)
    assert losses[-1] < losses[0] / 4  # from a large initial loss (activations grow with depth) towards ln 10


def test_the_bundled_unnormalized_resnet110_diverges_at_a_large_learning_rate():
    losses = sgd_losses(bundled_resnet_options(), 0.1, steps=20)
    assert not math.isfinite(losses[-1]) or losses[-1] > 1e3


@pytest.mark.parametrize("init", ["kaiming_normal", "kaiming_normal_fan_in"])
def test_he_init_makes_the_unnormalized_resnet110_diverge_at_once(init):
    losses = sgd_losses({"depth": 110, "init": init}, 1e-4, steps=2)
    assert len(losses) == 1 and losses[0] > 1e3  # the paper's rule: a mini-batch loss above 1e3


def test_the_accuracy_figure_marks_diverged_runs_instead_of_drawing_them_at_zero():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run("none", 1e-4, seed=s, test=0.6) for s in (0, 1)]
    runs += [run("none", 0.1, seed=s, status="diverged") for s in (0, 1)]
    runs += [run("none", 0.01, seed=0, test=0.5), run("none", 0.01, seed=1, status="diverged")]
    figure = next(f for f in lr_sweep(study(runs), LrSweepOptions(select_on="test_accuracy")).figures
                  if f.name == "accuracy_vs_lr")  # fmt: skip
    fig = plt.figure()
    figure.draw(fig)
    line, marks = fig.axes[0].lines[:2]
    heights = dict(zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert heights[1e-4] == pytest.approx(60) and heights[0.01] == pytest.approx(50)
    assert math.isnan(heights[0.1])  # every seed diverged: a gap in the line, not a point at 0%
    assert list(marks.get_xdata()) == [0.01, 0.1] and marks.get_linestyle() == "None"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1/2", "2/2"]
    plt.close(fig)

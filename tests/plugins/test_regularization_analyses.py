"""Analyses of the regularization study: validation-only tuning, noise trends, trajectories, figures."""

from __future__ import annotations

import itertools
import random

import matplotlib
import pytest

from harness.api import RunRecord, StudyResults
from plugins.analyses.regularization import (
    ImpliedRegularizationOptions,
    TrajectoryOptions,
    TunedL2Options,
    implied_regularization_analysis,
    spearman,
    trajectories,
    tune,
    tuned_l2_comparison,
)

matplotlib.use("Agg")
NOISE, PLACEMENT, DECAY = "input_transform.std", "placement", "optimizer.weight_decay"
_ids = itertools.count()


def record(axes: dict, seed: int, *epochs: dict, status: str = "done") -> RunRecord:
    return RunRecord(
        run_id=f"r{next(_ids)}",
        axes=axes,
        seed=seed,
        spec={},
        status=status,
        diverged_step=None,
        epochs=[(i + 1, 10 * (i + 1), dict(m)) for i, m in enumerate(epochs)],
        measurements={},
    )


def study(runs: list[RunRecord], axes: list[str]) -> StudyResults:
    return StudyResults("s", axes, runs, planned=len(runs))


# validation ranks weight decay 1e-4 first; the test set would rank 1e-3 first
VALIDATION = {0.0: 0.90, 1e-4: 0.95, 1e-3: 0.92}
TEST = {0.0: 0.91, 1e-4: 0.93, 1e-3: 0.99}


def l2_study(test: dict[float, float] | None = TEST) -> StudyResults:
    runs = []
    for noise, seed in itertools.product((0.0, 0.3), (0, 1)):
        bn = {"test_accuracy": 0.94, "validation_accuracy": 0.93, "robustness.clean_test_accuracy": 0.97}
        runs.append(record({NOISE: noise, PLACEMENT: "all", DECAY: 0.0}, seed, bn))
        for decay in VALIDATION:
            metrics = {"validation_accuracy": VALIDATION[decay] - noise / 10}
            if test is not None:
                metrics["test_accuracy"] = test[decay] - noise / 10
            runs.append(record({NOISE: noise, PLACEMENT: "none", DECAY: decay}, seed, metrics))
    return study(runs, [NOISE, PLACEMENT, DECAY])


def test_l2_is_tuned_on_the_validation_split_and_never_on_the_test_set():
    result = tuned_l2_comparison(l2_study(), TunedL2Options())
    assert result.values["tuned_decay.0"] == result.values["tuned_decay.0.3"] == 1e-4
    # the reported accuracy is the test accuracy of the validation-chosen decay, not the best test accuracy
    assert result.values["gap_points.0"] == pytest.approx(100 * (0.93 - 0.94))
    assert result.values["gap_points.0.3"] == pytest.approx(100 * (0.93 - 0.03 - 0.94))
    assert result.values["max_gap_points"] == pytest.approx(-1.0)
    assert result.values["bn_gain_points.0"] == pytest.approx(100 * (0.94 - 0.91))
    rows = result.tables[0].rows
    assert rows[0][3] == "0.0001 (95.00)" and rows[0][4] == "93.00 ± 0.00"
    # whatever the test set says, the choice is the same; without test metrics it still tunes
    rng = random.Random(0)
    for _ in range(5):
        scrambled = {decay: rng.random() for decay in TEST}
        assert tuned_l2_comparison(l2_study(scrambled), TunedL2Options()).values["tuned_decay.0.3"] == 1e-4
    assert tuned_l2_comparison(l2_study(None), TunedL2Options()).values["tuned_decay.0"] == 1e-4


def test_tuning_without_a_validation_metric_is_an_error_not_a_fallback_to_test():
    runs = [record({DECAY: decay}, 0, {"test_accuracy": TEST[decay]}) for decay in TEST]
    with pytest.raises(ValueError, match="validation_accuracy"):
        tune(runs, DECAY, "validation_accuracy")
    diverged = record({DECAY: 1e-2}, 0, {}, status="diverged")  # a diverged run scores 0, it is not missing
    best = tune([diverged, record({DECAY: 0.0}, 0, {"validation_accuracy": 0.5})], DECAY, "validation_accuracy")
    assert best is not None and best[0] == 0.0


def noise_study() -> StudyResults:
    runs = []
    for noise, seed in itertools.product((0.0, 0.1, 0.3, 0.5), (0, 1)):
        metrics = {
            "implied_regularization.layer0.lambda.median": 0.1 - noise / 10 + seed / 100,
            "implied_regularization.layer0.ridge.median": noise**2 / 10,
            "implied_regularization.layer0.bound.within": 1.0 - noise / 10,
            "weight_geometry.layer0.v_norm.median": 1 - noise,
            "implied_regularization.layer1.lambda.median": noise,
        }
        if noise:
            metrics["implied_regularization.layer0.snr.median"] = 1 / noise
        runs.append(record({NOISE: noise, DECAY: 0.0}, seed, metrics))
        runs.append(record({NOISE: noise, DECAY: 1e-3}, seed, {**metrics, "x": 1.0}))
        unnormalized = {"implied_regularization.layer0.snr.median": 2.0} if noise else {}
        runs.append(record({NOISE: noise, DECAY: 5.0}, seed, unnormalized))  # no λ̂: not a BN run
    return study(runs, [NOISE, DECAY])


def test_implied_regularization_trends_against_noise():
    result = implied_regularization_analysis(noise_study(), ImpliedRegularizationOptions(select={DECAY: 0.0}))
    values = result.values
    assert values["ridge_trend"] == pytest.approx(1.0) and values["lambda_trend"] == pytest.approx(-1.0)
    assert values["ridge_rate.0.5"] == pytest.approx(0.025) and values["ridge_rate.0"] == 0.0
    assert values["ridge_rate_min"] == pytest.approx(0.001) == values["ridge_rate_min.layer0"]
    assert values["lambda.weight_decay=0.0.layer0.0.3"] == values["lambda.0.3"]
    assert values["lambda.0.1"] == pytest.approx(0.1 - 0.01 + 0.005)
    assert values["bound_within_min"] == pytest.approx(0.95)
    assert values["ridge_trend.weight_decay=0.0"] == pytest.approx(1.0)
    table = result.tables[0]
    assert table.headers[-4:] == ["σ_n=0", "σ_n=0.1", "σ_n=0.3", "σ_n=0.5"]
    assert {row[0] for row in table.rows} == {"weight_decay=0.0"}
    two = implied_regularization_analysis(noise_study(), ImpliedRegularizationOptions(select={DECAY: 0}, layers=[0, 1]))
    assert (
        two.values["lambda_trend.layer1"] == pytest.approx(1.0) and two.values["lambda_trend"] == values["lambda_trend"]
    )
    assert {row[1] for row in two.tables[0].rows} == {"layer 0", "layer 1"}
    everything = implied_regularization_analysis(noise_study(), ImpliedRegularizationOptions())
    assert "ridge_trend" not in everything.values  # two BN configurations: only suffixed values
    assert {"ridge_trend.weight_decay=0.0", "ridge_trend.weight_decay=0.001"} <= set(everything.values)


def test_trajectories_follow_norms_and_correlate_gamma_with_batch_size():
    runs = []
    for batch, seed in itertools.product((16, 64, 256), (0, 1)):
        epochs = [
            {"weight_geometry.layer0.w_norm.median": 1.0 + e, "weight_geometry.layer0.gamma_norm": 4.0 - e * 16 / batch}
            for e in range(3)
        ]
        runs.append(record({"batch_size": batch}, seed, *epochs))
    result = trajectories(study(runs, ["batch_size"]), TrajectoryOptions())
    assert result.values["gamma_ratio.batch_size=16"] == pytest.approx(2.0 / 4.0)
    assert result.values["w_ratio.batch_size=64"] == pytest.approx(3.0)
    assert result.values["gamma_trend"] == pytest.approx(1.0)  # larger batches: less γ decay
    assert result.tables[0].rows[0][1] == "1 → 3"


def test_spearman_handles_ties_and_degenerate_input():
    assert spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(0.8660254)
    assert spearman([1], [2]) is None and spearman([1, 2], [3, 3]) is None


def test_figures_draw():
    import matplotlib.pyplot as plt

    results = [
        implied_regularization_analysis(noise_study(), ImpliedRegularizationOptions()),
        tuned_l2_comparison(l2_study(), TunedL2Options()),
    ]
    names = [f.name for r in results for f in r.figures]
    assert names == ["noise_sweep", "noise_accuracy"]
    for figure in (f for r in results for f in r.figures):
        fig = plt.figure()
        figure.draw(fig)
        assert fig.axes
        plt.close(fig)


STUDY = """
[harness]
results = "r.sqlite"
device = "cpu"

[[studies]]
name = "noise"
model = { name = "mlp", widths = [16] }
dataset = { name = "synthetic", image_shape = [1, 8, 8], num_classes = 4, train_size = 192, test_size = 64 }
input_transform = { name = "gaussian_noise", std = [0.0, 0.3] }
normalizer = "batchnorm"
placement = ["all", "none"]
epochs = 1
batch_size = 32
validation_size = 64
metrics = ["test_accuracy", "validation_accuracy", { name = "weight_geometry", sample_size = 64 },
           { name = "implied_regularization", sample_size = 64 }, { name = "robustness", train_sample = 64 }]
analyses = [{ name = "implied_regularization", select = { "optimizer.weight_decay" = 0.0 } }, "tuned_l2_comparison",
            { name = "trajectories", select = { placement = "all" } }]

[studies.optimizer]
lr = 0.05
weight_decay = [0.0, 0.01]

[[claims]]
claim = "BN within 100 points of tuned L2"
study = "noise"
value = "max_gap_points"
at_most = 100

[[claims]]
claim = "bound"
study = "noise"
value = "bound_within_min"
at_least = 0
"""


def test_a_study_runs_and_reports_its_regularization_tables_and_claims(write_manifest, registry, tmp_path):
    from harness.manifest import load_manifest
    from harness.report import from_manifest
    from harness.store import Store
    from harness.sweep import run_manifest

    manifest = load_manifest(write_manifest(STUDY), registry=registry)
    assert run_manifest(manifest).statuses == {"done": 8}
    with Store(manifest.results_path) as store:
        report = from_manifest(manifest, store)
    text = report.render("github")
    assert "### Implied regularization against input noise" in text and "failed" not in text.split("## Claims")[1]
    assert "### Accuracy under input noise" in text and "### Weight-norm trajectories" in text
    assert [row[-1] for row in report.claims_rows()] == ["holds", "holds"]
    names = sorted(p.name for p in report.save_figures(tmp_path / "figs"))
    assert names == ["noise__noise_accuracy.png", "noise__noise_sweep.png", "noise__weight_trajectories.png"]


def test_the_bundled_manifest_holds_the_regularization_study(registry):
    from pathlib import Path

    from harness.manifest import load_manifest

    path = Path(__file__).parents[2] / "benchmarks.toml"
    studies = {s.name: s for s in load_manifest(path, registry=registry).studies}
    noise, gamma = studies["mnist_noise_bn_vs_l2"], studies["mnist_gamma_batch_size"]
    specs = [r.spec for r in noise.runs]
    assert {s.dataset.name for s in specs} == {"mnist"} and {s.validation_size for s in specs} == {5000}
    assert sorted({s.input_transform.options["std"] for s in specs}) == [0.0, 0.1, 0.2, 0.3, 0.5]
    assert {s.placement.name for s in specs} == {"all", "none"} and len({s.seed for s in specs}) >= 3
    assert len({s.optimizer.weight_decay for s in specs}) >= 4
    assert sorted({r.spec.batch_size for r in gamma.runs}) == [16, 64, 256]
    smoke = {s.name: s for s in load_manifest(path, registry=registry, profile="smoke").studies}
    assert {r.spec.dataset.name for r in smoke["mnist_noise_bn_vs_l2"].runs} == {"synthetic"}

"""The Bjorck et al. probes and analyses: known answers on tiny networks, hand-made stores, claims."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbench import NormSite
from bnbench.analysis import group_label
from bnbench.api import AnalysisResult, DataBundle, ProbeContext, RunRecord, StudyResults
from bnbench.data import DeviceData
from bnbench.plugins.analyses.lr_sweep import LrSweepOptions, PlacementShareOptions, lr_sweep, placement_share
from bnbench.plugins.probes.activations import ActivationOptions, activation_depth, activation_stats
from bnbench.plugins.probes.class_bias import ClassBiasOptions, class_bias, class_bias_analysis, gradient_cosine
from bnbench.plugins.probes.common import CompareOptions
from bnbench.plugins.probes.gradients import (
    GradientOptions,
    gradient_analysis,
    gradient_stats,
    per_example_gradients,
    sum_ratio,
)
from bnbench.plugins.probes.landscape import (
    LandscapeAnalysisOptions,
    LandscapeOptions,
    landscape_analysis,
    largest_stable_step,
    loss_landscape,
    relative_losses,
)
from bnbench.plugins.probes.max_lr import MaxLrAnalysisOptions, MaxLrOptions, max_lr, max_lr_analysis
from bnbench.plugins.probes.random_matrix import (
    RandomMatrixOptions,
    lyapunov_exponents,
    random_matrix,
    random_matrix_analysis,
)
from bnbench.report import Report, StudyRuns
from bnbench.spec import ClaimSpec, Component, RunSpec

matplotlib.use("Agg")


# -- helpers ------------------------------------------------------------------------------------
def context_for(
    build: Callable[[], nn.Module] | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    spec: RunSpec | None = None,
) -> ProbeContext:
    """A probe context on CPU whose dataset is ``images`` (float, already in [0, 1]) and ``labels``."""
    channels = images.shape[1]
    bundle = DataBundle(
        images, labels, images[:2], labels[:2], int(labels.max()) + 1, (0.0,) * channels, (1.0,) * channels
    )
    data = DeviceData.from_bundle(bundle, torch.device("cpu"))
    spec = spec or RunSpec(probe=Component(name="probe"), model=Component(name="model") if build else None)
    torch.manual_seed(seed)
    return ProbeContext(
        spec=spec,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        build_model=build or (lambda: nn.Identity()),
        data=lambda: data,
    )


def record(
    axes: dict[str, Any], measurements: dict[str, Any] | None = None, *, seed: int = 0, **fields: Any
) -> RunRecord:
    return RunRecord(
        run_id=f"{axes}-{seed}",
        axes=axes,
        seed=seed,
        spec=fields.pop("spec", {"probe": {"name": "p"}} if measurements is not None else {}),
        status=fields.pop("status", "done"),
        diverged_step=fields.pop("diverged_step", None),
        epochs=fields.pop("epochs", []),
        measurements=measurements or {},
    )


def study(runs: list[RunRecord], axes: list[str] | None = None) -> StudyResults:
    return StudyResults("s", axes if axes is not None else list(runs[0].axes), runs, planned=len(runs))


def draw_all(result: AnalysisResult) -> list[str]:
    import matplotlib.pyplot as plt

    for figure in result.figures:
        fig = plt.figure()
        figure.draw(fig)
        assert fig.axes, f"figure {figure.name} drew nothing"
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>":
                assert ax.get_xlabel() and ax.get_ylabel(), f"figure {figure.name} has unlabelled axes"
        plt.close(fig)
    return [f.name for f in result.figures]


class Constant(nn.Module):
    """Outputs the same logits for every input (through a parameter, so gradients exist)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


# -- loss landscape -----------------------------------------------------------------------------
def test_relative_loss_of_a_linear_model_matches_the_closed_form():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    model = nn.Linear(5, 3, bias=False)
    w = model.weight.detach().clone()
    steps = torch.tensor([1e-3, 0.1, 1.0, 10.0], dtype=torch.float64)
    loss, norm, ratios = relative_losses(model, x, y, steps)
    # d CE / dW = (softmax(xW^T) - onehot)^T x / N
    grad = (F.softmax(x @ w.T, 1) - F.one_hot(y, 3).float()).T @ x / 16
    expected = [float(F.cross_entropy(x @ (w - eta * grad).T, y) / F.cross_entropy(x @ w.T, y)) for eta in steps]
    assert ratios == pytest.approx(expected, rel=1e-5)
    assert norm == pytest.approx(float(grad.norm()), rel=1e-5)
    assert loss == pytest.approx(float(F.cross_entropy(x @ w.T, y)), rel=1e-6)
    assert torch.equal(model.weight.detach(), w)  # the probe never moves the model


def test_landscape_probe_and_analysis_find_the_largest_stable_step():
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 2, 2), torch.randint(0, 3, (64,))
    context = context_for(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), images, labels)
    options = LandscapeOptions(batch_size=16, batches=3, min_step=1e-3, max_step=1e3, num_steps=7)
    measured = loss_landscape(context, options)
    assert measured["step_sizes"] == pytest.approx([1e-3, 1e-2, 1e-1, 1, 10, 100, 1000])
    assert len(measured["batches"]) == 3 and all(len(b["relative_loss"]) == 7 for b in measured["batches"])
    assert all(b["relative_loss"][0] < 1 for b in measured["batches"])  # a tiny step along -g lowers the loss

    steps = [1e-3, 1e-2, 1e-1, 1.0]
    assert largest_stable_step(steps, [0.9, 2.0, 5e3, 10.0], 1e3) == 1e-2  # stays below until the first crossing
    assert largest_stable_step(steps, [2e3, 1.0, 1.0, 1.0], 1e3) == 0.0
    curves = {"all": [1.0, 1.0, 5.0, 50.0], "none": [1.0, 1e4, math.inf, math.inf]}
    runs = [
        record({"placement": p}, {"step_sizes": steps, "batches": [{"relative_loss": c}, {"relative_loss": c}]})
        for p, c in curves.items()
    ]
    result = landscape_analysis(study(runs), LandscapeAnalysisOptions(criterion="relative", threshold=100))
    assert result.values["max_stable_step.all"].value == 1.0
    assert result.values["max_stable_step.none"].value == 1e-3
    assert result.values["stable_step_ratio"].value == pytest.approx(1000)
    assert result.tables[0].rows[0][2] == "≥ 1 (grid end)"
    assert draw_all(result) == ["relative_loss_vs_step"]
    # an exploded batch counts in the median; unstable at every step: the ratio is a lower bound
    exploding = {"all": [[1.0, 1.0, 5.0, 50.0], [1.0, 1.0, math.inf, None], [1.0, 1.0, 5.0, 50.0]], "none": [[1e4] * 4]}
    runs = [
        record({"placement": p}, {"step_sizes": steps, "batches": [{"relative_loss": c} for c in curves]})
        for p, curves in exploding.items()
    ]
    result = landscape_analysis(study(runs), LandscapeAnalysisOptions(criterion="relative", threshold=10))
    # unstable at every step: below the grid's first step, so the ratio's bracket is open above
    stable = result.values["max_stable_step.none"]
    assert result.values["max_stable_step.all"].value == 0.1 and stable.value == 0.0
    assert stable.kind == "bracket" and stable.brackets == ((0.0, 1e-3),)
    ratio = result.values["stable_step_ratio"]
    assert ratio.value == math.inf and ratio.brackets[0] == (pytest.approx(0.1 / 1e-3), math.inf)
    assert result.tables[0].rows[1][2] == "< 0.001 (grid start)"


# -- activations --------------------------------------------------------------------------------
class Doubling(nn.Module):
    """x → site → 2x → site → 4x → site: identity-like weights, known activation statistics."""

    def __init__(self, width: int = 3, layers: int = 3) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.sites = nn.ModuleList(NormSite(width, "fc") for _ in range(layers))
        for i, linear in enumerate(self.linears):
            nn.init.zeros_(linear.bias)
            with torch.no_grad():
                linear.weight.copy_(torch.eye(width) * (1.0 if i == 0 else 2.0))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for linear, site in zip(self.linears, self.sites, strict=True):
            x = site(linear(x))
        return self.head(x)


def test_activation_stats_of_identity_like_weights():
    torch.manual_seed(0)
    images, labels = torch.rand(32, 3, 1, 1), torch.randint(0, 2, (32,))
    context = context_for(Doubling, images, labels)
    measured = activation_stats(context, ActivationOptions(batch_size=32, step_size=0))
    assert measured["sites"] == ["sites.0", "sites.1", "sites.2"] and "after_step" not in measured["phases"]
    init = measured["phases"]["init"]
    x = context.data().train_images.flatten(1)  # every example: one batch of the whole set
    for depth, scale in enumerate((1, 2, 4)):
        assert init["channel_mean"][depth] == pytest.approx((scale * x.mean(0)).tolist(), rel=1e-5)
        assert init["channel_var"][depth] == pytest.approx((scale * x).var(0, unbiased=False).tolist(), rel=1e-4)
    assert init["layer_std"][2] / init["layer_std"][0] == pytest.approx(4, rel=1e-5)


def test_activation_stats_with_batchnorm_are_flat_and_a_step_is_measured():
    torch.manual_seed(0)
    images, labels = torch.rand(32, 3, 1, 1), torch.randint(0, 2, (32,))

    def normalized() -> nn.Module:
        model = Doubling()
        for site in model.sites:
            site.attach(nn.BatchNorm1d(3))
        return model

    context = context_for(normalized, images, labels)
    measured = activation_stats(context, ActivationOptions(batch_size=32, step_size=0.5, where="output"))
    init, after = measured["phases"]["init"], measured["phases"]["after_step"]
    assert init["layer_std"] == pytest.approx([1, 1, 1], rel=1e-3) and max(init["layer_abs_mean"]) < 1e-5
    assert after["layer_std"] == pytest.approx([1, 1, 1], rel=0.1)  # only BN's scale and shift moved
    assert after["layer_std"] != init["layer_std"] and measured["loss_after_step"] != measured["loss_init"]
    plain = activation_stats(context_for(Doubling, images, labels), ActivationOptions(batch_size=32))
    runs = [record({"placement": "all"}, measured), record({"placement": "none"}, plain)]
    result = activation_depth(study(runs), CompareOptions())
    assert result.values["std_growth.all"].value == pytest.approx(1, rel=1e-3)
    assert result.values["std_growth.none"].value == pytest.approx(4, rel=1e-4)
    assert result.values["std_growth_ratio"].value == pytest.approx(4, rel=1e-3)
    assert draw_all(result) == ["activation_stats_vs_depth", "channel_variance"]


def test_an_overflowing_step_is_reported_as_infinite():
    inf_phase = {"layer_std": [1.0, math.inf], "layer_abs_mean": [0.1, math.inf], "channel_var": [[1.0], [math.inf]]}
    finite = {"layer_std": [1.0, 8.0], "layer_abs_mean": [0.1, 0.2], "channel_var": [[1.0], [64.0]]}
    measured = {"loss_init": 2.0, "loss_after_step": math.inf, "phases": {"init": finite, "after_step": inf_phase}}
    result = activation_depth(study([record({"placement": "none"}, measured)]), CompareOptions())
    assert result.values["loss_ratio_after_step.none"].value == math.inf
    assert result.values["max_std_after_step.none"].value == math.inf
    assert result.values["std_growth_after_step.none"].value == math.inf
    assert result.values["std_growth.none"].value == pytest.approx(8)


# -- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Conv2d(2, 3, 2, dilation=2, bias=False), nn.Linear(5, 4)],
)
def test_per_example_gradients_sum_to_the_batch_gradient(layer):
    torch.manual_seed(0)
    x = torch.randn(6, 2, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(6, 5)
    norm = nn.BatchNorm2d(3) if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d(4)  # couples the examples
    captured = {}
    pre = layer(x)
    pre.register_hook(lambda g: captured.setdefault("delta", g))
    (norm(pre) ** 3).sum().backward()
    per_example = per_example_gradients(layer, x, captured["delta"])
    assert per_example.shape == (6, *layer.weight.shape)
    assert torch.allclose(per_example.sum(0), layer.weight.grad, atol=1e-4, rtol=1e-4)


def test_gradient_ratio_is_one_when_the_gradient_does_not_depend_on_the_input():
    assert sum_ratio(torch.tensor([[1.0, -2.0], [1.0, -2.0]])) == 1.0
    assert sum_ratio(torch.tensor([[1.0, -2.0], [-1.0, 2.0]])) == 0.0
    torch.manual_seed(0)
    model = lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3))  # noqa: E731
    same = torch.rand(1, 1, 4, 4).expand(16, 1, 4, 4).contiguous()
    by_example = GradientOptions(batch_size=8, grouping="examples")  # identical examples: identical terms
    measured = gradient_stats(context_for(model, same, torch.full((16,), 2)), by_example)
    assert measured["layers"] == ["0", "3"] and measured["kind"] == ["conv", "linear"]
    assert measured["sum_ratio"] == pytest.approx([1.0, 1.0])
    varied = gradient_stats(context_for(model, torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))), by_example)
    assert varied["sum_ratio"][1] < 0.9
    assert varied["histogram"]["layer"] == 1 and sum(varied["histogram"]["counts"]) == 32 * 3
    runs = [record({"placement": "all"}, varied), record({"placement": "none"}, measured)]
    result = gradient_analysis(study(runs), CompareOptions())
    assert result.values["sum_ratio.none"].value == pytest.approx(1.0)
    assert result.values["sum_ratio_difference"].value > 0.1
    assert draw_all(result) == ["gradient_histogram", "gradient_norm_vs_depth", "conv_gradient_sum_ratio"]


# -- class bias ---------------------------------------------------------------------------------
def test_a_constant_output_predicts_one_class_with_identical_gradients():
    images = torch.rand(32, 1, 2, 2)
    same_label = torch.zeros(32, dtype=torch.long)
    context = context_for(lambda: Constant([0.0, 3.0, 1.0]), images, same_label)
    measured = class_bias(context, ClassBiasOptions(batch_size=16, batches=2, heatmap_images=4))
    assert measured["top_class_share"] == 1.0
    assert measured["predicted_counts"] == [0, 32, 0]
    assert measured["gradient_cosine"] == pytest.approx(1.0)
    assert len(measured["output_gradients"]) == 4 and len(measured["output_gradients"][0]) == 3
    # softmax(z) - onehot(0), times the batch size, for every row
    expected = (F.softmax(torch.tensor([0.0, 3.0, 1.0]), 0) - torch.tensor([1.0, 0, 0])).tolist()
    assert measured["output_gradients"][0] == pytest.approx(expected, rel=1e-5)

    spread = torch.eye(4).repeat(4, 1)  # four orthogonal rows, each four times: 1 for 3 of the 15 others
    assert gradient_cosine(spread) == pytest.approx(3 / 15)
    runs = [
        record({"placement": "none"}, measured),
        record({"placement": "all"}, {**measured, "top_class_share": 0.25, "gradient_cosine": 0.1}),
    ]
    result = class_bias_analysis(study(runs), CompareOptions())
    assert result.values["top_class_share.none"].value == 1.0 and result.values["top_class_share.all"].value == 0.25
    assert result.values["gradient_cosine_difference"].value == pytest.approx(0.9)
    assert draw_all(result) == ["class_bias_heatmap"]


# -- random matrices ----------------------------------------------------------------------------
def test_closed_form_lyapunov_exponents():
    euler = 0.5772156649015329
    assert lyapunov_exponents(2).tolist() == pytest.approx([-euler / 2, (-euler - 2 * math.log(2)) / 2])
    assert lyapunov_exponents(4, variance=2.0) == pytest.approx(lyapunov_exponents(4) + 0.5 * math.log(2))


def test_measured_condition_growth_matches_the_lyapunov_exponents():
    context = context_for(None, torch.rand(4, 1, 1, 1), torch.tensor([0, 1, 0, 1]))
    options = RandomMatrixOptions(size=8, factors=60, samples=64, inits=["gaussian", "kaiming_normal"])
    measured = random_matrix(context, options)
    assert measured["model"] is None
    gaussian = measured["inits"]["gaussian"]
    predicted = lyapunov_exponents(8)
    assert gaussian["predicted_condition_slope"] == pytest.approx(float(predicted[0] - predicted[-1]))
    assert gaussian["condition_slope"] == pytest.approx(gaussian["predicted_condition_slope"], rel=0.05)
    assert gaussian["measured_exponents"] == pytest.approx(predicted.tolist(), abs=0.05)
    kaiming = measured["inits"]["kaiming_normal"]
    assert kaiming["measured_exponents"] == pytest.approx((predicted + 0.5 * math.log(2)).tolist(), abs=0.05)
    # the QR estimate is a lower bound of the explicit product's log condition number, tight up to O(1)
    direct, estimate = gaussian["log_condition_direct"], gaussian["log_condition"]
    assert len(direct) >= 5 and all(0 <= d - e < 3 for d, e in zip(direct, estimate, strict=False))
    assert random_matrix(context_for(None, torch.rand(4, 1, 1, 1), torch.tensor([0, 1, 0, 1])), options) == measured

    result = random_matrix_analysis(study([record({}, measured)], axes=[]), CompareOptions())
    assert result.values["condition_slope_error.gaussian"].value < 0.05
    assert result.values["exponent_error.gaussian"].value < 0.05
    assert draw_all(result) == ["singular_value_spread", "lyapunov_exponents"]


def test_a_product_of_orthogonal_weights_stays_perfectly_conditioned():
    def orthogonal_mlp() -> nn.Module:
        layers = [nn.Linear(4, 6)]
        for _ in range(5):
            layer = nn.Linear(6, 6)
            nn.init.orthogonal_(layer.weight, gain=3.0)
            layers.append(layer)
        return nn.Sequential(nn.Flatten(), *layers, nn.Linear(6, 2))

    spec = RunSpec(probe=Component(name="random_matrix"), model=Component(name="mlp"))
    context = context_for(orthogonal_mlp, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), spec=spec)
    measured = random_matrix(context, RandomMatrixOptions(size=4, factors=3, samples=2, inits=["gaussian"]))
    model = measured["model"]
    assert model["layers"] == 5 and model["size"] == 6
    assert model["log_condition"] == pytest.approx([0.0] * 5, abs=1e-5)
    assert model["log_condition_direct"] == pytest.approx([0.0] * 5, abs=1e-5)
    assert model["log_singular_values"][-1] == pytest.approx([5 * math.log(3)] * 6, abs=1e-5)


# -- maximal learning rate ----------------------------------------------------------------------
def test_max_lr_scans_down_to_the_first_learning_rate_that_does_not_diverge():
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 2, 2), torch.randint(0, 3, (64,))  # random labels: not separable
    context = context_for(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), images, labels)
    options = MaxLrOptions(
        learning_rates=[1e7, 1e-2, 1e-3, 1e8], steps=6, batch_size=16, loss_limit=10, criterion="absolute"
    )
    assert MaxLrOptions().criterion == "non_finite"  # the training loop's rule by default
    measured = max_lr(context, options)
    # random labels never learn: the scan goes down the whole grid looking for a rate that does
    assert [s["lr"] for s in measured["scans"]] == [1e8, 1e7, 1e-2, 1e-3]
    assert [s["diverged"] for s in measured["scans"]] == [True, True, False, False]
    assert measured["max_learning_lr"] == 0.0 and not any(s["learned"] for s in measured["scans"])
    assert measured["max_lr"] == 1e-2 and all(s["diverged_step"] > 1 for s in measured["scans"][:2])
    assert measured["scans"][0]["final_loss"] is None and measured["scans"][2]["final_loss"] > 0
    never = max_lr(
        context_for(context.build_model, images, labels), MaxLrOptions(learning_rates=[1e8], steps=6, batch_size=16)
    )
    assert never["max_learning_lr"] == 0.0 and not never["scans"][0]["learned"]
    assert max_lr(context_for(context.build_model, images, labels), options) == measured  # deterministic


@pytest.mark.parametrize("normalized", [False, True])
def test_max_lr_packed_measures_what_the_one_by_one_scan_measures(normalized):
    """Every learning rate trained at once (vmap) gives the same max lr, the same scanned rates,
    the same divergence steps and, within float tolerance, the same losses; with batch norm
    (its running statistics per copy) and without, with momentum and weight decay."""
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))

    def build() -> nn.Module:
        torch.manual_seed(1)
        norm = [nn.BatchNorm1d(8)] if normalized else []
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), *norm, nn.ReLU(), nn.Linear(8, 3))

    spec = RunSpec(
        probe=Component(name="max_lr"),
        model=Component(name="mlp"),
        optimizer={"momentum": 0.9, "weight_decay": 1e-3},
    )
    grid = [1e-3, 1e-2, 0.1, 1.0, 30.0, 1e3, 1e5]
    alone = max_lr(
        context_for(build, images, labels, spec=spec),
        MaxLrOptions(learning_rates=grid, steps=8, batch_size=16, loss_limit=10),
    )
    packed = max_lr(
        context_for(build, images, labels, spec=spec),
        MaxLrOptions(learning_rates=grid, steps=8, batch_size=16, loss_limit=10, packed=True),
    )
    assert any(s["diverged"] for s in alone["scans"]) and alone["max_lr"] > 0  # the scan can tell them apart
    assert packed["max_lr"] == alone["max_lr"]
    assert [(s["lr"], s["diverged"], s["diverged_step"]) for s in packed["scans"]] == [
        (s["lr"], s["diverged"], s["diverged_step"]) for s in alone["scans"]
    ]
    for mine, theirs in zip(packed["scans"], alone["scans"], strict=True):
        assert mine["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-5)
        if theirs["final_loss"] is not None:
            assert mine["final_loss"] == pytest.approx(theirs["final_loss"], rel=1e-4)


def test_max_lr_analysis_against_depth():
    found = {("all", 20): 1.0, ("all", 56): 1.0, ("none", 20): 0.1, ("none", 56): 0.01}
    runs = [
        record({"placement": p, "model.depth": d}, {"max_lr": lr * (1 + seed)}, seed=seed)
        for (p, d), lr in found.items()
        for seed in (0, 1, 2)
    ]
    result = max_lr_analysis(study(runs), MaxLrAnalysisOptions())
    assert result.values["max_lr.none.20"].value == pytest.approx(0.2)  # the median of 0.1, 0.2, 0.3
    # per seed: smallest over depths of all ÷ none (1/0.1 at depth 20, 1/0.01 at 56) → 10 for every seed
    assert result.values["max_lr_ratio"].value == pytest.approx(10)
    assert result.values["max_lr_ratio"].replicates == pytest.approx((10, 10, 10))
    assert result.values["depth_tolerance.none"].value == pytest.approx(10)
    assert result.tables[0].rows == [[20, "2", "0.2"], [56, "2", "0.02"]]
    assert draw_all(result) == ["max_lr_vs_depth"]
    grid = [1e-4, 1e-2, 1.0]  # the deepest unnormalized net diverges at every learning rate of the grid
    runs = [
        record({"placement": p, "model.depth": d}, {"max_lr": lr, "learning_rates": grid})
        for p, d, lr in [("all", 20, 1.0), ("all", 110, 1.0), ("none", 20, 1e-2), ("none", 110, 0.0)]
    ]
    result = max_lr_analysis(study(runs), MaxLrAnalysisOptions())
    assert result.values["max_lr.none.110"].value == 0
    assert result.tables[0].rows[1] == [110, "1", "< 0.0001 (none passed)"]
    assert result.values["max_lr_ratio"].value == pytest.approx(100)  # depth 20; at 110 at least 1 / 1e-4
    tolerance = result.values["depth_tolerance.none"]  # 1e-2 at depth 20 over nothing at 110
    assert tolerance.value == math.inf and tolerance.brackets[0] == (pytest.approx(1e-2 / 1e-4), math.inf)


# -- training-study analyses --------------------------------------------------------------------
def training_run(placement: str, lr: float, test: list[float], seed: int = 0, status: str = "done") -> RunRecord:
    epochs = [
        (i + 1, 10 * (i + 1), {"test_accuracy": a, "validation_accuracy": a, "train_accuracy": a + 0.05})
        for i, a in enumerate(test)
    ]
    return record(
        {"placement": placement, "optimizer.lr": lr},
        None,
        seed=seed,
        status=status,
        epochs=epochs,
        spec={"placement": {"name": placement}, "optimizer": {"lr": lr}},
    )


def hand_made_training_study() -> StudyResults:
    runs = [
        training_run("all", 0.1, [0.5, 0.9]),
        training_run("all", 0.1, [0.6, 0.9], seed=1),
        training_run("all", 0.01, [0.4, 0.7]),
        training_run("final", 0.1, [0.3, 0.6]),
        training_run("final", 0.01, [0.5, 0.8]),
        training_run("none", 0.1, [], status="diverged"),
        training_run("none", 0.01, [0.45, 0.5]),
    ]
    return study(runs, ["placement", "optimizer.lr"])


def test_lr_sweep_table_values_and_figures():
    result = lr_sweep(hand_made_training_study(), LrSweepOptions())
    values = {k: getattr(v, "value", v) for k, v in result.values.items()}
    assert values["accuracy.all"] == pytest.approx(90) and values["best_lr.all"] == pytest.approx(0.1)
    assert values["best_lr.none"] == pytest.approx(0.01) and values["largest_stable_lr.none"] == 0.01
    assert values["diverged_runs.none"] == 1 and values["diverged_runs.all"] == 0
    assert values["best_lr_ratio"] == pytest.approx(10)
    assert values["accuracy_gain"] == pytest.approx(40)
    assert result.values["accuracy.all"].replicates == pytest.approx((90, 90))  # one per seed
    (table,) = result.tables
    assert table.headers == [
        "configuration",
        "lr 0.1",
        "lr 0.01",
        "best lr",
        "at best lr (per seed, final test accuracy %)",
    ]
    assert table.rows[2] == ["none", "0 (1 div)", "50", "0.01", "50"]
    assert draw_all(result) == ["accuracy_vs_lr", "training_curves"]
    best = lr_sweep(hand_made_training_study(), LrSweepOptions(statistic="best", normalized="final"))
    assert best.values["accuracy.final"].value == pytest.approx(80)


def test_placement_share_of_the_final_layer():
    result = placement_share(hand_made_training_study(), PlacementShareOptions())
    assert result.values["final_layer_share"].value == pytest.approx((0.8 - 0.5) / (0.9 - 0.5))
    assert result.values["normalization_gain"].value == pytest.approx(40)
    assert draw_all(result) == ["placement_share"]
    assert "recovers 75% of BN's gain" in result.tables[0].title
    only_two = study([r for r in hand_made_training_study().runs if r.axes["placement"] != "final"])
    assert "final_layer_share" not in placement_share(only_two, PlacementShareOptions()).values
    # a seed where BN does not help counts (the ratio of mean gains), it is not left out
    no_gain = placement_share(hand_made_training_study(), PlacementShareOptions(full="none", baseline="all"))
    assert no_gain.values["normalization_gain"].value < 0 and no_gain.values["final_layer_share"].kind == "ratio"


def test_group_label_uses_every_axis_but_the_excluded_ones():
    run = record({"placement": "none", "model.depth": 20, "optimizer.lr": 0.1}, {})
    assert group_label(run, {"optimizer.lr"}) == "none/20"
    assert group_label(record({}, {}, spec={"placement": {"name": "all"}})) == "all"


# -- claims from a hand-made report -------------------------------------------------------------
def test_claims_table_from_a_hand_made_report(registry):
    results = hand_made_training_study()
    stored = {r.run_id: r for r in results.runs}
    runs = StudyRuns(
        name="lr",
        axes=results.axes,
        planned=[(r.run_id, r.axes, r.seed) for r in results.runs],
        stored=stored,
        analyses=[Component(name="lr_sweep"), Component(name="placement_share")],
    )
    claims = [
        ClaimSpec(claim="BN trains at 10x larger rates", study="lr", value="best_lr_ratio", at_least=10),
        ClaimSpec(claim="final layer gives most", study="lr", value="final_layer_share", at_least=0.9),
        ClaimSpec(claim="BN within bounds", study="lr", value="accuracy_gain", at_least=0.1, at_most=0.5),
        ClaimSpec(claim="never reported", study="lr", value="no_such_value", at_most=1),
    ]
    report = Report([runs], registry, claims).analyze()
    rows = report.claims_rows(verbose=False)
    # the unnormalized group has one finished seed: paired values have one replicate, no interval
    assert [row[-1].split(" (")[0] for row in rows] == ["inconclusive", "inconclusive", "inconclusive", "not measured"]
    assert rows[1][:3] == ["final_layer_share", "", "0.75 of BN's gain"] and rows[2][4] == ">= 0.1 and <= 0.5"
    text = report.render("github")
    assert "### Accuracy against learning rate" in text and "### Normalizing only the final layer" in text


# -- registration -------------------------------------------------------------------------------
PROBES = {
    "loss_landscape": "loss_landscape",
    "activation_stats": "activation_depth",
    "gradient_stats": "gradient_stats",
    "class_bias": "class_bias",
    "random_matrix": "random_matrix",
    "max_lr": "max_lr_depth",
}


def test_probes_and_analyses_register_through_the_entry_point_with_documentation(registry):
    for kind, names in (("probe", PROBES), ("analysis", [*PROBES.values(), "lr_sweep", "placement_share"])):
        for name in names:
            entry = registry.get(kind, name)
            assert entry.plugin.package == "bnbench" and entry.factory.__module__.startswith(
                ("bnbench.plugins.probes", "bnbench.plugins.analyses")
            )
            assert any(cite in entry.factory.__doc__ for cite in ("Fig.", "Figs.", "RQ")), (kind, name)
            undocumented = [f for f, info in entry.options.model_fields.items() if not info.description]
            assert not undocumented, (kind, name, undocumented)
    for probe, analysis in PROBES.items():
        assert registry.get("probe", probe).extras["analyses"] == [analysis]

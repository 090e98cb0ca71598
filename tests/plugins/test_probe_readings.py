"""Known answers for what the probes measure: the paper's readings, not just the plumbing.

Gradients: the position-grouped |Σ g| / Σ |g| (Bjorck eq. 4). Activations: measured before the
normalizer. Class bias: the mean pairwise cosine of the output gradients. Random matrices: the
closed form's exactness is labelled. Every claimable value is an Estimate over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from test_probes import Constant, Doubling, context_for, record, study
from torch import nn

from bnbench import find_sites
from bnbench.analysis import paired_difference, paired_ratio
from bnbench.api import DataInfo, Estimate
from bnbench.plugins.models.resnet_cifar import ResNetOptions, build_resnet
from bnbench.plugins.probes.activations import ActivationOptions, activation_depth, activation_stats
from bnbench.plugins.probes.class_bias import ClassBiasOptions, class_bias, class_bias_analysis, gradient_cosine
from bnbench.plugins.probes.common import CompareOptions
from bnbench.plugins.probes.gradients import (
    GradientOptions,
    contribution_sums,
    gradient_analysis,
    gradient_stats,
    grouped_sum_ratio,
)
from bnbench.plugins.probes.random_matrix import (
    NON_GAUSSIAN,
    RandomMatrixOptions,
    random_matrix,
    random_matrix_analysis,
)


def resnet(normalized: bool, depth: int = 20, size: int = 8) -> Callable[[], nn.Module]:
    """A CIFAR ResNet (kaiming fan_out init) on ``size``×``size`` images, BN at every hidden site or none."""

    def build() -> nn.Module:
        model = build_resnet(ResNetOptions(depth=depth), DataInfo((3, size, size), 10))
        if normalized:
            for info, site in find_sites(model):
                if info.role == "hidden":
                    site.attach(nn.BatchNorm2d(site.num_features))
        return model

    return build


def images_and_labels(count: int = 128, size: int = 8, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(count, 3, size, size, generator=generator)
    return images, torch.randint(0, classes, (count,), generator=generator)


# -- pairing by seed ----------------------------------------------------------------------------
def test_paired_values_use_the_seeds_both_sides_measured():
    ratio = paired_ratio({0: 10.0, 1: 40.0, 2: 7.0}, {1: 4.0, 2: 7.0, 3: 1.0})
    assert ratio.replicates == (10.0, 1.0) and ratio.scale == "log" and ratio.value == pytest.approx(math.sqrt(10))
    difference = paired_difference({0: 0.9, 1: 0.8}, {0: 0.1, 1: 0.3, 2: 0.0})
    assert difference.replicates == pytest.approx((0.8, 0.5)) and difference.scale == "linear"
    assert paired_ratio({0: math.inf}, {0: 2.0}).value == math.inf  # an overflow stays the strongest result
    assert paired_ratio({0: 1.0}, {1: 1.0}) is None


# -- gradients: |Σ g| / Σ |g| over batch × positions ---------------------------------------------
def test_position_grouping_of_iid_output_gradients_gives_one_over_sqrt_terms():
    """δ i.i.d. N(0, 1) and x = 1: each weight's sum has E|Σ δ| = sqrt(2n/π) over E Σ|δ| = n sqrt(2/π)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 128, 3, bias=False)
    batch, positions = 8, 8 * 8
    x, delta = torch.ones(batch, 2, 10, 10), torch.randn(batch, 128, 8, 8)
    assert grouped_sum_ratio(conv, x, delta, "positions") == pytest.approx(1 / math.sqrt(batch * positions), rel=0.1)
    # summing each example's positions first leaves a 1/sqrt(B) floor: today's grouping
    assert grouped_sum_ratio(conv, x, delta, "examples") == pytest.approx(1 / math.sqrt(batch), rel=0.1)
    constant = torch.full((batch, 128, 8, 8), -0.3)
    positive = torch.rand(batch, 2, 10, 10) + 0.1
    assert grouped_sum_ratio(conv, positive, constant, "positions") == 1.0
    assert grouped_sum_ratio(conv, positive, constant, "examples") == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("layer", [nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Linear(5, 4)])
def test_contribution_sums_match_the_explicit_terms(layer):
    torch.manual_seed(0)
    x = torch.randn(6, 2, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(6, 5)
    out = layer(x)
    out.register_hook(lambda g: setattr(layer, "delta", g))
    (out**3).sum().backward()
    delta = layer.delta
    total, spread = contribution_sums(layer, x, delta, "positions")
    assert torch.allclose(total.reshape(layer.weight.shape), layer.weight.grad, atol=1e-5)
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, 3, 1, 1, 2)  # every (example, position) term, materialized
        terms = torch.einsum("nol,nil->nloi", delta.reshape(6, 3, -1), cols)
        assert torch.allclose(spread, terms.abs().sum((0, 1)), rtol=1e-5)
    else:  # no positions: the groupings coincide
        assert torch.allclose(spread, contribution_sums(layer, x, delta, "examples")[1])
    # the example grouping in chunks of one example equals the unchunked sum
    chunked = contribution_sums(layer, x, delta, "examples", chunk_elements=1)
    assert torch.allclose(chunked[1], contribution_sums(layer, x, delta, "examples")[1], rtol=1e-5)


def test_batchnorm_cancels_the_gradient_over_positions_but_not_within_examples():
    """With BN the output gradient of each conv has zero mean over batch × positions."""
    images, labels = images_and_labels(size=16)
    ratios = {}
    for grouping in ("positions", "examples"):
        measured = gradient_stats(
            context_for(resnet(True, 20, 16), images, labels), GradientOptions(batch_size=32, grouping=grouping)
        )
        convs = [v for v, kind in zip(measured["sum_ratio"], measured["kind"], strict=True) if kind == "conv"]
        ratios[grouping] = sum(convs) / len(convs)
        assert measured["grouping"] == grouping
    assert ratios["positions"] < 0.5 * ratios["examples"]


def test_gradient_analysis_compares_bn_with_no_bn_seed_by_seed():
    images, labels = images_and_labels()
    runs = [
        record({"placement": placement}, gradient_stats(context, GradientOptions(batch_size=32)), seed=seed)
        for placement, normalized in (("all", True), ("none", False))
        for seed in (0, 1)
        for context in [context_for(resnet(normalized, 56), images, labels, seed=seed)]
    ]
    values = gradient_analysis(study(runs), CompareOptions()).values
    for name in ("grad_norm.all", "kurtosis.none", "sum_ratio.all", "sum_ratio_difference", "kurtosis_difference"):
        assert isinstance(values[name], Estimate) and len(values[name].replicates) == 2, name
    assert values["grad_norm_ratio"].scale == "log" and values["grad_norm_ratio"].value > 10
    assert values["sum_ratio.all"].value < 0.2 < 0.4 < values["sum_ratio.none"].value
    assert values["sum_ratio_difference"].value > 0.3
    assert values["kurtosis_difference"].value > 3  # no BN is heavier-tailed
    assert values["kurtosis_difference"].replicates == pytest.approx(
        [n - b for n, b in zip(values["kurtosis.none"].replicates, values["kurtosis.all"].replicates, strict=True)]
    )


# -- activations: before the normalizer ---------------------------------------------------------
def doubling_with_batchnorm() -> nn.Module:
    model = Doubling()
    for site in model.sites:
        site.attach(nn.BatchNorm1d(3))
    return model


def test_activations_are_measured_at_the_normalizer_input():
    """x → BN → ×2 → BN → ×2 → BN: the inputs of sites 1 and 2 are twice BN's unit-variance output."""
    torch.manual_seed(0)
    images, labels = torch.rand(32, 3, 1, 1), torch.randint(0, 2, (32,))
    context = context_for(doubling_with_batchnorm, images, labels)
    before = activation_stats(context, ActivationOptions(batch_size=32, step_size=0))
    after = activation_stats(context, ActivationOptions(batch_size=32, step_size=0, where="output"))
    assert before["where"] == "input" and after["where"] == "output"
    x = context.data().train_images.flatten(1)
    var = x.var(0, unbiased=False)
    bn_var = var / (var + 1e-5)  # BN's output variance per channel
    expected = [float(var.mean().sqrt()), float((4 * bn_var).mean().sqrt()), float((4 * bn_var).mean().sqrt())]
    assert before["phases"]["init"]["layer_std"] == pytest.approx(expected, rel=1e-4)
    assert after["phases"]["init"]["layer_std"] == pytest.approx([float(bn_var.mean().sqrt())] * 3, rel=1e-4)


def test_a_batchnorm_resnet_is_not_flat_before_its_normalizers():
    images, labels = images_and_labels()
    runs = []
    for where in ("input", "output"):
        for seed in (0, 1):
            context = context_for(resnet(True, 20), images, labels, seed=seed)
            measured = activation_stats(context, ActivationOptions(batch_size=32, where=where))
            runs.append(record({"where": where}, measured, seed=seed))
    values = activation_depth(study(runs), CompareOptions()).values
    assert values["std_growth.input"].value > 2  # the stem's output is far smaller than the last conv's
    assert values["std_growth.output"].value == pytest.approx(1, rel=1e-2)  # flat by construction
    for name in ("std_growth.input", "loss_ratio_after_step.input", "std_growth_after_step.output"):
        assert values[name].scale == "log" and len(values[name].replicates) == 2, name


def test_activation_analysis_pairs_bn_and_no_bn_by_seed():
    def run(placement: str, growth: float, seed: int) -> object:
        phase = {"layer_std": [1.0, growth], "layer_abs_mean": [0.1, 0.2], "channel_var": [[1.0], [growth**2]]}
        measured = {"loss_init": 2.0, "loss_after_step": 4.0, "phases": {"init": phase, "after_step": phase}}
        return record({"placement": placement}, measured, seed=seed)

    runs = [run("all", 2.0, 0), run("all", 3.0, 1), run("none", 20.0, 0), run("none", 300.0, 1), run("none", 9.0, 2)]
    values = activation_depth(study(runs), CompareOptions()).values
    assert values["std_growth_ratio"].replicates == pytest.approx((10.0, 100.0))  # seed 2 has no BN partner
    assert values["std_growth_ratio"].value == pytest.approx(math.sqrt(1000))
    assert values["loss_ratio_after_step.none"].replicates == (2.0, 2.0, 2.0)


# -- class bias: mean pairwise cosine of the output gradients ------------------------------------
def test_gradient_cosine_is_the_mean_over_distinct_pairs():
    torch.manual_seed(0)
    matrix = torch.randn(9, 4)
    matrix[3] = 0  # a zero row has no direction: left out
    rows = [r for r in matrix if r.norm() > 0]
    brute = [float(F.cosine_similarity(a, b, dim=0)) for a, b in combinations(rows, 2)]
    assert gradient_cosine(matrix) == pytest.approx(sum(brute) / len(brute), rel=1e-6)
    assert gradient_cosine(torch.ones(5, 3)) == pytest.approx(1.0)
    assert math.isnan(gradient_cosine(torch.ones(1, 3)))


def label_agreement(labels: torch.Tensor) -> float:
    """The share of ordered pairs of distinct inputs with the same label."""
    n = len(labels)
    counts = torch.bincount(labels).double()
    return float((counts * (counts - 1)).sum()) / (n * (n - 1))


def test_uniform_logits_give_the_chance_cosine():
    """g_i = 1/C − e_{y_i}: cosine 1 for equal labels, −1/(C − 1) for different ones, 0 on average."""
    classes = 4
    labels = torch.randint(0, classes, (64,), generator=torch.Generator().manual_seed(0))
    context = context_for(lambda: Constant([0.0] * classes), torch.rand(64, 1, 2, 2), labels)
    measured = class_bias(context, ClassBiasOptions(batch_size=64))
    same = label_agreement(labels)
    assert measured["gradient_cosine"] == pytest.approx(same - (1 - same) / (classes - 1), abs=1e-6)
    assert abs(measured["gradient_cosine"]) < 0.05


def test_a_one_class_predictor_has_nearly_identical_output_gradients():
    """Softmax saturated on a wrong class k: g_i = e_k − e_{y_i}, cosine ½ across labels, 1 within."""
    classes = 10
    labels = torch.randint(1, classes, (64,), generator=torch.Generator().manual_seed(0))  # never class 0
    one_class = context_for(lambda: Constant([40.0] + [0.0] * (classes - 1)), torch.rand(64, 1, 2, 2), labels)
    measured = class_bias(one_class, ClassBiasOptions(batch_size=64))
    assert measured["top_class_share"] == 1.0
    same = label_agreement(labels)
    assert measured["gradient_cosine"] == pytest.approx(same + (1 - same) / 2, abs=1e-6)
    same_label = context_for(lambda: Constant([40.0] + [0.0] * 9), torch.rand(64, 1, 2, 2), torch.full((64,), 3))
    assert class_bias(same_label, ClassBiasOptions(batch_size=64))["gradient_cosine"] == pytest.approx(1.0)


def test_class_bias_analysis_reports_a_paired_difference():
    images, labels = images_and_labels()
    runs = [
        record({"placement": placement}, class_bias(context, ClassBiasOptions(batch_size=64)), seed=seed)
        for placement, normalized in (("all", True), ("none", False))
        for seed in (0, 1)
        for context in [context_for(resnet(normalized, 110), images, labels, seed=seed)]
    ]
    values = class_bias_analysis(study(runs), CompareOptions()).values
    assert values["top_class_share.none"].value == 1.0 and len(values["top_class_share.all"].replicates) == 2
    assert values["gradient_cosine.none"].value > 0.5 > 0.2 > values["gradient_cosine.all"].value
    difference = values["gradient_cosine_difference"]
    assert difference.scale == "linear" and difference.value > 0.3
    none, bn = values["gradient_cosine.none"].replicates, values["gradient_cosine.all"].replicates
    assert difference.replicates == pytest.approx([n - b for n, b in zip(none, bn, strict=True)])
    stored = {k: v for k, v in runs[2].measurements.items() if k != "gradient_cosine"}
    old = record({"placement": "none"}, {**stored, "gradient_correlation": 0.4})  # stored before the rename
    assert class_bias_analysis(study([old]), CompareOptions()).values["gradient_cosine.none"].value == 0.4


# -- random matrices ----------------------------------------------------------------------------
def test_random_matrix_values_are_estimates_over_seeds_and_rows_say_when_the_form_is_not_exact():
    def mlp() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), *(nn.Linear(6, 6) for _ in range(4)), nn.Linear(6, 2))

    options = RandomMatrixOptions(size=6, factors=10, samples=8, inits=["gaussian", "pytorch_default"])
    runs = []
    for seed in (0, 1, 2):
        context = context_for(mlp, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), seed=seed)
        runs.append(record({}, random_matrix(context, options), seed=seed))
    result = random_matrix_analysis(study(runs, axes=[]), CompareOptions())
    for name in ("condition_slope_error.gaussian", "exponent_error.gaussian", "log10_condition.model"):
        assert len(result.values[name].replicates) == 3 and result.values[name].scale == "linear", name
    labels = {row[1]: row[2] for row in result.tables[0].rows}
    assert labels == {
        "gaussian": "exact (Gaussian entries)",
        "pytorch_default": NON_GAUSSIAN,
        "model": NON_GAUSSIAN,
    }

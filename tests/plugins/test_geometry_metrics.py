"""Weight-geometry metrics on tiny layers with hand-computed answers (Annamalai & Thakur 2022 reading)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_manifest
from torch import nn

from bnbench import NormSite
from bnbench.plugins.metrics.geometry import (
    capture,
    folded_quantities,
    folded_weights,
    hidden_layers,
    implied_multiplier,
    layer_geometry,
    noise_quantities,
    preserved,
    summarize,
)
from bnbench.runner import Runner
from bnbench.session import open_session


def bn_layer(weight: list[list[float]], gamma: list[float], eps: float = 1e-5) -> nn.Sequential:
    """``Linear → site(BatchNorm1d)`` in double precision with the given weights and γ."""
    units, inputs = len(weight), len(weight[0])
    linear = nn.Linear(inputs, units)
    site = NormSite(units, "fc")
    site.attach(nn.BatchNorm1d(units, eps=eps))
    model = nn.Sequential(linear, site).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.fill_(0.3)
        site.norm.weight.copy_(torch.tensor(gamma))
        site.norm.bias.fill_(0.5)
    return model


def test_a_bn_layer_over_known_inputs_has_the_hand_computed_geometry():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    model = bn_layer([[1.0, 1.0], [2.0, 0.0]], gamma=[2.0, -0.5], eps=1e-5)
    layers = hidden_layers(model)
    assert [layer.index for layer in layers] == [0] and layers[0].batchnorm is model[1].norm
    bn = model[1].norm
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    with preserved(model):
        (captured,) = capture(model, layers, x)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    # h1 = x1 + x2 = (1, -1, 2, -2): variance 2.5; h2 = 2 x1 = (2, -2, 0, 0): variance 2.
    values = layer_geometry(layers, [captured], lr=0.1)
    assert values["layer0.w_norm.q10"] == pytest.approx(math.sqrt(2) + 0.1 * (2 - math.sqrt(2)))
    assert values["layer0.w_norm.mean"] == pytest.approx((math.sqrt(2) + 2) / 2)
    assert values["layer0.sigma_b.median"] == pytest.approx((math.sqrt(2.5) + math.sqrt(2)) / 2)
    assert values["layer0.rayleigh.median"] == pytest.approx((2.5 / 2 + 2 / 4) / 2)
    assert values["layer0.eff_lr.median"] == pytest.approx((0.1 / 2 + 0.1 / 4) / 2)
    assert values["layer0.gamma_norm"] == pytest.approx(math.sqrt(4.25))
    folded = folded_quantities(layers[0].linear.weight, captured.x, captured.h, bn.weight, bn.eps)
    v_expected = torch.tensor([2 * math.sqrt(2) / math.sqrt(2.5 + 1e-5), 0.5 * 2 / math.sqrt(2 + 1e-5)])
    assert torch.allclose(folded["v_norm"].float(), v_expected)
    assert torch.allclose(folded["gain"].float(), torch.tensor([2 / math.sqrt(2.5), -0.5 / math.sqrt(2)]))
    # the site's output is exactly the folded linear map: y = v (x - mean x) + beta
    v = folded_weights(layers[0].linear.weight, captured.h, bn.weight, bn.eps)
    assert torch.allclose(captured.y, (x - x.mean(0)) @ v.T + 0.5)


def test_folded_weights_satisfy_the_batch_covariance_constraint():
    torch.manual_seed(0)
    x = torch.randn(256, 10, dtype=torch.float64) @ torch.randn(10, 10, dtype=torch.float64)
    model = bn_layer(torch.randn(6, 10).tolist(), gamma=torch.rand(6).add(0.5).tolist(), eps=1e-9)
    layers = hidden_layers(model)
    with preserved(model):
        (captured,) = capture(model, layers, x)
    gamma = model[1].norm.weight
    v = folded_weights(layers[0].linear.weight, captured.h, gamma, 1e-9)
    sigma = torch.cov(x.T, correction=0)
    quadratic = torch.einsum("jd,de,je->j", v, sigma, v)
    assert torch.allclose(quadratic, gamma.detach().square(), rtol=1e-7)
    errors = folded_quantities(layers[0].linear.weight, captured.x, captured.h, gamma, 1e-9)["constraint"]
    assert errors.abs().max() < 1e-7


def test_implied_multiplier_recovers_a_known_multiplier_of_a_quadratic_loss():
    """Least squares under the BN constraint: L(v) = ½ mean_i (vᵀ(x_i − x̄) + β − t_i)² s.t. vᵀΣv = γ².

    Stationarity Σv − c + 2λΣv = 0 with c = Xcᵀt/n gives v = v_ols/(1 + 2λ), and the constraint
    fixes λ = (sqrt(v_olsᵀΣ v_ols)/γ − 1)/2. A BN layer whose raw weights point along v_ols
    (any scale) sits at that constrained optimum: λ̂ must equal λ, per unit, whatever its sign.
    """
    torch.manual_seed(1)
    n, d = 400, 5
    x = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    targets = x @ torch.randn(d, 3, dtype=torch.float64) + 0.5 * torch.randn(n, 3, dtype=torch.float64)
    xc = x - x.mean(0)
    sigma = xc.T @ xc / n
    v_ols = torch.linalg.solve(sigma, xc.T @ targets / n).T  # (3, d): one least-squares fit per unit
    scale = torch.einsum("jd,de,je->j", v_ols, sigma, v_ols).sqrt()
    gamma = torch.stack([0.2 * scale[0], 0.9 * scale[1], 1.5 * scale[2]])  # λ > 0, small λ > 0, λ < 0
    expected = (scale / gamma - 1) / 2
    model = bn_layer((3.0 * v_ols).tolist(), gamma=gamma.tolist(), eps=1e-12)
    layers = hidden_layers(model)

    def quadratic(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (y - t).square().sum(dim=1).mean()

    with preserved(model):
        (captured,) = capture(model, layers, x, targets, loss_fn=quadratic)
    bn = model[1].norm
    lam = implied_multiplier(layers[0].linear.weight, captured.x, captured.h, captured.grad_y, bn.weight, bn.eps)
    assert expected[0] > 0.5 and 0 < expected[1] < 0.1 and expected[2] < 0
    assert torch.allclose(lam, expected, rtol=1e-6, atol=1e-9)
    # the same multiplier from autograd: vᵀ∇_v L = γ ∂L/∂γ
    model.train()
    (grad_gamma,) = torch.autograd.grad(quadratic(model(x), targets), [bn.weight])
    assert torch.allclose(lam, -grad_gamma / (2 * bn.weight.detach()), rtol=1e-6, atol=1e-9)
    # away from the optimum, λ̂ still reads the folded gradient, while in raw weights wᵀ∇_w L = 0
    with torch.no_grad():
        layers[0].linear.weight.add_(torch.randn(3, d, dtype=torch.float64))
    grad_gamma, grad_w = torch.autograd.grad(quadratic(model(x), targets), [bn.weight, layers[0].linear.weight])
    with preserved(model):
        (captured,) = capture(model, layers, x, targets, loss_fn=quadratic)
    lam = implied_multiplier(layers[0].linear.weight, captured.x, captured.h, captured.grad_y, bn.weight, bn.eps)
    assert torch.allclose(lam, -grad_gamma / (2 * bn.weight.detach()), rtol=1e-6)
    w = layers[0].linear.weight.detach()
    assert ((grad_w * w).sum(1).abs() < 1e-10 * grad_w.norm(dim=1) * w.norm(dim=1)).all()
    assert grad_w.norm() > 1e-3


def _quadratic(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y - t).square().sum(dim=1).mean()


def _stationary_gamma(model: nn.Sequential, x: torch.Tensor, targets: torch.Tensor, decay: float) -> None:
    """Train γ and β (the raw weights fixed) to a stationary point of L + decay/2 ‖γ‖²."""
    bn = model[1].norm
    optimizer = torch.optim.LBFGS(
        [bn.weight, bn.bias], max_iter=500, tolerance_grad=1e-14, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        objective = _quadratic(model(x), targets) + decay / 2 * bn.weight.square().sum()
        objective.backward()
        return objective

    optimizer.step(closure)


@pytest.mark.parametrize("decay", [1e-3, 1e-2])
def test_implied_multiplier_is_half_the_weight_decay_at_a_stationary_gamma_whatever_the_noise(decay):
    """The degeneracy (module docstring): λ̂ = −(∂L/∂γ)/(2γ), so where γ is stationary under
    L + decay/2 ‖γ‖² it is decay/2 at every input-noise level: λ̂ cannot show auto-tuning."""
    torch.manual_seed(2)
    n, d = 256, 6
    clean = torch.randn(n, d, dtype=torch.float64)
    targets = clean @ torch.randn(d, 4, dtype=torch.float64)
    for noise in (0.0, 0.5, 2.0):
        x = clean + noise * torch.randn(n, d, dtype=torch.float64)
        model = bn_layer(torch.randn(4, d).tolist(), gamma=[1.0] * 4, eps=1e-12)
        _stationary_gamma(model, x, targets, decay)
        layers, bn = hidden_layers(model), model[1].norm
        with preserved(model):
            (captured,) = capture(model, layers, x, targets, loss_fn=_quadratic)
        lam = implied_multiplier(layers[0].linear.weight, captured.x, captured.h, captured.grad_y, bn.weight, bn.eps)
        assert torch.allclose(lam, torch.full_like(lam, decay / 2), rtol=1e-6), (noise, lam)


def test_noise_quantities_measure_isotropic_noise_and_signal_to_noise():
    torch.manual_seed(2)
    n, d = 20000, 8
    clean = torch.randn(n, d, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    noisy = clean + 0.3 * torch.randn(n, d, dtype=torch.float64)
    weight = torch.randn(4, d, dtype=torch.float64)
    values = noise_quantities(weight, noisy, clean)
    assert torch.allclose(values["noise_rq"], torch.full((4,), 0.09, dtype=torch.float64), rtol=0.05)
    signal = (weight.square() * torch.linspace(0.5, 2.0, d, dtype=torch.float64).square()).sum(1)
    assert torch.allclose(values["snr"], signal / (0.09 * weight.square().sum(1)), rtol=0.05)


def test_summaries_use_finite_values_only():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, math.inf, math.nan])
    assert summarize(values, ("mean", "median", "max")) == {"mean": 2.5, "median": 2.5, "max": 4.0}
    assert summarize(torch.tensor([math.nan])) == {}


GEOMETRY_METRICS = (
    'metrics = ["train_loss", "test_accuracy", { name = "weight_geometry", every = 3, sample_size = 64 }, '
    '{ name = "implied_regularization", sample_size = 64 }, { name = "robustness", train_sample = 64 }]\n'
)
NOISE = 'input_transform = { name = "gaussian_noise", std = 0.5 }\ndeterministic = true\n'


def _runs(write_manifest, registry, metrics: str, epochs: int = 4):
    text = tiny_manifest(epochs=epochs).replace("[studies.optimizer]", NOISE + metrics + "[studies.optimizer]")
    manifest = open_session(write_manifest(text), registry=registry).manifest
    runner = Runner(registry, base_dir=manifest.base_dir, device="cpu")
    return {run.axes["placement"]: runner.run(run) for run in manifest.runs()}


def test_metrics_record_through_the_runner_without_changing_training(write_manifest, registry):
    results = _runs(write_manifest, registry, GEOMETRY_METRICS)
    plain = _runs(write_manifest, registry, 'metrics = ["train_loss", "test_accuracy"]\n')
    bn, none = results["all"], results["none"]
    assert bn.status == none.status == "done"
    for placement, result in results.items():  # measuring leaves training bitwise unchanged
        assert [e.metrics["train_loss"] for e in result.epochs] == [
            e.metrics["train_loss"] for e in plain[placement].epochs
        ]
    first, second, third, last = (e.metrics for e in bn.epochs)
    assert "weight_geometry.layer0.v_norm.median" in first and "weight_geometry.layer0.w_norm.mean" not in second
    assert "weight_geometry.layer0.gamma_norm" in third and "weight_geometry.layer0.gain.median" in last
    # every = 3: epochs 1, 3 and the last
    assert last["implied_regularization.layer0.ridge.median"] != 0
    assert last["implied_regularization.layer0.snr.median"] > 0
    assert 0 <= last["implied_regularization.layer0.bound.within"] <= 1
    assert last["robustness.noise_drop"] == pytest.approx(
        last["robustness.clean_test_accuracy"] - last["robustness.noisy_test_accuracy"]
    )
    assert last["robustness.noisy_test_accuracy"] == last["test_accuracy"]
    unnormalized = none.epochs[-1].metrics
    assert "weight_geometry.layer0.w_norm.median" in unnormalized
    assert not any(k.endswith(("v_norm.median", "lambda.median", "gamma_norm")) for k in unnormalized)
    assert "implied_regularization.layer0.snr.median" in unnormalized

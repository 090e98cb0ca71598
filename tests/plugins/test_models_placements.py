"""Built-in models and placements: sites, counts of placed normalizers, shapes, sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnbench import DataInfo, NormSite, find_sites
from bnbench.runner import Runner
from bnbench.spec import Component, RunSpec

CIFAR = DataInfo((3, 32, 32), 10)
MNIST = DataInfo((1, 28, 28), 10)


def build(registry, model: Component, placement: str, data: DataInfo, normalizer: str = "batchnorm") -> nn.Module:
    entry = registry.get("model", model.name)
    options = entry.options.model_validate(model.options).model_dump(mode="json")
    spec = RunSpec(
        model=Component(name=model.name, options=options),
        dataset=Component(name="synthetic"),
        normalizer=Component(name=normalizer, options={} if normalizer == "none" else {"eps": 1e-5}),
        placement=Component(name=placement),
        epochs=1,
    )
    runner = Runner(registry, base_dir=None, device="cpu")  # type: ignore[arg-type]
    model, _ = runner.build_model(spec, data)
    return model


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("depth", [8, 20, 56])
@pytest.mark.parametrize(
    ("placement", "bn2d", "bn1d"),
    [("all", "6n+1", 0), ("final", 0, 1), ("all_and_final", "6n+1", 1), ("none", 0, 0)],
)
def test_resnet_placements_count_normalizers(registry, depth, placement, bn2d, bn1d):
    n = (depth - 2) // 6
    model = build(registry, Component(name="resnet_cifar", options={"depth": depth}), placement, CIFAR)
    expected_2d = 6 * n + 1 if bn2d == "6n+1" else 0
    assert count(model, nn.BatchNorm2d) == expected_2d
    assert count(model, nn.BatchNorm1d) == bn1d
    sites = find_sites(model)
    assert len(sites) == 6 * n + 2
    assert [info.role for info, _ in sites].count("output") == 1
    assert sum(site.is_normalized for _, site in sites) == expected_2d + bn1d
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_resnet110_matches_he_et_al(registry):
    model = build(registry, Component(name="resnet_cifar", options={"depth": 110}), "all", CIFAR)
    params = sum(p.numel() for p in model.parameters())
    assert 1.70e6 < params < 1.74e6  # He et al. 2016: 1.7M
    assert count(model, nn.Conv2d) == 109  # option-A shortcuts have no parameters
    assert count(model, nn.BatchNorm2d) == 109


def test_resnet_option_b_and_other_shapes(registry):
    model = build(
        registry,
        Component(name="resnet_cifar", options={"depth": 8, "shortcut": "B"}),
        "none",
        DataInfo((1, 28, 28), 7),
    )
    assert count(model, nn.Conv2d) == 7 + 2  # two projection shortcuts
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize(
    ("placement", "hidden", "output"), [("all", 3, 0), ("final", 0, 1), ("all_and_final", 3, 1), ("none", 0, 0)]
)
def test_mlp_placements_count_normalizers(registry, placement, hidden, output):
    model = build(registry, Component(name="mlp", options={"widths": [32, 16, 8]}), placement, MNIST)
    normalized = [info for info, site in find_sites(model) if site.is_normalized]
    assert sum(info.role == "hidden" for info in normalized) == hidden
    assert sum(info.role == "output" for info in normalized) == output
    assert count(model, nn.BatchNorm1d) == hidden + output
    assert [info.num_features for info, _ in find_sites(model)] == [32, 16, 8, 10]
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_normalizer_none_places_identities(registry):
    model = build(registry, Component(name="mlp", options={"widths": [8]}), "all", MNIST, normalizer="none")
    assert count(model, nn.BatchNorm1d) == 0
    assert all(not site.is_normalized for _, site in find_sites(model))


def test_final_placement_normalizes_the_logits(registry):
    model = build(registry, Component(name="mlp", options={"widths": [8]}), "final", MNIST)
    model.train()
    inputs = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    logits = model(inputs)
    raw = model.layers[-2](model.layers[:-2](inputs))  # the logits before the output site
    expected_var = raw.var(0, unbiased=False) / (raw.var(0, unbiased=False) + 1e-5)  # BN's eps
    assert torch.allclose(logits.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(logits.var(0, unbiased=False), expected_var, rtol=1e-4)


def test_site_validates_kind_and_role():
    with pytest.raises(ValueError, match="kind"):
        NormSite(4, "conv2d")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role"):
        NormSite(4, "fc", role="logits")  # type: ignore[arg-type]


def test_resnet_depth_must_be_6n_plus_2(registry):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="6n\\+2"):
        registry.get("model", "resnet_cifar").options.model_validate({"depth": 51})

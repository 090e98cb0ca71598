"""A normalizer that includes its activation (FRN+TLU, EvoNorm: ``traits.includes_activation``)
replaces the model's activation at the sites the model activates, and leaves it out elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnbench import DataInfo, NormalizerTraits, hookimpl
from bnbench.assembly import assemble_model
from bnbench.errors import ManifestError
from bnbench.records import PlannedRun
from bnbench.registry import load_registry
from bnbench.spec import RunSpec
from bnbench.testing import NormalizerContractError, check_normalizer

SMALL_MODELS = {"resnet_cifar": {"depth": 8}, "mlp": {"widths": [16, 8]}}
NORM_ACT = NormalizerTraits(includes_activation=True)


def batch_norm(num_features: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(num_features) if kind == "conv" else nn.BatchNorm1d(num_features)


def leaky_norm(num_features, kind, options, activation: bool = True) -> nn.Module:
    """Batch norm followed by its own LeakyReLU(0.5) (negative outputs: the model's ReLU would remove them)."""
    norm = batch_norm(num_features, kind)
    return nn.Sequential(norm, nn.LeakyReLU(0.5)) if activation else norm


def leaky_norm_always(num_features, kind, options) -> nn.Module:
    """Batch norm with its LeakyReLU everywhere: no way to leave the activation out."""
    return nn.Sequential(batch_norm(num_features, kind), nn.LeakyReLU(0.5))


def no_activation_after_all(num_features, kind, options) -> nn.Module:
    """Batch norm alone, yet claiming to include an activation."""
    return batch_norm(num_features, kind)


class NormActPlugin:
    @hookimpl
    def bnbench_register_normalizers(self, register):
        register("leaky_norm", leaky_norm, traits=NORM_ACT)
        register("leaky_norm_always", leaky_norm_always, traits=NORM_ACT)
        register("claims_an_activation", no_activation_after_all, traits=NORM_ACT)


@pytest.fixture(scope="module")
def registry():
    return load_registry(objects=[("norm_act", NormActPlugin())])


def built(registry, model: dict, normalizer: str, placement: str = "all") -> nn.Module:
    name, options = model["name"], {k: v for k, v in model.items() if k != "name"}
    spec = RunSpec.model_validate(
        {
            "model": {"name": name, "options": options},
            "normalizer": {"name": normalizer},
            "placement": {"name": placement},
            "dataset": {"name": "synthetic", "options": {"image_shape": [3, 8, 8], "num_classes": 4}},
            "epochs": 1,
        }
    )
    torch.manual_seed(0)
    model_module, _ = assemble_model(registry, spec, DataInfo((3, 8, 8), 4), torch.device("cpu"))
    return model_module.train()


def input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(("normalizer", "skipped"), [("leaky_norm", True), ("batchnorm", False)])
def test_on_the_mlp_the_normalizers_activation_replaces_the_models(registry, normalizer, skipped):
    model = built(registry, {"name": "mlp", "widths": [16, 8]}, normalizer, placement="all_and_final")
    after_first = input_of(model, model.layers[4], torch.randn(32, 3, 8, 8))  # the second Linear's input
    assert bool((after_first < 0).any()) is skipped  # the model's ReLU would have removed the negatives
    output_site = model.layers[-1]
    assert not output_site.activated and output_site.is_normalized
    if skipped:
        assert isinstance(output_site.norm, nn.BatchNorm1d)  # no activation follows the logits: activation=False


@pytest.mark.parametrize(("normalizer", "skipped"), [("leaky_norm", True), ("batchnorm", False)])
def test_on_the_resnet_the_normalizers_activation_replaces_the_relu_after_a_blocks_first_site(
    registry, normalizer, skipped
):
    model = built(registry, {"name": "resnet_cifar", "depth": 8}, normalizer)
    block = model.stages[0][0]
    inside = input_of(model, block.conv2, torch.randn(8, 3, 8, 8))
    assert bool((inside < 0).any()) is skipped
    assert block.site1.activated and not block.site2.activated  # the branch's end: the ReLU comes after the sum
    if skipped:
        assert isinstance(block.site2.norm, nn.BatchNorm2d)  # the factory left its activation out there


def test_a_norm_activation_layer_that_cannot_leave_its_activation_out_is_refused_where_none_follows(registry):
    with pytest.raises(ValueError, match=r"includes its activation .* takes no activation=False"):
        built(registry, {"name": "mlp", "widths": [16, 8]}, "leaky_norm_always", placement="all_and_final")
    built(registry, {"name": "mlp", "widths": [16, 8]}, "leaky_norm_always", placement="all")  # hidden sites only


def test_plan_names_the_refusal_before_training(registry, write_manifest):
    from bnbench.plan import check_runs
    from bnbench.session import open_session

    text = (
        '[[studies]]\nname = "s"\nmodel = { name = "mlp", widths = [8] }\nnormalizer = "leaky_norm_always"\n'
        'placement = "all_and_final"\nepochs = 1\n'
        'dataset = { name = "synthetic", image_shape = [1, 8, 8], num_classes = 4 }\n'
    )
    manifest = open_session(write_manifest(text), registry=registry).manifest
    with pytest.raises(ManifestError, match=r"field 'normalizer'.*takes no activation=False"):
        check_runs(manifest.runs(), registry, str(manifest.path))
    assert isinstance(manifest.runs()[0], PlannedRun)


def test_the_kit_passes_a_real_norm_activation_layer_and_catches_one_that_applies_none(registry):
    results = check_normalizer("leaky_norm", registry=registry, checks=["activation"], model_options=SMALL_MODELS)
    assert {r.status for r in results} == {"passed"}
    with pytest.raises(NormalizerContractError, match="odd function of its input"):
        check_normalizer("claims_an_activation", registry=registry, checks=["activation"], model_options=SMALL_MODELS)

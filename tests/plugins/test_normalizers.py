"""Built-in normalizers: the contract kit on each, their mathematics, options, traits and citations."""

from __future__ import annotations

import copy
import io
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from bnbench import DataInfo, NormSite, find_sites, hookimpl
from bnbench.api import NormalizerTraits, resolve_traits
from bnbench.plugins.normalizers.batchrenorm import BatchRenormOptions, batchrenorm
from bnbench.plugins.normalizers.groupnorm import effective_groups
from bnbench.plugins.normalizers.weight_standardization import WeightStandardization
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.spec import Component, RunSpec
from bnbench.stacking import StackedModules
from bnbench.testing import check_normalizer

BUILT_IN = [
    "batchnorm",
    "none",
    "groupnorm",
    "layernorm",
    "instancenorm",
    "rmsnorm",
    "batchrenorm",
    "ws_groupnorm",
    "skipinit",
]
SMALL_MODELS = {"resnet_cifar": {"depth": 8}, "mlp": {"widths": [16, 8]}}
CIFAR = DataInfo((3, 16, 16), 10)


def build(registry, normalizer: str, placement: Component | str = "all", model: str = "resnet_cifar", **options):
    placement = Component(name=placement) if isinstance(placement, str) else placement
    model_options = SMALL_MODELS.get(model, {})
    spec = RunSpec(
        model=Component(name=model, options=model_options),
        dataset=Component(name="synthetic"),
        normalizer=Component(name=normalizer, options=options),
        placement=placement,
        epochs=1,
    )
    return Runner(registry, base_dir=None, device="cpu").build_model(spec, CIFAR)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        *[(name, {}) for name in BUILT_IN],
        ("batchnorm", {"track_running_stats": False}),  # traits follow the options
        ("instancenorm", {"track_running_stats": True}),
        ("batchrenorm", {"warmup_steps": 10, "affine": False}),
        ("groupnorm", {"groups": 4}),
        ("skipinit", {"init": 0.5}),
    ],
)
def test_built_in_normalizer_passes_the_contract_kit(registry, name, options):
    results = check_normalizer(name, options, registry=registry, device="cpu", model_options=SMALL_MODELS)
    passed = {r.check for r in results if r.status == "passed"}
    assert {"builds", "shape_and_dtype", "train_and_eval", "state_dict", "models_and_placements"} <= passed


def test_every_built_in_normalizer_is_registered_with_traits_and_cites_its_paper(registry):
    assert set(registry.names("normalizer")) >= set(BUILT_IN)
    for name in BUILT_IN:
        entry = registry.get("normalizer", name)
        assert "traits" in entry.extras, name
        assert isinstance(resolve_traits(entry.extras["traits"], entry.options.model_validate({})), NormalizerTraits)
        if name != "none":
            assert re.search(r"[A-Z][a-z]+.*\b(19|20)\d\d\b", entry.factory.__doc__ or ""), f"{name} cites no paper"


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_normalizer_trains_packed_without_vmaps_slow_fallback(registry, name):
    """Packed runs vmap the model: an op with no batching rule (``lerp_`` was one) still works,
    through a per-member loop that PyTorch warns about; no built-in may need it."""
    torch.manual_seed(0)
    stack = StackedModules([build(registry, name)[0] for _ in range(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack.forward(torch.randn(2, 4, *CIFAR.input_shape)).sum().backward()
    slow = [str(w.message).splitlines()[0] for w in caught if "batching rule" in str(w.message)]
    assert not slow, slow


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("groupnorm", {"groups": 0}, "groups"),
        ("groupnorm", {"eps": 0}, "eps"),
        ("layernorm", {"eps": -1e-5}, "eps"),
        ("instancenorm", {"momentum": 1.5}, "momentum"),
        ("rmsnorm", {"eps": 0}, "eps"),
        ("batchrenorm", {"rmax": 0.5}, "rmax"),
        ("batchrenorm", {"dmax": -1}, "dmax"),
        ("batchrenorm", {"warmup_steps": -1}, "warmup_steps"),
        ("ws_groupnorm", {"ws_eps": 0}, "ws_eps"),
        ("skipinit", {"init": "zero"}, "init"),
        ("rmsnorm", {"epsilon": 1e-6}, "epsilon"),  # unknown option
    ],
)
def test_options_are_validated(registry, name, options, field):
    with pytest.raises(ValidationError) as info:
        registry.get("normalizer", name).options.model_validate(options)
    assert field in str(info.value)


# -- group, layer, instance and RMS normalization ----------------------------------------------
@pytest.mark.parametrize(
    ("channels", "kind", "groups"),
    [
        (16, "conv", 8),
        (64, "conv", 32),
        (256, "conv", 32),
        (6, "conv", 3),
        (64, "fc", 8),
        (256, "fc", 32),
        (10, "fc", 1),
    ],
)
def test_group_count_keeps_groups_large_enough(channels, kind, groups):
    assert effective_groups(channels, 32, kind) == groups


def test_groupnorm_normalizes_each_group_of_each_example(registry):
    norm = registry.get("normalizer", "groupnorm")
    module = norm.factory(8, "conv", norm.options.model_validate({"groups": 2, "affine": False}))
    out = module(torch.randn(3, 8, 4, 4) * 5 + 2).reshape(3, 2, -1)
    assert torch.allclose(out.mean(-1), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(3, 2), atol=1e-3)


def test_layernorm_at_an_fc_site_is_torch_layer_norm(registry):
    norm = registry.get("normalizer", "layernorm")
    module = norm.factory(12, "fc", norm.options.model_validate({}))
    x = torch.randn(5, 12) * 3 + 1
    assert torch.allclose(module(x), F.layer_norm(x, (12,), eps=1e-5), atol=1e-5)


def test_rmsnorm_divides_by_the_root_mean_square_without_centring(registry):
    norm = registry.get("normalizer", "rmsnorm")
    conv = norm.factory(4, "conv", norm.options.model_validate({}))
    x = torch.randn(2, 4, 3, 3) + 3
    expected = x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-6).sqrt()
    assert torch.allclose(conv(x), expected, atol=1e-5)
    fc = norm.factory(6, "fc", norm.options.model_validate({}))
    with torch.no_grad():
        fc.weight.copy_(torch.arange(1.0, 7.0))
    y = torch.randn(3, 6)
    assert torch.allclose(fc(y), y / y.pow(2).mean(1, keepdim=True).add(1e-6).sqrt() * torch.arange(1.0, 7.0))


def test_instancenorm_is_refused_at_fc_sites_with_a_clear_message(registry):
    model, info = build(registry, "instancenorm", "all")
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) == info["sites"] - 1
    with pytest.raises(ValueError, match=r"normalizer 'instancenorm' cannot go at site 'output_site'.*conv sites only"):
        build(registry, "instancenorm", "final")
    with pytest.raises(ValueError, match=r"'layers\.2' is a fc site"):
        build(registry, "instancenorm", "all", model="mlp")


# -- batch renormalization -------------------------------------------------------------------
def renorm(num_features: int = 4, kind: str = "fc", **options):
    return batchrenorm(num_features, kind, BatchRenormOptions(**options))  # type: ignore[arg-type]


def test_batchrenorm_with_rmax_1_and_dmax_0_is_batchnorm():
    x = torch.randn(16, 4, 3, 3) * 3 + 1
    brn, bn = renorm(4, "conv", rmax=1.0, dmax=0.0), nn.BatchNorm2d(4)
    assert torch.allclose(brn(x), bn(x), atol=1e-5)
    assert torch.allclose(brn.running_mean, bn.running_mean, atol=1e-6)


def test_batchrenorm_clips_r_and_d():
    x = torch.randn(256, 4) * 10 + 20  # σ_B ≈ 10, μ_B ≈ 20 against moving averages 1 and 0
    out = renorm(rmax=3.0, dmax=5.0)(x)
    assert torch.allclose(out.std(0, unbiased=False), torch.full((4,), 3.0), rtol=1e-3)  # r clipped at 3
    assert torch.allclose(out.mean(0), torch.full((4,), 5.0), atol=1e-3)  # d clipped at 5


def test_batchrenorm_corrects_towards_the_moving_averages_and_evaluates_with_them():
    module = renorm(rmax=100.0, dmax=100.0, momentum=0.5)
    for _ in range(3):
        module(torch.randn(64, 4) * 2 + 1)
    mean, std = module.running_mean.clone(), module.running_std.clone()
    x = torch.randn(64, 4) * 2 + 1
    # unclipped, the training output is (x − μ)/σ with the moving averages: eval's output
    assert torch.allclose(module(x), (x - mean) / std, atol=1e-5)
    module.eval()
    assert torch.allclose(module(x), (x - module.running_mean) / module.running_std, atol=1e-6)


def test_batchrenorm_stops_the_gradient_through_r_and_d():
    module = renorm(rmax=100.0, dmax=100.0)
    module.running_mean.fill_(0.3)
    module.running_std.fill_(2.0)
    x = (torch.randn(32, 4) * 3 + 1).requires_grad_(True)
    weights = torch.randn(32, 4)
    (module(x) * weights).sum().backward()
    xc = x.detach().clone().requires_grad_(True)
    mean, std = xc.mean(0), torch.sqrt(xc.var(0, unbiased=False) + 1e-5)
    r, d = (std / 2.0).detach(), ((mean - 0.3) / 2.0).detach()
    (((xc - mean) / std * r + d) * weights).sum().backward()
    assert torch.allclose(x.grad, xc.grad, atol=1e-5)


def test_batchrenorm_warmup_relaxes_from_batchnorm():
    module = renorm(warmup_steps=10)
    assert tuple(float(v) for v in module.limits()) == (1.0, 0.0)
    for _ in range(5):
        module(torch.randn(8, 4))
    assert tuple(round(float(v), 4) for v in module.limits()) == (2.0, 2.5)
    for _ in range(10):
        module(torch.randn(8, 4))
    assert tuple(float(v) for v in module.limits()) == (3.0, 5.0)


# -- weight standardization ------------------------------------------------------------------
def test_ws_groupnorm_standardizes_the_weight_of_every_source_conv(registry):
    model, info = build(registry, "ws_groupnorm", "all")
    standardized = 0
    for site_info, site in find_sites(model):
        conv = site.source
        if site_info.name in info["normalized_sites"]:
            assert isinstance(conv.parametrizations["weight"][0], WeightStandardization)
            weight, raw = conv.weight.flatten(1), conv.parametrizations["weight"].original.flatten(1)
            raw_var = raw.var(1, unbiased=False)
            assert torch.allclose(weight.mean(1), torch.zeros(weight.shape[0]), atol=1e-5)
            assert torch.allclose(weight.var(1, unbiased=False), raw_var / (raw_var + 1e-5), rtol=1e-4)
            standardized += 1
        else:
            assert not hasattr(conv, "parametrizations")  # the logits layer: not chosen by "all"
    assert standardized == info["sites"] - 1
    keys = list(model.state_dict())
    assert "stem.parametrizations.weight.original" in keys and "stem.weight" not in keys
    assert not any(".source." in key for key in keys)


def test_ws_groupnorm_binds_a_layer_once_and_rejects_a_layer_without_weights(registry):
    entry = registry.get("normalizer", "ws_groupnorm")
    options = entry.options.model_validate({})
    conv = nn.Conv2d(3, 8, 3)
    for _ in range(2):
        NormSite(8, "conv", source=conv).attach(entry.factory(8, "conv", options))
    assert len(conv.parametrizations["weight"]) == 1
    activation = nn.ReLU()  # a site holds its source weakly: the model keeps it alive
    with pytest.raises(ValueError, match="a convolution or linear layer"):
        NormSite(8, "conv", source=activation).attach(entry.factory(8, "conv", options))


class SourcelessModel:
    """A third-party model whose sites name no source layer."""

    @hookimpl
    def bnbench_register_models(self, register):
        def sourceless(options, data):
            """A linear layer and a site without a source."""
            return nn.Sequential(
                nn.Flatten(), nn.Linear(48, data.num_classes), NormSite(data.num_classes, "fc", role="output")
            )

        register("sourceless", sourceless)


def test_a_model_without_sources_works_except_with_a_normalizer_that_needs_one():
    registry = load_registry(objects=[("sourceless", SourcelessModel())])
    data = DataInfo((3, 4, 4), 10)

    def spec(normalizer: str) -> RunSpec:
        return RunSpec(
            model=Component(name="sourceless"),
            dataset=Component(name="synthetic"),
            normalizer=Component(name=normalizer),
            placement=Component(name="final"),
            epochs=1,
        )

    runner = Runner(registry, base_dir=None, device="cpu")  # type: ignore[arg-type]
    model, _ = runner.build_model(spec("layernorm"), data)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"'ws_groupnorm' cannot go at site '2'.*names none for '2'"):
        runner.build_model(spec("ws_groupnorm"), data)


# -- SkipInit and the tagged placement --------------------------------------------------------
def test_skipinit_at_residual_branch_ends_starts_every_block_as_the_identity(registry):
    placement = Component(name="tagged", options={"tags": ["residual_branch_end"]})
    model, info = build(registry, "skipinit", placement)
    assert len(info["normalized_sites"]) == 3  # depth 8: one block per stage
    assert all(name.endswith("site2") for name in info["normalized_sites"])
    outputs = []
    for _, site in find_sites(model):
        if site.is_normalized:
            site.register_forward_hook(lambda module, args, out: outputs.append(out))
    logits = model(torch.randn(4, 3, 16, 16))
    assert len(outputs) == 3 and all(bool((out == 0).all()) for out in outputs)
    logits.pow(2).mean().backward()
    alphas = [m.alpha for m in model.modules() if hasattr(m, "alpha")]
    assert len(alphas) == 3 and all(a.grad is not None and float(a.grad) != 0 for a in alphas)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"tags": ["residual_branch_end"]}, 3),
        ({"tags": ["residual_branch"]}, 6),
        ({"tags": ["stem", "residual_branch_end"]}, 4),
        ({"tags": ["residual_branch", "residual_branch_end"], "match": "all"}, 3),
    ],
)
def test_tagged_placement_selects_sites_by_tag(registry, options, expected):
    _, info = build(registry, "batchnorm", Component(name="tagged", options=options))
    assert len(info["normalized_sites"]) == expected


@pytest.mark.parametrize(
    "options", [{"tags": ["stem", "residual_branch_end"], "match": "all"}, {"tags": ["residual_brnch"]}]
)
def test_tags_that_select_no_site_are_an_error_naming_the_tags_there_are(registry, options):
    # a misspelt tag used to normalize nothing, silently: an unnormalized run labelled as a normalized one
    with pytest.raises(ValueError, match=r"no site carries .* this model's sites carry: residual_branch, "):
        build(registry, "batchnorm", Component(name="tagged", options=options))


def test_tagged_placement_validates_its_options(registry):
    options = registry.get("placement", "tagged").options
    for bad in ({}, {"tags": []}, {"tags": [""]}, {"tags": ["stem"], "match": "some"}):
        with pytest.raises(ValidationError):
            options.model_validate(bad)


# -- sites, sources and traits in the core ----------------------------------------------------
def test_a_site_holds_its_source_weakly_and_copies_retarget_it():
    model = nn.Sequential(nn.Linear(3, 4))
    model.append(NormSite(4, "fc", source=model[0]))
    assert model[1].source is model[0]
    assert list(model[1].children()) == [model[1].norm]  # not a submodule
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    assert find_sites(model)[0][0].has_source
    for copied in (copy.deepcopy(model), torch.load(_saved(model), weights_only=False)):
        assert copied[1].source is copied[0]
    assert NormSite(4, "fc").source is None and not find_sites(nn.Sequential(NormSite(4, "fc")))[0][0].has_source
    orphan = NormSite(4, "fc", source=nn.Linear(3, 4))  # nothing else holds the layer
    with pytest.raises(RuntimeError, match="must keep it"):
        orphan.attach(nn.Identity())


def _saved(module: nn.Module) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_attach_binds_the_source_only_when_the_site_has_one():
    bound = []

    class Binding(nn.Identity):
        def bind_source(self, layer):
            bound.append(layer)

    layer = nn.Linear(2, 2)
    NormSite(2, "fc", source=layer).attach(Binding())
    NormSite(2, "fc").attach(Binding())
    assert bound == [layer]


def test_traits_are_validated_at_registration_and_resolution():
    from bnbench.errors import PluginError

    class BadTraits:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            register("bad", lambda n, k, o: nn.Identity(), traits={"batch_dependent": True})

    with pytest.raises(PluginError, match="registered normalizer 'bad' with invalid traits"):
        load_registry(entry_points=False, objects=[("bad", BadTraits())])
    with pytest.raises(ValueError, match="site_kinds"):
        NormalizerTraits(site_kinds=frozenset({"conv", "dense"}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a NormalizerTraits"):
        resolve_traits(lambda options: "conv only", None)
    assert resolve_traits(None, None) == NormalizerTraits()
    assert NormalizerTraits(site_kinds=("fc",)).site_kinds == frozenset({"fc"})  # type: ignore[arg-type]

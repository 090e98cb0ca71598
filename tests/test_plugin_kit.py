"""The contract kits (bnbench.testing): they catch broken normalizers and metrics and say where and why."""

from __future__ import annotations

import subprocess
import sys
from typing import TypedDict

import pytest
import torch
from pydantic import Field
from torch import nn

from bnbench import EpochContext, NormalizerTraits, Options, hookimpl
from bnbench.registry import load_registry
from bnbench.testing import (
    CHECKS,
    METRIC_CHECKS,
    ContractViolation,
    MetricContractError,
    NormalizerContractError,
    check_metric,
    check_normalizer,
    example_options,
    metric_checks,
    normalizer_checks,
)

SMALL_MODELS = {"resnet_cifar": {"depth": 8}, "mlp": {"widths": [16, 8]}}


def _channels(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1, *([1] * (x.dim() - 2)))


class Float32Only(nn.Module):
    """Casts to float32 whatever it receives."""

    def forward(self, x):
        return (x * 2).float()


class LeakyStatistics(nn.Module):
    """Keeps a running mean as a plain attribute: not a buffer, so not in its state_dict."""

    def __init__(self, num_features):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_features))
        self.mean = torch.zeros(num_features)

    def forward(self, x):
        if self.training:
            dims = [0, *range(2, x.dim())]
            self.mean = 0.5 * self.mean + 0.5 * x.detach().mean(dims)
        return (x - _channels(x, self.mean)) * _channels(x, self.scale)


class HostTensor(nn.Module):
    """Builds a tensor on the CPU in forward: breaks on any other device."""

    def forward(self, x):
        return x - _channels(x, torch.ones(x.shape[1]))


class NoLowPrecision(nn.Module):
    """Mixes its float32 buffer with the input in an op autocast does not cast."""

    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("target", torch.zeros(num_features))

    def forward(self, x):
        return torch.lerp(x, _channels(x, self.target).expand_as(x), 0.5)


class OwnsItsSource(nn.Module):
    """Registers the source layer as its own submodule: its parameters are saved twice."""

    def bind_source(self, layer):
        self.layer = layer

    def forward(self, x):
        return x


class SingleExampleNaN(nn.Module):
    """Standardizes over the batch with the unbiased variance: 0/0 for one example."""

    def forward(self, x):
        centred = x - x.mean(0, keepdim=True)
        return centred / (centred.pow(2).sum(0, keepdim=True) / (x.shape[0] - 1)).sqrt()


class BranchesOnValues(nn.Module):
    """Chooses its computation by a tensor's value in Python: cannot run under vmap."""

    def forward(self, x):
        return x - x.mean() if float(x.detach().mean()) > 0 else x


class ReassignsItsBuffer(nn.Module):
    """Updates its running mean by rebinding the attribute, not in place: runs under vmap, but a
    pack's stacked buffer never sees the update (packed differs from alone)."""

    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x):
        if self.training:
            dims = [0, *range(2, x.dim())]
            self.running_mean = 0.5 * self.running_mean + 0.5 * x.detach().mean(dims)
        return x - _channels(x, self.running_mean)


class ScaleOptions(Options):
    factor: float = Field(2.0, gt=0)


class Broken:
    @hookimpl
    def bnbench_register_normalizers(self, register):
        register("float32_only", lambda n, k, o: Float32Only())
        register("leaky_statistics", lambda n, k, o: LeakyStatistics(n))
        register("host_tensor", lambda n, k, o: HostTensor())
        register("no_low_precision", lambda n, k, o: NoLowPrecision(n))
        register("owns_its_source", lambda n, k, o: OwnsItsSource())
        register(
            "single_example_nan", lambda n, k, o: SingleExampleNaN(), traits=NormalizerTraits(batch_dependent=True)
        )
        register("undeclared_bn", lambda n, k, o: nn.BatchNorm2d(n) if k == "conv" else nn.BatchNorm1d(n))
        register(
            "no_low_precision_declared",
            lambda n, k, o: NoLowPrecision(n),
            traits=NormalizerTraits(mixed_precision=False),
        )
        register("returns_a_function", lambda n, k, o: torch.relu)
        register("branches_on_values", lambda n, k, o: BranchesOnValues())
        register(
            "branches_on_values_declared",
            lambda n, k, o: BranchesOnValues(),
            traits=NormalizerTraits(packable=False),
        )
        register(
            "reassigns_its_buffer",
            lambda n, k, o: ReassignsItsBuffer(n),
            traits=NormalizerTraits(batch_dependent=True, running_stats=True),
        )
        register("scaled", lambda n, k, o: nn.Identity(), options=ScaleOptions)


@pytest.fixture(scope="module")
def broken():
    return load_registry(objects=[("broken", Broken())])


def failures(registry, name: str, device: str = "cpu", checks=CHECKS) -> list[ContractViolation]:
    with pytest.raises(NormalizerContractError) as info:
        check_normalizer(name, registry=registry, device=device, checks=checks, model_options=SMALL_MODELS)
    return info.value.violations


@pytest.mark.parametrize(
    ("name", "check", "got"),
    [
        ("float32_only", "shape_and_dtype", "torch.float32 in train mode for torch.float64 input"),
        ("leaky_statistics", "state_dict", "outputs after loading differ"),
        ("no_low_precision", "mixed_precision", "BFloat16"),
        ("owns_its_source", "state_dict", "sharing storage"),
        ("single_example_nan", "batch_of_one", "non-finite outputs for one example in training mode"),
        ("undeclared_bn", "batch_dependence", "depends on its batch-mates, but traits.batch_dependent is False"),
        ("undeclared_bn", "running_stats", "updated 1.norm.running_mean"),
        ("returns_a_function", "builds", "not a torch.nn.Module"),
        ("branches_on_values", "packed", "does not run under torch.func.vmap"),
        ("reassigns_its_buffer", "packed", "differ from the same instance trained alone"),
    ],
)
def test_a_broken_normalizer_fails_the_named_check_at_each_site(broken, name, check, got):
    violations = [v for v in failures(broken, name) if v.check == check]
    assert {v.site for v in violations} >= {"conv site (C=6, 5×5, source Conv2d)", "fc site (C=10, source Linear)"}
    for violation in violations:
        assert got in violation.got
        message = str(violation)
        assert message.startswith(f"normalizer {name!r} failed check {check!r} at {violation.site}: expected ")
        assert violation.expected in message and got in message


def test_the_device_check_catches_tensor_state_that_does_not_move(broken):
    violations = failures(broken, "leaky_statistics", checks=["device"])
    assert len(violations) == 2 and "neither parameters nor buffers" in violations[0].got
    assert "'1.norm.mean'" in violations[0].got


@pytest.mark.cuda
def test_the_device_check_catches_tensors_made_on_the_host(broken):
    violations = failures(broken, "host_tensor", device="cuda", checks=["device"])
    assert len(violations) == 2 and "cpu" in violations[0].got


def test_a_declared_limitation_is_skipped_with_its_reason(broken):
    results = check_normalizer("no_low_precision_declared", registry=broken, device="cpu", checks=["mixed_precision"])
    assert {r.status for r in results} == {"skipped"}
    assert "traits.mixed_precision is False" in results[0].detail


def test_a_normalizer_that_declares_it_cannot_pack_skips_the_packed_check(broken):
    results = check_normalizer("branches_on_values_declared", registry=broken, device="cpu", checks=["packed"])
    assert {r.status for r in results} == {"skipped"} and "traits.packable is False" in results[0].detail


def test_the_error_lists_every_violation(broken):
    with pytest.raises(NormalizerContractError) as info:
        check_normalizer("undeclared_bn", registry=broken, device="cpu", checks=["batch_dependence", "running_stats"])
    text = str(info.value)
    assert text.startswith("normalizer 'undeclared_bn' broke its contract in 4 check(s):")
    assert text.count("\n  - normalizer 'undeclared_bn' failed check") == 4


def test_checks_enumerate_sites_models_and_placements(registry):
    checks = normalizer_checks("instancenorm", registry=registry, device="cpu", models=["mlp"], placements=["all"])
    ids = [str(c) for c in checks]
    assert "builds[conv site (C=6, 5×5, no source)]" in ids
    assert "models_and_placements[model 'mlp' with placement 'all']" in ids
    assert {c.name for c in checks} == set(CHECKS)
    results = {str(c): c.run() for c in checks}
    assert results["state_dict[fc site (C=10, source Linear)]"].status == "skipped"  # conv sites only
    refused = results["models_and_placements[model 'mlp' with placement 'all']"]
    assert refused.status == "skipped" and "the core refuses this pairing" in refused.detail


def test_a_check_run_under_pytest_fails_or_skips(broken):
    (check,) = normalizer_checks("float32_only", registry=broken, checks=["shape_and_dtype"], device="cpu")[:1]
    with pytest.raises(ContractViolation, match="failed check 'shape_and_dtype' at conv site"):
        check()
    skipped = normalizer_checks("no_low_precision_declared", registry=broken, checks=["mixed_precision"])[0]
    with pytest.raises(pytest.skip.Exception, match=r"traits\.mixed_precision is False"):
        skipped()


def test_kit_arguments_are_checked(broken):
    with pytest.raises(ValueError, match="unknown check"):
        normalizer_checks("batchnorm", checks=["builds", "speed"])
    with pytest.raises(ValueError, match="factor"):
        normalizer_checks("scaled", {"factor": -1}, registry=broken)


def test_example_options_take_each_fields_first_example_and_need_one_for_required_fields(registry):
    assert example_options(registry.get("placement", "tagged").options) == {"tags": ["residual_branch_end"]}
    assert example_options(registry.get("model", "mlp").options) == {"widths": [32, 16]}  # its smallest size
    assert example_options(registry.get("placement", "all").options) == {}

    class Required(Options):
        width: int

    assert example_options(Required) is None


def test_a_check_that_ran_in_part_passes_with_a_note(registry):
    # batch norm evaluates one example (running statistics) but cannot train on one: the eval part ran
    results = check_normalizer("batchnorm", registry=registry, device="cpu", checks=["batch_of_one"])
    assert {r.status for r in results} == {"passed"}
    assert all(
        r.detail.startswith("note: eval mode checked; training mode not: traits.train_batch_of_one") for r in results
    )
    group = check_normalizer("groupnorm", registry=registry, device="cpu", checks=["batch_of_one"])
    assert {r.status for r in group} == {"passed"} and not any(r.detail for r in group)  # ran in full


@pytest.mark.slow
def test_outside_pytest_a_skipped_check_is_a_warning_not_a_silent_pass():
    code = (
        "import warnings\n"
        "from bnbench.testing import ContractCheckSkipped, normalizer_checks\n"
        "check = normalizer_checks('instancenorm', checks=['state_dict'], device='cpu')[-1]\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    result = check()\n"
        "print(result.status, [str(w.message) for w in caught if w.category is ContractCheckSkipped])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith('skipped ["state_dict[fc site') and "skipped: traits.site_kinds" in out


# -- the metric kit ----------------------------------------------------------------------------
BUILT_IN_METRICS = sorted(e.name for e in load_registry().entries("metric") if e.plugin.package == "bnbench")


@pytest.mark.parametrize("name", BUILT_IN_METRICS)
def test_every_built_in_metric_meets_the_metric_contract_on_every_built_in_model(registry, name):
    results = check_metric(name, registry=registry, device="cpu", model_options=SMALL_MODELS)
    assert {(r.check, r.site) for r in results} == {
        (check, f"model {model!r}") for check in METRIC_CHECKS for model in ("mlp", "resnet_cifar")
    }
    assert {r.status for r in results} == {"passed"}, [r for r in results if r.status != "passed"]
    assert not [p for p in registry.manager.get_plugins() if type(p).__name__ == "_MetricObserver"]


def test_the_built_in_metrics_are_all_checked():
    assert {"train_loss", "test_accuracy", "weight_geometry", "robustness"} <= set(BUILT_IN_METRICS)


class TopK(TypedDict):
    top1: float
    top5: float


def nan_metric(context: EpochContext, options) -> float:
    """Not a number."""
    return float("nan")


def tensor_metric(context: EpochContext, options) -> float:
    """A tensor where a float belongs."""
    return torch.tensor(context.train_loss)


def extra_key(context: EpochContext, options) -> TopK:
    """One key more than its TypedDict declares."""
    return {"top1": 0.5, "top5": 0.9, "top10": 1.0}


def missing_key(context: EpochContext, options) -> TopK:
    """One key fewer than its TypedDict declares."""
    return {"top1": 0.5}


def loss_as_mapping(context: EpochContext, options):
    """Declared a loss (one number under its name), returns a mapping."""
    return {"value": context.train_loss}


def number_as_mapping(context: EpochContext, options) -> float:
    """Annotated one number, returns a mapping."""
    return {"value": context.train_loss}


def nudges_a_parameter(context: EpochContext, options) -> float:
    """Moves the first parameter a little."""
    with torch.no_grad():
        next(context.run.model.parameters()).add_(1e-3)
    return 0.0


def leaves_eval_mode(context: EpochContext, options) -> float:
    """Evaluates and forgets to switch back to training mode."""
    context.run.model.eval()
    return 0.0


def forwards_in_training_mode(context: EpochContext, options) -> float:
    """A training-mode forward pass: batch norm's running statistics move."""
    images, _ = context.sample(8)
    with torch.no_grad():
        context.run.model(images)
    return 0.0


def raises(context: EpochContext, options) -> float:
    """Looks for a layer that is not there."""
    raise RuntimeError("no such layer")


class EveryOptions(Options):
    every: int = Field(1, ge=1)


class BrokenMetrics:
    @hookimpl
    def bnbench_register_metrics(self, register):
        for factory in (
            nan_metric,
            tensor_metric,
            extra_key,
            missing_key,
            number_as_mapping,
            nudges_a_parameter,
            leaves_eval_mode,
            forwards_in_training_mode,
            raises,
        ):
            register(factory.__name__, factory)
        register("loss_as_mapping", loss_as_mapping, measures="loss", split="train")
        register("with_options", lambda context, options: 0.0, options=EveryOptions)


@pytest.fixture(scope="module")
def broken_metrics():
    return load_registry(objects=[("broken_metrics", BrokenMetrics())])


def metric_failures(registry, name: str) -> list[ContractViolation]:
    with pytest.raises(MetricContractError) as info:
        check_metric(name, registry=registry, device="cpu", model_options=SMALL_MODELS)
    return info.value.violations


@pytest.mark.parametrize(
    ("name", "check", "got"),
    [
        ("nan_metric", "finite", "nan for 'nan_metric' at the end of epoch 1 of 2"),
        ("tensor_metric", "finite", "a torch.Tensor for 'tensor_metric' at the end of epoch 1 of 2, not a float"),
        (
            "extra_key",
            "declared_keys",
            "keys ['top10'] at the end of epoch 1 of 2 that its return annotation TopK (keys top1, top5) does not",
        ),
        ("missing_key", "declared_keys", "no value for the keys ['top5'] at the end of epoch 1 of 2, which its return"),
        (
            "loss_as_mapping",
            "declared_keys",
            "a mapping with keys ['value'] at the end of epoch 1 of 2, but its registration (measures='loss'",
        ),
        ("number_as_mapping", "declared_keys", "but its return annotation float declares one number"),
        ("nudges_a_parameter", "no_side_effects", "changed the model: the values of parameter(s)"),
        ("leaves_eval_mode", "no_side_effects", "changed the model: 'the model'"),
        ("forwards_in_training_mode", "no_side_effects", "the values of buffer(s)"),
    ],
)
def test_a_broken_metric_fails_the_named_check_alone_on_every_model(broken_metrics, name, check, got):
    violations = metric_failures(broken_metrics, name)
    assert {v.check for v in violations} == {check}, [str(v) for v in violations]
    assert {v.site for v in violations} == {"model 'mlp'", "model 'resnet_cifar'"}
    for violation in violations:
        assert got in violation.got
        message = str(violation)
        assert message.startswith(f"metric {name!r} failed check {check!r} at {violation.site}: expected ")
        assert violation.expected in message and violation.kind == "metric" and violation.component == name


def test_a_metric_returning_nan_fails_the_finite_check(broken_metrics):
    (check,) = metric_checks("nan_metric", registry=broken_metrics, device="cpu", checks=["finite"], models=["mlp"])
    with pytest.raises(ContractViolation, match=r"metric 'nan_metric' failed check 'finite' at model 'mlp'.*got nan"):
        check()


def test_a_metric_returning_an_undeclared_key_fails_the_declared_keys_check(broken_metrics):
    violations = metric_failures(broken_metrics, "extra_key")
    assert all("'top10'" in v.got and "does not declare" in v.got for v in violations)


def test_a_metric_that_mutates_a_parameter_or_flips_train_mode_fails_the_side_effects_check(broken_metrics):
    nudged = metric_failures(broken_metrics, "nudges_a_parameter")
    assert all(v.check == "no_side_effects" and "changed" in v.got for v in nudged)
    flipped = metric_failures(broken_metrics, "leaves_eval_mode")
    assert all("left in eval mode" in v.got for v in flipped)


def test_a_metric_that_raises_fails_every_check_with_what_it_raised(broken_metrics):
    violations = metric_failures(broken_metrics, "raises")
    assert len(violations) == len(METRIC_CHECKS) * 2
    raised = "the metric raised RuntimeError: no such layer at the end of epoch 1 of 2 (measured in a run of "
    assert all(v.got.startswith(raised) for v in violations), [v.got for v in violations]
    assert any("resnet_cifar(depth=8) with batchnorm at placement all" in v.got for v in violations)
    with pytest.raises(MetricContractError, match=r"^metric 'raises' broke its contract in 6 check\(s\):"):
        check_metric("raises", registry=broken_metrics, device="cpu", model_options=SMALL_MODELS)


def test_a_metric_whose_keys_are_not_declared_one_by_one_passes_the_keys_check_with_a_note(registry):
    results = check_metric(
        "weight_geometry", registry=registry, device="cpu", checks=["declared_keys"], model_options=SMALL_MODELS
    )
    assert {r.status for r in results} == {"passed"}
    assert all(r.detail.startswith("note: its keys are not declared one by one") for r in results)


def test_the_metric_kit_trains_each_model_once_for_all_its_checks(broken_metrics):
    checks = metric_checks("nan_metric", registry=broken_metrics, device="cpu", model_options=SMALL_MODELS)
    for check in checks:
        check.run()
    observations = checks[0].subject.observations
    assert set(observations) == {"mlp", "resnet_cifar"}
    assert all([call.epoch for call in o.calls] == [1, 2] and o.problem is None for o in observations.values())


def test_metric_kit_arguments_are_checked(broken_metrics):
    with pytest.raises(ValueError, match="unknown check"):
        metric_checks("nan_metric", registry=broken_metrics, checks=["finite", "speed"])
    with pytest.raises(ValueError, match="every"):
        metric_checks("with_options", {"every": 0}, registry=broken_metrics)


def test_batch_dependence_compares_fresh_copies_so_running_statistics_are_not_batch_mates():
    """A normalizer that divides by running statistics it updates after each forward (PowerNorm,
    Online Normalization) is per example within a batch: measured on two fresh copies, the check
    passes with batch_dependent=False; on one module fed twice it would have seen the update."""
    from torch import nn

    from bnbench import NormalizerTraits, hookimpl

    class RunningScale(nn.Module):
        def __init__(self, num_features: int) -> None:
            super().__init__()
            self.register_buffer("running_var", torch.ones(num_features))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = x / self.running_var.view(shape).sqrt()
            if self.training:
                with torch.no_grad():
                    dims = [d for d in range(x.dim()) if d != 1]
                    self.running_var.mul_(0.9).add_(0.1 * x.var(dim=dims))
            return out

    class Plugin:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            traits = NormalizerTraits(batch_dependent=False, running_stats=True, train_batch_of_one=True)
            register("running_scale", lambda n, kind, options: RunningScale(n), traits=traits)

    registry = load_registry(objects=[("running_scale", Plugin())])
    results = check_normalizer("running_scale", registry=registry, device="cpu", checks=["batch_dependence"])
    assert results and {r.status for r in results} == {"passed"}, [r.detail for r in results]


def test_batch_dependence_sees_a_backward_that_goes_through_the_batch_statistics():
    """Batch renormalization's forward can be per example (its correction cancels the batch's
    statistics) while its gradient goes through them: the check compares input gradients too."""
    from torch import nn

    from bnbench import NormalizerTraits, hookimpl

    class Renormish(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spread = x.std(dim=0, keepdim=True) + 1e-3
            return x * (spread / spread.detach())  # the forward is x itself; the gradient is not

    class Plugin:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            traits = NormalizerTraits(batch_dependent=False, running_stats=False)
            register("renormish", lambda n, kind, options: Renormish(), traits=traits)

    registry = load_registry(objects=[("renormish", Plugin())])
    violations = failures(registry, "renormish", checks=["batch_dependence"])
    assert violations and all("input gradient depends on its batch-mates" in v.got for v in violations)


def test_the_metric_kit_trains_with_the_components_registered_as_defaults_and_says_when_there_is_none():
    """The kit names no built-in: it trains with the normalizer, placement and dataset registered
    ``default=True``, and without one it says what to register or pass."""
    from bnbench import hookimpl

    class OnlyAMetric:
        @hookimpl
        def bnbench_register_metrics(self, register):
            register("constant", lambda context, options: 1.0)

    registry = load_registry(entry_points=False, objects=[("constant", OnlyAMetric())])
    with pytest.raises(ValueError, match="no normalizer plugin declares itself the default: register one with default"):
        metric_checks("constant", registry=registry, device="cpu")
    built_in = load_registry()
    assert [built_in.defaults(kind) for kind in ("normalizer", "placement", "dataset")] == [
        ["batchnorm"],
        ["all"],
        ["synthetic"],
    ]

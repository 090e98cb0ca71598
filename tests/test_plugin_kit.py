"""The contract kit (bnbench.testing): it catches broken normalizers and says where and why."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, hookimpl
from bnbench.registry import load_registry
from bnbench.testing import (
    CHECKS,
    ContractViolation,
    NormalizerContractError,
    check_normalizer,
    example_options,
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

"""The contract kit: ready checks a normalizer plugin runs in its own tests.

Every check builds the normalizer the way the core does (its registered factory, its
options validated by its options model, attached to a ``NormSite`` fed by a source layer)
and exercises one part of the contract at one site::

    from bnbench.testing import check_normalizer

    def test_my_norm_meets_the_contract():
        check_normalizer("my_norm")                  # raises NormalizerContractError

or one pytest test per check and site::

    import pytest
    from bnbench.testing import normalizer_checks

    @pytest.mark.parametrize("check", normalizer_checks("my_norm", {"eps": 1e-3}), ids=str)
    def test_contract(check):
        check()                                      # fails or skips with the reason

The checks (``CHECKS``): the normalizer builds for conv and fc sites (with and without a
source layer), preserves shape and dtype (float32, float64), trains and evaluates with finite
outputs and gradients, handles a batch of one example, depends on its batch-mates exactly as
its traits say, keeps running statistics exactly as its traits say, moves to the device,
survives a ``state_dict`` save and load, works under ``torch.autocast`` unless its traits say
it does not, trains packed (``torch.func.vmap``, as a study's ``pack`` trains runs) exactly as
alone unless its traits say ``packable=False``, applies an activation when its traits say it
includes one, and works with every registered model and placement. A failure is a
``ContractViolation`` naming the normalizer, the check, the site, what was expected and what
happened.

The metric kit (``metric_checks``, ``check_metric``, ``METRIC_CHECKS``) does the same for a
metric plugin: it trains a small run of every registered model through the core's own training
loop and calls the metric at each epoch's end, as the loop calls metrics, with the same
``EpochContext``. Its checks: every value returned is a finite float, the keys returned are the
ones the metric declares, and the call leaves the model as it found it::

    @pytest.mark.parametrize("check", metric_checks("my_metric"), ids=str)
    def test_contract(check):
        check()
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import io
import math
import numbers
import random
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import nn

from bnbench.api import DataInfo, NormalizerTraits, NormSite, SiteKind, find_sites
from bnbench.hookspecs import hookimpl
from bnbench.registry import Entry, Registry, load_registry
from bnbench.spec import Component, RunSpec
from bnbench.stacking import StackedModules

CHECKS: tuple[str, ...] = (
    "builds",
    "shape_and_dtype",
    "train_and_eval",
    "batch_of_one",
    "batch_dependence",
    "running_stats",
    "device",
    "state_dict",
    "mixed_precision",
    "packed",
    "activation",
    "models_and_placements",
)
"""Every check of the kit, in the order it runs them."""

IN_FEATURES = 3
"""Input width of the source layer the kit puts before each site."""

KIT_DATA = DataInfo((3, 16, 16), 10)
"""The data shape models are built for in ``models_and_placements`` (CIFAR-like, small)."""


class ContractViolation(AssertionError):
    """A plugin broke its contract: which check, at which site (or model), what was expected, what happened."""

    def __init__(
        self, component: str, check: str, site: str, expected: str, got: str, kind: str = "normalizer"
    ) -> None:
        self.component = component
        self.kind = kind
        """What the kit checked: ``normalizer`` or ``metric``."""
        self.check = check
        self.site = site
        self.expected = expected
        self.got = got
        super().__init__(f"{kind} {component!r} failed check {check!r} at {site}: expected {expected}; got {got}")

    @property
    def normalizer(self) -> str:
        """The name of the component checked (from when the kit checked normalizers only)."""
        return self.component


class ContractError(AssertionError):
    """Every violation a kit found in one component, one per line."""

    kind: ClassVar[str] = "component"

    def __init__(self, component: str, violations: Sequence[ContractViolation]) -> None:
        self.violations = list(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"{self.kind} {component!r} broke its contract in {len(self.violations)} check(s):\n{lines}")


class NormalizerContractError(ContractError):
    """Raised by ``check_normalizer``: every violation found, one per line."""

    kind = "normalizer"


class MetricContractError(ContractError):
    """Raised by ``check_metric``: every violation found, one per line."""

    kind = "metric"


class _Skip(Exception):
    """A check that does not apply (the traits exclude it, or a model cannot host the normalizer)."""


class _PassedInPart(Exception):
    """A check whose first part ran and passed, and whose other part does not apply: a pass, with a note."""


class ContractCheckSkipped(UserWarning):
    """Warned when a contract check is skipped outside pytest (under pytest it is a pytest skip)."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check at one site."""

    check: str
    site: str
    status: Literal["passed", "failed", "skipped"]
    detail: str = ""


@dataclass(frozen=True)
class KitSite:
    """A site the kit builds: ``source layer → NormSite`` of one kind and width."""

    kind: SiteKind
    num_features: int
    with_source: bool = True

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the input of the source layer for ``batch`` examples."""
        return (batch, IN_FEATURES, 5, 5) if self.kind == "conv" else (batch, IN_FEATURES)

    def __str__(self) -> str:
        shape = f"C={self.num_features}, 5×5" if self.kind == "conv" else f"C={self.num_features}"
        layer = "Conv2d" if self.kind == "conv" else "Linear"
        source = f"source {layer}" if self.with_source else "no source"
        return f"{self.kind} site ({shape}, {source})"


CONV_SITE = KitSite("conv", 6)
FC_SITE = KitSite("fc", 10)


@dataclass
class Subject:
    """The normalizer under test: its registry entry, validated options and resolved traits."""

    kind: ClassVar[str] = "normalizer"
    name: str
    entry: Entry
    options: BaseModel
    traits: NormalizerTraits
    registry: Registry
    device: torch.device
    data: DataInfo
    model_options: Mapping[str, Mapping[str, Any]]
    placement_options: Mapping[str, Mapping[str, Any]]

    # -- building ------------------------------------------------------------------------
    def build(self, site: KitSite, seed: int = 0) -> nn.Sequential:
        """``source → NormSite`` with the normalizer attached as the core attaches it, in float32."""
        torch.manual_seed(seed)
        if site.kind == "conv":
            layer: nn.Module = nn.Conv2d(IN_FEATURES, site.num_features, 3, padding=1)
        else:
            layer = nn.Linear(IN_FEATURES, site.num_features)
        norm_site = NormSite(site.num_features, site.kind, source=layer if site.with_source else None)
        module = self.entry.factory(site.num_features, site.kind, self.options)
        if not isinstance(module, nn.Module):
            raise AssertionError(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        norm_site.attach(module)
        return nn.Sequential(layer, norm_site)

    def inputs(self, site: KitSite, batch: int, seed: int = 1, scale: float = 2.0, shift: float = 0.5) -> torch.Tensor:
        """A batch for the source layer, off-centre and not unit-scaled, so normalization shows."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(site.input_shape(batch), generator=generator) * scale + shift


def _applies(subject: Subject, site: KitSite) -> None:
    if site.kind not in subject.traits.site_kinds:
        raise _Skip(f"traits.site_kinds is {sorted(subject.traits.site_kinds)}")
    if subject.traits.needs_source and not site.with_source:
        raise _Skip("traits.needs_source: the normalizer only works at a site with a source layer")


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_gradients(unit: nn.Module, x: torch.Tensor, out: torch.Tensor) -> str | None:
    """Backpropagate ``out`` and return what is wrong with the gradients, if anything."""
    out.float().pow(2).mean().backward()
    if x.grad is None or not _finite(x.grad):
        return "a missing or non-finite gradient for the input"
    for name, parameter in unit.named_parameters():
        if parameter.requires_grad and parameter.grad is not None and not _finite(parameter.grad):
            return f"a non-finite gradient for parameter {name}"
    return None


# -- the checks: each raises AssertionError (what happened) or _Skip ---------------------------
def _builds(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    unit = subject.build(site).train()
    out = unit(subject.inputs(site, 4))
    expected = (4, site.num_features, 5, 5) if site.kind == "conv" else (4, site.num_features)
    if tuple(out.shape) != expected:
        raise AssertionError(f"output of shape {tuple(out.shape)}")


def _shape_and_dtype(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    for dtype in (torch.float32, torch.float64):
        unit = subject.build(site).to(dtype)
        x = subject.inputs(site, 4).to(dtype)
        expected_shape = tuple(unit[0](x).shape)
        for mode in ("train", "eval"):
            unit.train(mode == "train")
            out = unit(x)
            if tuple(out.shape) != expected_shape or out.dtype != dtype:
                raise AssertionError(f"{tuple(out.shape)} {out.dtype} in {mode} mode for {dtype} input")


def _train_and_eval(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    unit = subject.build(site).train()
    x = subject.inputs(site, 8).requires_grad_(True)
    out = unit(x)
    if not _finite(out):
        raise AssertionError("non-finite outputs in training mode")
    problem = _check_gradients(unit, x, out)
    if problem:
        raise AssertionError(problem + " in training mode")
    unit.eval()
    before = _state(unit)
    with torch.no_grad():
        evaluated = unit(subject.inputs(site, 8, seed=2))
    if not _finite(evaluated):
        raise AssertionError("non-finite outputs in eval mode")
    changed = [k for k, v in unit.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise AssertionError(f"an eval-mode forward changed the state: {', '.join(changed)}")


def _batch_of_one(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    traits = subject.traits
    unit = subject.build(site)
    evaluated = traits.running_stats or not traits.batch_dependent
    if evaluated:
        unit.eval()
        with torch.no_grad():
            out = unit(subject.inputs(site, 1))
        if not _finite(out):
            raise AssertionError("non-finite outputs for one example in eval mode")
    if not traits.train_batch_of_one:
        why = "traits.train_batch_of_one is False (batch statistics need two or more examples)"
        if evaluated:
            raise _PassedInPart(f"eval mode checked; training mode not: {why}")
        raise _Skip(why)
    unit.train()
    x = subject.inputs(site, 1).requires_grad_(True)
    out = unit(x)
    if not _finite(out):
        raise AssertionError("non-finite outputs for one example in training mode")
    problem = _check_gradients(unit, x, out)
    if problem:
        raise AssertionError(problem + " for one example in training mode")


def _batch_dependence(subject: Subject, site: KitSite) -> None:
    """An example with two sets of batch-mates, each batch through its own fresh copy of one module
    (so that state a forward leaves, such as running statistics, plays no part): the example's
    output, and its input gradient (batch renormalization's forward can be per example while its
    backward goes through the batch's statistics), compared between the two."""
    _applies(subject, site)
    unit_a = subject.build(site).train()
    unit_b = copy.deepcopy(unit_a)
    first = subject.inputs(site, 1, seed=3)
    mates_a = subject.inputs(site, 3, seed=4)
    mates_b = subject.inputs(site, 3, seed=5, scale=5.0, shift=-3.0)

    def example(unit: nn.Module, mates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([first, mates]).requires_grad_(True)
        out = unit(x)
        weights = torch.randn(out[:1].shape, generator=torch.Generator().manual_seed(6))  # one fixed direction
        (grad,) = torch.autograd.grad((out[:1] * weights).sum(), x, allow_unused=True)
        return out[0].detach(), torch.zeros_like(first[0]) if grad is None else grad[0]

    (out_a, grad_a), (out_b, grad_b) = example(unit_a, mates_a), example(unit_b, mates_b)
    forward, backward = not _close(out_a, out_b), not _close(grad_a, grad_b)
    depends = forward or backward
    if depends != subject.traits.batch_dependent:
        what = ("output" if forward else "input gradient") if depends else "output and input gradient"
        does = "depends" if depends else "does not depend"
        raise AssertionError(
            f"an example's training-mode {what} {does} on its batch-mates, "
            f"but traits.batch_dependent is {subject.traits.batch_dependent} (measured on two fresh copies of one "
            "module: the same example with 3 batch-mates, then with 3 others scaled 5x and shifted by -3)"
        )


def _running_stats(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    unit = subject.build(site).train()
    x = subject.inputs(site, 8)
    before = _state(unit)
    with torch.no_grad():
        trained = unit(x)
    after = _state(unit)
    updated = [k for k in before if not torch.equal(before[k], after[k])]
    unit.eval()
    with torch.no_grad():
        evaluated = unit(x)
    if not subject.traits.running_stats:
        if updated:
            raise AssertionError(
                f"a training-mode forward updated {', '.join(updated)}, but traits.running_stats is False"
            )
        if not _close(trained, evaluated):
            raise AssertionError("eval-mode outputs differ from training-mode ones, but traits.running_stats is False")
        return
    if not updated:
        raise AssertionError("no buffer changed in a training-mode forward, but traits.running_stats is True")
    first = subject.inputs(site, 1, seed=3)
    with torch.no_grad():
        alone = unit(first)[0]
        with_mates = unit(torch.cat([first, subject.inputs(site, 3, seed=5, scale=5.0, shift=-3.0)]))[0]
    if not _close(alone, with_mates):
        raise AssertionError(
            "eval-mode outputs depend on the batch, but traits.running_stats says they use stored ones"
        )


def _device(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    device = subject.device
    unit = subject.build(site).to(device)
    misplaced = [
        name for name, tensor in [*unit.named_parameters(), *unit.named_buffers()] if tensor.device.type != device.type
    ]
    if misplaced:
        raise AssertionError(f"{', '.join(misplaced)} left off {device} by .to({str(device)!r})")
    stray = [
        f"{prefix}.{name}".lstrip(".")
        for prefix, module in unit.named_modules()
        for name, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]
    if stray:
        raise AssertionError(f"tensor attributes that are neither parameters nor buffers (.to() leaves them): {stray}")
    for mode in ("train", "eval"):
        unit.train(mode == "train")
        out = unit(subject.inputs(site, 4).to(device))
        if out.device.type != device.type:
            raise AssertionError(f"a {mode}-mode output on {out.device}")


def _state_dict(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    trained = subject.build(site, seed=0).train()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    for step in range(3):  # move parameters and running statistics away from their initial values
        optimizer.zero_grad()
        trained(subject.inputs(site, 8, seed=10 + step)).pow(2).mean().backward()
        optimizer.step()
    state = trained.state_dict()
    storages = [t.untyped_storage().data_ptr() for t in state.values() if t.numel()]
    if len(storages) != len(set(storages)):
        raise AssertionError(f"state_dict entries sharing storage (a layer registered twice?): {sorted(state)}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = subject.build(site, seed=1)
    try:
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    except Exception as exc:
        raise AssertionError(f"load_state_dict into a fresh instance failed: {exc}") from exc
    x = subject.inputs(site, 4, seed=20)
    with torch.no_grad():
        if not _close(trained.eval()(x), fresh.eval()(x)):
            raise AssertionError("eval-mode outputs after loading differ from the saved instance's")


def _mixed_precision(subject: Subject, site: KitSite) -> None:
    _applies(subject, site)
    if not subject.traits.mixed_precision:
        raise _Skip("traits.mixed_precision is False: the normalizer says it does not support autocast")
    device = subject.device
    low = torch.bfloat16 if device.type == "cpu" else torch.float16
    layer, norm_site = subject.build(site).to(device).train()
    x = subject.inputs(site, 8).to(device).requires_grad_(True)
    expected = (8, site.num_features, 5, 5) if site.kind == "conv" else (8, site.num_features)
    with torch.autocast(device.type, dtype=low):
        activations = layer(x)  # low precision: the source layer runs under autocast
        # the module itself on low-precision input (a site may also run it in float32: both must work)
        outputs = {"the module": norm_site.norm(activations), "the site": norm_site(activations)}
    for where, out in outputs.items():
        if not out.is_floating_point() or not _finite(out) or tuple(out.shape) != expected:
            raise AssertionError(
                f"{where} returned {tuple(out.shape)} {out.dtype} (finite: {_finite(out)}) for {activations.dtype} "
                f"input under autocast to {low}"
            )
    problem = _check_gradients(norm_site, x, outputs["the module"])
    if problem:
        raise AssertionError(problem + f" under autocast to {low}")


def _packed(subject: Subject, site: KitSite) -> None:
    """Three instances (seeds 0, 1, 2) trained three SGD steps packed under ``vmap``, as packed
    runs train, against each trained alone on the same batches: outputs, parameters and buffers
    (running statistics) must agree within float tolerance."""
    _applies(subject, site)
    if not subject.traits.packable:
        raise _Skip("traits.packable is False: packs of its runs train one by one")
    seeds, steps = (0, 1, 2), 3
    batches = [[subject.inputs(site, 8, seed=100 * seed + step) for step in range(steps)] for seed in seeds]
    alone = []
    for seed, inputs in zip(seeds, batches, strict=True):
        unit = subject.build(site, seed=seed).train()
        optimizer = torch.optim.SGD(unit.parameters(), lr=0.05, momentum=0.9)
        for x in inputs:
            optimizer.zero_grad()
            unit(x).pow(2).mean().backward()
            optimizer.step()
        alone.append((unit, unit(inputs[-1]).detach()))
    units = [subject.build(site, seed=seed).train() for seed in seeds]
    try:
        stack = StackedModules(units)  # as packed runs stack their models
        optimizers = [torch.optim.SGD(unit.parameters(), lr=0.05, momentum=0.9) for unit in units]
        for step in range(steps):
            stack.zero_grad()
            x = torch.stack([inputs[step] for inputs in batches])
            stack.forward(x).pow(2).mean(dim=tuple(range(1, x.dim()))).sum().backward()
            stack.repoint_gradients()
            for optimizer in optimizers:
                optimizer.step()
        out = stack.forward(torch.stack([inputs[-1] for inputs in batches])).detach()
    except Exception as exc:
        raise AssertionError(
            f"it does not run under torch.func.vmap ({type(exc).__name__}: {exc}); register it with "
            "traits=NormalizerTraits(packable=False) and packs of its runs train one by one"
        ) from exc
    for index, ((trained, expected), unit) in enumerate(zip(alone, units, strict=True)):
        if not _close(out[index], expected):
            raise AssertionError(f"packed member {index}'s outputs differ from the same instance trained alone")
        state, packed = trained.state_dict(), unit.state_dict()
        for name, tensor in packed.items():
            if tensor.is_floating_point() and not _close(tensor, state[name]):
                raise AssertionError(f"packed member {index}'s {name} differs from the same instance trained alone")


def _activation(subject: Subject, site: KitSite) -> None:
    """A normalizer that says it includes its activation must apply one: normalization alone is an
    odd function of its input at initialization (f(−x) = −f(x)), an activation is not. With an
    ``activation`` keyword, ``activation=False`` must build a module that leaves it out."""
    _applies(subject, site)
    if not subject.traits.includes_activation:
        raise _Skip("traits.includes_activation is False")
    shape = (8, site.num_features, 5, 5) if site.kind == "conv" else (8, site.num_features)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    module = subject.entry.factory(site.num_features, site.kind, subject.options)
    for mode in ("train", "eval"):
        module.train(mode == "train")
        with torch.no_grad():
            if _close(module(-x), -module(x)):
                raise AssertionError(
                    f"in {mode} mode its output is an odd function of its input, as normalization alone is: it "
                    "applies no activation, yet traits.includes_activation makes the model skip its own"
                )
    if "activation" in inspect.signature(subject.entry.factory).parameters:
        plain = subject.entry.factory(site.num_features, site.kind, subject.options, activation=False).eval()
        with torch.no_grad():
            if _close(plain(x), module.eval()(x)):
                raise AssertionError("activation=False gives the same outputs as its activated form")


UNIT_CHECKS: dict[str, tuple[str, Callable[[Subject, KitSite], None]]] = {
    "builds": ("the factory to return a module mapping the site's shape to itself", _builds),
    "shape_and_dtype": (
        "float32 and float64 inputs to keep their shape and dtype, in training and eval",
        _shape_and_dtype,
    ),
    "train_and_eval": (
        "finite outputs and gradients in training mode, finite outputs and an unchanged state in eval mode",
        _train_and_eval,
    ),
    "batch_of_one": (
        "one example to work in eval mode, and in training mode where traits.train_batch_of_one says so",
        _batch_of_one,
    ),
    "batch_dependence": (
        "training-mode outputs to depend on batch-mates exactly if traits.batch_dependent",
        _batch_dependence,
    ),
    "running_stats": (
        "running statistics (training updates a buffer; eval is per example) exactly if traits.running_stats, "
        "else eval mode equal to training mode",
        _running_stats,
    ),
    "device": (
        "parameters, buffers and outputs on the configured device after .to(device), and no other tensor state",
        _device,
    ),
    "state_dict": ("a fresh instance loading a saved state_dict to give the same eval-mode outputs", _state_dict),
    "mixed_precision": (
        "finite outputs and gradients under torch.autocast, for the module on low-precision input and through "
        "the site, unless traits.mixed_precision is False",
        _mixed_precision,
    ),
    "packed": (
        "instances trained packed under torch.func.vmap to match each trained alone (parameters, running "
        "statistics, outputs), unless traits.packable is False",
        _packed,
    ),
    "activation": (
        "a nonlinear output (not odd in its input) where traits.includes_activation, and activation=False to "
        "leave the activation out where the factory takes it",
        _activation,
    ),
}


# -- models and placements ------------------------------------------------------------------
def example_options(options: type[BaseModel]) -> dict[str, Any] | None:
    """The options the kit builds a component with: each field's first ``examples`` value where it
    has one (a model gives its smallest size there: ``Field(110, examples=[8])``), else its
    default; ``None`` when a required field has no example."""
    values: dict[str, Any] = {}
    for name, info in options.model_fields.items():
        if info.examples:
            values[name] = info.examples[0]
        elif info.is_required():
            return None
    return values


def _kit_component(registry: Registry, kind: str, name: str, given: Mapping[str, Mapping[str, Any]]) -> Component:
    """A component as a kit builds it: its options from ``given`` (by name), else its fields'
    ``examples``; validated here, so bad options fail naming the field."""
    chosen = dict(given[name]) if name in given else example_options(registry.get(kind, name).options)
    if chosen is None:
        raise _Skip(f"{kind} {name!r} has required options without examples; pass {kind}_options")
    component = Component(name=name, options=chosen)
    registry.options(kind, component)
    return component


def _selected(checks: Iterable[str], every: tuple[str, ...], kit: str) -> list[str]:
    """``checks`` in the kit's order; an unknown name is a ``ValueError`` listing the kit's checks."""
    wanted = set(checks)
    unknown = sorted(wanted - set(every))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; {kit}'s checks: {', '.join(every)}")
    return [check for check in every if check in wanted]


def _run_all(name: str, checks: list[ContractCheck], error: type[ContractError]) -> list[CheckResult]:
    """Run ``checks``; raise ``error`` with every violation, else return the results."""
    results = [check.run() for check in checks]
    violations = [check.violation(r) for check, r in zip(checks, results, strict=True) if r.status == "failed"]
    if violations:
        raise error(name, violations)
    return results


def _models_and_placements(subject: Subject, model_name: str, placement_name: str) -> None:
    from bnbench.assembly import assemble_model, build_bare_model, choose_sites  # the core's own build path

    registry = subject.registry
    model = _kit_component(registry, "model", model_name, subject.model_options)
    placement = _kit_component(registry, "placement", placement_name, subject.placement_options)
    spec = RunSpec.model_construct(  # no dataset: the kit hands the model its DataInfo itself
        model=Component(name=model_name, options=registry.options("model", model).model_dump(mode="json")),
        normalizer=Component(name=subject.name, options=subject.options.model_dump(mode="json")),
        placement=Component(
            name=placement_name, options=registry.options("placement", placement).model_dump(mode="json")
        ),
    )
    bare_model = build_bare_model(registry, spec, subject.data)
    try:  # the core's own checks, as a run makes them: a pairing they refuse is not the normalizer's fault
        chosen_names = choose_sites(registry, spec, [info for info, _ in find_sites(bare_model)])
    except ValueError as exc:
        raise _Skip(f"the core refuses this pairing: {exc}") from None
    torch.manual_seed(0)
    model, info = assemble_model(registry, spec, subject.data, subject.device)
    if sorted(chosen_names) != info["normalized_sites"]:
        raise AssertionError(f"normalized sites {info['normalized_sites']}, not the placement's {sorted(chosen_names)}")
    batch = 4
    x = torch.randn(batch, *subject.data.input_shape, device=subject.device).requires_grad_(True)
    model.train()
    logits = model(x)
    if tuple(logits.shape) != (batch, subject.data.num_classes) or not _finite(logits):
        raise AssertionError(f"training-mode logits of shape {tuple(logits.shape)}, finite: {_finite(logits)}")
    problem = _check_gradients(model, x, logits)
    if problem:
        raise AssertionError(problem)
    model.eval()
    with torch.no_grad():
        evaluated = model(x.detach())
    if not _finite(evaluated):
        raise AssertionError("non-finite eval-mode logits")


# -- running ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContractCheck:
    """One check at one site, ready to run (``check()`` in a test, or ``check.run()``)."""

    subject: Subject | MetricSubject
    name: str
    site: str
    expected: str
    body: Callable[[], None]

    def run(self) -> CheckResult:
        """Run the check: ``passed``, ``failed`` (with what happened) or ``skipped`` (with why)."""
        try:
            self.body()
        except _PassedInPart as note:
            return CheckResult(self.name, self.site, "passed", f"note: {note}")
        except _Skip as skip:
            return CheckResult(self.name, self.site, "skipped", str(skip))
        except AssertionError as exc:
            return CheckResult(self.name, self.site, "failed", str(exc))
        except Exception as exc:
            return CheckResult(self.name, self.site, "failed", f"{type(exc).__name__}: {exc}")
        return CheckResult(self.name, self.site, "passed")

    def violation(self, result: CheckResult) -> ContractViolation:
        return ContractViolation(
            self.subject.name, self.name, self.site, self.expected, result.detail, kind=self.subject.kind
        )

    def __call__(self) -> CheckResult:
        """Run in a test: raise ``ContractViolation`` on failure. A skipped check is a pytest skip
        under pytest, and elsewhere a ``ContractCheckSkipped`` warning (never silent, like a pass).
        Returns the result."""
        result = self.run()
        if result.status == "failed":
            raise self.violation(result)
        if result.status == "skipped":
            if "pytest" in sys.modules:
                import pytest

                pytest.skip(f"{self}: {result.detail}")
            warnings.warn(f"{self}: skipped: {result.detail}", ContractCheckSkipped, stacklevel=2)
        return result

    def __str__(self) -> str:
        return f"{self.name}[{self.site}]"


def _subject(
    name: str,
    options: Mapping[str, Any] | None,
    registry: Registry | None,
    device: str | torch.device,
    data: DataInfo,
    model_options: Mapping[str, Mapping[str, Any]] | None,
    placement_options: Mapping[str, Mapping[str, Any]] | None,
) -> Subject:
    from bnbench.assembly import resolve_device

    registry = registry or load_registry()
    component = Component(name=name, options=dict(options or {}))
    return Subject(
        name=name,
        entry=registry.get("normalizer", name),
        options=registry.options("normalizer", component),
        traits=registry.traits(component),
        registry=registry,
        device=device if isinstance(device, torch.device) else resolve_device(device),
        data=data,
        model_options=model_options or {},
        placement_options=placement_options or {},
    )


def normalizer_checks(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    registry: Registry | None = None,
    device: str | torch.device = "auto",
    checks: Iterable[str] = CHECKS,
    data: DataInfo = KIT_DATA,
    models: Iterable[str] | None = None,
    placements: Iterable[str] | None = None,
    model_options: Mapping[str, Mapping[str, Any]] | None = None,
    placement_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ContractCheck]:
    """Every check of the normalizer registered as ``name`` with ``options``, one per site.

    ``registry``: where to find it (default: every installed plugin, as ``bnbench`` loads
    them; ``load_registry(objects=[("mine", module)])`` for a plugin not installed yet).
    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. ``models`` and
    ``placements``: the registered names to pair it with (default: all); ``model_options`` and
    ``placement_options``: options by plugin name (default: their defaults, or their fields'
    ``examples`` for required options), e.g. ``{"resnet_cifar": {"depth": 8}}`` for speed.
    """
    subject = _subject(name, options, registry, device, data, model_options, placement_options)
    result: list[ContractCheck] = []
    sites = [CONV_SITE, FC_SITE]
    for check in _selected(checks, CHECKS, "the kit"):
        if check == "models_and_placements":
            for model in sorted(models if models is not None else subject.registry.names("model")):
                for placement in sorted(placements if placements is not None else subject.registry.names("placement")):
                    result.append(
                        ContractCheck(
                            subject,
                            check,
                            f"model {model!r} with placement {placement!r}",
                            "training- and eval-mode forwards with finite logits and gradients, "
                            "the normalizer at exactly the placement's sites",
                            partial(_models_and_placements, subject, model, placement),
                        )
                    )
            continue
        expected, body = UNIT_CHECKS[check]
        check_sites = [*sites, KitSite("conv", 6, False), KitSite("fc", 10, False)] if check == "builds" else sites
        for site in check_sites:
            result.append(ContractCheck(subject, check, str(site), expected, partial(body, subject, site)))
    return result


def check_normalizer(name: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> list[CheckResult]:
    """Run every check (arguments as ``normalizer_checks``); raise ``NormalizerContractError`` on any failure.

    Returns the results (passed and skipped, with the reason) when all checks pass.
    """
    return _run_all(name, normalizer_checks(name, options, **kwargs), NormalizerContractError)


# -- the metric kit ----------------------------------------------------------------------------
METRIC_CHECKS: tuple[str, ...] = ("finite", "declared_keys", "no_side_effects")
"""Every check of the metric kit, in the order it runs them; each runs on every model."""

METRIC_KIT_EPOCHS = 2
"""Epochs of the run the metric kit trains per model: the metric is called at the end of each."""

METRIC_KIT_RUN: dict[str, Any] = {
    "epochs": METRIC_KIT_EPOCHS,
    "batch_size": 16,
    "validation_size": 16,  # so that metrics may evaluate("validation")
    "eval_batch_size": 64,
    "seed": 0,
}
"""The run fields of the metric kit's runs (beside the model, dataset, normalizer and placement)."""


def _kit_default(registry: Registry, kind: str) -> str:
    """The component of ``kind`` registered ``default=True`` (the kit trains with it)."""
    defaults = registry.defaults(kind)
    if not defaults:
        raise ValueError(
            f"the metric kit trains with the {kind} registered with default=True, and no {kind} plugin declares "
            f"itself the default: register one with default=True, or pass {kind}= to metric_checks"
        )
    return defaults[0]


def _kit_dataset(registry: Registry, data: DataInfo) -> Component:
    """The default dataset (``default=True``) shaped as ``data``: 64 training and 32 test examples."""
    options = {
        "image_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train_size": 64,
        "test_size": 32,
    }
    return Component(name=_kit_default(registry, "dataset"), options=options)


def _as_component(value: str | Mapping[str, Any] | Component) -> Component:
    """``"name"`` or ``{"name": ..., **options}`` (as a manifest writes a component) as a ``Component``."""
    if isinstance(value, Component):
        return value
    if isinstance(value, str):
        return Component(name=value)
    options = dict(value)
    return Component(name=options.pop("name"), options=options)


@dataclass(frozen=True)
class _Declaration:
    """What a metric says it returns: one number, or a mapping (with its keys where it names them)."""

    shape: Literal["number", "mapping"]
    source: str
    """Where it says so, in words: its registration, or its factory's return annotation."""
    required: frozenset[str] | None = None
    allowed: frozenset[str] | None = None
    """The keys it may return (``None``: any); ``required``: those it always returns when it returns any."""


def _annotation_declares(annotation: Any) -> tuple[str, frozenset[str] | None, frozenset[str] | None] | None:
    """``(shape, required keys, allowed keys)`` a return annotation declares, or ``None`` when it
    declares neither one number nor a mapping (``float | Mapping[str, float]``, none, ``Any``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is inspect.Signature.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_annotation_declares(a) for a in typing.get_args(annotation) if a is not type(None)]
        if not parts or any(part is None for part in parts) or len({part[0] for part in parts}) > 1:
            return None
        if parts[0][0] == "number":
            return ("number", None, None)
        if any(part[2] is None for part in parts):
            return ("mapping", None, None)
        required = frozenset.intersection(*(part[1] or frozenset() for part in parts))
        return ("mapping", required, frozenset().union(*(part[2] or frozenset() for part in parts)))
    if typing.is_typeddict(annotation):
        required = frozenset(annotation.__required_keys__)
        return ("mapping", required, required | frozenset(annotation.__optional_keys__))
    plain = origin or annotation
    if isinstance(plain, type) and issubclass(plain, collections.abc.Mapping):
        return ("mapping", None, None)
    if isinstance(plain, type) and issubclass(plain, numbers.Real) and plain is not bool:
        return ("number", None, None)
    return None


def _metric_declarations(entry: Entry) -> tuple[list[_Declaration], str | None]:
    """What the metric ``entry`` declares it returns, and a note when its annotation cannot be read.

    Two places declare it: the registration (``measures=``: the core reads one number stored under
    the metric's name for divergence and the standard table) and the factory's return annotation
    (``-> float``: one number; ``-> dict[str, float]``: a mapping; a ``TypedDict``: a mapping with
    exactly its keys; ``float | Mapping[str, float]`` or none: either).
    """
    declarations = []
    measures = entry.extras.get("measures")
    if measures is not None:
        declarations.append(
            _Declaration(
                "number",
                f"its registration (measures={measures!r}: the core reads it under the metric's name)",
            )
        )
    note = None
    try:
        annotation = inspect.signature(entry.factory, eval_str=True).return_annotation
    except (ValueError, TypeError):  # no signature to read (a builtin)
        annotation = inspect.Signature.empty
    except Exception as exc:  # a string annotation naming something the module does not define at run time
        annotation = inspect.Signature.empty
        note = f"its return annotation could not be resolved ({type(exc).__name__}: {exc})"
    declared = _annotation_declares(annotation)
    if declared is not None:
        shape, required, allowed = declared
        text = inspect.formatannotation(annotation, getattr(entry.factory, "__module__", None))
        if allowed is not None:
            text += f" (keys {', '.join(sorted(allowed))})" if allowed else " (no keys)"
        declarations.append(_Declaration(shape, f"its return annotation {text}", required, allowed))
    return declarations, note


@dataclass
class MetricCall:
    """One call of the metric by the kit, at the end of one epoch of its run."""

    epoch: int
    value: Any = None
    error: str | None = None
    """What the metric raised, if it raised."""
    changes: list[str] = field(default_factory=list)
    """What the call changed in the model: parameters, buffers, train/eval modes."""

    @property
    def when(self) -> str:
        return f"at the end of epoch {self.epoch} of {METRIC_KIT_EPOCHS}"


@dataclass
class MetricObservation:
    """The metric's calls in the kit's run of one model, and why that run ended early, if it did."""

    calls: list[MetricCall]
    setting: str
    """How the kit measured, in words: the run it trained and when it called the metric."""
    problem: str | None = None


@dataclass
class _ModelState:
    parameters: dict[str, tuple[torch.Tensor, torch.Tensor, bool]]
    """name → (the parameter object, a copy of its values, requires_grad)"""
    buffers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    modes: dict[str, bool]

    @classmethod
    def of(cls, model: nn.Module) -> _ModelState:
        with torch.no_grad():
            return cls(
                parameters={n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
                buffers={n: (b, b.detach().clone()) for n, b in model.named_buffers()},
                modes={n: m.training for n, m in model.named_modules()},
            )


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal``, NaN equal to NaN at the same place (an untouched NaN is no change)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        nan_a, nan_b = a.isnan(), b.isnan()
        return torch.equal(nan_a, nan_b) and torch.equal(a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0))
    return torch.equal(a, b)


def _listed(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _model_changes(before: _ModelState, model: nn.Module) -> list[str]:
    """What differs in ``model`` from ``before``, in words (compared with ``torch.equal``)."""
    after = _ModelState.of(model)
    changes = []
    for what, old, new in (
        ("parameter", before.parameters, after.parameters),
        ("buffer", before.buffers, after.buffers),
    ):
        gone = [name for name in old if name not in new]
        added = [name for name in new if name not in old]
        replaced = [name for name in old if name in new and new[name][0] is not old[name][0]]
        changed = [name for name in old if name in new and not _equal(old[name][1], new[name][1])]
        for names, verb in ((gone, "removed"), (added, "added"), (replaced, "replaced by another tensor")):
            if names:
                changes.append(f"{what}(s) {_listed(names)} {verb}")
        if changed:
            changes.append(f"the values of {what}(s) {_listed(changed)} changed")
    flags = [
        n for n in before.parameters if n in after.parameters and before.parameters[n][2] != after.parameters[n][2]
    ]
    if flags:
        changes.append(f"requires_grad of {_listed(flags)} changed")
    for mode in ("train", "eval"):
        switched = [
            name or "the model"
            for name, training in before.modes.items()
            if name in after.modes and training != after.modes[name] and after.modes[name] == (mode == "train")
        ]
        if switched:
            changes.append(f"{_listed(switched)} left in {mode} mode")
    return changes


class _MetricObserver:
    """Calls the metric at each epoch end of the kit's run, with the context the loop gives metrics."""

    def __init__(self, subject: MetricSubject, training: Any, member: Any, calls: list[MetricCall]) -> None:
        self.subject = subject
        self.training = training
        self.member = member
        self.calls = calls

    @hookimpl
    def bnbench_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        training = self.training
        if run is not training.context:
            return
        state = training.state  # synced by the loop before an epoch's metrics, as _end_epoch reads it
        context = training.epoch_context(
            self.member.model, epoch, state.step, float(state.loss_sum) / max(1, state.batch)
        )
        model = training.context.model
        before = _ModelState.of(model)
        call = MetricCall(epoch)
        try:
            call.value = self.subject.registry.build("metric", self.subject.component, context)
        except Exception as exc:
            call.error = f"{type(exc).__name__}: {exc}"
        call.changes = _model_changes(before, model)
        self.calls.append(call)


@dataclass
class MetricSubject:
    """The metric under test, with what the kit trains to call it: the models and their run."""

    kind: ClassVar[str] = "metric"
    name: str
    entry: Entry
    component: Component
    registry: Registry
    device: torch.device
    model_options: Mapping[str, Mapping[str, Any]]
    normalizer: Component
    placement: Component
    dataset: Component
    input_transform: Component | None
    declarations: list[_Declaration]
    declaration_note: str | None
    observations: dict[str, MetricObservation] = field(default_factory=dict)

    def model_component(self, model_name: str) -> Component:
        """The model as the kit builds it: its given options, else its fields' examples."""
        return _kit_component(self.registry, "model", model_name, self.model_options)

    def observe(self, model_name: str) -> MetricObservation:
        """Train the kit's run of ``model_name`` (once: the checks share it), calling the metric at
        each epoch's end through the core's own loop; what each call returned and changed. The
        run seeds the random generators as runs do: the caller's random states are restored after."""
        if model_name not in self.observations:
            numpy = sys.modules.get("numpy")
            states = (random.getstate(), numpy.random.get_state() if numpy is not None else None)
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            try:
                with torch.random.fork_rng(devices=devices):
                    self.observations[model_name] = self._observe(model_name)
            finally:
                random.setstate(states[0])
                if numpy is not None and states[1] is not None:
                    numpy.random.set_state(states[1])
        return self.observations[model_name]

    def _observe(self, model_name: str) -> MetricObservation:
        from bnbench.records import PlannedRun
        from bnbench.runner import Runner
        from bnbench.training import Loop, OneRun

        model = self.model_component(model_name)
        spec = RunSpec(
            model=model,
            dataset=self.dataset,
            normalizer=self.normalizer,
            placement=self.placement,
            input_transform=self.input_transform,
            **METRIC_KIT_RUN,
        )
        planned = PlannedRun(spec.run_id(), "metric kit", spec, {})
        registry = self.registry
        runner = Runner(registry, base_dir=Path.cwd(), device=str(self.device))
        calls: list[MetricCall] = []
        problem = None
        try:
            training, _ = runner.assemble(planned, None)
            stepper = OneRun(training)
            member = stepper.members[0]
            observer = _MetricObserver(self, training, member, calls)
            registry.manager.register(observer, name=f"bnbench-testing-metric-{id(observer)}")
            try:
                Loop(stepper, runner.check_every).train(
                    registry, stop=None, progress=None, label=planned.label, checkpoints=None, checkpoint_every=0
                )
            finally:
                registry.manager.unregister(observer)
            if member.diverged is not None:
                problem = f"the run diverged ({member.diverged})"
            elif member.error is not None:
                problem = f"the run failed ({member.error.splitlines()[0]})"
        except Exception as exc:
            problem = f"the run failed ({type(exc).__name__}: {exc})"
        finally:
            runner.close()
        transform = f", input transform {self.input_transform.label()}" if self.input_transform else ""
        shape = "×".join(str(size) for size in self.dataset.options["image_shape"])
        setting = (
            f"measured in a run of {model.label()} with {self.normalizer.label()} at placement "
            f"{self.placement.label()}{transform}, {spec.epochs} epochs of batches of {spec.batch_size} on "
            f"{self.dataset.name} {shape} data, on {self.device}; "
            "the metric called at each epoch's end as the training loop calls metrics"
        )
        return MetricObservation(calls, setting, problem)


def _measured(body: Callable[[MetricSubject, str], None], subject: MetricSubject, model_name: str) -> None:
    """Run a check's ``body``; a failure says how the kit measured (its run, when it called the metric)."""
    try:
        body(subject, model_name)
    except AssertionError as exc:
        observation = subject.observations.get(model_name)
        if observation is None:
            raise
        raise AssertionError(f"{exc} ({observation.setting})") from exc


def _calls(subject: MetricSubject, model_name: str) -> list[MetricCall]:
    """The metric's calls on ``model_name``; a failure if it raised or the run ended before its last call."""
    observation = subject.observe(model_name)
    for call in observation.calls:
        if call.error is not None:
            raise AssertionError(f"the metric raised {call.error} {call.when}")
    if len(observation.calls) < METRIC_KIT_EPOCHS:
        ended = f"after {len(observation.calls)} call(s)" if observation.calls else "before the metric was called"
        raise AssertionError(f"the kit's run ended {ended}: {observation.problem or 'no epoch end reached'}")
    return observation.calls


def _items(name: str, value: Any) -> list[tuple[str, Any]]:
    """``(stored name, value)`` of what a metric returned, as the core stores it."""
    if isinstance(value, Mapping):
        return [(f"{name}.{key}", number) for key, number in value.items()]
    return [(name, value)]


def _finite_floats(subject: MetricSubject, model_name: str) -> None:
    for call in _calls(subject, model_name):
        value = call.value
        if not isinstance(value, (Mapping, numbers.Number, torch.Tensor)):
            raise AssertionError(f"{type(value).__name__} {value!r}, neither a number nor a mapping, {call.when}")
        for stored, number in _items(subject.name, value):
            if isinstance(number, torch.Tensor):
                raise AssertionError(
                    f"a torch.Tensor for {stored!r} {call.when}, not a float (return float(tensor): a float is "
                    "what the store keeps)"
                )
            if isinstance(number, bool) or not isinstance(number, numbers.Real):
                raise AssertionError(f"{type(number).__name__} {number!r} for {stored!r} {call.when}, not a float")
            if not math.isfinite(number):
                raise AssertionError(f"{number!r} for {stored!r} {call.when}")


def _declared_keys(subject: MetricSubject, model_name: str) -> None:
    calls = _calls(subject, model_name)
    for call in calls:
        value = call.value
        if isinstance(value, Mapping):
            malformed = [key for key in value if not isinstance(key, str) or not key]
            if malformed:
                raise AssertionError(f"keys {malformed!r} {call.when}: keys are non-empty strings (stored as name.key)")
        for declared in subject.declarations:
            if declared.shape == "number" and isinstance(value, Mapping):
                raise AssertionError(
                    f"a mapping with keys {sorted(value)} {call.when}, but {declared.source} declares one number "
                    f"(stored as {subject.name!r})"
                )
            if declared.shape == "mapping" and not isinstance(value, Mapping):
                raise AssertionError(
                    f"one number {call.when}, but {declared.source} declares a mapping, stored key by key"
                )
            if declared.allowed is None or not isinstance(value, Mapping) or not value:
                continue  # an empty mapping records nothing this epoch (as a metric with `every` does)
            undeclared = sorted(set(value) - declared.allowed)
            if undeclared:
                raise AssertionError(f"keys {undeclared} {call.when} that {declared.source} does not declare")
            missing = sorted((declared.required or frozenset()) - set(value))
            if missing:
                raise AssertionError(f"no value for the keys {missing} {call.when}, which {declared.source} requires")
    notes = [subject.declaration_note] if subject.declaration_note else []
    if not subject.declarations:
        notes.append("the metric declares neither one number nor a mapping (measures=, or its return annotation)")
    elif all(d.shape == "mapping" and d.allowed is None for d in subject.declarations):
        notes.append("its keys are not declared one by one (a TypedDict return annotation names them)")
    if notes:
        raise _PassedInPart("; ".join(notes) + ": keys checked for form only")


def _no_side_effects(subject: MetricSubject, model_name: str) -> None:
    for call in _calls(subject, model_name):
        if call.changes:
            raise AssertionError(f"the call {call.when} changed the model: {'; '.join(call.changes)}")


METRIC_CHECK_BODIES: dict[str, tuple[str, Callable[[MetricSubject, str], None]]] = {
    "finite": ("every value it returns (one number, or each of a mapping's) to be a finite float", _finite_floats),
    "declared_keys": (
        "the keys it returns to be those it declares: one number where its registration (measures=) or return "
        "annotation (-> float) says so, a mapping's keys among those of a TypedDict return annotation",
        _declared_keys,
    ),
    "no_side_effects": (
        "parameters (values, objects, requires_grad), buffers and every module's train/eval mode identical "
        "(torch.equal) before and after each call, the model in training mode as the loop leaves it at an epoch's end",
        _no_side_effects,
    ),
}


def metric_checks(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    registry: Registry | None = None,
    device: str | torch.device = "auto",
    checks: Iterable[str] = METRIC_CHECKS,
    models: Iterable[str] | None = None,
    model_options: Mapping[str, Mapping[str, Any]] | None = None,
    normalizer: str | Mapping[str, Any] | None = None,
    placement: str | Mapping[str, Any] | None = None,
    input_transform: str | Mapping[str, Any] | None = None,
    data: DataInfo = KIT_DATA,
) -> list[ContractCheck]:
    """Every check of the metric registered as ``name`` with ``options``, one per model.

    For each model (``models``: registered names, default all, built with ``model_options`` by
    name, else with their fields' ``examples``, else their defaults) the kit trains one run through
    the core's own training loop: the dataset registered ``default=True`` (the built-in synthetic
    images) shaped as ``data`` (64 training examples, 16 of them held out for validation, 32 test
    examples), ``normalizer`` and ``placement`` (default: those registered ``default=True``, batch
    norm at every hidden site), an ``input_transform`` if given, 2 epochs of batches of 16. At
    each epoch's end the metric is called with the ``EpochContext`` the loop gives metrics, the
    model in training mode; the checks read what the calls returned and
    changed. The run is trained once per model, whichever checks ask for it.
    ``registry`` and ``device`` as in ``normalizer_checks``.
    """
    from bnbench.assembly import resolve_device

    registry = registry or load_registry()
    component = Component(name=name, options=dict(options or {}))
    registry.options("metric", component)  # a bad option fails here, not in every check
    entry = registry.get("metric", name)
    declarations, note = _metric_declarations(entry)
    subject = MetricSubject(
        name=name,
        entry=entry,
        component=component,
        registry=registry,
        device=device if isinstance(device, torch.device) else resolve_device(device),
        model_options=model_options or {},
        normalizer=_as_component(normalizer or _kit_default(registry, "normalizer")),
        placement=_as_component(placement or _kit_default(registry, "placement")),
        dataset=_kit_dataset(registry, data),
        input_transform=_as_component(input_transform) if input_transform is not None else None,
        declarations=declarations,
        declaration_note=note,
    )
    result = []
    for check in _selected(checks, METRIC_CHECKS, "the metric kit"):
        expected, body = METRIC_CHECK_BODIES[check]
        for model in sorted(models if models is not None else registry.names("model")):
            body_at = partial(_measured, body, subject, model)
            result.append(ContractCheck(subject, check, f"model {model!r}", expected, body_at))
    return result


def check_metric(name: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> list[CheckResult]:
    """Run every check of the metric kit (arguments as ``metric_checks``); raise
    ``MetricContractError`` on any failure. Returns the results when all checks pass."""
    return _run_all(name, metric_checks(name, options, **kwargs), MetricContractError)


__all__ = [
    "CHECKS",
    "METRIC_CHECKS",
    "CheckResult",
    "ContractCheck",
    "ContractCheckSkipped",
    "ContractError",
    "ContractViolation",
    "MetricContractError",
    "NormalizerContractError",
    "check_metric",
    "check_normalizer",
    "example_options",
    "metric_checks",
    "normalizer_checks",
]

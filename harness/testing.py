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
"""

from __future__ import annotations

import inspect
import io
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import nn

from bnbench.api import DataInfo, NormalizerTraits, NormSite, SiteKind, find_sites
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
    """A normalizer broke its contract: which check, at which site, what was expected, what happened."""

    def __init__(self, normalizer: str, check: str, site: str, expected: str, got: str) -> None:
        self.normalizer = normalizer
        self.check = check
        self.site = site
        self.expected = expected
        self.got = got
        super().__init__(f"normalizer {normalizer!r} failed check {check!r} at {site}: expected {expected}; got {got}")


class NormalizerContractError(AssertionError):
    """Raised by ``check_normalizer``: every violation found, one per line."""

    def __init__(self, normalizer: str, violations: Sequence[ContractViolation]) -> None:
        self.violations = list(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"normalizer {normalizer!r} broke its contract in {len(self.violations)} check(s):\n{lines}")


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
    _applies(subject, site)
    unit = subject.build(site).train()
    first = subject.inputs(site, 1, seed=3)
    mates_a = subject.inputs(site, 3, seed=4)
    mates_b = subject.inputs(site, 3, seed=5, scale=5.0, shift=-3.0)
    with torch.no_grad():
        out_a = unit(torch.cat([first, mates_a]))[0]
        out_b = unit(torch.cat([first, mates_b]))[0]
    depends = not _close(out_a, out_b)
    if depends != subject.traits.batch_dependent:
        does = "depends" if depends else "does not depend"
        raise AssertionError(
            f"an example's training-mode output {does} on its batch-mates, "
            f"but traits.batch_dependent is {subject.traits.batch_dependent}"
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


def _models_and_placements(subject: Subject, model_name: str, placement_name: str) -> None:
    from bnbench.assembly import assemble_model, build_bare_model, choose_sites  # the core's own build path

    registry = subject.registry
    options: dict[str, Any] = {}
    for kind, name, given in (
        ("model", model_name, subject.model_options),
        ("placement", placement_name, subject.placement_options),
    ):
        entry = registry.get(kind, name)
        chosen = dict(given[name]) if name in given else example_options(entry.options)
        if chosen is None:
            raise _Skip(f"{kind} {name!r} has required options without examples; pass {kind}_options")
        options[kind] = registry.options(kind, Component(name=name, options=chosen)).model_dump(mode="json")
    spec = RunSpec.model_construct(  # no dataset: the kit hands the model its DataInfo itself
        model=Component(name=model_name, options=options["model"]),
        normalizer=Component(name=subject.name, options=subject.options.model_dump(mode="json")),
        placement=Component(name=placement_name, options=options["placement"]),
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

    subject: Subject
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
        return ContractViolation(self.subject.name, self.name, self.site, self.expected, result.detail)

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
    wanted = list(checks)
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; the kit's checks: {', '.join(CHECKS)}")
    result: list[ContractCheck] = []
    sites = [CONV_SITE, FC_SITE]
    for check in CHECKS:
        if check not in wanted:
            continue
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
    checks = normalizer_checks(name, options, **kwargs)
    results = [check.run() for check in checks]
    violations = [check.violation(r) for check, r in zip(checks, results, strict=True) if r.status == "failed"]
    if violations:
        raise NormalizerContractError(name, violations)
    return results


__all__ = [
    "CHECKS",
    "CheckResult",
    "ContractCheck",
    "ContractCheckSkipped",
    "ContractViolation",
    "NormalizerContractError",
    "check_normalizer",
    "example_options",
    "normalizer_checks",
]

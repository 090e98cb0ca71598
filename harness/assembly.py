"""Assembling a run's model: the model plugin, the placement's choice of sites, and the normalizer
attached at each chosen site after the core checked that its traits allow it there. The runner
and the contract kit assemble models through these functions, so the kit tests what runs do."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnbench.api import BuildContext, DataInfo, DatasetDescription, NormSite, SiteInfo, find_sites, resolve_traits
from bnbench.errors import BnbenchError, ManifestError
from bnbench.records import PlannedRun
from bnbench.registry import Registry
from bnbench.spec import RunSpec


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BnbenchError('device = "cuda" but no CUDA device is available; use "auto" or "cpu"')
    return torch.device(device)


def build_bare_model(registry: Registry, spec: RunSpec, data: DataInfo) -> nn.Module:
    """The model plugin's module, with empty normalizer sites."""
    assert spec.model is not None
    entry = registry.get("model", spec.model.name)
    model = entry.factory(entry.options.model_validate(spec.model.all_options), data)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model plugin {spec.model.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def choose_sites(registry: Registry, spec: RunSpec, sites: list[SiteInfo]) -> set[str]:
    """The sites the spec's placement chooses, each checked against the normalizer's traits:
    ``ValueError`` naming the site and the reason when the normalizer cannot go there."""
    assert spec.placement is not None and spec.normalizer is not None and spec.model is not None
    placement = registry.get("placement", spec.placement.name)
    chosen = set(placement.factory(sites, placement.options.model_validate(spec.placement.all_options)))
    unknown = chosen - {info.name for info in sites}
    if unknown:
        raise ValueError(f"placement {spec.placement.name!r} chose sites the model lacks: {sorted(unknown)}")
    normalizer = registry.get("normalizer", spec.normalizer.name)
    options = normalizer.options.model_validate(spec.normalizer.all_options)
    traits = resolve_traits(normalizer.extras.get("traits"), options)
    for info in sites:
        refusal = traits.refusal(info) if info.name in chosen else None
        lacks_off_switch = traits.includes_activation and not _takes_activation(normalizer.factory)
        if refusal is None and info.name in chosen and lacks_off_switch and not info.activated:
            refusal = (
                "it includes its activation (traits.includes_activation), the model applies none after "
                f"{info.name!r}, and its factory takes no activation=False to leave it out there"
            )
        if refusal:
            raise ValueError(
                f"normalizer {spec.normalizer.name!r} cannot go at site {info.name!r} of model "
                f"{spec.model.name!r} (placement {spec.placement.name!r}): {refusal}"
            )
    return chosen


def assemble_model(
    registry: Registry, spec: RunSpec, data: DataInfo, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model on ``device``, its normalizer attached at the placement's sites, and facts
    about it (parameters, sites, normalized sites). A probe of the bare model names no placement."""
    model = build_bare_model(registry, spec, data)
    sites = find_sites(model)
    chosen: set[str] = set()
    if spec.placement is not None and spec.normalizer is not None:
        chosen = choose_sites(registry, spec, [info for info, _ in sites])
        _attach(registry, spec, [(info, site) for info, site in sites if info.name in chosen])
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "sites": len(sites),
        "normalized_sites": sorted(chosen),
    }
    return model.to(device), info


def _takes_activation(factory: Any) -> bool:
    """Whether a normalizer's factory takes an ``activation`` keyword (norm + activation layers)."""
    try:
        return "activation" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _attach(registry: Registry, spec: RunSpec, sites: list[tuple[SiteInfo, NormSite]]) -> None:
    assert spec.normalizer is not None
    normalizer = registry.get("normalizer", spec.normalizer.name)
    options = normalizer.options.model_validate(spec.normalizer.all_options)
    traits = resolve_traits(normalizer.extras.get("traits"), options)
    takes_activation = traits.includes_activation and _takes_activation(normalizer.factory)
    for info, site in sites:
        if takes_activation:  # its activation only where the model would apply one
            module = normalizer.factory(info.num_features, info.kind, options, activation=info.activated)
        else:
            module = normalizer.factory(info.num_features, info.kind, options)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"normalizer plugin {spec.normalizer.name!r} returned {type(module).__name__}, not a torch.nn.Module"
            )
        site.attach(module, includes_activation=traits.includes_activation)


def describe_dataset(entry: Any, options: dict[str, Any], base_dir: Path) -> DatasetDescription | None:
    """A dataset's description (``describe=``): given the build context too when it takes two
    arguments, so it can read sizes from the files on disk."""
    describe = entry.extras.get("describe")
    if describe is None:
        return None
    validated = entry.options.model_validate(options)
    if len(inspect.signature(describe).parameters) >= 2:
        return describe(validated, BuildContext(base_dir))
    return describe(validated)


def check_runs(
    runs: Iterable[PlannedRun], registry: Registry, file: str, memory: tuple[int, str] | None = None
) -> None:
    """What can be checked before anything trains, from the datasets' descriptions (``describe=``):
    ``validation_size`` and ``batch_size`` against the training set, each normalizer against the
    sites its model and placement select (the refusal a run would meet), and, given ``memory``
    (``memory_limit``), the model's size against it, as ``ManifestError``s naming the study and
    field. Models are built on the ``meta`` device: a check allocates nothing. Runs on a dataset
    without a description are checked when it loads."""
    described: dict[str, DatasetDescription | None] = {}
    pairings: set[str] = set()
    for planned in runs:
        spec = planned.spec
        if spec.dataset is None:
            continue
        key = json.dumps(spec.dataset.model_dump(mode="json"), sort_keys=True)
        if key not in described:
            entry = registry.get("dataset", spec.dataset.name)
            described[key] = describe_dataset(entry, spec.dataset.all_options, Path(file).parent)
        facts = described[key]
        if facts is None:
            continue
        where = {"file": file, "study": planned.study}
        held_out = spec.validation_size or 0
        if spec.validation_size is not None and not 0 < held_out < facts.train_size:
            raise ManifestError(
                f"validation_size {held_out} must be below the {facts.train_size} training examples of dataset "
                f"{spec.dataset.name!r}",
                field="validation_size",
                **where,
            )
        if not spec.is_probe and spec.batch_size > facts.train_size - held_out:
            raise ManifestError(
                f"batch_size {spec.batch_size} is larger than the {facts.train_size - held_out} training examples "
                f"of dataset {spec.dataset.name!r}" + (f" left after validation_size {held_out}" if held_out else ""),
                field="batch_size",
                **where,
            )
        if spec.model is None:
            continue
        parts = [p.model_dump(mode="json") for p in (spec.model, spec.normalizer, spec.placement) if p is not None]
        pairing = json.dumps([*parts, list(facts.info.input_shape), facts.info.num_classes, planned.pack])
        if pairing in pairings:
            continue
        pairings.add(pairing)
        model = _shape_model(registry, spec, facts.info, where)
        if spec.placement is not None and spec.normalizer is not None:
            try:
                choose_sites(registry, spec, [info for info, _ in find_sites(model)])
            except ValueError as exc:
                raise ManifestError(str(exc), field="normalizer", **where) from None
        if memory is not None:
            _check_memory(model, planned, memory, where)


def _shape_model(registry: Registry, spec: RunSpec, data: DataInfo, where: dict[str, str]) -> nn.Module:
    """The bare model built on PyTorch's ``meta`` device: its modules and shapes, no memory. A
    size whose storage overflows is a ``ManifestError`` naming the model; a model whose factory
    cannot build on ``meta`` (it reads values) is built for real, as a run would."""
    assert spec.model is not None
    try:
        with torch.device("meta"):
            return build_bare_model(registry, spec, data)
    except ValueError as exc:
        raise ManifestError(str(exc), field="model", **where) from None
    except RuntimeError as exc:
        if "overflow" in str(exc).lower():
            raise ManifestError(
                f"model {spec.model.name!r} cannot be built at these sizes (with {data.num_classes} classes, input "
                f"{'x'.join(map(str, data.input_shape))}): {str(exc).splitlines()[0]}",
                field="model",
                **where,
            ) from None
        if "meta" not in str(exc).lower():
            raise
    return build_bare_model(registry, spec, data)


TRAINING_COPIES = 3
"""Copies of the parameters a run holds while it trains: the weights, their gradients and SGD's momentum."""


def memory_limit(settings_gib: float | None, device: str) -> tuple[int, str]:
    """The bytes a run's model may take and where that bound comes from: ``[harness] memory_gib``,
    else the total memory of the device runs train on here (the GPU's with CUDA, else the host's)."""
    if settings_gib is not None:
        return int(settings_gib * 2**30), f"[harness] memory_gib = {settings_gib:g}"
    if device != "cpu" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return total, f"the {total / 2**30:.1f} GiB of this machine's GPU"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, f"the {total / 2**30:.1f} GiB of this machine's memory"


def _check_memory(model: nn.Module, planned: PlannedRun, memory: tuple[int, str], where: dict[str, str]) -> None:
    """``ManifestError`` when the parameters a run (or its pack) trains exceed ``memory``."""
    limit, source = memory
    parameters = sum(p.numel() for p in model.parameters())
    need = parameters * TRAINING_COPIES * 4 * planned.pack
    if need > limit:
        packed = f" for a pack of {planned.pack}" if planned.pack > 1 else ""
        raise ManifestError(
            f"model {planned.spec.model.name if planned.spec.model else '?'!r} has {parameters:,} parameters: "
            f"{need / 2**30:,.1f} GiB to train{packed} (weights, gradients and momentum in float32), more than "
            f"{source}; make it smaller{', lower pack' if packed else ''}, or set [harness] memory_gib for a "
            "bigger host",
            field="model",
            **where,
        )

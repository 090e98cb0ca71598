"""Assembling a run's model: the model plugin, the placement's choice of sites, and the normalizer
attached at each chosen site after the core checked that its traits allow it there. The runner
and the contract kit assemble models through these functions, so the kit tests what runs do."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.api import BuildContext, DataInfo, DatasetDescription, NormSite, SiteInfo, find_sites, resolve_traits
from harness.errors import BnbenchError, ManifestError
from harness.records import PlannedRun
from harness.registry import Registry
from harness.spec import RunSpec


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


def _attach(registry: Registry, spec: RunSpec, sites: list[tuple[SiteInfo, NormSite]]) -> None:
    assert spec.normalizer is not None
    normalizer = registry.get("normalizer", spec.normalizer.name)
    options = normalizer.options.model_validate(spec.normalizer.all_options)
    for info, site in sites:
        module = normalizer.factory(info.num_features, info.kind, options)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"normalizer plugin {spec.normalizer.name!r} returned {type(module).__name__}, not a torch.nn.Module"
            )
        site.attach(module)


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


def check_runs(runs: Iterable[PlannedRun], registry: Registry, file: str) -> None:
    """What can be checked before anything trains, from the datasets' descriptions (``describe=``):
    ``validation_size`` and ``batch_size`` against the training set, and each normalizer against
    the sites its model and placement select (the refusal a run would meet), as ``ManifestError``s
    naming the study and field. Runs on a dataset without a description are checked when it loads."""
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
        if spec.model is None or spec.placement is None or spec.normalizer is None:
            continue
        parts = (spec.model, spec.normalizer, spec.placement)
        pairing = json.dumps([p.model_dump(mode="json") for p in parts] + [list(facts.info.input_shape)])
        if pairing in pairings:
            continue
        pairings.add(pairing)
        try:
            model = build_bare_model(registry, spec, facts.info)
            choose_sites(registry, spec, [info for info, _ in find_sites(model)])
        except ValueError as exc:
            raise ManifestError(str(exc), field="normalizer", **where) from None

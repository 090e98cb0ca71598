"""Assembling a run's model: the model plugin, the placement's choice of sites, and the normalizer
attached at each chosen site after the core checked that its traits allow it there. The runner
and the contract kit assemble models through these functions, so the kit tests what runs do."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from bnbench.api import DataInfo, NormSite, SiteInfo, find_sites
from bnbench.errors import BnbenchError
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
    model = registry.build("model", spec.model, data)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model plugin {spec.model.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def choose_sites(registry: Registry, spec: RunSpec, sites: list[SiteInfo]) -> set[str]:
    """The sites the spec's placement chooses, each checked against the normalizer's traits:
    ``ValueError`` naming the site and the reason when the normalizer cannot go there."""
    assert spec.placement is not None and spec.normalizer is not None and spec.model is not None
    chosen = set(registry.build("placement", spec.placement, sites))
    unknown = chosen - {info.name for info in sites}
    if unknown:
        raise ValueError(f"placement {spec.placement.name!r} chose sites the model lacks: {sorted(unknown)}")
    normalizer = registry.get("normalizer", spec.normalizer.name)
    traits = registry.traits(spec.normalizer)
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
    traits = registry.traits(spec.normalizer)
    takes_activation = traits.includes_activation and _takes_activation(
        registry.get("normalizer", spec.normalizer.name).factory
    )
    for info, site in sites:
        if takes_activation:  # its activation only where the model would apply one
            module = registry.build(
                "normalizer", spec.normalizer, info.num_features, info.kind, activation=info.activated
            )
        else:
            module = registry.build("normalizer", spec.normalizer, info.num_features, info.kind)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"normalizer plugin {spec.normalizer.name!r} returned {type(module).__name__}, not a torch.nn.Module"
            )
        site.attach(module, includes_activation=traits.includes_activation)

"""Which pending runs train together as packs (a study's ``pack = N``), decided before any training.

Runs pack when they differ only in what each member of a pack can hold for itself: the seed
(init and data order), the optimizer (learning rate, momentum, weight decay), the schedule and
the input transform (e.g. its noise level). Everything else (model, placement, normalizer,
dataset, batch size, length, metrics) must agree, so the members share one forward under
``torch.func.vmap``. Runs that cannot pack (probe runs, a normalizer whose traits say
``packable=False``, runs with checkpoints of their own) run one by one as ever.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from bnbench.api import resolve_traits
from bnbench.records import PlannedPack, PlannedRun, Work
from bnbench.registry import Registry

MEMBER_FIELDS = ("seed", "optimizer", "schedule", "input_transform")
"""Spec fields that may differ between the members of a pack: each member holds its own."""


def pack_key(run: PlannedRun) -> str | None:
    """What runs must share to pack with ``run`` (None: it never packs)."""
    if run.pack <= 1 or run.spec.is_probe:
        return None
    shared = run.spec.model_dump(mode="json", exclude=set(MEMBER_FIELDS))
    return json.dumps([run.study, run.pack, shared], sort_keys=True)


def unpackable_reason(registry: Registry, run: PlannedRun) -> str | None:
    """Why ``run``'s normalizer says it cannot train packed, or None."""
    normalizer = run.spec.normalizer
    if normalizer is None:
        return None
    entry = registry.get("normalizer", normalizer.name)
    traits = resolve_traits(entry.extras.get("traits"), entry.options.model_validate(normalizer.all_options))
    if traits.packable:
        return None
    return f"normalizer {normalizer.name!r} does not run under torch.func.vmap (its traits say packable=False)"


def plan_work(
    pending: Iterable[PlannedRun],
    registry: Registry,
    *,
    resumable: Iterable[str] = (),
    log: Callable[[str], None] = lambda message: None,
) -> list[Work]:
    """The pending runs as units of work, in plan order: packs of up to each study's ``pack``
    runs that can share a forward pass, and single runs.

    A run with a checkpoint of its own (``resumable``: it was started one by one) resumes one by
    one, so no training is lost. A pack forms where its first member stands in the plan.
    """
    own_checkpoint = set(resumable)
    groups: dict[str, list[PlannedRun]] = {}
    work: list[Work | str] = []
    told: set[str] = set()
    for run in pending:
        key = None if run.run_id in own_checkpoint else pack_key(run)
        if key is not None and (reason := unpackable_reason(registry, run)) is not None:
            if run.study not in told:
                told.add(run.study)
                log(f"{run.study}: {reason}; its runs train one by one")
            key = None
        if key is None:
            work.append(run)
            continue
        if key not in groups:
            groups[key] = []
            work.append(key)
        groups[key].append(run)
    units: list[Work] = []
    for item in work:
        if not isinstance(item, str):
            units.append(item)
            continue
        runs = groups[item]
        size = runs[0].pack
        for start in range(0, len(runs), size):
            chunk = tuple(runs[start : start + size])
            units.append(PlannedPack(chunk) if len(chunk) > 1 else chunk[0])
    return units

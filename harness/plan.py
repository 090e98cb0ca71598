"""The plan: what a command will run, checked before anything trains, in units of work.

Data flows one way: manifest (``bnbench.manifest``: studies expanded into runs, a pure value) →
plan (this module) → runs (``bnbench.executors``, ``bnbench.runner``) → store → report. A plan
is the manifest's runs against its results store: each run once, the status the store holds for
it, the runs still to run, and those grouped into units of work (runs and packs). ``bnbench
plan`` prints it, ``bnbench run`` asks before a large one and executes it, and the sweep takes it
(refreshed against the store once it holds the store open).

Checks that need no training happen here, so bad input stops before anything is recorded:
``validation_size`` and ``batch_size`` against the datasets' descriptions, each normalizer
against the sites its model and placement select, each model's size against the memory
(models are built on the ``meta`` device: checking allocates nothing).

Packing (a study's ``pack = N``, docs/packing.md): runs pack when they differ only in what each
member of a pack can hold for itself: the seed (init and data order), the optimizer (learning
rate, momentum, weight decay), the schedule and the input transform (e.g. its noise level).
Everything else (model, placement, normalizer, dataset, batch size, length, metrics) must agree,
so the members share one forward under ``torch.func.vmap``. Runs that cannot pack (probe runs, a
normalizer whose traits say ``packable=False``, runs with checkpoints of their own) run one by
one.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bnbench.api import BuildContext, DataInfo, DatasetDescription, find_sites
from bnbench.assembly import build_bare_model, choose_sites
from bnbench.checkpoint import Checkpoints
from bnbench.errors import ManifestError
from bnbench.manifest import Manifest
from bnbench.records import FINISHED, PlannedPack, PlannedRun, Work
from bnbench.registry import Registry
from bnbench.spec import Component, RunSpec
from bnbench.store import read_statuses


@dataclass(frozen=True)
class Plan:
    """What a command will run: the manifest's runs, their statuses, the pending ones in units of work."""

    manifest: Manifest
    registry: Registry
    runs: tuple[PlannedRun, ...]
    """Every run of the manifest once, in order (two studies may share a configuration)."""
    statuses: Mapping[str, str]
    """The status the results store held for each run when planned (none with ``rerun``)."""
    pending: tuple[PlannedRun, ...]
    """The runs still to run: those without a final result (all of them with ``rerun``)."""
    work: tuple[Work, ...]
    """The pending runs as units of work: packs and single runs, in plan order."""
    rerun: bool = False
    resumable: frozenset[str] = frozenset()
    """Runs and packs with checkpoints of their own (a run started alone resumes alone)."""
    notices: tuple[str, ...] = ()
    """Why some runs of a packing study train one by one (their normalizer cannot pack)."""

    @property
    def packs(self) -> list[PlannedPack]:
        return [unit for unit in self.work if isinstance(unit, PlannedPack)]

    def summary(self) -> str:
        """``12 runs, 8 to run (6 of them in 2 packs)``."""
        packs = self.packs
        packed = f" ({sum(len(p.members) for p in packs)} of them in {len(packs)} packs)" if packs else ""
        return f"{len(self.runs)} runs, {len(self.pending)} to run{packed}"

    def refreshed(self, statuses: Mapping[str, str]) -> Plan:
        """The same plan against newer statuses (the store's, read once the sweep holds it open)."""
        pending = pending_runs(self.runs, statuses, self.rerun)
        work, notices = _units(pending, self.registry, self.resumable)
        return replace(self, statuses=dict(statuses), pending=tuple(pending), work=tuple(work), notices=notices)


def make_plan(
    manifest: Manifest,
    registry: Registry,
    *,
    rerun: bool = False,
    device: str | None = None,
    checkpoints: Checkpoints | None = None,
) -> Plan:
    """The plan of ``manifest``: its runs checked (``check_runs``, against the memory of ``device``,
    default the manifest's), their statuses read from its store without writing (none with
    ``rerun``), the pending ones packed. ``checkpoints``: where runs' checkpoints live (default:
    beside the store), so runs started alone resume alone."""
    settings = manifest.settings
    check_runs(
        manifest.runs(), registry, str(manifest.path), memory_limit(settings.memory_gib, device or settings.device)
    )
    runs = unique_runs(manifest.runs())
    statuses = {} if rerun else read_statuses(manifest.results_path, (r.run_id for r in runs))
    checkpoints = checkpoints or Checkpoints.beside(manifest.results_path)
    resumable = frozenset(checkpoints.run_ids())
    pending = pending_runs(runs, statuses, rerun)
    work, notices = _units(pending, registry, resumable)
    return Plan(manifest, registry, tuple(runs), statuses, tuple(pending), tuple(work), rerun, resumable, notices)


def unique_runs(runs: Iterable[PlannedRun]) -> list[PlannedRun]:
    """Runs in order, each id once (two studies may share a configuration)."""
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.run_id, run)
    return list(seen.values())


def pending_runs(runs: Iterable[PlannedRun], statuses: Mapping[str, str], rerun: bool = False) -> list[PlannedRun]:
    """The runs still to run, each once: those without a final result in ``statuses`` (all with ``rerun``)."""
    unique = unique_runs(runs)
    return unique if rerun else [r for r in unique if statuses.get(r.run_id) not in FINISHED]


def _units(
    pending: Iterable[PlannedRun], registry: Registry, resumable: Iterable[str]
) -> tuple[list[Work], tuple[str, ...]]:
    notices: list[str] = []
    return plan_work(pending, registry, resumable=resumable, log=notices.append), tuple(notices)


# --- packing -------------------------------------------------------------------------------

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
    if registry.traits(normalizer).packable:
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


# --- checks before anything trains ---------------------------------------------------------


def describe_dataset(registry: Registry, dataset: Component, base_dir: Path) -> DatasetDescription | None:
    """A dataset's description (``describe=``): given the build context too when it takes two
    arguments, so it can read sizes from the files on disk."""
    describe = registry.get("dataset", dataset.name).extras.get("describe")
    if describe is None:
        return None
    validated = registry.options("dataset", dataset)
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
            described[key] = describe_dataset(registry, spec.dataset, Path(file).parent)
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

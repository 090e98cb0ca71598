"""Manifest loading: TOML → validated settings, profile overlays, sweep expansion, run ids.

Sweep rule: in a study, a field given as a list is a sweep axis and the study expands to the
Cartesian product of its axes. A field whose own type is a list (``schedule.milestones``,
``metrics``, an MLP's ``widths``) is swept by a list of lists. ``seeds`` lists the replicates
of every configuration. A component (``model``, ``dataset``, ``normalizer``, ``placement``)
is swept by a list of names or tables, and its options are swept like any other field.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bnbench.errors import BnbenchError, ManifestError, did_you_mean
from bnbench.records import PlannedRun
from bnbench.registry import Entry, Registry, load_registry
from bnbench.spec import (
    COMPONENT_FIELDS,
    MAX_NAME_LENGTH,
    STUDY_ONLY_FIELDS,
    CheckSpec,
    ClaimSpec,
    Component,
    HarnessSettings,
    ManifestFile,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
    StudyHeader,
)

M = TypeVar("M", bound=BaseModel)

MAX_RUNS_PER_STUDY = 100_000
"""A study that expands to more runs than this is rejected before anything is built."""

ALL_STUDIES = "*"
"""Key of a profile's overlay that applies to every study."""

SUBMODELS: dict[str, type[BaseModel]] = {"optimizer": OptimizerSpec, "schedule": ScheduleSpec}
STUDY_FIELDS = tuple(sorted((set(RunSpec.model_fields) - {"seed"}) | set(STUDY_ONLY_FIELDS)))


@dataclass
class Study:
    name: str
    description: str
    axes: list[str]
    runs: list[PlannedRun]
    analyses: list[Component] = field(default_factory=list)
    """Analysis plugins summarizing the study in reports (beyond the standard table)."""
    reading_axis: str = ""
    """The axis whose values are readings (``StudyHeader.reading_axis``): analysed one by one."""


@dataclass
class Manifest:
    path: Path
    settings: HarnessSettings
    profile: str | None
    studies: list[Study]
    executor: Component
    claims: list[ClaimSpec] = field(default_factory=list)
    checks: list[CheckSpec] = field(default_factory=list)
    trackers: list[Component] = field(default_factory=list)
    """Experiment trackers (``[harness] trackers``, then ``run --track``), options resolved."""

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def results_path(self) -> Path:
        """The SQLite store of this manifest, resolved relative to the manifest."""
        if self.settings.results:
            p = Path(self.settings.results).expanduser()
            return p if p.is_absolute() else (self.base_dir / p).resolve()
        return self.base_dir / "results" / f"{self.path.stem}.sqlite"

    def runs(self) -> list[PlannedRun]:
        return [run for study in self.studies for run in study.runs]


# -- reading --------------------------------------------------------------------------------
def parse_inline(text: str) -> Any:
    """A command-line component: a plugin name, or a TOML inline table (``{ name = "...", ... }``)."""
    if not text.lstrip().startswith("{"):
        return text.strip()
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid TOML inline table {text!r}: {exc}", file="--executor") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every problem into a ``ManifestError`` naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("file not found", file=str(path)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError("not a TOML file: it is not UTF-8 text", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid TOML: {exc}", file=str(path)) from None
    except RecursionError:
        raise ManifestError("invalid TOML: arrays or tables nested too deeply", file=str(path)) from None
    depth = nesting_depth(parsed)
    if depth > MAX_NESTING:
        raise ManifestError(
            f"tables or arrays nested {depth} levels deep (a dotted key of {depth} parts?); at most {MAX_NESTING}",
            file=str(path),
        )
    return parsed


MAX_NESTING = 64
"""How deep a manifest's tables and arrays may nest (the bundled one: 4)."""


def nesting_depth(data: Any) -> int:
    """How deeply tables and arrays nest in ``data``, counted without recursion."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def validate_toml(model: type[M], data: Any) -> M:
    """Validate values read from TOML with TOML's own types: a string is never read as a number or
    a boolean (``epochs = "8"``, ``affine = "no"``), nor ``true`` as 1; an integer is a float where a
    float belongs, and an array a tuple. (Pydantic's strict JSON mode is exactly that.)"""
    return model.model_validate_json(json.dumps(data, allow_nan=True, default=str), strict=True)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc`` inside ``model``, if it can be found."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = _model_in(info.annotation)
    return sorted(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``, ``list[X]``), else it."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    file: str | None,
    study: str | None,
    prefix: str = "",
) -> ManifestError:
    """The first error of ``exc`` as a ``ManifestError`` with its dotted field path."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    path = ".".join(part for part in (prefix, *map(str, loc)) if part)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        message = f"unknown field {loc[-1]!s}; allowed fields: {', '.join(allowed)}."
        message += did_you_mean(str(loc[-1]), allowed)
    elif err["type"] == "missing":
        message = "required field is missing"
    elif "input" in err and not isinstance(err["input"], dict | list):
        message += f" (got {err['input']!r})"
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more problem(s)]"
    return ManifestError(message, file=file, study=study, field=path or None)


# -- profile overlays -----------------------------------------------------------------------
def _as_component_table(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _overlay_component(base: Any, over: Any) -> Any:
    """A profile's component over a study's: merge options of the same plugin, else replace."""
    over = _as_component_table(over)
    if not isinstance(over, dict) or not isinstance(base, str | dict | list):
        return over
    if isinstance(base, list):  # a swept component: options merge into each value of the axis...
        names = {(_as_component_table(b) or {}).get("name") for b in base if isinstance(b, str | dict)}
        if "name" in over and names != {over["name"]}:
            return over  # ...but naming a plugin the axis does not consist of replaces the axis
        return [_overlay_component(b, over) for b in base]
    base = _as_component_table(base)
    if "name" in over and over["name"] != base.get("name"):
        return over
    return {**base, **over}


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: tables merge key by key, other values replace."""
    merged = dict(base)
    for key, value in over.items():
        if key in COMPONENT_FIELDS and key in merged:
            merged[key] = _overlay_component(merged[key], value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_profile(
    studies: list[dict[str, Any]], profiles: dict[str, dict[str, dict[str, Any]]], profile: str, file: str
) -> list[dict[str, Any]]:
    if profile not in profiles:
        known = sorted(profiles)
        raise ManifestError(
            f"unknown profile {profile!r}; profiles in this manifest: {', '.join(known) or '(none)'}."
            + did_you_mean(profile, known),
            file=file,
        )
    tables = profiles[profile]
    names = [s.get("name") for s in studies]
    for key in tables:
        if key != ALL_STUDIES and key not in names:
            known = [str(n) for n in names]
            raise ManifestError(
                f"profile {profile!r} overlays study {key!r}, which does not exist; studies: "
                f'{", ".join(known)} (or "*" for all).' + did_you_mean(key, known),
                file=file,
                field=f"profiles.{profile}.{key}",
            )
    result = []
    for study in studies:
        study = overlay(study, tables.get(ALL_STUDIES, {}))
        study = overlay(study, tables.get(str(study.get("name")), {}))
        result.append(study)
    return result


# -- sweep expansion ------------------------------------------------------------------------
def _is_list_type(annotation: Any) -> bool:
    """Whether a field's type is a list (so a list value is one value, not an axis)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_type(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _is_list_type(typing.get_args(annotation)[0])
    return False


def _axis(value: Any, list_typed: bool) -> list[Any] | None:
    """The values of the axis ``value`` defines, or ``None`` if it is a single value."""
    if not isinstance(value, list):
        return None
    if list_typed:
        return value if value and all(isinstance(v, list) for v in value) else None
    return value


def _field_annotation(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields.get(name)
    return info.annotation if info is not None else None


def _component_label(value: dict[str, Any]) -> str:
    name = value["name"]
    options = {k: v for k, v in value.items() if k != "name"}
    if not options:
        return str(name)
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


@dataclass
class _Expander:
    registry: Registry
    file: str
    study: str

    def error(self, message: str, field: str | None = None) -> ManifestError:
        return ManifestError(message, file=self.file, study=self.study, field=field)

    def axes(self, raw: dict[str, Any]) -> list[tuple[str, list[Any]]]:
        """Stage 1: axes among the core fields (components, sub-tables, scalars)."""
        found: list[tuple[str, list[Any]]] = []
        for key, value in raw.items():
            if key in STUDY_ONLY_FIELDS:
                continue
            if key in SUBMODELS:
                if not isinstance(value, dict):
                    example = {"schedule": f'{{ kind = "{value}" }}', "optimizer": f"{{ lr = {value} }}"}.get(
                        key, "{ ... }"
                    )
                    raise self.error(f"must be a table of settings, e.g. {key} = {example}", key)
                for sub, subvalue in value.items():
                    if sub not in SUBMODELS[key].model_fields:
                        continue  # an unknown setting: the model reports it, with the allowed names
                    annotation = _field_annotation(SUBMODELS[key], sub)
                    values = _axis(subvalue, _is_list_type(annotation))
                    if values is not None:
                        found.append((f"{key}.{sub}", values))
                continue
            annotation = _field_annotation(RunSpec, key)
            values = _axis(value, key not in COMPONENT_FIELDS and _is_list_type(annotation))
            if values is not None:
                found.append((key, values))
        for path, values in found:
            if not values:
                raise self.error("an empty list sweeps nothing: give at least one value", path)
        return found

    def entry(self, kind: str, field_name: str, name: str) -> Entry:
        """The registered plugin ``name``, or an error located at ``field_name``."""
        try:
            return self.registry.get(kind, name)
        except ManifestError as exc:
            raise exc.located(file=self.file, study=self.study, field_prefix=field_name) from None

    def option_axes(self, kind: str, field_name: str, component: dict[str, Any]) -> list[tuple[str, list[Any]]]:
        """Stage 2: axes among a component's options, typed by the plugin's options model."""
        entry = self.entry(kind, field_name, component["name"])
        found = []
        for key, value in component.items():
            if key == "name":
                continue
            if key not in entry.options.model_fields:
                continue  # an unknown option: the options model reports it, with the allowed names
            values = _axis(value, _is_list_type(_field_annotation(entry.options, key)))
            if values is not None:
                if not values:
                    raise self.error("an empty list sweeps nothing", f"{field_name}.{key}")
                found.append((f"{field_name}.{key}", values))
        return found

    def component(self, field_name: str, value: Any) -> dict[str, Any]:
        value = _as_component_table(value)
        if not isinstance(value, dict):
            raise self.error(f"must be a plugin name or a table with a name, got {value!r}", field_name)
        if not isinstance(value.get("name"), str) or not value["name"]:
            raise self.error('a plugin table needs name = "..."', f"{field_name}.name")
        return value

    def resolve_component(self, kind: str, field_name: str, table: dict[str, Any]) -> dict[str, Any]:
        """Validate a component's options through its plugin → ``{"name", "options"}``."""
        entry = self.entry(kind, field_name, table["name"])
        options = {k: v for k, v in table.items() if k != "name"}
        try:
            validated = validate_toml(entry.options, options)
        except ValidationError as exc:
            raise validation_error(exc, entry.options, file=self.file, study=self.study, prefix=field_name) from None
        dumped = validated.model_dump(mode="json")
        runtime_fields = getattr(entry.options, "runtime_fields", None)
        runtime = runtime_fields() if runtime_fields is not None else frozenset()
        return {
            "name": entry.name,
            "options": {k: v for k, v in dumped.items() if k not in runtime},
            "runtime": {k: v for k, v in dumped.items() if k in runtime},
        }

    def expand(self, raw: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Yield ``(run fields, axis values)`` for every point of the study's sweep."""
        core_axes = self.axes(raw)
        for core_point in itertools.product(*(values for _, values in core_axes)):
            point = copy.deepcopy({k: v for k, v in raw.items() if k not in STUDY_ONLY_FIELDS})
            labels: dict[str, Any] = {}
            for (path, _), value in zip(core_axes, core_point, strict=True):
                _set_path(point, path, value)
                labels[path] = _component_label(self.component(path, value)) if path in COMPONENT_FIELDS else value
            option_axes = []
            for field_name, kind in COMPONENT_FIELDS.items():
                if field_name in point:
                    point[field_name] = self.component(field_name, point[field_name])
                    option_axes += self.option_axes(kind, field_name, point[field_name])
            for option_point in itertools.product(*(values for _, values in option_axes)):
                run = copy.deepcopy(point)
                run_labels = dict(labels)
                for (path, _), value in zip(option_axes, option_point, strict=True):
                    _set_path(run, path, value)
                    run_labels[path] = value
                yield run, run_labels

    def resolve(self, run: dict[str, Any], seed: int) -> RunSpec:
        run = dict(run)
        for field_name, kind in COMPONENT_FIELDS.items():
            if field_name in run:
                run[field_name] = self.resolve_component(kind, field_name, run[field_name])
        if "metrics" not in run:  # the metrics plugins declare as defaults, in registration order
            run["metrics"] = self.registry.defaults("metric")
        if "metrics" in run:
            if not isinstance(run["metrics"], list):
                raise self.error("must be a list of metric names", "metrics")
            run["metrics"] = [
                self.resolve_component("metric", f"metrics.{i}", self.component(f"metrics.{i}", m))
                for i, m in enumerate(run["metrics"])
            ]
        run["seed"] = seed
        try:
            return validate_toml(RunSpec, run)
        except ValidationError as exc:
            raise validation_error(exc, RunSpec, file=self.file, study=self.study) from None


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value


def _sweep_size(raw_axes: list[tuple[str, list[Any]]]) -> int:
    return math.prod(len(values) for _, values in raw_axes)


def expand_study(raw: dict[str, Any], registry: Registry, file: str, index: int) -> Study:
    """Validate one study table and expand it into its runs."""
    given = raw.get("name")
    known = given if isinstance(given, str) and given.isprintable() and 0 < len(given) <= MAX_NAME_LENGTH else None
    try:
        header = validate_toml(StudyHeader, {k: raw[k] for k in StudyHeader.model_fields if k in raw})
    except ValidationError as exc:
        where = f"studies[{index}]" if known is None else ""
        raise validation_error(exc, StudyHeader, file=file, study=known, prefix=where) from None
    name, description, seeds = header.name, header.description, header.seeds
    expander = _Expander(registry, file, name)
    for key in raw:
        if key not in STUDY_FIELDS:
            raise expander.error(
                f"unknown field; allowed fields: {', '.join(STUDY_FIELDS)}." + did_you_mean(key, STUDY_FIELDS),
                key,
            )
    core_axes = expander.axes(raw)
    if _sweep_size(core_axes) * len(seeds) > MAX_RUNS_PER_STUDY:
        raise expander.error(
            f"expands to {_sweep_size(core_axes) * len(seeds)} runs, more than the limit of "
            f"{MAX_RUNS_PER_STUDY}; split the study or shorten its axes"
        )
    runs: list[PlannedRun] = []
    axes: list[str] = []
    for point, labels in expander.expand(raw):
        for path in labels:
            if path not in axes:
                axes.append(path)
        for seed in seeds:
            spec = expander.resolve(point, seed)
            runs.append(PlannedRun(spec.run_id(), name, spec, dict(labels), pack=header.pack))
            if len(runs) > MAX_RUNS_PER_STUDY:
                raise expander.error(f"expands to more than {MAX_RUNS_PER_STUDY} runs")
    if header.reading_axis and header.reading_axis not in axes:
        raise expander.error(
            f"reading_axis names {header.reading_axis!r}, which is not an axis of the study; its axes: "
            f"{', '.join(axes) or 'none (give the reading as a list of values)'}",
            "reading_axis",
        )
    return Study(
        name=name,
        description=description,
        axes=axes,
        runs=runs,
        analyses=_analyses(raw, runs, expander),
        reading_axis=header.reading_axis,
    )


def _analyses(raw: dict[str, Any], runs: list[PlannedRun], expander: _Expander) -> list[Component]:
    """The study's ``analyses``, or the default analyses of its probes when it lists none."""
    if "analyses" in raw:
        listed = raw["analyses"]
        if not isinstance(listed, list):
            raise expander.error("must be a list of analysis names or tables", "analyses")
    else:
        probes = dict.fromkeys(r.spec.probe.name for r in runs if r.spec.probe is not None)
        listed = [a for p in probes for a in expander.registry.get("probe", p).extras.get("analyses", ())]
    resolved = [
        expander.resolve_component("analysis", f"analyses.{i}", expander.component(f"analyses.{i}", a))
        for i, a in enumerate(dict.fromkeys(listed) if all(isinstance(a, str) for a in listed) else listed)
    ]
    return [Component.model_validate(c) for c in resolved]


def _disabled(raw_studies: list[dict[str, Any]], file: str, profile: str | None) -> set[str]:
    """Names of the studies whose ``enabled`` is false (after the profile's overlays)."""
    disabled = set()
    for raw in raw_studies:
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ManifestError(
                f"must be true or false, got {enabled!r}", file=file, study=str(raw.get("name")), field="enabled"
            )
        if not enabled:
            disabled.add(str(raw.get("name")))
    if raw_studies and len(disabled) == len(raw_studies):
        raise ManifestError(
            "every study is disabled (enabled = false)" + (f" in profile {profile!r}" if profile else ""), file=file
        )
    return disabled


def read_manifest(
    path: str | Path,
    profile: str | None = None,
    *,
    registry: Registry | None = None,
    studies: list[str] | None = None,
    executor: str | None = None,
    trackers: list[str] | None = None,
) -> tuple[Manifest, Registry]:
    """Read, overlay, validate and expand a manifest: its studies and runs (a pure value) and the
    registry it was validated with (``registry``, or the installed plugins and the manifest's own
    ``[harness] plugins``). Commands and programs open a manifest with ``bnbench.session.open_session``.

    ``executor`` (a plugin name, or a TOML inline table such as ``{ name = "pool", workers = 4 }``)
    replaces the manifest's ``[harness] executor``: where runs execute is not part of what they are.
    ``trackers`` (names or inline tables, as ``--track`` gives them) add to ``[harness] trackers``.
    """
    path = Path(path).expanduser().resolve()
    file = str(path)
    data = read_toml(path)
    try:
        parsed = validate_toml(ManifestFile, data)
    except ValidationError as exc:
        raise validation_error(exc, ManifestFile, file=file, study=None) from None
    raw_studies = parsed.studies
    if profile is not None:
        raw_studies = apply_profile(raw_studies, parsed.profiles, profile, file)
    disabled = _disabled(raw_studies, file, profile)
    raw_studies = [raw for raw in raw_studies if str(raw.get("name")) not in disabled]
    if registry is None:
        try:
            registry = load_registry(parsed.harness.plugins, base_dir=path.parent)
        except BnbenchError as exc:
            raise ManifestError(f"[harness] plugins: {exc}", file=file, field="harness.plugins") from exc
    expanded = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_studies):
        study = expand_study(raw, registry, file, index)
        if study.name in seen:
            raise ManifestError("two studies have this name; study names must be unique", file=file, study=study.name)
        seen.add(study.name)
        expanded.append(study)
    if studies:
        known = [s.name for s in expanded]
        for wanted in studies:
            if wanted in disabled:
                raise ManifestError(
                    f"study {wanted!r} is disabled (enabled = false)"
                    + (f" in profile {profile!r}" if profile else "")
                    + f"; enabled studies: {', '.join(known)}",
                    file=file,
                    study=wanted,
                )
            if wanted not in known:
                raise ManifestError(
                    f"no study named {wanted!r}; studies: {', '.join(known)}." + did_you_mean(wanted, known),
                    file=file,
                )
        expanded = [s for s in expanded if s.name in studies]
    names = [s.name for s in expanded]
    all_names = [str(raw.get("name")) for raw in raw_studies] + sorted(disabled)
    for index, claim in enumerate(parsed.claims):
        if claim.study not in all_names:
            raise ManifestError(
                f"claim names study {claim.study!r}, which does not exist; studies: {', '.join(all_names)}."
                + did_you_mean(claim.study, all_names),
                file=file,
                field=f"claims[{index}].study",
            )
    for index, check in enumerate(parsed.checks):
        if check.study not in all_names:
            raise ManifestError(
                f"check names study {check.study!r}, which does not exist; studies: {', '.join(all_names)}."
                + did_you_mean(check.study, all_names),
                file=file,
                field=f"checks[{index}].study",
            )
    check_ids = [c.key for c in parsed.checks]
    for index, key in enumerate(check_ids):
        if key in check_ids[:index]:
            raise ManifestError(
                f"two checks have the id {key!r}; give each its own id", file=file, field=f"checks[{index}].id"
            )
    for index, claim in enumerate(parsed.claims):
        for wanted in claim.requires:
            if wanted not in check_ids:
                raise ManifestError(
                    f"claim requires check {wanted!r}, which does not exist; checks: "
                    f"{', '.join(check_ids) or '(no checks)'}." + did_you_mean(wanted, check_ids),
                    file=file,
                    field=f"claims[{index}].requires",
                )
    claims = [c for c in parsed.claims if c.study in names]
    checks = [c for c in parsed.checks if c.study in names]
    for kind, tests, listed in (("claim", claims, parsed.claims), ("check", checks, parsed.checks)):
        for test in tests:
            study = next(s for s in expanded if s.name == test.study)
            if not study.analyses:
                raise ManifestError(
                    f"{kind} on value {test.value!r} of study {test.study!r}: the study has no analyses to report it; "
                    "list them in the study's analyses (`bnbench plugins --kind analysis` shows them)",
                    file=file,
                    field=f"{kind}s[{listed.index(test)}].value",
                )
    if executor is None:
        resolver, field_name, raw_executor = _Expander(registry, file, ""), "harness.executor", parsed.harness.executor
        if raw_executor is None:
            declared = registry.defaults("executor")
            if len(declared) != 1:
                raise ManifestError(
                    f"set [harness] executor: the installed executor plugins declare {len(declared)} defaults"
                    + (f" ({', '.join(declared)})" if declared else ""),
                    file=file,
                    field="harness.executor",
                )
            raw_executor = declared[0]
    else:
        resolver, field_name, raw_executor = _Expander(registry, "--executor", ""), "executor", parse_inline(executor)
    resolved_executor = resolver.resolve_component("executor", field_name, resolver.component(field_name, raw_executor))
    resolved_trackers = []
    listed = [(f"harness.trackers[{i}]", file, raw) for i, raw in enumerate(parsed.harness.trackers)]
    listed += [
        ("track", "--track", parse_inline(raw) if raw.lstrip().startswith("{") else raw) for raw in trackers or []
    ]
    for field_name, where, raw in listed:
        resolver = _Expander(registry, where, "")
        resolved = resolver.resolve_component("tracker", field_name, resolver.component(field_name, raw))
        resolved_trackers.append(Component.model_validate(resolved))
    manifest = Manifest(
        path=path,
        settings=parsed.harness,
        profile=profile,
        studies=expanded,
        claims=claims,
        checks=checks,
        executor=Component.model_validate(resolved_executor),
        trackers=resolved_trackers,
    )
    return manifest, registry

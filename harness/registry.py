"""The plugin manager: loads plugins and holds name → factory tables, one per kind."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict

from bnbench import hookspecs
from bnbench.api import NoOptions, NormalizerTraits, Options, resolve_traits
from bnbench.errors import PluginError, UnknownNameError
from bnbench.hookspecs import KINDS, REGISTRATION_HOOKS, disabled_plugins
from bnbench.spec import Component

ENTRY_POINT_GROUP = "bnbench"

OPTIONS_FIRST = frozenset({"model", "dataset", "transform", "executor", "tracker"})
"""Kinds whose factory takes its validated options first (``factory(options, data)``); the other
kinds' factories take them after what they work on (``factory(context, options)``)."""


EXTRAS: dict[str, tuple[str, ...]] = {
    "normalizer": ("traits", "default"),
    "placement": ("default",),
    "probe": ("analyses",),
    "metric": ("measures", "split", "default"),
    "analysis": ("standard", "reads"),
    "dataset": ("describe", "prepare", "default"),
    "executor": ("default",),
}
"""Kind → the extra keywords its ``register`` accepts (documented on each registration hook)."""

METRIC_MEASURES = ("loss", "accuracy")
"""What a metric may declare it measures (``measures=``): a loss that is not finite is a
divergence; the report's standard table and the progress lines show the training loss and the
test accuracy, found by these declarations."""
METRIC_SPLITS = ("train", "validation", "test")


def _check_traits(value: Any) -> str | None:
    if isinstance(value, NormalizerTraits) or callable(value):
        return None
    return f"{value!r} is neither a bnbench.NormalizerTraits nor a function of the options returning one"


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"{value!r}; allowed: {', '.join(map(repr, allowed))}"

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{value!r} is not true or false"


def _callable(value: Any) -> str | None:
    return None if callable(value) else f"{value!r} is not callable"


EXTRA_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("normalizer", "traits"): _check_traits,
    ("metric", "measures"): _one_of(*METRIC_MEASURES),
    ("metric", "split"): _one_of(*METRIC_SPLITS),
    ("analysis", "standard"): lambda value: (
        None if isinstance(value, bool) or value == "after" else f"{value!r} is not true, false or 'after'"
    ),
    ("analysis", "reads"): lambda value: (
        None
        if callable(value) or (isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value))
        else f"{value!r} is neither metric names nor a function of the options giving them"
    ),
    ("metric", "default"): _boolean,
    ("executor", "default"): _boolean,
    ("normalizer", "default"): _boolean,
    ("placement", "default"): _boolean,
    ("dataset", "default"): _boolean,
    ("dataset", "describe"): _callable,
    ("dataset", "prepare"): _callable,
}
"""(kind, keyword) → a check of the value a plugin gives: what is wrong with it, or ``None``."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from: its name in the manager, package and version if installed."""

    name: str
    package: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.package:
            return f"{self.name} ({self.package} {self.version})"
        return self.name


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    description: str
    plugin: PluginInfo
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific registration keywords (see ``EXTRAS``), e.g. a normalizer's ``traits``."""


def _strict(options: type[BaseModel]) -> type[BaseModel]:
    """``options`` itself if it forbids unknown fields, else a subclass that does."""
    if options.model_config.get("extra") == "forbid":
        return options
    config = ConfigDict(**{**options.model_config, "extra": "forbid"})
    return type(options.__name__, (options,), {"model_config": config, "__module__": options.__module__})


def _first_line(text: str | None) -> str:
    return inspect.cleandoc(text).splitlines()[0] if text else ""


class Registry:
    """Registered components by kind, and the plugin manager whose hooks observe runs."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        plugin_info: dict[str, PluginInfo],
        *,
        broken: dict[str, str] | None = None,
        isolated: Iterable[str] = (),
    ) -> None:
        """``broken``: plugins that failed to load, with why; ``isolated``: plugins (installed ones)
        whose invalid registration sets them aside instead of raising."""
        self.manager = manager
        self.hook = manager.hook
        self._plugin_info = plugin_info
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.broken: dict[str, str] = dict(broken or {})
        """Plugin name → why it failed to load or register; the other plugins stay usable."""
        self._isolated = set(isolated)
        self._validated: dict[tuple[str, str, str], Any] = {}
        self._collect()

    # -- building the tables -------------------------------------------------------------
    def _collect(self) -> None:
        for kind, hook_name in REGISTRATION_HOOKS.items():
            caller = getattr(self.manager.hook, hook_name)
            for impl in caller.get_hookimpls():
                info = self._plugin_info.get(impl.plugin_name, PluginInfo(impl.plugin_name))
                if info.name in self.broken:
                    continue
                try:
                    impl.function(register=self._registrar(kind, info))
                except PluginError as exc:
                    if info.name not in self._isolated:
                        raise
                    self._set_aside(info, str(exc))
                except Exception as exc:
                    self._set_aside(info, f"{hook_name} raised {type(exc).__name__}: {exc}")

    def _set_aside(self, plugin: PluginInfo, why: str) -> None:
        """Record why ``plugin`` is broken and drop what it registered: it never half-loads."""
        self.broken[plugin.name] = why
        for table in self._entries.values():
            for name in [n for n, entry in table.items() if entry.plugin.name == plugin.name]:
                del table[name]

    def _registrar(self, kind: str, plugin: PluginInfo) -> Callable[..., None]:
        table = self._entries[kind]

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            options: type[BaseModel] | None = None,
            description: str | None = None,
            **extras: Any,
        ) -> None:
            allowed = EXTRAS.get(kind, ())
            unknown = sorted(set(extras) - set(allowed))
            if unknown:
                raise PluginError(
                    f"plugin {plugin} registered {kind} {name!r} with unknown keyword(s) {', '.join(unknown)}; "
                    f"a {kind} accepts: options, description{''.join(', ' + a for a in allowed)}"
                )
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin} registered a {kind} with an invalid name {name!r}")
            for keyword, value in extras.items():
                check = EXTRA_CHECKS.get((kind, keyword))
                problem = check(value) if check is not None else None
                if problem:
                    raise PluginError(f"plugin {plugin} registered {kind} {name!r} with invalid {keyword}: {problem}")
            if not callable(factory):
                raise PluginError(f"plugin {plugin} registered {kind} {name!r} with a non-callable factory")
            options = NoOptions if options is None else options
            if not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise PluginError(
                    f"plugin {plugin} registered {kind} {name!r} with options {options!r}; "
                    "options must be a pydantic model class (subclass bnbench.Options)"
                )
            if name in table:
                other = table[name].plugin
                raise PluginError(f"{kind} {name!r} is registered twice: by plugin {other} and by plugin {plugin}")
            table[name] = Entry(
                kind=kind,
                name=name,
                factory=factory,
                options=_strict(options),
                description=description or _first_line(factory.__doc__),
                plugin=plugin,
                extras=dict(extras),
            )

        return register

    @classmethod
    def empty(cls) -> Registry:
        """A registry with no plugins (for rendering stored results without loading any)."""
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        return cls(manager, {})

    # -- lookups -------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][name] for name in self.names(kind)]

    def has(self, kind: str, name: str) -> bool:
        return name in self._entries[kind]

    # -- building components (one way, for every kind) -------------------------------------
    def options(self, kind: str, component: Component) -> Any:
        """``component``'s options validated by its plugin's options model (``ValidationError`` when
        they do not fit). Components are immutable, so each is validated once per registry."""
        key = (kind, component.name, json.dumps(component.all_options, sort_keys=True, default=repr))
        if key not in self._validated:
            self._validated[key] = self.get(kind, component.name).options.model_validate(component.all_options)
        return self._validated[key]

    def build(self, kind: str, component: Component, *args: Any, **kwargs: Any) -> Any:
        """What ``component``'s factory makes, its options validated: ``factory(options, *args)``
        for the kinds in ``OPTIONS_FIRST``, ``factory(*args, options, **kwargs)`` for the others
        (each registration hook documents its factory's arguments)."""
        factory = self.get(kind, component.name).factory
        options = self.options(kind, component)
        if kind in OPTIONS_FIRST:
            return factory(options, *args, **kwargs)
        return factory(*args, options, **kwargs)

    def traits(self, normalizer: Component) -> NormalizerTraits:
        """The traits of a normalizer with these options (the defaults when it registered none)."""
        entry = self.get("normalizer", normalizer.name)
        return resolve_traits(entry.extras.get("traits"), self.options("normalizer", normalizer))

    def defaults(self, kind: str) -> list[str]:
        """The components of ``kind`` registered with ``default=True``, in registration order: the
        metrics a study records when it names none, the executor a manifest uses when it names none,
        and the normalizer, placement and dataset a contract kit trains with when it tests another
        kind of plugin (the metric kit's runs)."""
        return [name for name, entry in self._entries[kind].items() if entry.extras.get("default") is True]

    def metric_named(self, measures: str, split: str) -> str | None:
        """The name of the registered metric declaring it ``measures`` on ``split``, if one does."""
        for name, entry in self._entries["metric"].items():
            if entry.extras.get("measures") == measures and entry.extras.get("split") == split:
                return name
        return None

    def get(self, kind: str, name: str) -> Entry:
        """The entry registered as ``name``, or ``UnknownNameError`` listing the known names."""
        try:
            return self._entries[kind][name]
        except KeyError:
            note = "; ".join(f"plugin {p} failed to load: {why}" for p, why in self.broken.items())
            raise UnknownNameError(kind, name, self._entries[kind], note) from None


def _module_from_file(path: Path) -> ModuleType:
    name = f"bnbench_manifest_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_plugin(reference: str, base_dir: Path | None) -> tuple[str, ModuleType]:
    """Import a plugin named by module path (``pkg.mod``) or by ``.py`` file path."""
    try:
        if reference.endswith(".py"):
            path = Path(reference).expanduser()
            if not path.is_absolute():
                path = (base_dir or Path.cwd()) / path
            if not path.is_file():
                raise PluginError(f"plugin file {path} does not exist")
            return str(path), _module_from_file(path)
        return reference, importlib.import_module(reference)
    except PluginError:
        raise
    except SystemExit as exc:  # a module that calls sys.exit() at import is a broken plugin, not a success
        raise PluginError(
            f"cannot import plugin {reference!r}: it exited at import (SystemExit({exc.code!r}))"
        ) from None
    except KeyboardInterrupt:  # raised by the module itself, not the user's Ctrl-C at a prompt
        raise PluginError(f"cannot import plugin {reference!r}: it raised KeyboardInterrupt at import") from None
    except Exception as exc:
        raise PluginError(f"cannot import plugin {reference!r}: {type(exc).__name__}: {exc}") from exc


def load_registry(
    modules: Sequence[str] = (),
    *,
    base_dir: Path | None = None,
    entry_points: bool = True,
    objects: Iterable[tuple[str, object]] = (),
) -> Registry:
    """Load plugins and build the registry.

    ``entry_points``: load every installed plugin of the ``bnbench`` group (built-ins
    included); ``modules``: extra plugins by module name or ``.py`` path (relative to
    ``base_dir``), as a manifest's ``[harness] plugins`` lists them; ``objects``: already
    imported plugin objects as ``(name, object)``, for tests and embedding.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {}

    def add(name: str, plugin: object, package: str | None = None, version: str | None = None) -> None:
        if manager.is_registered(plugin):
            return
        try:
            manager.register(plugin, name=name)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        info[name] = PluginInfo(name, package, version)

    broken: dict[str, str] = {}
    installed: list[str] = []
    if entry_points:
        for blocked in disabled_plugins():  # pluggy refuses to register them; they are not imported either
            manager.set_blocked(blocked)

        def built_in_first(ep: importlib.metadata.EntryPoint) -> tuple[bool, str]:
            return (ep.dist is None or ep.dist.metadata["Name"] != BUILT_IN_PACKAGE, ep.value)

        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=built_in_first):
            dist = ep.dist
            package = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            name = f"{package}:{ep.name}" if package else ep.name
            if any(manager.is_blocked(n) for n in (name, ep.name, package) if n):
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # never blocks the others, nor exits
                broken[name] = (
                    f"package {package}, entry point {ep.name} = {ep.value!r}, failed to import: "
                    f"{type(exc).__name__}: {exc} (skip it with --disable-plugin {package or ep.name})"
                )
                continue
            add(name, plugin, package, version)
            installed.append(name)
    for reference in modules:
        name, module = _import_plugin(reference, base_dir)
        add(name, module)
        if not manager.get_hookcallers(module):
            raise PluginError(
                f"plugin {reference!r} implements no bnbench hook (a plugin marks its functions with "
                "@bnbench.hookimpl): is it the module you meant?"
            )
    for name, plugin in objects:
        add(name, plugin)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {name!r} implements a hook bnbench does not define: {exc}. "
            f"Known hooks: {', '.join(sorted(h for h in dir(hookspecs) if h.startswith('bnbench_')))}"
        ) from exc
    return Registry(manager, info, broken=broken, isolated=installed)


BUILT_IN_PACKAGE = "bnbench"


__all__ = ["KINDS", "Entry", "Options", "PluginInfo", "Registry", "load_registry"]

"""Plugin loading: entry points (built-ins and third parties), manifest modules, errors."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
from conftest import tiny_manifest
from pydantic import ValidationError

from bnbench import hookimpl
from bnbench.errors import ManifestError, PluginError, UnknownNameError
from bnbench.registry import KINDS, load_registry
from bnbench.session import open_session

THIRD_PARTY = '''
"""A third-party normalizer package."""
from torch import nn
from bnbench import Options, hookimpl


class ScaleOptions(Options):
    factor: float = 2.0


def scale(num_features, kind, options):
    """Multiply by a constant factor."""
    class Scale(nn.Module):
        def forward(self, x):
            return x * options.factor
    return Scale()


@hookimpl
def bnbench_register_normalizers(register):
    register("scale", scale, options=ScaleOptions)
'''


@pytest.fixture
def third_party_package(tmp_path, monkeypatch):
    """Install a package the way pip does: code plus a dist-info with a bnbench entry point."""
    site = tmp_path / "site"
    (site / "bnbench_scale").mkdir(parents=True)
    (site / "bnbench_scale" / "__init__.py").write_text(THIRD_PARTY)
    info = site / "bnbench_scale-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bnbench-scale\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[bnbench]\nscale = bnbench_scale\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("bnbench_scale", None)


def test_builtins_register_every_kind_through_entry_points(registry):
    assert set(KINDS) == {
        "model",
        "normalizer",
        "placement",
        "dataset",
        "transform",
        "metric",
        "probe",
        "analysis",
        "executor",
        "tracker",
    }
    assert {"mlp", "resnet_cifar"} <= set(registry.names("model"))
    assert {"batchnorm", "none"} <= set(registry.names("normalizer"))
    assert {"all", "final", "none", "all_and_final"} <= set(registry.names("placement"))
    assert {"cifar10", "mnist", "synthetic"} <= set(registry.names("dataset"))
    assert {"train_loss", "test_loss", "test_accuracy"} <= set(registry.names("metric"))
    assert {"tensorboard", "mlflow"} <= set(registry.names("tracker"))
    entry = registry.get("normalizer", "batchnorm")
    assert entry.plugin.package == "bnbench" and entry.plugin.version
    assert entry.description.startswith("Batch normalization")


@pytest.mark.slow
def test_core_never_imports_a_concrete_plugin():
    import subprocess

    code = (
        "import sys, bnbench.cli, bnbench.runner, bnbench.report, bnbench.sweep\n"
        "print(any(m.startswith('bnbench.plugins') for m in sys.modules))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_third_party_package_registers_through_entry_points(third_party_package, write_manifest):
    registry = load_registry()
    entry = registry.get("normalizer", "scale")
    assert entry.plugin.package == "bnbench-scale" and entry.plugin.version == "1.2.3"
    text = tiny_manifest(placement='"all"').replace(
        'normalizer = "batchnorm"', 'normalizer = { name = "scale", factor = 3 }'
    )
    manifest = open_session(write_manifest(text), registry=registry).manifest
    assert manifest.runs()[0].spec.normalizer.options == {"factor": 3.0}


def test_manifest_names_a_plugin_file(write_manifest, tmp_path):
    (tmp_path / "my_plugin.py").write_text(THIRD_PARTY)
    text = tiny_manifest(placement='"all"').replace('device = "cpu"', 'device = "cpu"\nplugins = ["my_plugin.py"]')
    text = text.replace('normalizer = "batchnorm"', 'normalizer = "scale"')
    manifest = open_session(write_manifest(text)).manifest
    assert manifest.runs()[0].spec.normalizer.name == "scale"


def test_missing_plugin_module_is_a_manifest_error(write_manifest):
    text = tiny_manifest().replace('device = "cpu"', 'device = "cpu"\nplugins = ["no_such_module_xyz"]')
    with pytest.raises(ManifestError, match="cannot import plugin 'no_such_module_xyz'"):
        open_session(write_manifest(text))


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    class First:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            register("twin", lambda n, k, o: None)

    class Second:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            register("twin", lambda n, k, o: None)

    with pytest.raises(PluginError, match="'twin' is registered twice: by plugin first and by plugin second"):
        load_registry(entry_points=False, objects=[("first", First()), ("second", Second())])


def test_unknown_hook_is_an_error_at_load():
    class Typo:
        @hookimpl
        def bnbench_register_normaliser(self, register):
            pass

    with pytest.raises(PluginError, match="implements a hook bnbench does not define"):
        load_registry(entry_points=False, objects=[("typo", Typo())])


def test_hook_with_wrong_arguments_is_an_error_naming_the_plugin():
    class Wrong:
        @hookimpl
        def bnbench_register_models(self, registrar):
            pass

    with pytest.raises(PluginError, match="plugin 'wrong' is invalid"):
        load_registry(entry_points=False, objects=[("wrong", Wrong())])


def test_plugin_that_raises_is_named_and_others_keep_working():
    class Broken:
        @hookimpl
        def bnbench_register_models(self, register):
            raise RuntimeError("boom")

    registry = load_registry(objects=[("broken", Broken())])
    assert "mlp" in registry.names("model")
    assert "RuntimeError: boom" in registry.broken["broken"]
    with pytest.raises(UnknownNameError, match="plugin broken failed to load"):
        registry.get("model", "broken_model")


def test_register_validates_its_arguments():
    class BadOptions:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            register("x", lambda n, k, o: None, options=dict)

    with pytest.raises(PluginError, match="options must be a pydantic model"):
        load_registry(entry_points=False, objects=[("bad", BadOptions())])


def test_options_without_forbid_still_reject_unknown_fields():
    from pydantic import BaseModel, ValidationError

    class Loose(BaseModel):
        size: int = 1

    class Plugin:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            register("loose", lambda n, k, o: None, options=Loose)

    registry = load_registry(entry_points=False, objects=[("p", Plugin())])
    with pytest.raises(ValidationError):
        registry.get("normalizer", "loose").options.model_validate({"sise": 2})


def test_plugins_command_lists_kinds_with_provider(capsys):
    from bnbench.cli import main

    assert main(["plugins", "--kind", "normalizer"]) == 0
    out = capsys.readouterr().out
    assert "normalizers:" in out and "batchnorm" in out and "bnbench 0.1.0" in out
    assert textwrap.dedent(out).count("\n") > 3


def strings_naming(source: str, names: set[str]) -> list[tuple[int, str]]:
    """The string literals of ``source`` that are one of ``names`` or quote one inside them (a
    template, a TOML example), leaving out docstrings, ``description=`` / ``help=`` texts (they
    document) and torch's ``reduction="none"``."""
    import ast
    import re

    alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    quoted = re.compile("[\"'](" + alternatives + ")[\"']")
    tree = ast.parse(source)
    skipped = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("description", "help", "reduction"):
            skipped |= {id(part) for part in ast.walk(node.value)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skipped
        and (node.value in names or quoted.search(node.value))
    ]


def test_the_core_names_no_built_in_plugin():
    """No code of the core names a built-in plugin: what a metric measures, which metrics and
    executor are the defaults, which models the kit builds, which analyses run, all come from what
    plugins declare."""
    from pathlib import Path

    import bnbench

    registry = load_registry()
    built_in = {entry.name for kind in KINDS for entry in registry.entries(kind) if entry.plugin.package == "bnbench"}
    named = [
        f"{path.name}:{line}: {text[:60]!r}"
        for path in sorted(Path(bnbench.__file__).parent.glob("*.py"))
        for line, text in strings_naming(path.read_text(), built_in)
    ]
    assert named == []


def test_the_guard_sees_names_in_code_and_templates_but_not_in_documentation():
    source = '''
"""A docstring may mention mlp."""
DEFAULT = "local"
TEMPLATE = """SMALL = {{"resnet_cifar": {{"depth": 8}}}}"""
field = Field(1, description='e.g. "local" or "pool"')
loss = F.cross_entropy(x, y, reduction="none")
prose = "no local changes"
'''
    assert strings_naming(source, {"mlp", "local", "resnet_cifar", "pool", "none"}) == [
        (3, "local"),
        (4, 'SMALL = {{"resnet_cifar": {{"depth": 8}}}}'),
    ]


def install(site, package: str, module: str, code: str) -> None:
    """A package installed the way pip does, with a bnbench entry point, under ``site``."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bnbench]\n{module} = {module}\n")


COLLIDING = """
from torch import nn
from bnbench import hookimpl

@hookimpl
def bnbench_register_normalizers(register):
    register("batchnorm", lambda num_features, kind, options: nn.Identity())
"""


@pytest.fixture
def broken_packages(tmp_path, monkeypatch):
    """Two installed packages: one whose import fails, one that takes a built-in's name."""
    site = tmp_path / "site"
    install(site, "bnbench-broken", "bnbench_broken", "raise ImportError('no module named torch_extras')")
    install(site, "bnbench-colliding", "bnbench_colliding", COLLIDING)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield
    for module in ("bnbench_broken", "bnbench_colliding"):
        sys.modules.pop(module, None)


def test_a_broken_installed_plugin_never_blocks_unrelated_work(broken_packages, write_manifest, capsys):
    from bnbench.cli import main

    registry = load_registry()
    assert (
        "package bnbench-broken, entry point bnbench_broken = 'bnbench_broken', failed to import: "
        in (registry.broken["bnbench-broken:bnbench_broken"])
    )
    assert "registered twice" in registry.broken["bnbench-colliding:bnbench_colliding"]
    assert registry.get("normalizer", "batchnorm").plugin.package == "bnbench"  # the built-in keeps its name
    path = write_manifest(tiny_manifest())
    assert main(["plan", str(path)]) == 0  # the manifest names neither: it plans
    assert main(["plugins", "--kind", "placement"]) == 0
    assert "warning: plugin bnbench-broken:bnbench_broken failed to register" in capsys.readouterr().err
    with pytest.raises(UnknownNameError, match="plugin bnbench-broken:bnbench_broken failed to load"):
        registry.get("normalizer", "torch_extras_norm")  # a manifest that needs it fails, saying why


def test_an_installed_plugin_can_be_disabled_by_flag_or_environment(broken_packages, monkeypatch, capsys):
    from bnbench.cli import main

    monkeypatch.setenv("BNBENCH_DISABLE_PLUGINS", "bnbench-colliding")
    assert set(load_registry().broken) == {"bnbench-broken:bnbench_broken"}
    assert main(["--disable-plugin", "bnbench-broken", "plugins", "--json", "--kind", "model"]) == 0
    assert json.loads(capsys.readouterr().out)["broken"] == {}


def test_one_build_call_validates_options_once_and_calls_each_factory_as_its_kind_documents():
    from pydantic import field_validator

    from bnbench import Options
    from bnbench.spec import Component

    validations: list[int] = []

    class Width(Options):
        width: int = 4

        @field_validator("width")
        @classmethod
        def counted(cls, value: int) -> int:
            validations.append(value)
            return value

    calls: list[tuple[str, tuple]] = []

    class Plugin:
        @hookimpl
        def bnbench_register_models(self, register):
            register("probe_model", lambda options, data: calls.append(("model", (options.width, data))), options=Width)

        @hookimpl
        def bnbench_register_metrics(self, register):
            register(
                "probe_metric",
                lambda context, options: calls.append(("metric", (context, options.width))),
                options=Width,
            )

    registry = load_registry(objects=[("build_probe", Plugin())], entry_points=False)
    model, metric = (
        Component(name="probe_model", options={"width": 8}),
        Component(name="probe_metric", options={"width": 5}),
    )
    registry.build("model", model, "data")
    registry.build("model", model, "data")  # validated once: components are immutable
    registry.build("metric", metric, "context")
    assert calls == [("model", (8, "data")), ("model", (8, "data")), ("metric", ("context", 5))]
    assert validations == [8, 5]
    with pytest.raises(ValidationError):
        registry.build("model", Component(name="probe_model", options={"width": "wide"}), "data")

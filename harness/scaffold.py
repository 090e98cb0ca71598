"""``bnbench new-plugin NAME --kind KIND``: the skeleton of a plugin package, ready to install and test.

A skeleton is a complete package of one kind (``KINDS``): a ``pyproject.toml`` naming its module
in the ``bnbench`` entry-point group (as bnbench's built-ins and third-party packages register),
the module with a working component and its registration hook, a README, and a test that runs
from the first ``pytest`` once the package is installed: the contract kit for a normalizer or a
metric; for a model, the normalizer kit's model checks and a tiny study that trains it; for a
dataset, its data against its description and a tiny study that trains on it.

Names: ``NAME`` gives the distribution ``bnbench-NAME``, the import module ``bnbench_NAME``
(dashes as underscores, lower case) and the component ``NAME`` (what a manifest writes); a
``NAME`` that starts with ``bnbench-`` or ``bnbench_`` is not prefixed twice. ``distribution``,
``module`` and ``component`` override each. See docs/writing-plugins.md.
"""

from __future__ import annotations

import ast
import keyword
import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from bnbench.errors import BnbenchError

KINDS: tuple[str, ...] = ("normalizer", "metric", "model", "dataset")
"""The kinds of plugin ``new-plugin`` writes a skeleton of."""

PREFIXES = ("bnbench-", "bnbench_")

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
"""``NAME`` and ``--component``: a letter, then letters, digits, - and _ (no '.': it separates a metric's keys)."""
DISTRIBUTION = re.compile(r"^[A-Za-z](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
MODULE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
TAKEN_MODULES = frozenset({"bnbench", "harness", "plugins", "tests", "torch", "torchvision", "pydantic", "pytest"})
"""Import names a plugin module must not take: bnbench's own, the skeleton's tests folder, its dependencies."""

SKELETON_FILES = files("bnbench") / "skeletons"
"""The skeletons' templates (``string.Template`` text): package data, not code, so that the core's
modules name no built-in plugin (a skeleton's tests train through built-ins, as a user's would)."""


def _template(name: str) -> str:
    return (SKELETON_FILES / f"{name}.tmpl").read_text(encoding="utf-8")


PYPROJECT = _template("pyproject.toml")
README = _template("README.md")
NORMALIZER, NORMALIZER_TEST = _template("normalizer.py"), _template("normalizer_test.py")
METRIC, METRIC_TEST = _template("metric.py"), _template("metric_test.py")
MODEL, DATASET = _template("model.py"), _template("dataset.py")
TINY_STUDY_TEST = _template("tiny_study_test.py")
MODEL_TEST = _template("model_test.py") + TINY_STUDY_TEST
DATASET_TEST = _template("dataset_test.py") + TINY_STUDY_TEST

SKELETONS: dict[str, tuple[str, str, str, str]] = {
    "normalizer": (NORMALIZER, NORMALIZER_TEST, 'normalizer = "$component"', "bnbench's contract kit"),
    "metric": (
        METRIC,
        METRIC_TEST,
        'metrics = [..., "$component"]',
        "bnbench's metric contract kit",
    ),
    "model": (
        MODEL,
        MODEL_TEST,
        'model = "$component"',
        "the contract kit's model checks and a tiny study",
    ),
    "dataset": (DATASET, DATASET_TEST, 'dataset = "$component"', "its data against its description, a tiny study"),
}
"""Kind → (module template, test template, how a manifest names it, what its tests run)."""


@dataclass(frozen=True)
class PluginNames:
    """What a plugin package is called: on the package index, in ``import``, and in a manifest."""

    distribution: str
    module: str
    component: str


def plugin_names(
    name: str, *, distribution: str | None = None, module: str | None = None, component: str | None = None
) -> PluginNames:
    """The names of the package ``new-plugin NAME`` writes: ``bnbench-NAME``, ``bnbench_NAME`` and
    ``NAME`` (a ``bnbench-``/``bnbench_`` prefix on ``NAME`` is not doubled), each overridden when
    given. Raises ``BnbenchError`` naming the option and what it allows for a name that is not one."""
    if not NAME.match(name):
        raise BnbenchError(f"NAME {name!r} must start with a letter and hold only letters, digits, - and _")
    base = name
    for prefix in PREFIXES:
        if name.lower().startswith(prefix):
            base = name[len(prefix) :]
    if not base:
        raise BnbenchError(f"NAME {name!r} names nothing after its {name[:8]!r} prefix")
    names = PluginNames(
        distribution=distribution if distribution is not None else f"bnbench-{base}",
        module=module if module is not None else f"bnbench_{base}".replace("-", "_").lower(),
        component=component if component is not None else base,
    )
    given = {"distribution": distribution, "module": module, "component": component}

    def source(option: str) -> str:
        value = getattr(names, option)
        return f"--{option} {value!r}" if given[option] is not None else f"the {option} {value!r} (from NAME)"

    if not DISTRIBUTION.match(names.distribution):
        raise BnbenchError(
            f"{source('distribution')} must start with a letter, end with a letter or digit, and hold only "
            "letters, digits, ., - and _"
        )
    if names.distribution.lower().replace("_", "-").replace(".", "-") == "bnbench":
        raise BnbenchError(f"{source('distribution')} is bnbench's own name: installing it would replace bnbench")
    if not MODULE.match(names.module) or keyword.iskeyword(names.module):
        raise BnbenchError(
            f"{source('module')} must be a Python identifier: a letter, then letters, digits and _ (no -)"
        )
    if names.module in TAKEN_MODULES or names.module in sys.stdlib_module_names:
        raise BnbenchError(f"{source('module')} would shadow the module of that name: choose another")
    if not NAME.match(names.component):
        raise BnbenchError(
            f"{source('component')} must start with a letter and hold only letters, digits, - and _ "
            "(a manifest names it; . separates a metric's keys)"
        )
    return names


def _names_used(*templates: str) -> frozenset[str]:
    """The names templates import, define or use (builtins included): the names generated for a
    component must avoid them (a metric named ``float`` must not shadow ``float`` in its module)."""
    keys = ("component", "title", "factory", "cls", "options", "values", "imports")
    placeholders = {key: "placeholder" for key in keys}
    names: set[str] = set()
    for template in templates:
        tree = ast.parse(Template(template).substitute(placeholders, module="placeholder"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return frozenset(name for name in names if "placeholder" not in name.lower())


def _identifiers(component: str, kind: str, *templates: str) -> dict[str, str]:
    """Python names for the component's factory and classes, clear of the templates' own names."""
    taken = _names_used(*templates)
    words = [word for word in re.split(r"[-_]+", component.lower()) if word]
    factory = "_".join(words)
    if keyword.iskeyword(factory) or factory in taken or f"describe_{factory}" in taken:
        factory = f"{factory}_{kind}"
    cls = "".join(word.capitalize() for word in words)
    if cls in taken or f"{cls}Options" in taken or f"{cls}Values" in taken:
        cls += kind.capitalize()
    return {
        "title": " ".join(words).capitalize(),
        "factory": factory,
        "cls": cls,
        "options": f"{cls}Options",
        "values": f"{cls}Values",
    }


def new_plugin(
    name: str,
    directory: Path,
    *,
    kind: str = "normalizer",
    distribution: str | None = None,
    module: str | None = None,
    component: str | None = None,
) -> list[Path]:
    """Write the skeleton of a ``kind`` plugin package (names as ``plugin_names``) in
    ``directory / distribution``. Returns the files written: the pyproject, the README, the module
    and its test. Refuses a name that is not one and a package directory that exists."""
    if kind not in SKELETONS:
        raise BnbenchError(f"--kind {kind!r} is not one new-plugin writes: {', '.join(KINDS)}")
    names = plugin_names(name, distribution=distribution, module=module, component=component)
    root = directory / names.distribution
    if root.exists():
        raise BnbenchError(f"{root} already exists; choose another name or directory")
    module_template, test_template, usage, tests = SKELETONS[kind]
    values = {
        "kind": kind,
        "distribution": names.distribution,
        "module": names.module,
        "component": names.component,
        **_identifiers(names.component, kind, module_template, test_template),
    }
    values["usage"] = "`" + Template(usage).substitute(values) + "`"
    values["tests"] = tests
    # what a test imports from the module, in the order isort (ruff's I001) keeps: the class, then functions
    values["imports"] = ", ".join([values["options"], *sorted([values["factory"], f"describe_{values['factory']}"])])
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / names.module / "__init__.py": module_template,
        root / "tests" / f"test_{names.module}.py": test_template,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return list(files)


__all__ = ["KINDS", "PluginNames", "new_plugin", "plugin_names"]

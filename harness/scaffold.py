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

PYPROJECT = """\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "A bnbench $kind plugin: $component"
readme = "README.md"
requires-python = ">=3.11"
# Not "bnbench": install this package into the environment bnbench runs in (pip install -e .).
# bnbench is installed from its source checkout, not from the package index, so a dependency on
# that name could be satisfied by somebody else's upload.
dependencies = ["torch>=2.4", "pydantic>=2.6,<3"]

[project.optional-dependencies]
test = ["pytest>=8"]

# bnbench finds the plugin through this entry-point group: name = the module with the hooks.
[project.entry-points.bnbench]
$module = "$module"

[tool.setuptools]
packages = ["$module"]
"""

NORMALIZER = '''\
"""The $component normalizer for bnbench (replace this line with what it is, and its paper)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, SiteKind, hookimpl
from bnbench.hookspecs import Register


class $options(Options):
    """What a manifest may set beside ``name = "$component"``; unknown keys are errors."""

    eps: float = Field(1e-5, gt=0, description="Added to the variance for stability.")


class $cls(nn.Module):
    """Receives ``(N, C, H, W)`` at conv sites and ``(N, C)`` at fc sites; returns the same shape and dtype."""

    def __init__(self, num_features: int, kind: SiteKind, options: $options) -> None:
        super().__init__()
        self.eps = options.eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        # Your normalization goes here; then update the traits below to say what it is.
        return x * self.weight.view(shape) + self.bias.view(shape)


def $factory(num_features: int, kind: SiteKind, options: $options) -> nn.Module:
    """$title: a per-channel scale and shift, for now (the first line is the description bnbench shows)."""
    return $cls(num_features, kind, options)


@hookimpl
def bnbench_register_normalizers(register: Register) -> None:
    register("$component", $factory, options=$options, traits=NormalizerTraits())
'''

NORMALIZER_TEST = '''\
"""$component against bnbench's contract kit: one test per check and site."""

import pytest

from bnbench.testing import normalizer_checks


@pytest.mark.parametrize("check", normalizer_checks("$component"), ids=str)
def test_${factory}_meets_the_contract(check):
    check()
'''

METRIC = '''\
"""The $component metric for bnbench (replace this line with what it measures, and why)."""

from __future__ import annotations

from typing import TypedDict

import torch
from pydantic import Field

from bnbench import EpochContext, Options, hookimpl
from bnbench.hookspecs import Register


class $options(Options):
    """What a study may set beside ``name = "$component"`` in its ``metrics``; unknown keys are errors."""

    sample_size: int = Field(256, ge=2, description="Training examples of the fixed sample it measures on.")


class $values(TypedDict):
    """What it returns, each key stored as ``$component.<key>``: the contract kit checks it returns exactly these."""

    mean: float
    std: float


def $factory(context: EpochContext, options: $options) -> $values:
    """$title: the mean and spread of the logits on a fixed training sample, in eval mode (for now)."""
    model = context.run.model
    images, _ = context.sample(options.sample_size)  # the same examples at every epoch
    was_training = model.training
    model.eval()  # no batch statistics, no running-statistics update: leave the model as it was found
    try:
        with torch.no_grad():
            logits = model(images).float()
    finally:
        model.train(was_training)
    # Your measurement goes here: return finite floats, under the keys declared above.
    return {"mean": float(logits.mean()), "std": float(logits.std())}


@hookimpl
def bnbench_register_metrics(register: Register) -> None:
    register("$component", $factory, options=$options)
'''

METRIC_TEST = '''\
"""$component against bnbench's metric contract kit: one test per check and model."""

import pytest

from bnbench.testing import metric_checks


@pytest.mark.parametrize("check", metric_checks("$component"), ids=str)
def test_${factory}_meets_the_metric_contract(check):
    check()
'''

MODEL = '''\
"""The $component model for bnbench (replace this line with what it is, and its paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bnbench import DataInfo, NormSite, Options, hookimpl
from bnbench.hookspecs import Register


class $options(Options):
    """What a manifest may set beside ``name = "$component"``; unknown keys are errors."""

    # examples=[...]: the size the contract kits build it at (its smallest, for speed)
    width: int = Field(32, gt=0, examples=[8], description="Channels of the convolution, width of the hidden layer.")


class $cls(nn.Module):
    """A convolution, a hidden linear layer and the logits, with a normalizer site after each.

    The model never builds a normalizer: it puts a ``NormSite`` wherever one may go, and a
    study's placement and normalizer fill them (an unused site is the identity). ``source`` names
    the layer feeding a site (weight-acting normalizers need it); ``activated=True`` marks a site
    the model activates right after, through ``site.activate`` (skipped when the normalizer
    includes its own activation); ``role="output"`` marks the site on the logits.
    """

    def __init__(self, options: $options, data: DataInfo) -> None:
        super().__init__()
        channels, width = data.input_shape[0], options.width
        self.conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.conv_site = NormSite(width, "conv", source=self.conv, activated=True)
        self.hidden = nn.Linear(width, width, bias=False)
        self.hidden_site = NormSite(width, "fc", source=self.hidden, activated=True)
        self.out = nn.Linear(width, data.num_classes)
        self.out_site = NormSite(data.num_classes, "fc", role="output", source=self.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_site.activate(self.conv_site(self.conv(x)), F.relu)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        x = self.hidden_site.activate(self.hidden_site(self.hidden(x)), F.relu)
        return self.out_site(self.out(x))  # logits (N, data.num_classes)


def $factory(options: $options, data: DataInfo) -> nn.Module:
    """$title: a small convolutional network, for now (the first line is the description bnbench shows)."""
    return $cls(options, data)


@hookimpl
def bnbench_register_models(register: Register) -> None:
    register("$component", $factory, options=$options)
'''

TINY_STUDY_TEST = """\
def test_${factory}_trains_in_a_tiny_study(tmp_path):
    manifest = tmp_path / "tiny.toml"
    manifest.write_text(MANIFEST)
    session = open_session(manifest)  # the manifest checked as `bnbench run` checks it
    summary = run_manifest(session.manifest, registry=session.registry)
    with session.store(read_only=True) as store:
        runs = store.load(run.run_id for run in session.manifest.runs())
    assert len(runs) == 2 and summary.statuses == {"done": 2}, {run.run_id: run.error for run in runs.values()}
    for run in runs.values():
        assert len(run.epochs) == 2 and math.isfinite(run.final("test_loss"))
"""

MODEL_TEST = (
    '''\
"""$component through bnbench: the contract kit's model checks, and a tiny study that trains it."""

import math

import pytest

from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.sweep import run_manifest
from bnbench.testing import normalizer_checks

MANIFEST = """
[harness]
results = "results.sqlite"
device = "cpu"

[[studies]]
name = "tiny"
model = "$component"
dataset = { name = "synthetic", image_shape = [3, 16, 16], num_classes = 4, train_size = 64, test_size = 32 }
normalizer = ["batchnorm", "none"]
placement = "all"
epochs = 2
batch_size = 16
"""

# Built by the core with each normalizer at each placement: finite logits and gradients in training and eval,
# the normalizer at exactly the placement's sites (pairings the core refuses are skipped, with why).
REGISTRY = load_registry()  # every installed plugin, as bnbench loads them
MODEL_CHECKS = [
    check
    for normalizer in ("batchnorm", "groupnorm", "layernorm", "none")
    for check in normalizer_checks(
        normalizer, registry=REGISTRY, checks=["models_and_placements"], models=["$component"]
    )
]


@pytest.mark.parametrize("check", MODEL_CHECKS, ids=lambda check: f"{check.subject.name} {check.site}")
def test_${factory}_builds_and_trains_with_each_normalizer_and_placement(check):
    check()


'''
    + TINY_STUDY_TEST
)

DATASET = '''\
"""The $component dataset for bnbench (replace this line with what it is, and where it comes from)."""

from __future__ import annotations

import torch
from pydantic import Field

from bnbench import BuildContext, DataBundle, DataInfo, DatasetDescription, Options, hookimpl
from bnbench.hookspecs import Register

IMAGE_SHAPE = (1, 8, 8)
"""(C, H, W) of every example."""


class $options(Options):
    """What a manifest may set beside ``name = "$component"``; unknown keys are errors."""

    train_size: int = Field(512, gt=0, description="Training examples.")
    test_size: int = Field(128, gt=0, description="Test examples.")
    num_classes: int = Field(4, ge=2, le=IMAGE_SHAPE[1], description="Classes: class k lights row k of the image.")
    noise: float = Field(0.3, ge=0, description="Standard deviation of the pixel noise.")
    seed: int = Field(0, ge=0, description="Seed of the draw (of the data: each run has its own seed).")


def _split(size: int, options: $options, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, options.num_classes, (size,), generator=generator)
    images = torch.zeros(size, *IMAGE_SHAPE)
    images[torch.arange(size), 0, labels, :] = 1.0  # class k: row k lit
    images += options.noise * torch.randn(size, *IMAGE_SHAPE, generator=generator)
    return images.clamp(0, 1), labels


def $factory(options: $options, context: BuildContext) -> DataBundle:
    """$title: noisy 1x8x8 images, class k a lit row k, for now."""
    # The docstring's first line is the description bnbench shows. Data from files: take a `root` option,
    # find it with context.resolve(options.root) (relative to the manifest), and raise
    # bnbench.DatasetNotFoundError naming the directory and the files expected there.
    generator = torch.Generator().manual_seed(options.seed)
    train_images, train_labels = _split(options.train_size, options, generator)
    test_images, test_labels = _split(options.test_size, options, generator)
    mean = train_images.mean(dim=(0, 2, 3))
    std = train_images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return DataBundle(
        train_images=train_images,  # (N, C, H, W), float in [0, 1] (or uint8 0..255)
        train_labels=train_labels,  # (N,)
        test_images=test_images,
        test_labels=test_labels,
        num_classes=options.num_classes,
        mean=tuple(mean.tolist()),  # per channel, in [0, 1] units: the core normalizes each batch with them
        std=tuple(std.tolist()),
        description=f"$component: {options.train_size} + {options.test_size} images of {IMAGE_SHAPE}",
    )


def describe_$factory(options: $options) -> DatasetDescription:
    """What the data will be, without making it: `bnbench plan` checks studies against it before anything trains."""
    return DatasetDescription(DataInfo(IMAGE_SHAPE, options.num_classes), options.train_size)


@hookimpl
def bnbench_register_datasets(register: Register) -> None:
    register("$component", $factory, options=$options, describe=describe_$factory)
'''

DATASET_TEST = (
    '''\
"""$component through bnbench: its data against its description, and a tiny study that trains on it."""

import math

from bnbench import BuildContext
from bnbench.session import open_session
from bnbench.sweep import run_manifest

from $module import $imports

MANIFEST = """
[harness]
results = "results.sqlite"
device = "cpu"

[[studies]]
name = "tiny"
model = { name = "mlp", widths = [16] }
dataset = { name = "$component", train_size = 64, test_size = 32 }
normalizer = ["batchnorm", "none"]
placement = "all"
epochs = 2
batch_size = 16
"""


def test_${factory}_gives_the_data_its_description_promises(tmp_path):
    for options in ($options(), $options(train_size=10, test_size=3, num_classes=2)):
        bundle = $factory(options, BuildContext(tmp_path))
        bundle.check("$component")  # what the core checks of every bundle it loads
        described = describe_$factory(options)
        assert bundle.info == described.info
        assert len(bundle.train_labels) == described.train_size
        assert int(bundle.train_labels.min()) >= 0 and int(bundle.train_labels.max()) < bundle.num_classes


'''
    + TINY_STUDY_TEST
)

README = """\
# $distribution

A bnbench $kind plugin: $usage in a manifest.

```bash
pip install -e .              # into the environment bnbench runs in
bnbench plugins --kind $kind
python -m pytest tests        # $tests
```
"""

SKELETONS: dict[str, tuple[str, str, str, str]] = {
    "normalizer": (NORMALIZER, NORMALIZER_TEST, 'normalizer = "$component"', "bnbench's contract kit"),
    "metric": (
        METRIC,
        METRIC_TEST,
        'metrics = ["test_accuracy", "$component"]',
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

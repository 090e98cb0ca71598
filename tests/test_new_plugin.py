"""``bnbench new-plugin``: a package skeleton of each kind that installs and passes its own tests."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from conftest import builds_wheels_offline

from bnbench.cli import main
from bnbench.registry import load_registry
from bnbench.scaffold import KINDS
from bnbench.testing import METRIC_CHECKS, check_metric, check_normalizer, normalizer_checks

SMALL_MODELS = {"resnet_cifar": {"depth": 8}, "mlp": {"widths": [16, 8]}}


def new_plugin(tmp_path: Path, *args: str) -> Path:
    """Run ``bnbench new-plugin ARGS`` into ``tmp_path``; the package folder it wrote."""
    before = set(tmp_path.iterdir())
    assert main(["new-plugin", *args, "--directory", str(tmp_path)]) == 0
    (root,) = set(tmp_path.iterdir()) - before
    return root


def pyproject(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def import_plugin(root: Path, module: str) -> ModuleType:
    """The package's module, imported from its file (not installed)."""
    spec = importlib.util.spec_from_file_location(module, root / module / "__init__.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_new_plugin_names_the_distribution_module_and_component_after_name_by_default(tmp_path, capsys):
    root = new_plugin(tmp_path, "my-norm")
    assert root == tmp_path / "bnbench-my-norm"
    out = capsys.readouterr().out
    assert f"pip install -e {root}" in out and "bnbench plugins --kind normalizer" in out
    files = {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
    assert files == {"pyproject.toml", "README.md", "bnbench_my_norm/__init__.py", "tests/test_bnbench_my_norm.py"}
    project = pyproject(root)
    assert project["project"]["name"] == "bnbench-my-norm"
    assert project["project"]["entry-points"]["bnbench"] == {"bnbench_my_norm": "bnbench_my_norm"}
    assert project["tool"]["setuptools"]["packages"] == ["bnbench_my_norm"]
    assert 'normalizer = "my-norm"' in (root / "README.md").read_text()
    assert 'normalizer_checks("my-norm")' in (root / "tests" / "test_bnbench_my_norm.py").read_text()
    registry = load_registry(objects=[("bnbench_my_norm", import_plugin(root, "bnbench_my_norm"))])
    assert registry.get("normalizer", "my-norm").description.startswith("My norm: a per-channel scale and shift")


@pytest.mark.parametrize("name", ["bnbench-foo", "bnbench_foo"])
def test_a_name_that_already_has_the_bnbench_prefix_is_not_prefixed_twice(tmp_path, name):
    root = new_plugin(tmp_path, name, "--kind", "metric")
    assert root.name == "bnbench-foo"
    assert pyproject(root)["project"]["entry-points"]["bnbench"] == {"bnbench_foo": "bnbench_foo"}
    registry = load_registry(objects=[("bnbench_foo", import_plugin(root, "bnbench_foo"))])
    assert registry.has("metric", "foo")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--distribution", "acme-norms", ("acme-norms", "bnbench_scale", "scale")),
        ("--module", "acme_scale", ("bnbench-scale", "acme_scale", "scale")),
        ("--component", "shift_and_scale", ("bnbench-scale", "bnbench_scale", "shift_and_scale")),
    ],
)
def test_each_name_can_be_overridden_alone(tmp_path, option, value, expected):
    distribution, module, component = expected
    root = new_plugin(tmp_path, "scale", option, value)
    assert root == tmp_path / distribution
    project = pyproject(root)
    assert project["project"]["name"] == distribution
    assert project["project"]["entry-points"]["bnbench"] == {module: module}
    assert (root / module / "__init__.py").is_file() and (root / "tests" / f"test_{module}.py").is_file()
    registry = load_registry(objects=[(module, import_plugin(root, module))])
    assert registry.has("normalizer", component)


def test_a_metric_skeleton_with_every_name_overridden_passes_the_metric_kit_as_written(tmp_path):
    root = new_plugin(
        tmp_path,
        "ignored",
        "--kind",
        "metric",
        "--distribution",
        "acme-metrics",
        "--module",
        "acme_metrics",
        "--component",
        "logit_spread",
    )
    test = (root / "tests" / "test_acme_metrics.py").read_text()
    assert 'metric_checks("logit_spread")' in test
    registry = load_registry(objects=[("acme_metrics", import_plugin(root, "acme_metrics"))])
    results = check_metric("logit_spread", registry=registry, device="cpu", model_options=SMALL_MODELS)
    assert {r.status for r in results} == {"passed"} and len(results) == len(METRIC_CHECKS) * 2
    assert not [r for r in results if r.detail], "its TypedDict declares its keys: nothing checked in part"


def test_the_normalizer_skeleton_passes_the_contract_kit(tmp_path):
    root = new_plugin(tmp_path, "my-norm")
    registry = load_registry(objects=[("bnbench_my_norm", import_plugin(root, "bnbench_my_norm"))])
    results = check_normalizer("my-norm", registry=registry, device="cpu", model_options=SMALL_MODELS)
    # nothing skipped but the pairings where the placement selects no site of the model (tags on an MLP),
    # and the activation check of a normalizer that includes none
    expected = ("no site carries", "traits.includes_activation is False")
    assert not [r for r in results if r.status == "skipped" and not any(e in r.detail for e in expected)]


def test_the_model_skeleton_builds_with_every_normalizer_and_placement_the_core_allows(tmp_path):
    root = new_plugin(tmp_path, "tiny-net", "--kind", "model")
    registry = load_registry(objects=[("bnbench_tiny_net", import_plugin(root, "bnbench_tiny_net"))])
    for normalizer in ("batchnorm", "groupnorm", "layernorm", "none"):
        checks = normalizer_checks(
            normalizer, registry=registry, device="cpu", checks=["models_and_placements"], models=["tiny-net"]
        )
        results = {check.site: check.run() for check in checks}
        assert {r.status for r in results.values()} <= {"passed", "skipped"}, results
        assert results["model 'tiny-net' with placement 'all'"].status == "passed"


def test_the_dataset_skeleton_gives_a_bundle_its_description_matches(tmp_path):
    from bnbench import BuildContext
    from bnbench.spec import Component

    root = new_plugin(tmp_path, "stripes", "--kind", "dataset")
    registry = load_registry(objects=[("bnbench_stripes", import_plugin(root, "bnbench_stripes"))])
    component = Component(name="stripes", options={"num_classes": 3, "train_size": 40})
    bundle = registry.build("dataset", component, BuildContext(tmp_path))
    bundle.check("stripes")  # as the core checks every bundle it loads
    describe = registry.get("dataset", "stripes").extras["describe"]
    described = describe(registry.options("dataset", component))
    assert described.info == bundle.info and described.train_size == len(bundle.train_labels) == 40
    assert set(bundle.train_labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("kind", KINDS)
def test_no_skeleton_depends_on_bnbench(tmp_path, kind):
    root = new_plugin(tmp_path, f"tiny-{kind}", "--kind", kind)
    dependencies = pyproject(root)["project"]["dependencies"]
    assert dependencies and not [d for d in dependencies if d.lower().startswith("bnbench")]


@pytest.mark.parametrize(
    ("component", "kind", "factory"),
    [
        ("float", "metric", "float_metric"),
        ("torch", "normalizer", "torch_normalizer"),
        ("math", "dataset", "math_dataset"),
    ],
)
def test_a_component_named_like_a_name_its_module_uses_gets_a_factory_that_does_not_shadow_it(
    tmp_path, component, kind, factory
):
    root = new_plugin(tmp_path, "shadow", "--kind", kind, "--component", component)
    plugin = import_plugin(root, "bnbench_shadow")
    registry = load_registry(objects=[("bnbench_shadow", plugin)])
    assert registry.get(kind, component).factory is getattr(plugin, factory)
    if kind == "metric":
        results = check_metric(component, registry=registry, device="cpu", models=["mlp"], model_options=SMALL_MODELS)
        assert {r.status for r in results} == {"passed"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["9-lives"], "NAME '9-lives' must start with a letter and hold only letters, digits, - and _"),
        (["bnbench-9x"], "the component '9x' (from NAME) must start with a letter"),
        (["bnbench-"], "NAME 'bnbench-' names nothing after its 'bnbench-' prefix"),
        (["ok", "--distribution", "ok-"], "--distribution 'ok-' must start with a letter, end with a letter or digit"),
        (["ok", "--distribution", "bnbench"], "--distribution 'bnbench' is bnbench's own name"),
        (["ok", "--module", "my-mod"], "--module 'my-mod' must be a Python identifier"),
        (["ok", "--module", "json"], "--module 'json' would shadow the module of that name"),
        (["ok", "--component", "a.b"], "--component 'a.b' must start with a letter and hold only letters, digits"),
    ],
)
def test_a_bad_name_is_refused_in_one_line_naming_the_option_and_what_it_allows(tmp_path, capsys, args, message):
    assert main(["new-plugin", *args, "--directory", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bnbench: error: {message}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_new_plugin_refuses_an_existing_directory(tmp_path, capsys):
    (tmp_path / "bnbench-taken").mkdir()
    assert main(["new-plugin", "taken", "--directory", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert list((tmp_path / "bnbench-taken").iterdir()) == []


# -- installed, each skeleton's own tests ----------------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[dict[str, Path], dict[str, str]]:
    """A skeleton of every kind (default names: ``tiny-<kind>``), pip-installed together into a folder of
    their own; an environment that sees them (the test environment itself is left untouched)."""
    if not builds_wheels_offline():
        pytest.skip('installing the skeletons offline needs setuptools>=70.1 (pip install -e ".[dev]")')
    source = tmp_path_factory.mktemp("skeletons")
    roots = {kind: new_plugin(source, f"tiny-{kind}", "--kind", kind) for kind in KINDS}
    target = tmp_path_factory.mktemp("site-packages")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--quiet", "--target", str(target), *map(str, roots.values())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    paths = [str(target), os.environ.get("PYTHONPATH", "")]
    return roots, {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_skeleton_installs_and_passes_its_own_tests(installed, kind):
    roots, env = installed
    root = roots[kind]
    command = [sys.executable, "-m", "pytest", "tests", "-v", "-p", "no:cacheprovider"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " PASSED" in done.stdout and " FAILED" not in done.stdout and " ERROR" not in done.stdout
    if kind == "metric":  # the metric kit as the skeleton's test runs it: every check on every installed model
        models = [*load_registry().names("model"), "tiny-model"]
        for check in METRIC_CHECKS:
            for model in models:
                assert f"[{check}[model {model!r}]] PASSED" in done.stdout, done.stdout[-4000:]

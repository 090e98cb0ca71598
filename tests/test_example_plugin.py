"""The example third-party package in examples/: pip-installed, listed, used in a sweep, kit-tested."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import builds_wheels_offline

from bnbench.errors import ManifestError
from bnbench.session import open_session

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "bnbench-scalenorm"

MANIFEST = """
[harness]
results = "results.sqlite"
device = "cpu"

[[studies]]
name = "scalenorm_vs_bn"
model = { name = "mlp", widths = [16] }
dataset = { name = "synthetic", noise = 0.15, image_shape = [1, 8, 8], num_classes = 4, train_size = 128, test_size = 64 }
normalizer = ["batchnorm", { name = "scalenorm", init = 2.0 }]
placement = "all"
epochs = 1
batch_size = 32

[studies.optimizer]
lr = 0.05
"""  # noqa: E501 - a TOML inline table cannot wrap


@pytest.fixture(scope="module")
def example_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The example installed by pip into a directory of its own; an environment that sees it.

    The test environment itself is left untouched: a subprocess with ``PYTHONPATH`` pointing
    at the install directory sees the package and its ``bnbench`` entry point.
    """
    if not builds_wheels_offline():
        pytest.skip('installing the example offline needs setuptools>=70.1 (pip install -e ".[dev]")')
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site-packages")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--quiet", "--target", str(target), str(source)]
    installed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    paths = [str(target), os.environ.get("PYTHONPATH", "")]
    return source, {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_installed_example_is_listed_and_runs_in_a_sweep(example_env, tmp_path):
    _, env = example_env
    listing = run(env, "-m", "bnbench", "plugins", "--kind", "normalizer")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("scalenorm "))
    assert "bnbench-scalenorm 0.1.0" in row and "ScaleNorm" in row and "eps = 1e-05" in row
    assert "batchnorm " in listing.stdout  # the built-ins are still there

    (tmp_path / "manifest.toml").write_text(MANIFEST)
    sweep = run(env, "-m", "bnbench", "run", str(tmp_path / "manifest.toml"))
    assert sweep.returncode == 0, sweep.stderr
    assert "2 runs planned, 0 already had results; 2 done" in sweep.stderr
    assert "| scalenorm(init=2.0)" in sweep.stdout and "| batchnorm " in sweep.stdout


def test_example_passes_the_contract_kit_in_its_own_tests(example_env):
    source, env = example_env
    result = run(env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_without_the_package_the_manifest_names_an_unknown_normalizer(tmp_path, registry):
    (tmp_path / "manifest.toml").write_text(MANIFEST)
    with pytest.raises(ManifestError, match="field 'normalizer': unknown normalizer 'scalenorm'"):
        open_session(tmp_path / "manifest.toml", registry=registry)  # this process has not installed it

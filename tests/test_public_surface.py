"""bnbench's own name and public surface: the package installs as ``bnbench`` (no generic
top-level modules), everything a plugin needs is exported from ``bnbench``, the old ``harness``
name still works with a deprecation warning, and the light entry points import no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import bnbench

ROOT = Path(__file__).resolve().parent.parent


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter outside the repository (so only the installed package is importable)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    return out.stdout.strip()


def test_bnbench_help_answers_without_importing_torch():
    code = (
        "import sys\nfrom bnbench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    print('torch' in sys.modules)"
    )
    out = python(code)
    assert out.startswith("usage: bnbench") and out.splitlines()[-1] == "False"


def test_the_probe_of_torch_imports_can_see_one():
    """The check above can fail: a module that needs torch is seen."""
    assert python("import sys, bnbench.runner; print('torch' in sys.modules)") == "True"


def test_the_executor_contract_imports_no_torch():
    assert python("import sys, bnbench.executors; print('torch' in sys.modules)") == "False"


def test_every_public_name_resolves_and_plugins_need_nothing_else():
    for name in bnbench.__all__:
        assert getattr(bnbench, name) is not None, name
    for name in ("Register", "PlannedRun", "PlannedPack", "RunResult", "WorkResult", "RunInterrupted", "Options"):
        assert name in bnbench.__all__
    with pytest.raises(AttributeError):
        _ = bnbench.not_a_name


def test_the_old_harness_name_imports_the_same_modules_with_a_deprecation_warning():
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "import bnbench, bnbench.api\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from harness import hookimpl, NormSite\n"
        "    import harness.api\n"
        "print(hookimpl is bnbench.hookimpl, NormSite is bnbench.api.NormSite, harness.api is bnbench.api)\n"
        "print([(w.category.__name__, str(w.message)) for w in caught])\n"
    )
    identity, warnings = python(code).splitlines()
    assert identity == "True True True"
    assert "DeprecationWarning" in warnings and "from bnbench import" in warnings


@pytest.mark.slow
def test_the_wheel_installs_only_the_bnbench_package(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("harness", "plugins"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("bnbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"bnbench", next(t for t in tops if t.endswith(".dist-info"))}
    assert "bnbench/plugins/normalizers/batchnorm.py" in names and "bnbench/training.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "bnbench = bnbench.cli:main" in entry_points and "normalizers = bnbench.plugins.normalizers" in entry_points

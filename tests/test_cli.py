"""The command line, end to end: smoke run of the bundled manifest, plan, report, errors."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_manifest

ROOT = Path(__file__).parent.parent


def bnbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_smoke_profile_of_the_bundled_manifest_end_to_end(tmp_path):
    manifest = tmp_path / "benchmarks.toml"
    shutil.copy(ROOT / "benchmarks.toml", manifest)
    run = bnbench("run", str(manifest), "--profile", "smoke")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = run.stdout
    assert "## resnet110_cifar10_lr" in out and "## mlp_mnist" in out
    for placement in ("all", "final", "none"):
        rows = [line for line in out.splitlines() if line.startswith(f"| {placement} ")]
        assert len(rows) == 6  # three learning rates in each of two studies
    for study in ("normalizers_resnet110_cifar10", "skipinit_resnet110_cifar10", "normalizers_mlp_mnist"):
        assert f"## {study}" in out
    for normalizer, studies in [("batchnorm", 2), ("groupnorm", 2), ("instancenorm", 1), ("ws_groupnorm", 2)]:
        assert len([line for line in out.splitlines() if line.startswith(f"| {normalizer} ")]) == studies
    # 36 runs of the two placement studies; 7 + 1 + 6 of the normalizer comparison, whose MLP
    # batchnorm run is the same run as mlp_mnist's lr 0.1 seed 0 (same spec, same id)
    assert "49 runs planned, 0 already had results; 49 done" in run.stderr
    assert (tmp_path / "results" / "benchmarks.sqlite").is_file()

    again = bnbench("run", str(manifest), "--profile", "smoke", "--no-report")
    assert again.returncode == 0 and "49 already had results; nothing run" in again.stderr

    plan = bnbench("plan", str(manifest), "--profile", "smoke")
    assert plan.returncode == 0 and "49 runs, 0 to run" in plan.stdout
    assert plan.stdout.count("| done") == 50  # the shared MLP batchnorm run is listed under both studies
    full_plan = bnbench("plan", str(manifest))
    assert "167 runs, 167 to run" in full_plan.stdout  # 117 + 35 + 5 + 18, less 5 + 3 shared with lr 0.1

    report = bnbench("report", str(manifest), "--profile", "smoke", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert len(rows) == 18 + 7 + 1 + 6
    assert all(0 <= float(r["final_test_acc_mean"]) <= 1 for r in rows if r["final_test_acc_mean"])
    from_db = bnbench("report", str(tmp_path / "results" / "benchmarks.sqlite"), "--study", "mlp_mnist")
    assert from_db.returncode == 0 and "## mlp_mnist" in from_db.stdout and "resnet" not in from_db.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (tiny_manifest().replace('placement = ["all", "none"]', 'placement = "al"'), "Did you mean 'all'"),
        (tiny_manifest().replace("batch_size = 32", "batch_size = 0"), "field 'batch_size'"),
        ("studies = 3\n", "field 'studies'"),
        ("not [valid toml", "invalid TOML"),
    ],
)
def test_bad_manifest_exits_2_without_traceback(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("run", "plan"):
        result = bnbench(command, str(path))
        assert result.returncode == 2
        assert result.stderr.startswith("bnbench: error: ") and str(path) in result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results.sqlite").exists()  # nothing written


def test_report_before_any_run_says_what_to_do(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest())
    result = bnbench("report", str(path))
    assert result.returncode == 1 and "run `bnbench run" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_files_fail_the_run_with_a_clear_message(tmp_path):
    path = tmp_path / "m.toml"
    text = tiny_manifest(placement='"none"')
    start = text.index("dataset = ")
    end = text.index("\n", start)
    path.write_text(text[:start] + 'dataset = { name = "mnist", root = "nowhere" }' + text[end:])
    result = bnbench("run", str(path))
    assert result.returncode == 0  # a failed run is a result; the sweep goes on
    assert "failed" in result.stderr and f"{tmp_path / 'nowhere' / 'MNIST' / 'raw'}" in result.stderr


def test_version_and_entry_point():
    result = bnbench("--version")
    assert result.returncode == 0 and result.stdout.startswith("bnbench ")
    assert shutil.which("bnbench", path=str(Path(sys.executable).parent)) is not None

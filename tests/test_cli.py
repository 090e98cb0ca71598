"""The command line, end to end: smoke run of the bundled manifest, plan, report, errors."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas
import pytest
from conftest import tiny_manifest

from bnbench.cli import main

ROOT = Path(__file__).parent.parent


def bnbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnbench", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


TRAINING_STUDIES = ("resnet110_cifar10_lr", "mlp_mnist")
"""The studies this test knows, by kind; their run counts are derived from the manifest's expansion."""
TRAINABILITY_STUDIES = ("resnet110_trainability",)
"""The real unnormalized ResNet-110 (depth 110, the manifest's init): a few steps in the smoke profile."""
NORMALIZER_STUDIES = ("normalizers_resnet110_cifar10", "skipinit_resnet110_cifar10", "normalizers_mlp_mnist")
PROBE_STUDIES = (
    "resnet110_loss_landscape",
    "resnet110_activations",
    "resnet110_gradients",
    "resnet110_class_bias",
    "random_matrix",
    "resnet_max_lr",
    "resnet_jacobian",
)
"""Bjorck et al. 2018: probe studies (measurements instead of training), every one but random_matrix
swept over the eight init readings."""
REGULARIZATION_STUDIES = ("mnist_noise_bn_vs_l2", "mnist_gamma_batch_size")
"""Annamalai & Thakur 2022: training studies with the regularization analyses."""
FIGURES = {
    "resnet110_cifar10_lr": ["accuracy_vs_lr", "training_curves", "placement_share"],
    "resnet110_loss_landscape": ["relative_loss_vs_step"],
    "resnet110_activations": ["activation_stats_vs_depth", "channel_variance"],
    "resnet110_gradients": ["gradient_histogram", "gradient_norm_vs_depth", "conv_gradient_sum_ratio"],
    "resnet110_class_bias": ["class_bias_heatmap"],
    "random_matrix": ["singular_value_spread", "lyapunov_exponents"],
    "resnet_max_lr": ["max_lr_vs_depth"],
    "resnet_jacobian": ["jacobian_condition_vs_depth"],
    "mnist_noise_bn_vs_l2": ["noise_sweep", "noise_accuracy", "weight_trajectories"],
    "mnist_gamma_batch_size": ["weight_trajectories", "noise_sweep"],
}


def distinct_runs(plan_stdout: str) -> int:
    """Runs in ``bnbench plan`` output, each id once (studies may share a run: same spec, same id)."""
    rows = [line.split("|") for line in plan_stdout.splitlines() if re.match(r"^\| [0-9a-f]{16} ", line)]
    return len({row[1].strip() for row in rows})


def planned_runs(plan_stdout: str) -> Counter[str]:
    """Study → number of runs in ``bnbench plan`` output."""
    rows = [line.split("|") for line in plan_stdout.splitlines() if re.match(r"^\| [0-9a-f]{16} ", line)]
    return Counter(row[2].strip() for row in rows)


def section(report: str, study: str) -> str:
    """The report's text for one study: from its heading to the next study's."""
    start = report.index(f"## {study}\n")
    end = report.find("\n## ", start + 1)
    return report[start : end if end >= 0 else len(report)]


def runs_per_study(manifest: Path, profile: str | None) -> dict[str, int]:
    """Each study's run count, derived from the manifest's expansion (never pinned by hand)."""
    from bnbench.session import open_session

    return {study.name: len(study.runs) for study in open_session(manifest, profile).manifest.studies}


@pytest.mark.slow
def test_smoke_profile_of_the_bundled_manifest_end_to_end(tmp_path):
    manifest = tmp_path / "benchmarks.toml"
    shutil.copy(ROOT / "benchmarks.toml", manifest)
    smoke_plan = bnbench("plan", str(manifest), "--profile", "smoke").stdout
    smoke = planned_runs(smoke_plan)
    known = [*TRAINING_STUDIES, *TRAINABILITY_STUDIES, *NORMALIZER_STUDIES, *PROBE_STUDIES, *REGULARIZATION_STUDIES]
    expansion = {profile: runs_per_study(manifest, profile) for profile in ("smoke", None)}
    assert set(known) <= set(expansion["smoke"])  # the studies this test knows are in the manifest
    assert {study: smoke[study] for study in known} == {study: expansion["smoke"][study] for study in known}
    # every run once: the normalizer comparison's MLP batchnorm run is mlp_mnist's lr 0.1 seed 0
    total = distinct_runs(smoke_plan)

    # two worker processes of one thread each: the 2-core CI machine's fastest executor (1.3x local)
    run = bnbench("run", str(manifest), "--profile", "smoke", "--executor", '{ name = "pool", workers = 2 }')
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = run.stdout
    for study in TRAINING_STUDIES:
        standard_table = section(out, study).split("\n### Results\n")[1].split("\n### ")[0]
        for placement in ("all", "final", "none"):
            rows = [line for line in standard_table.splitlines() if line.startswith(f"| {placement} ")]
            assert len(rows) == 3  # three learning rates
        assert "### Accuracy against learning rate" in section(out, study)
        assert "### Normalizing only the final layer" in section(out, study)
    for study in NORMALIZER_STUDIES:
        assert f"## {study}" in out
    results_tables = "\n".join(block.split("\n### ")[0] for block in out.split("\n### Results\n")[1:])
    for normalizer, studies in [("batchnorm", 2), ("groupnorm", 2), ("instancenorm", 1), ("ws_groupnorm", 2)]:
        assert len([line for line in results_tables.splitlines() if line.startswith(f"| {normalizer} ")]) == studies
    assert out.count("\n### Other metrics, final epoch") >= len(TRAINING_STUDIES)  # every metric is in the report
    for study in PROBE_STUDIES:
        assert "\n### " in section(out, study), f"{study} has no analysis table"
    assert "failed:" not in out  # no analysis failed
    findings = out[out.index("## Key findings (smoke scale") : out.index("## Claims (smoke scale")]
    claims = out[out.index("## Claims (smoke scale: checks the software, not the claims)") : out.index("## Checks")]
    for study in set(PROBE_STUDIES) - {"random_matrix"}:  # probes are deterministic: every claim is measured
        rows = [line for line in findings.splitlines() if f"| {study} " in line]
        assert rows and not [r for r in rows if "not measured" in r], (study, rows)
        assert all("reading" in r for r in rows)  # decided per init reading
    rows = [line for line in claims.splitlines() if line.startswith("| ") and "verdict" not in line]
    assert rows and "smoke scale" not in "".join(rows)  # the title says it, once
    assert not [line for line in rows if "Fig. 1" in line or "with BN" in line]  # compact: no claim text, no source
    assert max(len(line) for line in out[out.index("## Key findings") :].splitlines()) <= 120
    for study in REGULARIZATION_STUDIES:
        assert "### Implied regularization against input noise" in section(out, study)
    verdicts = [line for line in findings.splitlines() if "| mnist_noise_bn_vs_l2 " in line]
    assert len(verdicts) == 5, verdicts
    checks = out[out.index("## Checks") :]
    assert "gaussian_slope" in checks and "baseline_trains" in checks
    # the real unnormalized ResNet-110 trains a few steps at lr 1e-4 (the paper's Fig. 1 rate)
    trainability = [line for line in smoke_plan.splitlines() if "| resnet110_trainability " in line]
    assert len(trainability) == 2
    # the one diverged run: the unnormalized ResNet-110 at lr 0.1 (resnet110_trainability)
    assert f"{total} runs planned, 0 already had results; 1 diverged, {total - 1} done" in run.stderr
    assert (tmp_path / "results" / "benchmarks.sqlite").is_file()

    again = bnbench("run", str(manifest), "--profile", "smoke", "--no-report")
    assert again.returncode == 0 and f"{total} already had results; nothing run" in again.stderr

    plan = bnbench("plan", str(manifest), "--profile", "smoke")
    assert plan.returncode == 0 and f"{total} runs, 0 to run" in plan.stdout
    # a shared run is listed under each study; the trainability study's lr-0.1 run diverged
    assert plan.stdout.count("| done") + plan.stdout.count("| diverged") == sum(smoke.values())
    (trained,) = [
        line for line in plan.stdout.splitlines() if "| resnet110_trainability " in line and "lr=0.0001 " in line
    ]
    assert "| done" in trained  # the real unnormalized ResNet-110 trains at the paper's rate
    full_plan = bnbench("plan", str(manifest))
    full = planned_runs(full_plan.stdout)
    assert {study: full[study] for study in known} == {study: expansion[None][study] for study in known}
    assert f"{distinct_runs(full_plan.stdout)} runs, {distinct_runs(full_plan.stdout)} to run" in full_plan.stdout

    report = bnbench("report", str(manifest), "--profile", "smoke", "--format", "csv", "--figures", str(tmp_path))
    study_tables = re.split(r"\r?\n\r?\n", report.stdout)[0]  # the analyses' tables follow a blank line
    rows = [
        r for r in csv.DictReader(io.StringIO(study_tables)) if r["study"] in {*TRAINING_STUDIES, *NORMALIZER_STUDIES}
    ]
    assert len(rows) == 18 + 7 + 1 + 6
    assert all(0 <= float(r["final_test_acc_mean"]) <= 1 for r in rows if r["final_test_acc_mean"])
    assert "# resnet110_cifar10_lr: Accuracy against learning rate" in report.stdout
    written = {path.name for path in tmp_path.glob("*.png")}
    assert {f"{study}__{name}.png" for study, names in FIGURES.items() for name in names} <= written
    from_db = bnbench("report", str(tmp_path / "results" / "benchmarks.sqlite"), "--study", "mlp_mnist")
    assert from_db.returncode == 0 and "## mlp_mnist" in from_db.stdout and "resnet" not in from_db.stdout

    exported = tmp_path / "smoke.parquet"  # every recorded value, as data
    assert bnbench("export", str(manifest), str(exported), "--profile", "smoke").returncode == 0
    frame = pandas.read_parquet(exported)
    with sqlite3.connect(tmp_path / "results" / "benchmarks.sqlite") as db:
        values = db.execute("SELECT count(*) FROM epochs JOIN study_runs USING (run_id)").fetchone()[0]
        joined = "SELECT r.measurements FROM runs r JOIN study_runs s ON s.run_id = r.id"
        measured = sum(numbers(json.loads(m or "{}")) for (m,) in db.execute(joined))
    assert frame["epoch"].notna().sum() == values and frame["epoch"].isna().sum() == measured > 0
    assert set(frame["study"]) == set(smoke)


def numbers(value: object) -> int:
    """The numbers in a probe's nested measurements (flags and labels are not numbers)."""
    if isinstance(value, dict):
        return sum(numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(numbers(v) for v in value)
    return int(isinstance(value, (int, float)) and not isinstance(value, bool))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (tiny_manifest().replace('placement = ["all", "none"]', 'placement = "al"'), "Did you mean 'all'"),
        (tiny_manifest().replace("batch_size = 32", "batch_size = 0"), "field 'batch_size'"),
        ("studies = 3\n", "field 'studies'"),
        ("not [valid toml", "invalid TOML"),
    ],
)
@pytest.mark.slow
def test_bad_manifest_exits_2_without_traceback(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("run", "plan"):
        result = bnbench(command, str(path))
        assert result.returncode == 2
        assert result.stderr.startswith("bnbench: error: ") and str(path) in result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results.sqlite").exists()  # nothing written


@pytest.mark.slow
def test_executor_from_the_command_line_overrides_the_manifest(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest().replace('device = "cpu"', 'device = "cpu"\nperformance = { threads = 1 }'))
    result = bnbench("run", str(path), "--no-report", "--executor", '{ name = "pool", workers = 2 }')
    assert result.returncode == 0, result.stderr
    assert "2 done" in result.stderr
    for value, message in (
        ("pol", "--executor, field 'executor': unknown executor 'pol'"),
        ('{ name = "pool", workers = 0 }', "--executor, field 'executor.workers'"),
        ("{ name = ", "--executor: invalid TOML inline table"),
    ):
        result = bnbench("run", str(path), "--executor", value)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_report_before_any_run_says_what_to_do(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest())
    result = bnbench("report", str(path))
    assert result.returncode == 1 and "run `bnbench run" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_dataset_files_stop_the_sweep_before_training_with_one_message(tmp_path):
    path = tmp_path / "m.toml"
    text = tiny_manifest(placement='"none"')
    start = text.index("dataset = ")
    end = text.index("\n", start)
    path.write_text(text[:start] + 'dataset = { name = "mnist", root = "nowhere" }' + text[end:])
    result = bnbench("run", str(path))
    assert result.returncode == 3, result.stderr  # README: 3 for a dataset's missing or damaged files
    assert f"MNIST files are missing from {tmp_path / 'nowhere' / 'MNIST' / 'raw'}" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert not (tmp_path / "results.sqlite").exists()  # nothing recorded: the fix is to place the files


@pytest.mark.slow
def test_version_and_entry_point():
    result = bnbench("--version")
    assert result.returncode == 0 and result.stdout.startswith("bnbench ")
    assert shutil.which("bnbench", path=str(Path(sys.executable).parent)) is not None


def test_off_a_terminal_a_sweep_prints_one_line_per_run_and_v_adds_epochs(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest(seeds="[0, 1]"))  # 4 runs of 2 epochs
    assert main(["run", str(path), "--no-report"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and all(": done — " in line for line in lines[:4]), lines  # 4 runs, then the summary
    assert lines[0].startswith("[1/4] tiny ") and lines[3].startswith("[4/4] tiny ")
    assert main(["run", str(path), "--no-report", "--rerun", "-v"]) == 0
    verbose = capsys.readouterr().err
    assert verbose.count(" epoch 1/2 ") == 4 and verbose.count(" epoch 2/2 ") == 4 and ": 8 steps" in verbose


def test_plan_resolved_shows_every_default_and_a_schedule_string_suggests_the_table(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest(seeds="[0, 1]"))
    assert main(["plan", str(path), "--resolved"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## tiny: 4 runs\n#   placement in all, none\n#   seed in 0, 1\n")
    spec = json.loads(out.split("\n", 3)[3])
    assert spec["schedule"] == {
        "gamma": 0.1, "kind": "multistep", "milestones": [0.5, 0.75], "warmup": "linear", "warmup_factor": 0.1,
        "warmup_steps": 0,
    }  # fmt: skip
    assert spec["optimizer"]["momentum"] == 0.9 and spec["normalizer"]["options"]["eps"] == 1e-5
    path.write_text(tiny_manifest().replace("batch_size = 32", 'batch_size = 32\nschedule = "constant"'))
    assert main(["plan", str(path)]) == 2
    assert 'schedule = { kind = "constant" }' in capsys.readouterr().err


STOPPER = """
import os
import signal

from bnbench import hookimpl


@hookimpl
def bnbench_step_end(run, step, loss):
    if run.spec.seed == 1 and step == 3:  # Ctrl-C during the second of three runs
        os.kill(os.getpid(), signal.SIGINT)
"""


def test_the_summary_after_a_stop_counts_the_interrupted_and_the_pending_runs(tmp_path, capsys):
    (tmp_path / "stopper.py").write_text(STOPPER)
    path = tmp_path / "m.toml"
    text = tiny_manifest(placement='"none"', seeds="[0, 1, 2]")
    path.write_text(text.replace('device = "cpu"\n', 'device = "cpu"\nplugins = ["stopper.py"]\n'))
    assert main(["run", str(path), "--no-report"]) == 130
    err = capsys.readouterr().err
    assert "3 runs planned, 0 already had results; 1 done, 1 interrupted, 1 not started." in err, err
    assert "Stopped before the sweep finished (2 runs left): run the same command again to resume." in err


def test_a_report_without_the_profile_the_store_was_filled_with_names_that_profile(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest() + '\n[profiles.quick."*"]\nepochs = 1\n')
    assert main(["run", str(path), "--profile", "quick", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["report", str(path)]) == 0
    assert capsys.readouterr().err == (
        "note: the store also holds results this report (no profile) does not show: "
        f"2 of profile 'quick' (`bnbench report {path} --profile quick`)\n"
    )
    assert main(["report", str(path), "--profile", "quick"]) == 0
    assert capsys.readouterr().err == ""  # its own results: nothing to say
    assert main(["run", str(path), "--no-report"]) == 0
    capsys.readouterr()
    assert main(["report", str(path)]) == 0
    assert capsys.readouterr().err == ""  # every run of this report has its result

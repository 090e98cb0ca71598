"""Faults of issue #24 that each lost or misreported something: results only in the write-ahead log,
a damaged store declared a success, read-only opens that leave files behind, reports truncated by a
failed write, plugins that exit at import, and a library that took over the host's signals."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_manifest
from test_cli import bnbench

from bnbench import hookimpl
from bnbench.errors import StoreError
from bnbench.files import OutputError, write_atomically
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

KILL_PLUGIN = Path(__file__).parent / "kill_plugin.py"


def with_plugins(text: str, *plugins: str) -> str:
    listed = ", ".join(f'"{p}"' for p in plugins)
    return text.replace('device = "cpu"\n', f'device = "cpu"\nplugins = [{listed}]\n', 1)


@pytest.fixture
def finished(write_manifest, registry) -> Path:
    path = write_manifest(tiny_manifest())
    assert run_manifest(open_session(path, registry=registry).manifest).statuses == {"done": 2}
    return path


@pytest.mark.slow
def test_a_copy_of_the_store_file_alone_holds_the_results_of_a_killed_sweep(write_manifest, tmp_path):
    path = write_manifest(with_plugins(tiny_manifest(seeds="[0, 1]"), str(KILL_PLUGIN)))
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "BNBENCH_TEST_KILL_AT_STEP": "2", "BNBENCH_TEST_KILL_MARKERS": str(markers)}
    env["BNBENCH_TEST_KILL_SEED"] = "1"  # the seed-0 run of placement "all" finishes first, then the sweep dies
    process = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(tmp_path / "results.sqlite", backup / "results.sqlite")  # what a user copies: the file alone
    with Store(backup / "results.sqlite", read_only=True) as store:
        done = store.db.execute("SELECT count(*) FROM runs WHERE status = 'done'").fetchone()[0]
    assert done >= 1


def test_a_store_without_its_tables_says_its_log_may_be_missing(tmp_path):
    empty = tmp_path / "r.sqlite"
    sqlite3.connect(empty).execute("PRAGMA user_version = 1").connection.close()  # a database with no tables
    with pytest.raises(StoreError, match=r"write-ahead log r\.sqlite-wal, which is missing"):
        Store(empty, read_only=True)


def test_run_refuses_a_store_with_a_damaged_last_page_with_the_line_report_gives(finished, tmp_path):
    store = tmp_path / "results.sqlite"
    data = bytearray(store.read_bytes())
    data[-4096:] = os.urandom(4096)
    store.write_bytes(bytes(data))
    outcomes = [bnbench(command, str(finished), cwd=tmp_path) for command in ("run", "report", "plan")]
    for result in outcomes:
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"results store {store} is damaged" in result.stderr and "Traceback" not in result.stderr
    assert "nothing run" not in outcomes[0].stderr


def test_plan_and_report_leave_no_log_files_beside_a_closed_store(finished, tmp_path):
    for command in ("plan", "report"):
        assert bnbench(command, str(finished), cwd=tmp_path).returncode == 0
    assert not list(tmp_path.glob("results.sqlite-*"))


def test_an_html_report_to_a_missing_folder_or_a_folder_is_one_line(finished, tmp_path):
    for target in (tmp_path / "no" / "such" / "page.html", tmp_path):
        result = bnbench("report", str(finished), "--html", str(target), cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and f"cannot write {target}" in result.stderr


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    page = tmp_path / "report.html"
    write_atomically(page, "the previous report")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        write_atomically(page, "a new report that does not fit")
    assert page.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left


@pytest.mark.parametrize(
    ("body", "said"),
    [("import sys\nsys.exit(0)\n", "exited at import"), ("raise KeyboardInterrupt\n", "KeyboardInterrupt")],
)
def test_a_plugin_that_exits_at_import_is_a_plugin_error(write_manifest, tmp_path, body, said):
    (tmp_path / "exits.py").write_text(body)
    path = write_manifest(with_plugins(tiny_manifest(), "exits.py"))
    result = bnbench("plan", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "exits.py" in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_called_as_a_library_leaves_the_host_signal_handlers_alone(write_manifest):
    seen = []

    class Watch:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    registry = load_registry(objects=[("watch", Watch())])
    path = write_manifest(tiny_manifest(placement='"none"'))
    run_manifest(open_session(path, registry=registry).manifest, registry=registry)
    assert seen and all(handler is before for handler in seen)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_rerun_killed_midway_keeps_every_old_result(write_manifest, registry, tmp_path):
    path = write_manifest(with_plugins(tiny_manifest(seeds="[0, 1]"), str(KILL_PLUGIN)))
    assert run_manifest(open_session(path, registry=load_registry([str(KILL_PLUGIN)])).manifest).statuses == {"done": 4}
    before = [r.run_id for r in open_session(path).manifest.runs()]
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "BNBENCH_TEST_KILL_AT_STEP": "2", "BNBENCH_TEST_KILL_MARKERS": str(markers)}
    env["BNBENCH_TEST_KILL_SEED"] = "1"
    process = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--rerun", "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    with Store(tmp_path / "results.sqlite", read_only=True) as store:
        statuses = store.statuses(before)
        after = store.load(before)
    assert set(statuses.values()) == {"done"} and len(statuses) == 4  # nothing lost at the kill
    assert all(after[run_id].epochs for run_id in before)


def test_no_user_supplied_string_reaches_the_terminal_raw(write_manifest, tmp_path):
    escape = "\x1b]0;owned\x07\x1b[2J"
    in_toml = "\\u001b]0;owned\\u0007\\u001b[2J"  # TOML strings hold control characters as escapes
    text = tiny_manifest(placement='"none"').replace('name = "tiny"', f'name = "tiny"\ndescription = "d{in_toml}"')
    text = text.replace('results = "results.sqlite"', f'results = "r{in_toml}.sqlite"')
    path = write_manifest(text, name=f"m{escape}.toml")
    for args in (("plan", str(path)), ("run", str(path)), ("report", str(path))):
        result = bnbench(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
        assert "\\x1b" in result.stdout + result.stderr  # shown escaped, not dropped
    missing = write_manifest(f'[[studies]]\nname = "m"\ndataset = {{ name = "mnist", root = "x{in_toml}" }}\n'
                             'model = { name = "mlp", widths = [8] }\nepochs = 1\n', name="missing.toml")  # fmt: skip
    result = bnbench("run", str(missing), cwd=tmp_path)
    assert "\x1b" not in result.stdout + result.stderr


@pytest.mark.slow
def test_deep_input_is_a_clear_error_not_a_recursion(write_manifest, tmp_path):
    # 5,000 levels: five times Python's recursion limit (tomllib takes 51 s to parse 50,000, 0.3 s for 5,000)
    deep = write_manifest(tiny_manifest() + "\n[x]\n" + "a." * 5_000 + "b = 1\n", name="deep.toml")
    result = bnbench("plan", str(deep), cwd=tmp_path)
    assert result.returncode == 2 and "nested" in result.stderr and "Traceback" not in result.stderr
    long = tiny_manifest().replace('results = "results.sqlite"', 'results = "' + "d/" * 2000 + 'r.sqlite"')
    result = bnbench("plan", str(write_manifest(long, name="long.toml")), cwd=tmp_path)
    assert result.returncode == 2 and "nests 2000 folders" in result.stderr and "Traceback" not in result.stderr


def peak_rss_gib(*command: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``command`` in a fresh interpreter that reports its child's peak resident memory."""
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(done.stdout)\nsys.stderr.write(done.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "bnbench", *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    *said, peak = result.stderr.strip().splitlines()
    result.stderr = "\n".join(said)
    return result, int(peak) / 2**20


def test_plan_checks_a_16_gib_model_without_allocating_it(write_manifest, tmp_path):
    text = tiny_manifest().replace("widths = [16]", "widths = [65536, 65536]")
    text = text.replace('device = "cpu"\n', 'device = "cpu"\nmemory_gib = 1000\n')  # allowed: only the check runs
    result, peak = peak_rss_gib("plan", str(write_manifest(text)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert peak < 4, f"plan took {peak:.1f} GiB to check a model of 16 GiB"


def test_a_model_larger_than_the_memory_is_refused_before_training(write_manifest, tmp_path):
    text = tiny_manifest().replace("widths = [16]", "widths = [65536, 65536]")
    text = text.replace('device = "cpu"\n', 'device = "cpu"\nmemory_gib = 8\n')
    path = write_manifest(text)
    for command in ("plan", "run"):
        result, peak = peak_rss_gib(command, str(path), cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "4,299,554,820 parameters" in result.stderr and "[harness] memory_gib = 8" in result.stderr
        assert "field 'model'" in result.stderr and peak < 4
    assert not (tmp_path / "results.sqlite").exists()


def test_a_size_that_overflows_storage_is_one_line_naming_the_model(write_manifest, tmp_path):
    text = tiny_manifest().replace("num_classes = 4", "num_classes = 1000000000000000000")
    result = bnbench("plan", str(write_manifest(text)), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "model 'mlp' cannot be built at these sizes" in result.stderr and "field 'model'" in result.stderr


OFFLINE_PLUGIN = """
import pathlib, torchvision
from bnbench import hookimpl

def offline(self):
    with open(pathlib.Path(__file__).with_name("downloads"), "a") as tried:
        tried.write("MNIST\\n")
    print("Downloading ... failed, trying the next mirror")  # what torchvision prints offline
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -2] Name unknown>")

torchvision.datasets.MNIST.download = offline  # the host is offline; the built-in mnist is what is tested

@hookimpl
def bnbench_register_datasets(register):
    pass
"""

MNIST_STUDY = """
[[studies]]
name = "{name}"
model = {{ name = "mlp", widths = [8] }}
dataset = {{ name = "mnist", download = true, train_size = 64, test_size = 32 }}
placement = ["all", "none"]
normalizer = "batchnorm"
epochs = 1
batch_size = 16
seeds = [0, 1, 2]
"""


def test_a_missing_dataset_with_download_fails_once_with_its_fix_and_records_nothing(write_manifest, tmp_path):
    (tmp_path / "offline.py").write_text(OFFLINE_PLUGIN)
    header = '[harness]\nresults = "results.sqlite"\ndevice = "cpu"\nplugins = ["offline.py"]\n'
    path = write_manifest(header + MNIST_STUDY.format(name="a") + MNIST_STUDY.format(name="b"))
    result = bnbench("run", str(path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert f"MNIST files are missing from {raw}: train-images-idx3-ubyte" in result.stderr
    assert "download = true could not fetch them" in result.stderr and "IDX files from" in result.stderr
    assert "Downloading" not in result.stdout + result.stderr  # torchvision's own prints are not shown
    assert (tmp_path / "downloads").read_text() == "MNIST\n"  # one try for the whole sweep, not one per run
    assert not (tmp_path / "results.sqlite").exists()

"""Executors: the local process pool gives the same results as in-process runs; failures and stops."""

from __future__ import annotations

import fault_plugins
import pytest
from conftest import signal_midway, tiny_manifest

from bnbench.errors import ManifestError
from bnbench.plugins.executors.pool import start_method
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

FAULTS = str(fault_plugins.__file__)


def manifest_text(executor: str, results: str) -> str:
    text = tiny_manifest(placement='["all", "none"]', seeds="[0, 1]", epochs=2)
    text = text.replace(
        'results = "results.sqlite"',
        f'results = "{results}"\nexecutor = {executor}\nperformance = {{ threads = 1 }}\nplugins = ["{FAULTS}"]',
    )
    return text.replace("[studies.optimizer]", "deterministic = true\n[studies.optimizer]")


def results(manifest) -> dict[str, tuple[str, list]]:
    with Store(manifest.results_path) as store:
        return {i: (r.status, r.epochs) for i, r in store.load(r.run_id for r in manifest.runs()).items()}


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["auto", "forkserver"])
def test_pool_results_equal_local_results(write_manifest, start_method):
    local = open_session(write_manifest(manifest_text('"local"', "local.sqlite"), "local.toml")).manifest
    executor = f'{{ name = "pool", workers = 2, start_method = "{start_method}" }}'
    pool = open_session(write_manifest(manifest_text(executor, "pool.sqlite"), "pool.toml")).manifest
    assert pool.executor.name == "pool" and pool.executor.options["workers"] == 2
    assert run_manifest(local).statuses == {"done": 4}
    summary = run_manifest(pool)
    assert summary.statuses == {"done": 4}
    assert results(pool) == results(local)
    assert run_manifest(pool).skipped == 4


def test_a_failing_run_in_a_worker_is_recorded_and_the_sweep_goes_on(write_manifest):
    text = manifest_text('{ name = "pool", workers = 2 }', "pool.sqlite").replace(
        'model = { name = "mlp", widths = [16] }', 'model = ["crash", { name = "mlp", widths = [16] }]'
    )
    manifest = open_session(write_manifest(text)).manifest
    summary = run_manifest(manifest)
    assert summary.statuses == {"failed": 4, "done": 4}
    with Store(manifest.results_path) as store:
        errors = [r.error for r in store.load(r.run_id for r in manifest.runs()).values() if r.status == "failed"]
    assert all(e.startswith("RuntimeError: kaboom") for e in errors)


def test_unknown_executor_and_bad_options_are_manifest_errors(write_manifest):
    registry = load_registry()
    with pytest.raises(ManifestError, match=r"unknown executor 'pol'.*Did you mean 'pool'"):
        open_session(write_manifest(manifest_text('"pol"', "r.sqlite")), registry=registry)
    with pytest.raises(ManifestError, match=r"harness\.executor\.workers"):
        open_session(write_manifest(manifest_text('{ name = "pool", workers = 0 }', "r.sqlite")), registry=registry)


@pytest.mark.slow
def test_sigterm_stops_pool_workers_at_a_checkpoint_and_the_sweep_resumes(write_manifest, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from test_reliability import SLOW_PLUGIN

    text = manifest_text('{ name = "pool", workers = 2 }', "pool.sqlite").replace(
        "plugins = [", f'plugins = ["{SLOW_PLUGIN}", '
    )
    # 10 epochs of 4 steps of 50 ms: seconds of training left after the first checkpoint, so the
    # signal lands mid-run even on a loaded machine
    path = write_manifest(text.replace("epochs = 2", "epochs = 10"))
    env = {**os.environ, "BNBENCH_TEST_STEP_SLEEP": "0.05"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], env=env, stderr=subprocess.PIPE, text=True
    )
    signal_midway(process, tmp_path / "pool.sqlite.checkpoints", signal.SIGTERM)
    manifest = open_session(path).manifest
    assert "interrupted" in {status for status, _ in results(manifest).values()}
    assert run_manifest(manifest).statuses["done"] >= 1
    assert {status for status, _ in results(manifest).values()} == {"done"}


def test_pool_forks_only_single_threaded_cpu_workers():
    # A forked child running OpenMP with several threads after its parent did can hang.
    assert start_method("auto", threads=1, gpus_per_worker=False) == "fork"
    assert start_method("auto", threads=2, gpus_per_worker=False) == "forkserver"
    assert start_method("auto", threads=1, gpus_per_worker=True) == "forkserver"
    assert start_method("spawn", threads=1, gpus_per_worker=False) == "spawn"


class WaitingExecutor:
    """Runs nothing: waits on each run as a remote executor would, calling keep_alive."""

    def __init__(self, seen: list[float]) -> None:
        self.seen = seen

    def execute(self, runs, context):
        import sqlite3
        import time

        from bnbench.executors import Outcome, failed_result

        def updated_at(run_id: str) -> float:
            with sqlite3.connect(context.worker.checkpoint_dir.with_suffix("")) as db:
                return db.execute("SELECT updated_at FROM runs WHERE id = ?", (run_id,)).fetchone()[0]

        for planned in runs:
            last = updated_at(planned.run_id)
            for _ in range(3):  # waits on the store, not on a clock: fails only if keep_alive never refreshes
                deadline = time.monotonic() + 120
                while updated_at(planned.run_id) == last and time.monotonic() < deadline:
                    time.sleep(0.02)
                    context.keep_alive()
                last = updated_at(planned.run_id)
                self.seen.append(last)
            yield Outcome(planned, failed_result(planned, "waited only"))


def test_remote_runs_claims_are_kept_alive_while_the_executor_waits(write_manifest):
    from bnbench import hookimpl

    seen: list[float] = []

    class Plugin:
        @hookimpl
        def bnbench_register_executors(self, register):
            register("waiting", lambda options: WaitingExecutor(seen))

    registry = load_registry([FAULTS], objects=[("waiting", Plugin())])
    text = manifest_text('"waiting"', "w.sqlite").replace("seeds = [0, 1]", "seeds = [0]")
    text = text.replace("[harness]", "[harness]\nclaim_timeout_s = 0.4", 1)  # keep-alive every 0.1 s
    manifest = open_session(write_manifest(text), registry=registry).manifest
    assert run_manifest(manifest, registry=registry).statuses == {"failed": 2}
    assert len(seen) == 6
    assert seen[0] < seen[1] < seen[2] and seen[3] < seen[4] < seen[5]  # refreshed while waiting

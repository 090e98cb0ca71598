"""The results store and sweeps: resume, statuses, rerun, interruption, schema version."""

from __future__ import annotations

import sqlite3

import fault_plugins
import pytest
from conftest import tiny_manifest

from bnbench import hookimpl
from bnbench.errors import StoreError
from bnbench.progress import Progress
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.store import SCHEMA_VERSION, Store
from bnbench.sweep import run_manifest


def quiet(n: int) -> Progress:
    import io

    return Progress(n, stream=io.StringIO(), bars=False)


def test_sweep_records_results_and_resume_skips_finished_runs(write_manifest, registry):
    manifest = open_session(write_manifest(tiny_manifest(seeds="[0, 1]")), registry=registry).manifest
    first = run_manifest(manifest, progress=quiet(4))
    assert first.planned == 4 and first.skipped == 0 and first.statuses["done"] == 4
    with Store(manifest.results_path) as store:
        stored = store.load(r.run_id for r in manifest.runs())
        assert {s.status for s in stored.values()} == {"done"}
        run = stored[manifest.runs()[0].run_id]
        assert [e for e, _, _ in run.epochs] == [1, 2]
        assert run.epochs[-1][2]["test_accuracy"] is not None and run.duration_s > 0
        assert store.studies()["tiny"][0][1] == {"placement": "all"}
    second = run_manifest(manifest, progress=quiet(0))
    assert second.skipped == 4 and sum(second.statuses.values()) == 0
    forced = run_manifest(manifest, rerun=True, progress=quiet(4))
    assert forced.statuses["done"] == 4


def test_failed_runs_rerun_and_diverged_runs_are_final(write_manifest):
    registry = load_registry(objects=[("fault_plugins", fault_plugins)])
    text = tiny_manifest(placement='"none"').replace(
        'model = { name = "mlp", widths = [16] }', 'model = ["crash", { name = "nan_after", at_step = 2 }]'
    )
    manifest = open_session(write_manifest(text), registry=registry).manifest
    summary = run_manifest(manifest, registry=registry, progress=quiet(2))
    assert summary.statuses == {"failed": 1, "diverged": 1}
    again = run_manifest(manifest, registry=registry, progress=quiet(1))
    assert again.skipped == 1 and again.statuses == {"failed": 1}
    with Store(manifest.results_path) as store:
        (crashed,) = [s for s in store.load(r.run_id for r in manifest.runs()).values() if s.status == "failed"]
        assert "kaboom" in crashed.error


def test_interrupted_sweep_keeps_finished_runs_and_resumes(write_manifest):
    class Interrupt:
        armed = True

        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if self.armed and run.spec.seed == 1 and step == 3:
                raise KeyboardInterrupt

    plugin = Interrupt()
    registry = load_registry(objects=[("interrupt", plugin)])
    manifest = open_session(
        write_manifest(tiny_manifest(placement='"none"', seeds="[0, 1, 2]")), registry=registry
    ).manifest
    summary = run_manifest(manifest, registry=registry, progress=quiet(3))
    assert summary.interrupted and summary.statuses == {"done": 1}
    ids = [r.run_id for r in manifest.runs()]
    with Store(manifest.results_path) as store:
        statuses = store.statuses(ids)
        assert statuses == {ids[0]: "done", ids[1]: "interrupted"}
        assert not store.load([ids[1]])[ids[1]].epochs  # nothing of the interrupted run is kept
    plugin.armed = False
    resumed = run_manifest(manifest, registry=registry, progress=quiet(2))
    assert resumed.skipped == 1 and resumed.statuses == {"done": 2}


def test_store_written_by_a_newer_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer than this bnbench understands"):
        Store(path)


def test_garbage_file_is_a_clear_store_error(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is damaged \\(file is not a database\\)"):
        Store(path)

"""Two or three sweeps over one store: each run trains exactly once, and no result is lost."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import tiny_manifest

from bnbench.records import RunResult
from bnbench.session import open_session
from bnbench.store import Store

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine

COUNTER_PLUGIN = """
import os
from bnbench import hookimpl

@hookimpl
def bnbench_run_start(run):
    with open(os.path.join(os.path.dirname(__file__), "starts.log"), "a") as log:
        log.write(run.spec.run_id() + "\\n")
"""


def test_a_finished_run_is_never_claimed_again(write_manifest, registry):
    manifest = open_session(
        write_manifest(tiny_manifest(placement='"none"', seeds="[0, 1]")), registry=registry
    ).manifest
    first, second = manifest.runs()
    with Store(manifest.results_path) as store:
        # sweep A planned both runs; sweep B claims and finishes the second meanwhile
        before_b = time.time()
        assert store.claim(second) is None
        store.record(second, RunResult(second.run_id, "done", started_at=before_b, finished_at=time.time()))
        assert store.claim(second) == "finished: done"  # A must not take it over (and drop its epochs)
        assert store.statuses([second.run_id]) == {second.run_id: "done"}
        # a --rerun sweep replaces results from before it started, not those another sweep wrote since
        assert store.claim(second, replace_finished_before=before_b) == "finished: done"
        assert store.claim(second, replace_finished_before=time.time() + 1) is None
        assert store.claim(first) is None


@pytest.mark.parametrize("sweeps", [2, 3])
def test_concurrent_sweeps_train_each_run_once(tmp_path: Path, sweeps: int):
    (tmp_path / "counter.py").write_text(COUNTER_PLUGIN)
    text = tiny_manifest(placement='["all", "none"]', lr="[0.05, 0.1, 0.2]", seeds="[0, 1]", epochs=3)
    text = text.replace('device = "cpu"\n', 'device = "cpu"\nplugins = ["counter.py"]\nperformance = { threads = 1 }\n')
    (tmp_path / "manifest.toml").write_text(text)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bnbench", "run", "manifest.toml", "--no-report"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(sweeps)
    ]
    errors = [p.communicate(timeout=600)[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), errors
    starts = Counter((tmp_path / "starts.log").read_text().split())
    assert len(starts) == 12 and set(starts.values()) == {1}, starts
    with Store(tmp_path / "results.sqlite") as store:
        assert set(store.statuses(starts).values()) == {"done"}


def _open_store(path: str, barrier, errors) -> None:
    barrier.wait()  # every process opens the new store at once
    try:
        with Store(path) as store:
            store.statuses([])
    except Exception as exc:  # the test reports what any process met
        errors.put(f"{type(exc).__name__}: {exc}")


def test_sweeps_creating_one_new_store_at_once_all_open_it(tmp_path: Path):
    """A sweep creating a store holds a lock on its folder until the schema is committed, and one
    that finds the file without its schema waits for it: none refuses the store another is making."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    path = tmp_path / "new" / "results.sqlite"
    barrier, errors = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_open_store, args=(str(path), barrier, errors)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    found = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert found == [] and all(p.exitcode == 0 for p in processes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.sqlite"]


def test_a_store_file_another_program_left_empty_is_made_a_store(tmp_path: Path):
    """sqlite3.connect on a missing path leaves an empty file (a watcher polling the store does):
    an empty file holds nothing, so a sweep makes it its store."""
    path = tmp_path / "results.sqlite"
    sqlite3.connect(path).close()
    assert path.stat().st_size == 0
    with Store(path) as store:
        assert store.statuses([]) == {}


def test_a_sweep_that_finds_a_store_being_created_waits_for_its_schema(tmp_path: Path, monkeypatch):
    """The race made deterministic: this test plays a sweep that has made the file but not yet its
    schema (holding the creation lock); a sweep opening the store meanwhile waits, then opens it."""
    import threading

    from bnbench import store as store_module

    path = tmp_path / "results.sqlite"
    creation_lock = store_module._creation_lock
    waiting = threading.Event()

    def watched(directory):
        waiting.set()
        return creation_lock(directory)

    outcome = {}

    def open_store():
        try:
            with Store(path) as store:
                outcome["statuses"] = store.statuses([])
        except Exception as exc:  # the assertion below shows it
            outcome["error"] = exc
            waiting.set()

    with creation_lock(tmp_path):
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # the file exists, its schema does not yet
        assert path.stat().st_size > 0
        monkeypatch.setattr(store_module, "_creation_lock", watched)
        thread = threading.Thread(target=open_store)
        thread.start()
        assert waiting.wait(60) and not outcome, outcome  # it found no schema and waits for the creator
        store_module._create_schema(db)
        db.close()
    thread.join()
    assert outcome == {"statuses": {}}

"""Reliability: checkpoint and resume, signals, SIGKILL at random times, claims, corrupt checkpoints."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_until_stopped, tiny_manifest

from bnbench import hookimpl
from bnbench.checkpoint import Checkpoints
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

SLOW_PLUGIN = Path(__file__).parent / "slow_plugin.py"
EPOCHS = 4
METRICS = 4  # train_loss, train_accuracy, test_loss, test_accuracy


def deterministic_manifest(results: str = "results.sqlite", seeds: str = "[0, 1]", extra_harness: str = "") -> str:
    text = tiny_manifest(placement='"all"', seeds=seeds, epochs=EPOCHS, lr="0.1")
    text = text.replace('results = "results.sqlite"', f'results = "{results}"\ncheckpoint_every = 1{extra_harness}')
    return text.replace("[studies.optimizer]", "deterministic = true\n[studies.optimizer]")


def results_of(path: Path, run_ids: list[str]) -> dict[str, tuple[str, list]]:
    with Store(path) as store:
        return {i: (r.status, r.epochs) for i, r in store.load(run_ids).items()}


def assert_store_consistent(path: Path) -> None:
    """The store opens, passes SQLite's integrity check, and every finished run is complete."""
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(path) as store:
        ids = [row[0] for row in store.db.execute("SELECT id FROM runs")]
        for run in store.load(ids).values():
            if run.status == "done":
                assert [e for e, _, _ in run.epochs] == list(range(1, EPOCHS + 1)), run.run_id
                assert all(len(metrics) == METRICS for _, _, metrics in run.epochs)


@pytest.fixture
def reference(write_manifest, registry):
    """The results of an uninterrupted sweep of the deterministic manifest, by a bnbench process
    (the same thread count as the processes under test, so results can match bitwise)."""
    path = write_manifest(deterministic_manifest("reference.sqlite"), "reference.toml")
    run = subprocess.run([sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], capture_output=True)
    assert run.returncode == 0, run.stderr
    manifest = open_session(path, registry=registry).manifest
    ids = [r.run_id for r in manifest.runs()]
    return ids, results_of(manifest.results_path, ids)


def bnbench_process(path: Path, sleep: float, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    env = {**os.environ, "BNBENCH_TEST_STEP_SLEEP": str(sleep)}
    return subprocess.Popen(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def with_slow_plugin(text: str) -> str:
    return text.replace('device = "cpu"', f'device = "cpu"\nplugins = ["{SLOW_PLUGIN}"]')


def test_stop_midway_checkpoints_and_resume_is_bitwise_identical(write_manifest, registry):
    manifest = open_session(write_manifest(deterministic_manifest(seeds="[0]")), registry=registry).manifest
    planned = manifest.runs()[0]
    uninterrupted = Runner(registry, base_dir=manifest.base_dir, device="cpu").run(planned)
    checkpoints = Checkpoints.beside(manifest.results_path)
    stopped = run_until_stopped(registry, planned, manifest.base_dir, checkpoints, at_step=6)  # midway, epoch 2
    assert stopped.step == 6 and stopped.path.is_file()
    resumed = Runner(registry, base_dir=manifest.base_dir, device="cpu", checkpoints=checkpoints).run(planned)
    assert resumed.status == "done" and resumed.info["resumed_from_step"] == 6
    assert [(e.epoch, e.step, e.metrics) for e in resumed.epochs] == [
        (e.epoch, e.step, e.metrics) for e in uninterrupted.epochs
    ]


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_uninterrupted_results(write_manifest, reference):
    ids, expected = reference
    path = write_manifest(with_slow_plugin(deterministic_manifest()))
    store_path = path.parent / "results.sqlite"
    checkpoints = Checkpoints.beside(store_path).directory
    process = bnbench_process(path, sleep=0.05)
    try:
        wait_for(lambda: any(checkpoints.glob("*/step-*.pt")))
    finally:
        process.kill()
        process.wait()
    assert_store_consistent(store_path)
    assert "done" not in {status for status, _ in results_of(store_path, ids[:1]).values()}
    rerun = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert results_of(store_path, ids) == expected
    assert not any(checkpoints.glob("*/*"))  # checkpoints of recorded runs are removed


@pytest.mark.slow
def test_sigterm_checkpoints_exits_cleanly_and_resumes(write_manifest, reference):
    ids, expected = reference
    path = write_manifest(with_slow_plugin(deterministic_manifest()))
    store_path = path.parent / "results.sqlite"
    checkpoints = Checkpoints.beside(store_path).directory
    process = bnbench_process(path, sleep=0.05)
    wait_for(lambda: any(checkpoints.glob("*/step-*.pt")))  # a run midway, past its first checkpoint
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "SIGTERM: checkpointing" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert "interrupted" in _statuses(store_path).values()
    rerun = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert results_of(store_path, ids) == expected


def _done(path: Path) -> int:
    return sum(1 for status in _statuses(path).values() if status == "done")


def _statuses(path: Path) -> dict[str, str]:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return dict(db.execute("SELECT id, status FROM runs"))
    except sqlite3.Error:
        return {}


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_or_corrupts(write_manifest, registry):
    seeds = "[0, 1, 2, 3, 4, 5]"  # more runs than kills, so every kill lands inside the sweep
    reference_path = write_manifest(deterministic_manifest("reference.sqlite", seeds=seeds), "reference.toml")
    run = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(reference_path), "--no-report"], capture_output=True
    )
    assert run.returncode == 0, run.stderr
    ids = [r.run_id for r in open_session(reference_path, registry=registry).manifest.runs()]
    expected = results_of(reference_path.parent / "reference.sqlite", ids)
    path = write_manifest(with_slow_plugin(deterministic_manifest(seeds=seeds)))
    store_path = path.parent / "results.sqlite"
    checkpoints = Checkpoints.beside(store_path).directory
    rng = random.Random(1234)
    moments = {  # each trial kills at an event of the sweep, never at a time that might precede them all
        "a run claimed": lambda before: "running" in _statuses(store_path).values(),
        "a new checkpoint": lambda before: set(checkpoints.glob("*/step-*.pt")) - before["checkpoints"],
        "one more result": lambda before: _done(store_path) > before["done"],
    }
    killed_at = []
    for _ in range(5):
        before = {"checkpoints": set(checkpoints.glob("*/step-*.pt")), "done": _done(store_path)}
        moment = rng.choice(sorted(moments))
        process = bnbench_process(path, sleep=0.01)
        wait_for(lambda m=moment, b=before, p=process: moments[m](b) or p.poll() is not None)
        process.kill()
        process.wait()
        killed_at.append(moment)
        if store_path.is_file():
            assert_store_consistent(store_path)
    assert process.returncode == -signal.SIGKILL, "the sweep finished before the last kill: give it more runs"
    final = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    assert results_of(store_path, ids) == expected


def test_corrupt_checkpoint_falls_back_to_an_older_one_or_scratch(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save("abc123", {"step": 4, "value": torch.tensor([1.0])})
    newest = checkpoints.save("abc123", {"step": 8, "value": torch.tensor([2.0])})
    newest.write_bytes(newest.read_bytes()[:40])  # truncated
    warnings: list[str] = []
    state = checkpoints.load_latest("abc123", warnings.append)
    assert state["step"] == 4 and torch.equal(state["value"], torch.tensor([1.0]))
    assert "unreadable" in warnings[0] and str(newest) in warnings[0]
    only = checkpoints.files("abc123")[0]
    only.write_bytes(b"garbage")
    assert checkpoints.load_latest("abc123", warnings.append) is None
    assert len(warnings) == 2


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    import pickle

    folder = tmp_path / "abc"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "step-0000000001.pt").write_bytes(pickle.dumps({"format": 1, "run_id": "abc", "x": Evil()}))
    warnings: list[str] = []
    assert Checkpoints(tmp_path).load_latest("abc", warnings.append) is None
    assert not (tmp_path / "pwned").exists() and warnings


def test_a_run_claimed_by_a_live_process_is_skipped_and_a_dead_claim_is_taken_over(write_manifest, registry):
    manifest = open_session(
        write_manifest(tiny_manifest(placement='"none"', seeds="[0, 1]")), registry=registry
    ).manifest
    first, second = manifest.runs()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = __import__("socket").gethostname()
    try:
        with Store(manifest.results_path) as store:
            for planned, pid in ((first, sleeper.pid), (second, dead.pid)):
                store.claim(planned)
                store.db.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"{host}:{pid}", planned.run_id))
        summary = run_manifest(manifest)
        assert summary.busy == 1 and summary.statuses == {"done": 1}
        statuses = _statuses(manifest.results_path)
        assert statuses == {first.run_id: "running", second.run_id: "done"}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_manifest(manifest).statuses == {"done": 1}  # the owner died: the claim is released


def test_claims_from_other_hosts_expire_without_a_heartbeat(write_manifest, registry):
    manifest = open_session(write_manifest(tiny_manifest(placement='"none"')), registry=registry).manifest
    (planned,) = manifest.runs()
    with Store(manifest.results_path) as store:
        store.claim(planned)
        store.db.execute(
            "UPDATE runs SET owner = 'elsewhere:1', updated_at = ? WHERE id = ?", (time.time(), planned.run_id)
        )
        assert store.claim(planned, stale_after=3600) == "elsewhere:1"
        store.db.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (time.time() - 7200, planned.run_id))
        assert store.claim(planned, stale_after=3600) is None


def test_nan_weights_are_divergence_even_if_the_loss_looked_finite(write_manifest):
    class Poison:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if step == 8:  # the last step of epoch 2: no later loss would reveal it
                with torch.no_grad():
                    next(run.model.parameters()).fill_(float("nan"))

    registry = load_registry(objects=[("poison", Poison())])
    manifest = open_session(write_manifest(tiny_manifest(placement='"none"', epochs=2)), registry=registry).manifest
    result = Runner(registry, base_dir=manifest.base_dir, device="cpu").run(manifest.runs()[0])
    assert result.status == "diverged" and result.diverged_step == 8 and "a parameter" in result.error


@pytest.mark.slow
def test_large_sweeps_need_confirmation(write_manifest):
    text = tiny_manifest(seeds="[0, 1, 2]").replace('device = "cpu"', 'device = "cpu"\nmax_runs = 4')
    path = write_manifest(text)
    refused = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert refused.returncode == 2 and "6 runs to run, more than max_runs = 4" in refused.stderr
    assert "--yes" in refused.stderr and not (path.parent / "results.sqlite").exists()
    accepted = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--yes", "--no-report"], capture_output=True, text=True
    )
    assert accepted.returncode == 0 and "6 done" in accepted.stderr

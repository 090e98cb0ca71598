"""A worker process that dies mid-run (SIGKILL, as from the OOM killer or a GPU fault) costs its
run one attempt, never the sweep: the run is retried on a new worker from its last checkpoint,
its siblings go on undisturbed, the sweep finishes, and the attempts are recorded. Tested for
``pool``, ``ray`` (Ray's own ``max_retries``) and ``submitit`` (the driver requeues the job),
with runs that kill themselves at a known step and with a worker killed from outside."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_distributed_executors import SUBMITIT, ray_address, ray_executor  # noqa: F401 - a fixture
from test_executors import manifest_text, results
from test_pool_orphans import alive
from test_reliability import SLOW_PLUGIN, bnbench_process, wait_for

from bnbench.checkpoint import Checkpoints
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine

KILL_PLUGIN = Path(__file__).parent / "kill_plugin.py"
KILL_AT_STEP = 6
"""Mid-epoch 2 of the tiny study (4 steps per epoch, a checkpoint at each epoch's end)."""


def kill_manifest(write_manifest, executor: str, name: str, plugins: tuple[Path, ...] = (KILL_PLUGIN,)):
    text = manifest_text(executor, f"{name}.sqlite")
    for plugin in plugins:
        text = text.replace("plugins = [", f'plugins = ["{plugin}", ')
    return open_session(write_manifest(text.replace("epochs = 2", "epochs = 3"), f"{name}.toml")).manifest


def local_reference(write_manifest):
    manifest = kill_manifest(write_manifest, '"local"', "local", plugins=())
    assert run_manifest(manifest).statuses == {"done": 4}
    return results(manifest)


def infos(manifest) -> dict[int, list[dict]]:
    """Seed → the stored ``info`` of its runs."""
    with Store(manifest.results_path) as store:
        stored = store.load(r.run_id for r in manifest.runs()).values()
    by_seed: dict[int, list[dict]] = {}
    for run in stored:
        by_seed.setdefault(run.spec["seed"], []).append({**run.info, "status": run.status, "error": run.error})
    return by_seed


@pytest.fixture
def kill_once(monkeypatch, tmp_path) -> dict[str, str]:
    """Every seed-0 run SIGKILLs its own process at step 6, once."""
    markers = tmp_path / "killed"
    markers.mkdir()
    env = {"BNBENCH_TEST_KILL_AT_STEP": str(KILL_AT_STEP), "BNBENCH_TEST_KILL_MARKERS": str(markers)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def check_retried_from_checkpoint(manifest, reference) -> None:
    assert results(manifest) == reference  # every run, the retried ones too, bitwise as if never killed
    by_seed = infos(manifest)
    for info in by_seed[0]:  # killed once: a second attempt, resumed from the epoch-1 checkpoint
        assert info["attempts"] == 2 and info["resumed_from_step"] == 4, info
    for info in by_seed[1]:  # the siblings: one attempt, never restarted
        assert info["attempts"] == 1 and "resumed_from_step" not in info, info
    assert Checkpoints.beside(manifest.results_path).run_ids() == []


def test_pool_retries_a_dead_workers_run_from_its_checkpoint_and_spares_its_siblings(write_manifest, kill_once):
    reference = local_reference(write_manifest)
    manifest = kill_manifest(write_manifest, '{ name = "pool", workers = 2 }', "pool")

    summary = run_manifest(manifest)

    assert summary.statuses == {"done": 4} and not summary.interrupted
    check_retried_from_checkpoint(manifest, reference)


def test_pool_gives_up_after_max_attempts_with_the_signal_and_finishes_the_sweep(
    write_manifest, kill_once, monkeypatch
):
    monkeypatch.setenv("BNBENCH_TEST_KILL_EVERY_ATTEMPT", "1")
    manifest = kill_manifest(write_manifest, '{ name = "pool", workers = 2, max_attempts = 2 }', "pool")

    summary = run_manifest(manifest)

    assert summary.statuses == {"done": 2, "failed": 2} and not summary.interrupted
    by_seed = infos(manifest)
    for info in by_seed[0]:
        assert info["status"] == "failed" and info["attempts"] == 2
        assert info["error"].startswith("the worker process was killed by SIGKILL, in each of 2 attempts"), info
    assert all(info["status"] == "done" and info["attempts"] == 1 for info in by_seed[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_worker_killed_from_outside_is_replaced_while_the_sweep_goes_on(write_manifest, tmp_path):
    reference = local_reference(write_manifest)
    text = manifest_text('{ name = "pool", workers = 2 }', "pool.sqlite").replace(
        "plugins = [", f'plugins = ["{SLOW_PLUGIN}", '
    )
    path = write_manifest(text.replace("epochs = 2", "epochs = 3"), "pool.toml")
    driver = bnbench_process(path, sleep=0.1)
    checkpoints = Checkpoints(tmp_path / "pool.sqlite.checkpoints")
    try:
        # the first run to checkpoint: kill the worker that runs it, as the OOM killer would
        wait_for(lambda: any(checkpoints.directory.glob("*/step-*.pt")), timeout=120)
        victim = next(iter(checkpoints.directory.glob("*/step-*.pt"))).parent.name
        pid = checkpoints.attempt_pids(victim)[-1]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), timeout=60)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    assert "was killed by SIGKILL; retrying it on a new worker from its last checkpoint (attempt 2 of 3)" in err
    manifest = open_session(path).manifest
    assert results(manifest) == reference
    attempts = {run_id: info["attempts"] for run_id, info in _infos_by_id(manifest).items()}
    assert attempts.pop(victim) == 2 and set(attempts.values()) == {1}


def _infos_by_id(manifest) -> dict[str, dict]:
    with Store(manifest.results_path) as store:
        return {i: r.info for i, r in store.load(r.run_id for r in manifest.runs()).items()}


def test_ray_retries_a_dead_workers_task_with_its_own_max_retries(write_manifest, kill_once, ray_address):  # noqa: F811
    reference = local_reference(write_manifest)
    env_vars = ", ".join(f'{k} = "{v}"' for k, v in kill_once.items())
    executor = ray_executor(ray_address).replace(
        "}", f", max_retries = 1, init_options = {{ runtime_env = {{ env_vars = {{ {env_vars} }} }} }} }}"
    )
    manifest = kill_manifest(write_manifest, executor, "ray")

    summary = run_manifest(manifest)

    assert summary.statuses == {"done": 4}
    check_retried_from_checkpoint(manifest, reference)


def test_submitit_requeues_a_job_whose_process_died(write_manifest, kill_once):
    pytest.importorskip("submitit")
    reference = local_reference(write_manifest)
    manifest = kill_manifest(write_manifest, SUBMITIT, "submitit")

    summary = run_manifest(manifest)

    assert summary.statuses == {"done": 4}
    check_retried_from_checkpoint(manifest, reference)

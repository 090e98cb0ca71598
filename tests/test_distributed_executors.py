"""Ray and submitit executors, for real: a Ray cluster started here on loopback, and submitit's
local executor. Each runs a small sweep whose results must equal a ``local`` run of the same
specs; failing runs are recorded and the sweep goes on; a stopped sweep resumes."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import signal_midway
from test_executors import manifest_text, results
from test_reliability import SLOW_PLUGIN

from bnbench.errors import PluginError
from bnbench.executors import StopFile, WorkerSpec
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine

CRASHING = ('model = { name = "mlp", widths = [16] }', 'model = ["crash", { name = "mlp", widths = [16] }]')
"""Adds a model that raises while being built: half the runs of the sweep fail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A two-CPU Ray cluster on loopback, started for these tests and stopped after them."""
    pytest.importorskip("ray")
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as patch, (temp_dir / "head.log").open("w+") as log:
        # No token authentication on this loopback cluster: Ray turns it on when it finds a token
        # in ~/.ray, and drivers without the token then cannot connect. Set here for this process
        # and the drivers it starts.
        patch.setenv("RAY_AUTH_MODE", "disabled")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "BNBENCH_TEST_STEP_SLEEP": "0.02"}
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if head.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        pytest.fail(f"the Ray head did not start: {log.read()[-2000:]}")
                    time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                head.kill()


def ray_executor(address: str) -> str:
    return f'{{ name = "ray", address = "{address}", num_cpus = 1 }}'


SUBMITIT = '{ name = "submitit", cluster = "local", poll_s = 0.2, timeout_min = 10 }'


@pytest.mark.parametrize("engine", ["ray", "submitit"])
def test_results_equal_local_results_and_failures_are_recorded(engine, request, write_manifest):
    if engine == "ray":
        executor = ray_executor(request.getfixturevalue("ray_address"))
        seeds = "[0, 1]"
    else:
        pytest.importorskip("submitit")
        executor, seeds = SUBMITIT, "[0]"  # one process per job: keep the sweep small
    local_text = manifest_text('"local"', "local.sqlite").replace("seeds = [0, 1]", f"seeds = {seeds}")
    local = open_session(write_manifest(local_text.replace(*CRASHING), "local.toml")).manifest
    remote_text = manifest_text(executor, f"{engine}.sqlite").replace("seeds = [0, 1]", f"seeds = {seeds}")
    remote = open_session(write_manifest(remote_text.replace(*CRASHING), f"{engine}.toml")).manifest
    expected = run_manifest(local).statuses
    assert expected["failed"] == expected["done"] >= 2

    summary = run_manifest(remote)

    assert summary.statuses == expected
    assert results(remote) == results(local)  # statuses and every epoch's metrics, bitwise
    failed = [r for r in results(remote).values() if r[0] == "failed"]
    assert len(failed) == expected["failed"]
    assert run_manifest(remote).skipped == expected["done"]  # finished runs are not run again
    stop_files = list(remote.results_path.with_name(remote.results_path.name + ".checkpoints").glob("stop-*"))
    assert stop_files == []


@pytest.mark.parametrize("engine", ["ray", "submitit"])
def test_packs_run_remotely_as_they_run_locally(engine, request, write_manifest):
    """A pack is one unit of work for any executor: sent to one worker, one result per member."""
    if engine == "ray":
        executor = ray_executor(request.getfixturevalue("ray_address"))
    else:
        pytest.importorskip("submitit")
        executor = SUBMITIT

    def packed(text: str) -> str:
        return text.replace("seeds = [0, 1]", "seeds = [0, 1]\npack = 2")

    local = open_session(write_manifest(packed(manifest_text('"local"', "local.sqlite")), "local.toml")).manifest
    remote = open_session(
        write_manifest(packed(manifest_text(executor, f"{engine}.sqlite")), f"{engine}.toml")
    ).manifest
    assert run_manifest(local).statuses == {"done": 4}
    assert run_manifest(remote).statuses == {"done": 4}
    assert results(remote) == results(local)  # bitwise: the same packs, the same kernels
    with Store(remote.results_path) as store:
        infos = [r.info for r in store.load(r.run_id for r in remote.runs()).values()]
    assert all(info["pack_size"] == 2 and info["attempts"] == 1 for info in infos)


@pytest.mark.parametrize("engine", ["ray", "submitit"])
def test_a_signalled_driver_stops_remote_runs_at_checkpoints_and_the_sweep_resumes(
    engine, request, write_manifest, tmp_path
):
    if engine == "ray":
        executor = ray_executor(request.getfixturevalue("ray_address"))  # its workers sleep 0.02 s per step
    else:
        pytest.importorskip("submitit")
        executor = SUBMITIT
    text = manifest_text(executor, f"{engine}.sqlite").replace("plugins = [", f'plugins = ["{SLOW_PLUGIN}", ')
    text = text.replace("epochs = 2", "epochs = 12")
    path = write_manifest(text)
    env = {**os.environ, "BNBENCH_TEST_STEP_SLEEP": "0.02"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"], env=env, stderr=subprocess.PIPE, text=True
    )
    signal_midway(driver, tmp_path / f"{engine}.sqlite.checkpoints", signal.SIGINT)
    manifest = open_session(path).manifest
    assert "interrupted" in {status for status, _ in results(manifest).values()}

    resumed = run_manifest(manifest)

    assert resumed.statuses["done"] >= 1 and set(resumed.statuses) == {"done"}
    uninterrupted = open_session(
        write_manifest(text.replace(f"{engine}.sqlite", "local.sqlite"), "local.toml")
    ).manifest
    run_manifest(uninterrupted)
    assert results(manifest) == results(uninterrupted)


def test_a_missing_engine_is_a_clear_error(write_manifest, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without the extra sees
    manifest = open_session(write_manifest(manifest_text(SUBMITIT, "r.sqlite"))).manifest
    with pytest.raises(PluginError, match=r"pip install 'bnbench\[submitit\]'"):
        run_manifest(manifest)


def test_slurm_without_slurm_is_a_clear_error(write_manifest, monkeypatch, tmp_path):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    manifest = open_session(
        write_manifest(manifest_text('{ name = "submitit", cluster = "slurm" }', "r.sqlite"))
    ).manifest
    with pytest.raises(PluginError, match=r"submitit executor: cannot use cluster 'slurm'.*srun"):
        run_manifest(manifest)


def test_stop_file_is_seen_by_other_processes_and_polled_cheaply(tmp_path: Path):
    path = tmp_path / "stop-x"
    watcher = StopFile(path, poll_s=0.0)
    assert not watcher.is_set()
    StopFile(path).set()
    assert watcher.is_set()
    lazy = StopFile(tmp_path / "stop-y", poll_s=3600)
    assert not lazy.is_set()
    StopFile(tmp_path / "stop-y").set()
    assert not lazy.is_set()  # not looked at again within poll_s
    watcher.clear()
    assert not path.exists()


def test_submitit_submits_one_slurm_job_array_and_cancels_unstarted_jobs_on_stop(write_manifest, tmp_path, monkeypatch):
    """No Slurm here: fake sbatch/sacct/scancel record what submitit asks of Slurm."""
    pytest.importorskip("submitit")
    import threading

    from bnbench.executors import ExecutorContext
    from bnbench.progress import Progress
    from bnbench.registry import load_registry

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "slurm.log"
    fakes = {
        "sbatch": f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"',
        "sacct": "exit 0",  # no record yet: the jobs count as not started
        "scancel": f'echo "scancel $*" >> {log}',
        "srun": "exit 0",  # submitit looks for it to tell it is on a Slurm cluster
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    executor_toml = (
        '{ name = "submitit", cluster = "slurm", slurm_partition = "gpu", cpus_per_task = 2, '
        'array_parallelism = 3, timeout_min = 90, poll_s = 0.05, parameters = { slurm_account = "bn" } }'
    )
    manifest = open_session(write_manifest(manifest_text(executor_toml, "slurm.sqlite"))).manifest
    entry = load_registry().get("executor", "submitit")
    executor = entry.factory(entry.options.model_validate(manifest.executor.options))
    stop = threading.Event()

    class StopAfterSubmitting(Progress):
        def log(self, message: str) -> None:
            super().log(message)
            stop.set()  # the sweep is signalled right after the array is submitted

    worker_spec = WorkerSpec(
        plugins=(),
        base_dir=manifest.base_dir,
        device="cpu",
        divergence_check_every=0,
        checkpoint_dir=tmp_path / "slurm.sqlite.checkpoints",
        checkpoint_every=1,
        stop_file=tmp_path / "slurm.sqlite.checkpoints" / "stop-test",
    )
    context = ExecutorContext(
        worker_spec, load_registry(), stop, StopAfterSubmitting(4, stream=io.StringIO(), bars=False),
        files=tmp_path / "slurm.sqlite.executor",
    )  # fmt: skip

    outcomes = list(executor.execute(iter(manifest.runs()), context))

    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--array=0-3%3", "--partition=gpu", "--cpus-per-task=2", "--time=90", "--account=bn"):
        assert f"#SBATCH {line}" in script, script
    assert [o.interrupted for o in outcomes] == ["its job had not started when the sweep stopped"] * 4
    assert log.read_text().count("scancel") == 4
    assert worker_spec.stop_file.exists()  # runs already going would checkpoint and stop


class FakeRay:
    """What RayExecutor asks of a cluster: its resources."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_ray_reserves_gpus_only_when_the_cluster_has_them_and_fills_the_cluster():
    pytest.importorskip("ray")
    from bnbench.plugins.executors.ray_cluster import RayExecutor, RayOptions

    default = RayExecutor(RayOptions())
    assert default._placement(FakeRay(CPU=4), "auto") == (0.0, "cpu")
    assert default._placement(FakeRay(CPU=4, GPU=2), "auto") == (1.0, "cuda")
    assert default._placement(FakeRay(CPU=4, GPU=2), "cpu") == (0.0, "cpu")
    with pytest.raises(PluginError, match="needs num_gpus > 0"):
        default._placement(FakeRay(CPU=4), "cuda")
    with pytest.raises(PluginError, match="the cluster has no GPUs"):
        RayExecutor(RayOptions(num_gpus=1))._placement(FakeRay(CPU=4), "auto")
    two_cpus = RayExecutor(RayOptions(num_cpus=2))
    assert two_cpus._slots(FakeRay(CPU=8, GPU=2), num_gpus=1) == 2  # GPUs are the limit
    assert two_cpus._slots(FakeRay(CPU=8), num_gpus=0) == 4
    assert RayExecutor(RayOptions(max_in_flight=3))._slots(FakeRay(CPU=8), num_gpus=0) == 3

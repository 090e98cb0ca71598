"""Pool workers never outlive their driver: SIGKILL the driver and its workers go too, at once,
whichever start method made them; the next driver resumes the runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_executors import manifest_text, results
from test_reliability import SLOW_PLUGIN, wait_for

from bnbench.session import open_session
from bnbench.sweep import run_manifest

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine


def descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_pool_workers_die_with_their_driver(write_manifest, tmp_path, start_method):
    executor = f'{{ name = "pool", workers = 2, start_method = "{start_method}" }}'
    text = manifest_text(executor, "pool.sqlite").replace("plugins = [", f'plugins = ["{SLOW_PLUGIN}", ')
    path = write_manifest(text)
    env = {**os.environ, "BNBENCH_TEST_STEP_SLEEP": "0.05"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = tmp_path / "pool.sqlite.checkpoints"
    try:
        wait_for(lambda: any(checkpoints.glob("*/step-*.pt")), timeout=120)
        workers = descendants(driver.pid)
        assert len(workers) >= 2, workers
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=120)  # they end with their driver
    manifest = open_session(path).manifest
    assert run_manifest(manifest).statuses.get("done", 0) >= 1  # a new driver resumes what was left
    assert {status for status, _ in results(manifest).values()} == {"done"}

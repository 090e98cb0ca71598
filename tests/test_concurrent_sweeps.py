"""Two or three sweeps over one store: each run trains exactly once, and no result is lost."""

from __future__ import annotations

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

"""A plugin that SIGKILLs the process running a run at a given training step, as the OOM killer
or a GPU fault would: for testing how executors replace a dead worker and retry its run.

Set ``BNBENCH_TEST_KILL_AT_STEP`` (the step) and ``BNBENCH_TEST_KILL_MARKERS`` (a folder);
runs of seed ``BNBENCH_TEST_KILL_SEED`` (default 0) die there once each (a marker file per run
remembers it), or at every attempt with ``BNBENCH_TEST_KILL_EVERY_ATTEMPT=1``, or once in all with
``BNBENCH_TEST_KILL_ONCE=1`` (a pack's members reach the step together).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from bnbench import hookimpl


@hookimpl
def bnbench_step_end(run, step, loss):
    at_step = os.environ.get("BNBENCH_TEST_KILL_AT_STEP")
    if at_step is None or step != int(at_step) or run.spec.seed != int(os.environ.get("BNBENCH_TEST_KILL_SEED", "0")):
        return
    marker = Path(os.environ["BNBENCH_TEST_KILL_MARKERS"]) / (
        "once" if os.environ.get("BNBENCH_TEST_KILL_ONCE") else run.run_id
    )
    if marker.exists() and not os.environ.get("BNBENCH_TEST_KILL_EVERY_ATTEMPT"):
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)

"""A plugin that slows every training step down (BNBENCH_TEST_STEP_SLEEP seconds), so that
tests can signal or kill a run process while it is midway."""

from __future__ import annotations

import os
import time

from bnbench import hookimpl


@hookimpl
def bnbench_step_end(run, step, loss):
    time.sleep(float(os.environ.get("BNBENCH_TEST_STEP_SLEEP", "0")))

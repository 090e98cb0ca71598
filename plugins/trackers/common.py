"""What the built-in trackers share: a run's name, its hyperparameters, and the epoch it resumes at."""

from __future__ import annotations

import re
from typing import Any

from bnbench import BnbenchError, RunContext
from bnbench.records import PlannedRun


def require(module: str, extra: str) -> Any:
    """Import ``module`` or stop with one line naming the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise BnbenchError(f"the {extra} tracker needs its extra: pip install 'bnbench[{extra}]'") from None


def run_name(planned: PlannedRun) -> str:
    """``lr=0.1,placement=all,seed=0`` (the study's axes and the seed), safe as a folder name."""
    parts = [f"{axis.split('.')[-1]}={value}" for axis, value in planned.axes.items()]
    text = ",".join([*parts, f"seed={planned.spec.seed}"])
    return re.sub(r"[^\w.=,+-]+", "_", text).strip("_")[:120]


def hyperparameters(planned: PlannedRun) -> dict[str, str | int | float | bool]:
    """The run's axes, seed and study as scalars (other values as text)."""
    values: dict[str, Any] = {"study": planned.study, "seed": planned.spec.seed, "run_id": planned.run_id}
    for axis, value in planned.axes.items():
        values[axis] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return values


def start_epoch(run: RunContext) -> int:
    """The last epoch a resumed run had finished (0 for a fresh start): its curves continue after it."""
    return run.start_step // run.steps_per_epoch if run.steps_per_epoch else 0

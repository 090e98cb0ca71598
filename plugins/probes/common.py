"""What the probes of Bjorck et al. 2018 share: options comparing two groups, batches, panels.

Grouping runs, statistics over seeds and claimable values are the public analysis toolkit,
``bnbench.analysis``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from bnbench import Options
from bnbench.api import ProbeContext, RunRecord, StudyResults


class CompareOptions(Options):
    """Options of an analysis that compares a normalized group of runs with an unnormalized one."""

    normalized: str = Field("all", description="Group label of the normalized network (BN at every hidden site).")
    unnormalized: str = Field("none", description="Group label of the unnormalized network.")


# -- probes -------------------------------------------------------------------------------------
def take_batches(context: ProbeContext, batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training mini-batches drawn with the probe's generator (epochs repeat as needed)."""
    data = context.data()
    if data.train_size < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({data.train_size} examples)")
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < count:
        for batch in data.train_batches(batch_size, context.generator):
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def learned(losses: list[float], classes: int, margin: float) -> bool:
    """Whether a run learned: the mean of the last tenth of its losses (at least the last one) is below
    ln(classes) − margin (a run that neither diverged nor learned sits at the uniform prediction's loss).
    The one rule of 'trains' for probes (``max_lr``) and training studies (``lr_sweep``)."""
    if not losses:
        return False
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail) < math.log(classes) - margin


def loss_ratio(after: torch.Tensor, before: torch.Tensor) -> float:
    """``after / before`` as a float; a non-finite loss after the step counts as ``inf``."""
    ratio = float(after) / float(before)
    return ratio if math.isfinite(ratio) else math.inf


# -- grouping runs ------------------------------------------------------------------------------
def probe_runs(study: StudyResults) -> list[RunRecord]:
    """The study's probe runs that finished with measurements."""
    return [r for r in study.runs if r.status == "done" and r.measurements]


# -- figures ------------------------------------------------------------------------------------
def panel_grid(fig: Any, count: int, columns: int = 3) -> list[Any]:
    """``count`` axes in rows of ``columns``, sized to fit."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig.set_size_inches(4.2 * columns, 3.4 * rows)
    fig.set_layout_engine("constrained")
    return [fig.add_subplot(rows, columns, i + 1) for i in range(count)]

"""The ``tensorboard`` tracker: TensorBoard event files, one folder per run, scalars per epoch.

Each run writes to ``<log_dir>/<study>/<axes and seed>-<run id>/``: every metric of every epoch
as a scalar (step = epoch) and the run's axes, seed and study as hparams (TensorBoard's HParams
tab). A resumed run continues its curves: the writer purges what the interrupted attempt wrote
after the checkpoint it resumes from, so no epoch appears twice. A fresh start of a run (``--rerun``)
replaces the run's old event files.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from bnbench import Options, RunContext, TrackerContext, hookimpl
from bnbench.plugins.trackers.common import hyperparameters, require, run_name, start_epoch
from bnbench.records import PlannedRun, RunResult


class TensorBoardOptions(Options):
    log_dir: str | None = Field(
        None,
        description="Folder of the event files, relative to the manifest (default: beside the results store, "
        "<results>.tensorboard); point `tensorboard --logdir` at it.",
    )


class TensorBoardTracker:
    """Writes each run's epochs to its own event-file folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writers: dict[str, Any] = {}

    def folder(self, planned: PlannedRun) -> Path:
        return self.root / planned.study / f"{run_name(planned)}-{planned.run_id}"

    @hookimpl
    def bnbench_run_start(self, run: RunContext, planned: PlannedRun) -> None:
        writer_module = require("torch.utils.tensorboard", "tensorboard")
        summary = require("torch.utils.tensorboard.summary", "tensorboard")
        folder = self.folder(planned)
        resumed = start_epoch(run)
        if not resumed and folder.exists():
            shutil.rmtree(folder)  # a fresh start: the run's earlier curves are not this one's
        writer = writer_module.SummaryWriter(log_dir=str(folder), purge_step=resumed + 1 if resumed else None)
        if not resumed:
            experiment, start, end = summary.hparams(hyperparameters(planned), {})
            for event in (experiment, start, end):
                writer.file_writer.add_summary(event)
        self.writers[run.run_id] = writer

    @hookimpl
    def bnbench_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        writer = self.writers.get(run.run_id)
        if writer is None:
            return
        for name, value in metrics.items():
            if value is not None and not math.isnan(value):
                writer.add_scalar(name, value, global_step=epoch)
        writer.flush()

    @hookimpl
    def bnbench_run_end(self, run: RunContext | None, result: RunResult, planned: PlannedRun) -> None:
        writer = self.writers.pop(planned.run_id, None)
        if writer is None:
            return
        writer.add_text(
            "bnbench/status", result.status + (f" at step {result.diverged_step}" if result.diverged_step else "")
        )
        writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def tensorboard_tracker(options: TensorBoardOptions, context: TrackerContext) -> TensorBoardTracker:
    """TensorBoard event files per run: every metric per epoch, the axes as hparams."""
    require("tensorboard", "tensorboard")
    root = context.resolve(options.log_dir) if options.log_dir else context.beside_results("tensorboard")
    return TensorBoardTracker(root)

"""The ``mlflow`` tracker: each run an MLflow run, with its params, per-epoch metrics and status.

Runs go to the experiment named after their study (or ``experiment``), tagged
``bnbench.run_id`` (the run id), ``bnbench.study`` and, when they end, ``bnbench.status``
(done, diverged, failed). Params are the run's axes, seed and study, then its whole resolved
spec (``spec.*``). Every finite metric of every epoch is logged with step = epoch. The default store is
a SQLite database beside the results store (``sqlite:///<results>.mlflow.db``: MLflow's own
file store is retired); a ``tracking_uri`` sends the runs to a server or another database.

A run that resumes continues the MLflow run it started (found by its tag), skipping the epochs
that run already logged, so no point appears twice; a fresh start (``--rerun``) is a new MLflow
run, and the unfinished MLflow runs of the same bnbench run are marked KILLED.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import Field

from bnbench import Options, RunContext, TrackerContext, hookimpl
from bnbench.frames import flatten
from bnbench.plugins.trackers.common import hyperparameters, require, run_name, start_epoch
from bnbench.records import PlannedRun, RunResult

BATCH = 100
"""Params per ``log_batch`` call (MLflow accepts at most 100)."""
STATUS = {"done": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}
"""bnbench's final status → MLflow's run status (a divergence is a result, not a failure)."""


class MlflowOptions(Options):
    tracking_uri: str | None = Field(
        None,
        description="Where the runs go: an MLflow server (http://host:5000) or database URI "
        "(default: sqlite:///<results>.mlflow.db beside the results store).",
    )
    experiment: str | None = Field(None, description="Experiment of every run (default: each run's study name).")


class MlflowTracker:
    """Logs each run to MLflow through ``MlflowClient`` (no global active run)."""

    def __init__(self, tracking_uri: str, experiment: str | None) -> None:
        tracking = require("mlflow.tracking", "mlflow")
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.runs: dict[str, tuple[str, int]] = {}
        """bnbench run id → (MLflow run id, the last epoch it holds)."""

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _earlier(self, experiment_id: str, run_id: str) -> list[Any]:
        query = f"tags.`bnbench.run_id` = '{run_id}'"
        return self.client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])

    @hookimpl
    def bnbench_run_start(self, run: RunContext, planned: PlannedRun) -> None:
        entities = require("mlflow.entities", "mlflow")
        experiment_id = self._experiment_id(self.experiment or planned.study)
        resumed = start_epoch(run)
        earlier = self._earlier(experiment_id, run.run_id)
        unfinished = [r for r in earlier if r.info.status in ("RUNNING", "SCHEDULED")]
        if resumed and unfinished:  # continue the interrupted attempt's MLflow run
            mlflow_id = unfinished[0].info.run_id
            keys = list(self.client.get_run(mlflow_id).data.metrics)  # an epoch's metrics go in one batch
            history = self.client.get_metric_history(mlflow_id, keys[0]) if keys else []
            logged = max((m.step for m in history), default=0)
            self.runs[run.run_id] = (mlflow_id, max(resumed, logged))
            return
        for stale in unfinished:
            self.client.set_terminated(stale.info.run_id, "KILLED")
        tags = {"bnbench.run_id": run.run_id, "bnbench.study": planned.study}
        created = self.client.create_run(experiment_id, tags=tags, run_name=run_name(planned))
        params = {
            **{k: str(v) for k, v in hyperparameters(planned).items()},
            **{
                f"spec.{key}": str(value)[:6000]
                for key, value in flatten(planned.spec.model_dump(mode="json"), lists=False)
            },
        }
        items = [entities.Param(key[:250], value) for key, value in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(created.info.run_id, params=items[start : start + BATCH])
        self.runs[run.run_id] = (created.info.run_id, resumed)

    @hookimpl
    def bnbench_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        if run.run_id not in self.runs:
            return
        mlflow_id, logged = self.runs[run.run_id]
        if epoch <= logged:
            return  # the interrupted attempt logged this epoch already
        entities = require("mlflow.entities", "mlflow")
        now = int(time.time() * 1000)
        values = [
            entities.Metric(name, float(value), now, epoch)
            for name, value in metrics.items()
            if value is not None and math.isfinite(value)  # MLflow's stores refuse NaN and infinities
        ]
        for start in range(0, len(values), BATCH * 10):
            self.client.log_batch(mlflow_id, metrics=values[start : start + BATCH * 10])
        self.runs[run.run_id] = (mlflow_id, epoch)

    @hookimpl
    def bnbench_run_end(self, run: RunContext | None, result: RunResult, planned: PlannedRun) -> None:
        found = self.runs.pop(planned.run_id, None)
        if found is None:
            return
        mlflow_id, _ = found
        self.client.set_tag(mlflow_id, "bnbench.status", result.status)
        if result.diverged_step is not None:
            self.client.set_tag(mlflow_id, "bnbench.diverged_step", str(result.diverged_step))
        self.client.set_terminated(mlflow_id, STATUS.get(result.status, "FAILED"))


def mlflow_tracker(options: MlflowOptions, context: TrackerContext) -> MlflowTracker:
    """MLflow runs: params, per-epoch metrics, status; a SQLite store beside the results by default."""
    uri = options.tracking_uri or f"sqlite:///{context.beside_results('mlflow.db')}"
    return MlflowTracker(uri, options.experiment)

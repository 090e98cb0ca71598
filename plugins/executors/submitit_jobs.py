"""The ``submitit`` executor: runs as Slurm job arrays through submitit (optional extra ``bnbench[submitit]``).

The pending runs are submitted as one job array (or arrays of ``max_in_flight`` runs), Slurm
running ``array_parallelism`` of them at once. A job that Slurm times out or preempts
checkpoints and is requeued, resuming from its last checkpoint. ``cluster = "local"`` runs
each job as a local process through submitit's own local executor (for testing a setup
without Slurm). Jobs must see the checkpoint directory beside the results store, as every
Slurm node sees the submitting user's shared home or work disk.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from bnbench import Options
from bnbench.errors import PluginError, error_text
from bnbench.executors import ExecutorContext, Outcome, Reply, WorkerSpec, import_engine
from bnbench.records import Work

NOT_STARTED = {"PENDING", "REQUEUED", "CONFIGURING", "UNKNOWN", "READY"}
"""Slurm job states of a job that has not started its run (cancelled when the sweep stops)."""


class SubmititOptions(Options):
    cluster: Literal["auto", "slurm", "local", "debug"] = Field(
        "auto",
        description=(
            "'slurm'; 'local': one local process per run through submitit's local executor; 'debug': in the "
            "driver's process; 'auto': Slurm when it is available, else local."
        ),
    )
    folder: str | None = Field(
        None,
        description=(
            "Where submitit writes job scripts, pickles and logs (relative to the manifest). "
            "Unset: '<results>.executor/submitit' beside the results store."
        ),
    )
    timeout_min: int = Field(24 * 60, ge=1, description="Time limit of each job, in minutes.")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per run (its torch threads).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per run (0 trains on the CPU).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per run, in GB (unset: the cluster's default).")
    slurm_partition: str | None = Field(None, description="Slurm partition.")
    array_parallelism: int = Field(64, ge=1, description="Jobs of an array running at once (Slurm's %N).")
    max_in_flight: int = Field(0, ge=0, description="Runs submitted at once; 0: every pending run, as one job array.")
    poll_s: float = Field(2.0, gt=0, le=3600, description="Seconds between polls of the jobs' states.")
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Attempts of a run whose job ended without a result (its process killed: out of memory, a node "
            "failure): the driver requeues it as a new job, which resumes from the run's last checkpoint. "
            "(Timeouts and preemptions are requeued by submitit itself and do not count.)"
        ),
    )
    parameters: dict[str, Any] = Field(
        {}, description="More parameters for submitit's AutoExecutor.update_parameters (e.g. slurm_account)."
    )


class SubmititRun:
    """What a job runs: one run. Checkpointable: on timeout or preemption submitit calls
    ``checkpoint`` and requeues the job, which then resumes from the run's last checkpoint."""

    def __call__(self, worker: WorkerSpec, planned: Work, device: str, threads: int) -> Reply:
        from bnbench.worker import run_in_worker  # the worker runtime: torch, the runner, in the job only

        return run_in_worker(worker, planned, device=device, threads=threads)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SubmititRun(), *args, **kwargs)


class SubmititExecutor:
    """Submits the runs as job arrays and collects each run's result as its job ends."""

    def __init__(self, options: SubmititOptions) -> None:
        self.options = options
        self.submitit = import_engine("submitit", "submitit")

    def _executor(self, submitit: Any, context: ExecutorContext) -> Any:
        options = self.options
        if options.folder is not None:
            folder = context.worker.base_dir / options.folder
        elif context.files is not None:
            folder = context.files / "submitit"
        else:
            folder = context.worker.checkpoint_dir.with_name("submitit")
        cluster = None if options.cluster == "auto" else options.cluster
        if cluster is None and submitit.AutoExecutor.which() != "slurm":
            cluster = "local"
        try:
            executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
        except (RuntimeError, ValueError) as exc:
            raise PluginError(f"submitit executor: cannot use cluster {options.cluster!r}: {exc}") from exc
        parameters: dict[str, Any] = {
            "timeout_min": options.timeout_min,
            "cpus_per_task": options.cpus_per_task,
            "gpus_per_node": options.gpus_per_node,
            "slurm_array_parallelism": options.array_parallelism,
            "name": "bnbench",
        }
        if options.mem_gb is not None:
            parameters["mem_gb"] = options.mem_gb
        if options.slurm_partition is not None:
            parameters["slurm_partition"] = options.slurm_partition
        try:
            executor.update_parameters(**{**parameters, **options.parameters})
        except (TypeError, ValueError) as exc:
            raise PluginError(f"submitit executor: invalid parameters: {exc}") from exc
        return executor

    def execute(self, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]:
        executor = self._executor(self.submitit, context)
        device = context.worker.device
        if not self.options.gpus_per_node:
            if device.startswith("cuda"):
                raise PluginError(f"device {device!r} needs gpus_per_node > 0 in the submitit executor's options")
            device = "cpu"
        task = SubmititRun()
        in_flight: dict[Any, Work] = {}
        attempts: Counter[str] = Counter()
        exhausted = False
        cancelled = False
        while True:
            if not exhausted and not context.stopping():
                room = (self.options.max_in_flight or float("inf")) - len(in_flight)
                batch: list[Work] = []
                while len(batch) < room:
                    planned = next(runs, None)
                    if planned is None:
                        exhausted = True
                        break
                    batch.append(planned)
                if batch:
                    with executor.batch():  # one job array
                        jobs = [
                            executor.submit(task, context.worker, p, device, self.options.cpus_per_task) for p in batch
                        ]
                    in_flight.update(zip(jobs, batch, strict=True))
                    context.progress.log(f"submitit: submitted {len(batch)} runs as job array {jobs[0].job_id}")
            if not in_flight:
                return
            if context.stopping() and not cancelled:
                cancelled = True
                for job in [j for j in in_flight if j.state in NOT_STARTED]:
                    job.cancel(check=False)
                    yield Outcome(in_flight.pop(job), interrupted="its job had not started when the sweep stopped")
            finished = [job for job in in_flight if job.done()]
            for job in finished:
                planned = in_flight.pop(job)
                outcome, died = self._outcome(job, planned, context)
                attempts[planned.key] += 1
                if died and attempts[planned.key] < self.options.max_attempts and not context.stopping():
                    context.progress.log(
                        f"submitit: job {job.job_id} ended without a result; requeued as attempt "
                        f"{attempts[planned.key] + 1} of {self.options.max_attempts}, from its last checkpoint"
                    )
                    retry = executor.submit(task, context.worker, planned, device, self.options.cpus_per_task)
                    in_flight[retry] = planned
                    continue
                yield outcome
            context.keep_alive()
            if not finished:
                time.sleep(self.options.poll_s)

    def _outcome(self, job: Any, planned: Work, context: ExecutorContext) -> tuple[Outcome, bool]:
        """The run's outcome, and whether its job died without any result (its process killed,
        as opposed to an error raised in the job): such a job may be requeued."""
        try:
            reply = job.result()
        except Exception as exc:
            if context.stop.is_set():
                return Outcome.of_error(planned, exc, stopping=True, where="its job"), False
            errors = self.submitit.core.utils
            died = isinstance(exc, errors.UncompletedJobError) and not isinstance(exc, errors.FailedJobError)
            message = f"submitit job {job.job_id} failed: {error_text(exc)}"
            if died:
                message = f"submitit job {job.job_id} ended without a result (killed?): {error_text(exc)}"
            return Outcome.failed(planned, message), died
        return Outcome.of_reply(planned, reply), False


def submitit_executor(options: SubmititOptions) -> SubmititExecutor:
    """Slurm job arrays through submitit (``cluster = "local"``: local processes, for testing)."""
    return SubmititExecutor(options)

"""The ``ray`` executor: each run is a Ray task on a Ray cluster (optional extra ``bnbench[ray]``).

Tasks reserve ``num_cpus`` CPUs (their torch thread count) and ``num_gpus`` GPUs; Ray
places them. Ray's worker processes live on between tasks, so a worker keeps its plugins
loaded and its datasets resident from one run to the next. Every node needs bnbench and the
sweep's plugins installed (or a ``runtime_env`` in ``init_options``) and must see the
checkpoint directory beside the results store (a shared disk on a multi-node cluster).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from bnbench import Options
from bnbench.errors import PluginError
from bnbench.executors import ExecutorContext, Outcome, Reply, WorkerSpec, import_engine
from bnbench.records import Work


class RayOptions(Options):
    address: str | None = Field(
        None,
        description=(
            "The Ray cluster to join, as ray.init(address=...) takes it: 'auto', 'HOST:PORT' or "
            "'ray://HOST:PORT'. Unset: RAY_ADDRESS if set, else a Ray instance started for the sweep."
        ),
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs each run reserves (its torch threads: rounded down, ≥ 1).")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each run reserves. Unset: 1 when the cluster has GPUs and the device is not 'cpu', else 0.",
    )
    max_in_flight: int = Field(
        0, ge=0, description="Runs submitted at once; 0: as many as the cluster's CPUs (and GPUs) can start."
    )
    max_retries: int = Field(
        2,
        ge=0,
        le=100,
        description=(
            "Times Ray reruns a run whose worker process died (Ray's own task retries: the OOM killer, a lost "
            "node); a rerun resumes from the run's last checkpoint, and the attempts are recorded."
        ),
    )
    init_options: dict[str, Any] = Field(
        {}, description="More keyword arguments for ray.init (e.g. runtime_env, namespace)."
    )


def _ray_task(worker: WorkerSpec, planned: Work, device: str, threads: int) -> Reply:
    """What a Ray task runs (on whichever node Ray placed it)."""
    from bnbench.worker import run_in_worker  # the worker runtime: torch, the runner, in the task only

    return run_in_worker(worker, planned, device=device, threads=threads)


class RayExecutor:
    """Submits each run as a Ray task as soon as the cluster has room for it."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self.ray = import_engine("ray", "ray")

    def _slots(self, ray: Any, num_gpus: float) -> int:
        if self.options.max_in_flight:
            return self.options.max_in_flight
        resources = ray.cluster_resources()
        slots = math.floor(resources.get("CPU", 1) / self.options.num_cpus)
        if num_gpus:
            slots = min(slots, math.floor(resources.get("GPU", 0) / num_gpus))
        return max(1, slots)

    def _placement(self, ray: Any, device: str) -> tuple[float, str]:
        """GPUs per run and the device a task trains on."""
        gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
        num_gpus = self.options.num_gpus
        if num_gpus is None:
            num_gpus = 1.0 if gpus_in_cluster and device != "cpu" else 0.0
        if device.startswith("cuda") and not num_gpus:
            raise PluginError(f"device {device!r} needs num_gpus > 0 in the ray executor's options")
        if num_gpus and not gpus_in_cluster:
            raise PluginError(f"the ray executor asks num_gpus = {num_gpus} per run, but the cluster has no GPUs")
        # Ray sets CUDA_VISIBLE_DEVICES for a task to the GPUs it reserved: 'cuda' is the first of those.
        return num_gpus, ("cuda" if num_gpus else "cpu")

    def execute(self, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            init = {"include_dashboard": False, "log_to_driver": False, **self.options.init_options}
            try:
                ray.init(address=self.options.address, **init)
            except Exception as exc:
                raise PluginError(
                    f"ray executor: cannot join the Ray cluster {self.options.address!r}: {exc} (is it running at "
                    "that address? a cluster with token authentication needs its token in RAY_AUTH_TOKEN or "
                    "~/.ray/auth_token)"
                ) from exc
        try:
            yield from self._execute(ray, runs, context)
        finally:
            if started_here:
                ray.shutdown()

    def _execute(self, ray: Any, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]:
        num_gpus, device = self._placement(ray, context.worker.device)
        threads = max(1, int(self.options.num_cpus))
        task = ray.remote(_ray_task).options(
            num_cpus=self.options.num_cpus,
            num_gpus=num_gpus,
            max_retries=self.options.max_retries,
            retry_exceptions=False,
        )
        slots = self._slots(ray, num_gpus)
        context.progress.log(f"ray: up to {slots} runs at once, {self.options.num_cpus} CPU and {num_gpus} GPU each")
        in_flight: dict[Any, Work] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < slots and not context.stopping():
                    planned = next(runs, None)
                    if planned is None:
                        exhausted = True
                        break
                    in_flight[task.remote(context.worker, planned, device, threads)] = planned
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                context.keep_alive()
                context.stopping()
                for ref in done:
                    planned = in_flight.pop(ref)
                    try:
                        yield Outcome.of_reply(planned, ray.get(ref))
                    except Exception as exc:
                        yield Outcome.of_error(planned, exc, stopping=context.stop.is_set(), where="its Ray task")
        finally:
            for ref in in_flight:  # left only when the driver is aborted: do not leave runs behind
                ray.cancel(ref, force=True)


def ray_executor(options: RayOptions) -> RayExecutor:
    """Ray tasks on a Ray cluster (``address``), each reserving ``num_cpus`` and ``num_gpus``."""
    return RayExecutor(options)

"""The worker runtime: a unit of work run in this process, for executors whose runs execute in
worker processes or on other hosts (``bnbench.executors`` is the contract they implement)."""

from __future__ import annotations

from typing import Any

from bnbench.api import TrackerContext
from bnbench.checkpoint import Checkpoints
from bnbench.executors import Reply, RunInterrupted, StopFile, StopRequest, WorkerSpec
from bnbench.records import Work
from bnbench.registry import Registry, load_registry
from bnbench.runner import Runner, make_trackers


def build_runner(
    worker: WorkerSpec,
    stop: StopRequest | None,
    *,
    registry: Registry | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> Runner:
    """A runner for the sweep ``worker`` describes; ``registry`` defaults to loading the plugins afresh."""
    performance = worker.performance
    if threads is not None and not performance.threads:
        performance = performance.model_copy(update={"threads": threads})
    registry = registry or load_registry(worker.plugins, base_dir=worker.base_dir)
    context = TrackerContext(base_dir=worker.base_dir, results=worker.results or worker.checkpoint_dir)
    return Runner(
        registry,
        trackers=make_trackers(registry, worker.trackers, context),
        base_dir=worker.base_dir,
        device=device or worker.device,
        divergence_check_every=worker.divergence_check_every,
        checkpoints=Checkpoints(worker.checkpoint_dir),
        checkpoint_every=worker.checkpoint_every,
        stop=stop,
        performance=performance,
    )


_warm_runner: tuple[tuple[Any, ...], Runner] | None = None
"""This worker process's runner and what it was built for, kept warm between runs."""


def run_in_worker(
    worker: WorkerSpec,
    planned: Work,
    *,
    device: str | None = None,
    threads: int | None = None,
    stop: StopRequest | None = None,
) -> Reply:
    """Run ``planned`` in this (worker) process: ``("result", WorkResult)`` or ``("interrupted", why)``.

    The attempt is logged beside the run's checkpoints (``Checkpoints.begin_attempt``) and its
    number recorded in the result's ``info["attempts"]``: an executor that retries a run whose
    worker died (each retry resumes from the last checkpoint) shows there how often it took.
    The runner (plugins loaded, datasets resident) is built on the first call and reused by
    later calls with the same arguments, as long-lived workers (Ray, a process pool) make
    them. It stops at a checkpoint when ``stop`` is set (default: when ``worker.stop_file``
    appears). ``threads`` pins the CPU threads unless the performance settings name a count.
    """
    global _warm_runner
    if stop is None and worker.stop_file is not None:
        stop = StopFile(worker.stop_file)
    key = (worker, device, threads, id(stop) if not isinstance(stop, StopFile) else stop.path)
    if _warm_runner is None or _warm_runner[0] != key:
        if _warm_runner is not None:
            _warm_runner[1].close()
        _warm_runner = (key, build_runner(worker, stop, device=device, threads=threads))
    attempt = Checkpoints(worker.checkpoint_dir).begin_attempt(planned.key)
    try:
        result = _warm_runner[1].run_work(planned)
    except RunInterrupted as stopped:
        return "interrupted", str(stopped)
    for each in result if isinstance(result, tuple) else (result,):
        each.info["attempts"] = attempt
    return "result", result

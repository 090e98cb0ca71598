"""Built-in executors: ``local`` (in-process, one run after another) and ``pool`` (local processes).

``pool`` runs one run per worker process, each pinned to its share of the CPU cores, or to
one GPU each when several are present. Workers rebuild the plugin registry from the installed
entry points and the manifest's plugin modules; only the driver writes the results store.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

import torch
from pydantic import Field

from harness import NoOptions, Options, hookimpl
from harness.executors import ExecutorContext, Outcome, WorkerSpec
from harness.hookspecs import Register
from harness.manifest import PlannedRun
from harness.runner import RunInterrupted, Runner, RunResult


def failed(planned: PlannedRun, message: str) -> RunResult:
    """A ``failed`` result for a run whose worker could not report one."""
    now = time.time()
    return RunResult(planned.run_id, "failed", error=message, started_at=now, finished_at=now)


class LocalExecutor:
    """Runs in this process, one after another, with the driver's plugins and progress bars."""

    def execute(self, runs: Iterator[PlannedRun], context: ExecutorContext) -> Iterator[Outcome]:
        runner = context.worker.runner(context.stop, registry=context.registry)
        for notice in runner.execution.notices:
            context.progress.log(f"notice: {notice}")
        for planned in runs:
            try:
                result = runner.run(planned, context.progress)
            except RunInterrupted as stopped:
                yield Outcome(planned, interrupted=str(stopped))
                return
            yield Outcome(planned, result)
            if context.stop.is_set():
                return


def local(options: NoOptions) -> LocalExecutor:
    """In-process and sequential (the default): progress bars per run, lifecycle plugins in-process."""
    return LocalExecutor()


class PoolOptions(Options):
    workers: int = Field(2, ge=1, description="Worker processes, each running one run at a time.")
    start_method: Literal["spawn", "forkserver"] = Field(
        "spawn", description="How workers start (spawn is safe with CUDA and threads)."
    )


_worker_runner: Runner | None = None


def _init_worker(worker: WorkerSpec, stop: Any, devices: Any, threads: int | None) -> None:
    """In each worker: stop at the next step on SIGINT/SIGTERM, take a device, build a runner."""
    global _worker_runner

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    device = devices.get() if devices is not None else None
    _worker_runner = worker.runner(stop, device=device, threads=threads)


def _work(planned: PlannedRun) -> tuple[str, Any]:
    assert _worker_runner is not None
    try:
        return "result", _worker_runner.run(planned)
    except RunInterrupted as stopped:
        return "interrupted", str(stopped)


def _device_slots(device: str, workers: int) -> list[str] | None:
    """One device per worker: CUDA devices round-robin when there are several, else None (shared)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return None


class PoolExecutor:
    """Runs in ``workers`` local processes, one run per worker at a time."""

    def __init__(self, options: PoolOptions) -> None:
        self.workers = options.workers
        self.context = multiprocessing.get_context(options.start_method)

    def execute(self, runs: Iterator[PlannedRun], context: ExecutorContext) -> Iterator[Outcome]:
        stop = self.context.Event()
        slots = _device_slots(context.worker.device, self.workers)
        cpu_share = None if slots else max(1, (os.cpu_count() or 1) // self.workers)
        pending = iter(runs)
        exhausted = False
        while True:  # a pool whose worker died is replaced, and the sweep goes on
            devices = None
            if slots:
                devices = self.context.Queue()
                for slot in slots:
                    devices.put(slot)
            pool = ProcessPoolExecutor(
                self.workers,
                mp_context=self.context,
                initializer=_init_worker,
                initargs=(context.worker, stop, devices, cpu_share),
            )
            in_flight: dict[Future[tuple[str, Any]], PlannedRun] = {}
            broken = False
            try:
                while True:
                    while not broken and len(in_flight) < self.workers and not context.stop.is_set():
                        planned = next(pending, None)
                        if planned is None:
                            exhausted = True
                            break
                        in_flight[pool.submit(_work, planned)] = planned
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                    if context.stop.is_set():
                        stop.set()
                    for future in done:
                        planned = in_flight.pop(future)
                        try:
                            kind, payload = future.result()
                        except BrokenProcessPool as exc:
                            broken = True
                            yield Outcome(planned, failed(planned, f"the worker process died: {exc}"))
                            continue
                        except Exception as exc:
                            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                            yield Outcome(planned, failed(planned, f"worker error: {detail}"))
                            continue
                        if kind == "interrupted":
                            yield Outcome(planned, interrupted=payload)
                        else:
                            yield Outcome(planned, payload)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if not broken or exhausted or context.stop.is_set():
                return


def pool(options: PoolOptions) -> PoolExecutor:
    """Local worker processes (``workers``), one run each, pinned to a share of the cores or one GPU each."""
    return PoolExecutor(options)


@hookimpl
def bnbench_register_executors(register: Register) -> None:
    register("local", local)
    register("pool", pool, options=PoolOptions)

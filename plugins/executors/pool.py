"""The ``pool`` executor: local worker processes, one run each at a time.

Each worker is pinned to its share of the CPU cores, or to one GPU when several are present.
Workers rebuild the plugin registry from the installed entry points and the manifest's plugin
modules; only the driver writes the results store.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

import torch
from pydantic import Field

from harness import Options
from harness.executors import ExecutorContext, Outcome, WorkerSpec, error_text, failed_result, run_in_worker
from harness.manifest import PlannedRun

PRELOAD = ["torch", "harness.runner", "plugins"]
"""Imported once by the fork server, so that each worker starts without importing torch."""


class PoolOptions(Options):
    workers: int = Field(
        2,
        ge=1,
        le=1024,
        description="Worker processes, each running one run at a time (no more than the runs to do, nor, on the "
        "CPU, than the cores; one GPU each when several are present).",
    )
    start_method: Literal["auto", "fork", "forkserver", "spawn"] = Field(
        "auto",
        description=(
            "How workers start. 'auto': fork (instant) on Linux when each worker uses one CPU thread and "
            "CUDA is not initialized, else forkserver with torch preloaded. 'spawn' is the slowest and safest."
        ),
    )


_worker: dict[str, Any] = {}
"""This worker process's sweep, device, thread count and stop event (set by ``_init_worker``)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with(driver: int) -> None:
    """End this worker as soon as the sweep's driver is gone, so that it never outlives its sweep
    nor writes a checkpoint of a run a newer driver may own: at once through the kernel where it
    can (Linux's parent-death signal, when the driver is the parent), else within a second by
    polling the driver's pid. The run loses at most the work since its last checkpoint, as
    under any SIGKILL."""
    if os.getppid() == driver and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not _alive(driver) or (os.getppid() == 1 and driver != 1):
        os._exit(1)

    def watch() -> None:
        while _alive(driver):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="bnbench-driver-watch", daemon=True).start()


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies."""


def _init_worker(worker: WorkerSpec, stop: Any, devices: Any, threads: int | None, driver: int) -> None:
    """In each worker: die with the driver, stop at the next step on SIGINT/SIGTERM, take a device."""
    _die_with(driver)

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    device = devices.get() if devices is not None else None
    _worker.update(worker=worker, device=device, threads=threads, stop=stop)


def _work(planned: PlannedRun) -> tuple[str, Any]:
    return run_in_worker(
        _worker["worker"], planned, device=_worker["device"], threads=_worker["threads"], stop=_worker["stop"]
    )


def _device_slots(device: str, workers: int) -> list[str] | None:
    """One device per worker: CUDA devices round-robin when there are several, else None (shared)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return None


def start_method(requested: str, threads: int | None, gpus_per_worker: bool) -> str:
    """The multiprocessing start method for ``requested`` (resolving 'auto').

    Forking is safe only in a single-threaded child of a parent without CUDA: a forked child
    that runs OpenMP with several threads after its parent did can hang (GNU libgomp).
    """
    if requested != "auto":
        return requested
    if sys.platform == "linux" and threads == 1 and not gpus_per_worker and not torch.cuda.is_initialized():
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class PoolExecutor:
    """Runs in ``workers`` local processes, one run per worker at a time."""

    def __init__(self, options: PoolOptions) -> None:
        self.workers = options.workers
        self.start_method = options.start_method

    def execute(self, runs: Iterator[PlannedRun], context: ExecutorContext) -> Iterator[Outcome]:
        # never more workers than runs to do (claimed as they would be anyway: they start at once)
        first = list(itertools.islice(runs, self.workers))
        if not first:
            return
        workers = len(first)
        slots = _device_slots(context.worker.device, workers)
        if slots is None and workers > (os.cpu_count() or 1):
            context.progress.log(f"pool: {workers} workers on {os.cpu_count()} CPU cores; using {os.cpu_count()}")
            workers = os.cpu_count() or 1
        cpu_share = None if slots else max(1, (os.cpu_count() or 1) // workers)
        threads = context.worker.execution.threads or cpu_share
        method = start_method(self.start_method, threads, slots is not None)
        mp_context = multiprocessing.get_context(method)
        if method == "forkserver":
            mp_context.set_forkserver_preload(PRELOAD)
        stop = mp_context.Event()
        pending = itertools.chain(first, runs)
        exhausted = False
        while True:  # a pool whose worker died is replaced, and the sweep goes on
            devices = None
            if slots:
                devices = mp_context.Queue()
                for slot in slots:
                    devices.put(slot)
            pool = ProcessPoolExecutor(
                workers,
                mp_context=mp_context,
                initializer=_init_worker,
                initargs=(context.worker, stop, devices, cpu_share, os.getpid()),
            )
            in_flight: dict[Future[tuple[str, Any]], PlannedRun] = {}
            broken = False
            try:
                while True:
                    while not broken and len(in_flight) < workers and not context.stop.is_set():
                        planned = next(pending, None)
                        if planned is None:
                            exhausted = True
                            break
                        in_flight[pool.submit(_work, planned)] = planned
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                    context.keep_alive()
                    if context.stop.is_set():
                        stop.set()
                    for future in done:
                        planned = in_flight.pop(future)
                        try:
                            kind, payload = future.result()
                        except BrokenProcessPool as exc:
                            broken = True
                            yield Outcome(planned, failed_result(planned, f"the worker process died: {exc}"))
                            continue
                        except Exception as exc:
                            yield Outcome(planned, failed_result(planned, f"worker error: {error_text(exc)}"))
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

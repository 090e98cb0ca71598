"""The ``pool`` executor: local worker processes, one run each at a time.

Each worker is pinned to its share of the CPU cores, or to one GPU when several are present.
Workers rebuild the plugin registry from the installed entry points and the manifest's plugin
modules; only the driver writes the results store.
"""

from __future__ import annotations

import collections
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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import torch
from pydantic import Field

from bnbench import Options
from bnbench.errors import error_text
from bnbench.executors import ExecutorContext, Outcome, WorkerSpec, exit_reason
from bnbench.records import Work
from bnbench.worker import run_in_worker

PRELOAD = ["torch", "bnbench.worker", "bnbench.plugins"]
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
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Attempts of a run whose worker process dies (the OOM killer, a GPU fault): each retry starts a new "
            "worker and resumes from the run's last checkpoint; then the run is recorded failed with the signal "
            "or exit code. Other runs are not disturbed."
        ),
    )
    stop_grace_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="After a stop (Ctrl-C, SIGTERM), seconds a run may take to reach its next step and checkpoint "
        "before its worker is killed (it then resumes from its previous checkpoint).",
    )


class SharedFlag:
    """The sweep's stop request, shared with the workers and read without a lock: a worker
    killed while reading it can never leave it locked for its siblings (as it can a
    ``multiprocessing.Event``, whose ``is_set`` takes a lock)."""

    def __init__(self, mp_context: Any) -> None:
        self._value = mp_context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def is_set(self) -> bool:
        return bool(self._value.value)


class WorkerStop:
    """What a worker's runs poll: the sweep's stop, or a SIGINT/SIGTERM sent to this worker alone."""

    def __init__(self, shared: SharedFlag) -> None:
        self.shared = shared
        self.signalled = False

    def is_set(self) -> bool:
        return self.signalled or self.shared.is_set()


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


def _serve(
    connection: Connection,
    worker: WorkerSpec,
    shared_stop: SharedFlag,
    device: str | None,
    threads: int | None,
    driver: int,
) -> None:
    """A worker's life: die with the driver, then run each run the driver sends until it sends None.

    SIGINT/SIGTERM stop this worker's run at its next step (checkpointed); the driver's stop
    reaches every worker through ``shared_stop``.
    """
    _die_with(driver)
    stop = WorkerStop(shared_stop)
    running = False

    def request_stop(signum: int, frame: object) -> None:
        stop.signalled = True
        if not running:  # idle: nothing to checkpoint
            raise SystemExit(0)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while True:
        try:
            planned = connection.recv()
        except (EOFError, OSError):
            return
        if planned is None or stop.is_set():
            return
        running = True
        try:
            reply: tuple[str, Any] = run_in_worker(worker, planned, device=device, threads=threads, stop=stop)
        except BaseException as exc:  # reported to the driver, which records the run failed
            reply = ("error", error_text(exc))
        running = False
        connection.send(reply)
        if reply[0] == "interrupted" or stop.is_set():
            return


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


@dataclass
class _Slot:
    """One worker place of the pool: its process (started when needed) and the run it holds."""

    device: str | None
    process: BaseProcess | None = None
    connection: Connection | None = None
    planned: Work | None = None
    stop_asked_at: float | None = None


class PoolExecutor:
    """Runs in ``workers`` local processes, one run per worker at a time.

    Each worker has its own pipe, so a worker that dies (SIGKILL from the OOM killer, a GPU
    fault) takes nothing with it: its run is retried on a fresh worker from its last
    checkpoint, up to ``max_attempts``, while the other workers go on undisturbed. Every wait
    of the driver is bounded: it polls the pipes and the processes, and a worker that does not
    stop within ``stop_grace_s`` of a stop is killed (its run resumes from its last checkpoint).
    """

    def __init__(self, options: PoolOptions) -> None:
        self.options = options

    def execute(self, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]:
        # never more workers than runs to do (claimed as they would be anyway: they start at once)
        first = list(itertools.islice(runs, self.options.workers))
        if not first:
            return
        workers = len(first)
        devices = _device_slots(context.worker.device, workers)
        if devices is None and workers > (os.cpu_count() or 1):
            context.progress.log(f"pool: {workers} workers on {os.cpu_count()} CPU cores; using {os.cpu_count()}")
            workers = os.cpu_count() or 1
        cpu_share = None if devices else max(1, (os.cpu_count() or 1) // workers)
        threads = context.worker.performance.threads or cpu_share
        method = start_method(self.options.start_method, threads, devices is not None)
        mp_context = multiprocessing.get_context(method)
        if method == "forkserver":
            mp_context.set_forkserver_preload(PRELOAD)
        shared_stop = SharedFlag(mp_context)
        slots = [_Slot(devices[i] if devices else None) for i in range(workers)]
        retries: collections.deque[Work] = collections.deque()
        deaths: collections.Counter[str] = collections.Counter()
        fresh = itertools.chain(first, runs)

        def start(slot: _Slot) -> None:
            ours, theirs = mp_context.Pipe()
            process = mp_context.Process(
                target=_serve,
                args=(theirs, context.worker, shared_stop, slot.device, cpu_share, os.getpid()),
                name="bnbench-pool-worker",
                daemon=True,
            )
            process.start()
            theirs.close()
            slot.process, slot.connection = process, ours

        try:
            while True:
                if context.stop.is_set():
                    shared_stop.set()
                for slot in slots:
                    if slot.planned is None and not context.stop.is_set():
                        planned = retries.popleft() if retries else next(fresh, None)
                        if planned is None:
                            continue
                        if slot.process is None or not slot.process.is_alive():
                            start(slot)
                        assert slot.connection is not None
                        slot.connection.send(planned)
                        slot.planned = planned
                busy = [slot for slot in slots if slot.planned is not None]
                if not busy:
                    return
                connection_wait([h for slot in busy for h in _handles(slot)], timeout=0.2)
                context.keep_alive()
                for slot in busy:
                    outcome = self._collect(slot, deaths, retries, context)
                    if outcome is not None:
                        yield outcome
        finally:
            _stop_workers(slots)

    def _collect(
        self,
        slot: _Slot,
        deaths: collections.Counter[str],
        retries: collections.deque[Work],
        context: ExecutorContext,
    ) -> Outcome | None:
        """The outcome of the slot's run if it has one now. A dead worker's run is queued again
        (it resumes from its checkpoint) until it has used ``max_attempts``."""
        planned, process, connection = slot.planned, slot.process, slot.connection
        assert planned is not None and process is not None and connection is not None
        reply = None
        if connection.poll():
            with contextlib.suppress(EOFError, OSError):
                reply = connection.recv()
        if reply is not None:
            slot.planned, slot.stop_asked_at = None, None
            kind, payload = reply
            if kind == "interrupted":  # the worker exits after a stop: a later run gets a new one
                _end(process)
                connection.close()
                slot.process = slot.connection = None
                return Outcome(planned, interrupted=payload)
            if kind == "error":
                return Outcome.failed(planned, f"worker error: {payload}")
            return Outcome.of_reply(planned, reply)
        if process.is_alive():
            if not context.stop.is_set():
                return None
            slot.stop_asked_at = slot.stop_asked_at or time.monotonic()
            if time.monotonic() - slot.stop_asked_at <= self.options.stop_grace_s:
                return None
            process.kill()
            why = f"did not stop within {self.options.stop_grace_s:g} s and was killed"
        else:
            why = ""
        process.join(5)
        why = why or exit_reason(process.exitcode)
        connection.close()
        slot.process = slot.connection = slot.planned = slot.stop_asked_at = None
        if context.stop.is_set():
            return Outcome(planned, interrupted=f"its worker process {why} while the sweep was stopping")
        deaths[planned.key] += 1
        if deaths[planned.key] < self.options.max_attempts:
            context.progress.log(
                f"pool: the worker running {planned.label} {why}; retrying it on a new worker from its "
                f"last checkpoint (attempt {deaths[planned.key] + 1} of {self.options.max_attempts})"
            )
            retries.append(planned)
            return None
        message = f"the worker process {why}, in each of {self.options.max_attempts} attempts"
        if process.exitcode == -signal.SIGKILL:
            message += " (SIGKILL: out of memory? the kernel log says whether the OOM killer ended it)"
        return Outcome.failed(planned, message)


def _handles(slot: _Slot) -> list[Any]:
    """What to wait on for a busy slot: a reply on its pipe, or its process ending."""
    assert slot.connection is not None and slot.process is not None
    return [slot.connection, slot.process.sentinel]


def _stop_workers(slots: list[_Slot]) -> None:
    """End every worker within seconds, whatever state it is in: idle ones are asked to exit;
    busy ones (left only when the driver is aborted) are killed."""
    for slot in slots:
        if slot.process is None:
            continue
        if slot.planned is None and slot.connection is not None:
            with contextlib.suppress(OSError, ValueError):
                slot.connection.send(None)
        else:
            slot.process.kill()
    deadline = time.monotonic() + 5
    for slot in slots:
        if slot.process is not None:
            _end(slot.process, max(0.0, deadline - time.monotonic()))
        if slot.connection is not None:
            slot.connection.close()


def _end(process: BaseProcess, grace_s: float = 5.0) -> None:
    """Wait for a worker that is exiting, killing it if it has not within ``grace_s``."""
    process.join(grace_s)
    if process.is_alive():
        process.kill()
        process.join(5)


def pool(options: PoolOptions) -> PoolExecutor:
    """Local worker processes (``workers``), one run each, pinned to a share of the cores or one GPU each."""
    return PoolExecutor(options)

"""The executor contract: where the runs of a sweep execute. Torch-free: an executor imports
this module (and ``bnbench.worker`` in the processes that train).

The driver (``bnbench.sweep``) hands an executor the pending work, lazily, one unit at a time as
the executor asks for it (each run is claimed in the store just before it is handed over), and
receives one ``Outcome`` per unit. A unit is a ``PlannedRun`` or a ``PlannedPack`` (runs that
train together, ``bnbench.plan``); an executor need not tell them apart: it sends either to
``bnbench.worker.run_in_worker`` and passes back what comes out (``Outcome.of_reply``). Only
the driver writes the results store: workers need no database. Executors are plugins
(``bnbench_register_executors``); ``local`` runs in-process.

An executor whose runs execute in other processes or on other hosts sends each worker the
picklable ``WorkerSpec`` and the unit and calls ``run_in_worker`` there. Stops reach such
workers through a file (``StopFile``) beside the checkpoints, which every worker can see
because it must be able to write its checkpoints there anyway.
"""

from __future__ import annotations

import importlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bnbench.errors import PluginError, error_text
from bnbench.progress import Progress
from bnbench.records import PlannedPack, PlannedRun, RunResult, Work, WorkResult, members
from bnbench.spec import Component, PerformanceSettings

if TYPE_CHECKING:
    from bnbench.registry import Registry

Reply = tuple[Literal["result", "interrupted"], Any]
"""What ``bnbench.worker.run_in_worker`` returns: ``("result", WorkResult)`` or ``("interrupted", why)``."""


class StopRequest(Protocol):
    """What a training loop polls once per step to know it must checkpoint and stop
    (a ``threading.Event``, a ``multiprocessing`` flag, or a ``StopFile``)."""

    def is_set(self) -> bool: ...


class RunInterrupted(BaseException):
    """A stop was requested: the run (or pack) checkpointed at ``step`` (to ``path``) and stopped."""

    def __init__(self, run_id: str, step: int, path: Path | None) -> None:
        where = f"checkpoint {path}" if path else "no checkpoint store"
        super().__init__(f"run {run_id} stopped at step {step} ({where})")
        self.run_id, self.step, self.path = run_id, step, path


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to build a ``Runner`` anywhere (picklable: sent to worker processes)."""

    plugins: tuple[str, ...]
    """The manifest's extra plugin modules (installed plugins load through entry points)."""
    base_dir: Path
    device: str
    divergence_check_every: int
    checkpoint_dir: Path
    checkpoint_every: int
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    stop_file: Path | None = None
    """Created by the driver when the sweep must stop: workers elsewhere poll it (``StopFile``)."""
    trackers: tuple[Component, ...] = ()
    """The sweep's experiment trackers (``[harness] trackers``), made in each training process."""
    results: Path | None = None
    """The sweep's results store (trackers keep their files beside it by default)."""


class StopFile:
    """A stop request visible to every process that can see ``path`` (any host on a shared disk).

    It quacks like ``threading.Event`` where a ``Runner`` needs one: ``is_set`` looks at the
    file at most once per ``poll_s`` seconds, so checking it every step costs nothing.
    """

    def __init__(self, path: Path, poll_s: float = 1.0) -> None:
        self.path = path
        self.poll_s = poll_s
        self._seen = False
        self._checked = -float("inf")

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._seen and now - self._checked >= self.poll_s:
            self._checked = now
            self._seen = self.path.exists()
        return self._seen

    def set(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._seen = True

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._seen = False


@dataclass
class Outcome:
    """What became of one unit of work: its result (one per member of a pack), or why it stopped
    before having one."""

    planned: Work
    result: WorkResult | None = None
    interrupted: str | None = None
    """Set when the work was stopped (checkpointed if possible) before finishing."""

    def results(self) -> list[tuple[PlannedRun, RunResult | None]]:
        """Each run of the unit with its result (None when the unit was interrupted)."""
        runs = members(self.planned)
        if self.result is None:
            return [(run, None) for run in runs]
        results = self.result if isinstance(self.result, tuple) else (self.result,)
        if [r.run_id for r in results] != [run.run_id for run in runs]:
            raise ValueError(f"the results of {self.planned.label} do not match its runs")
        return list(zip(runs, results, strict=True))

    @classmethod
    def of_reply(cls, planned: Work, reply: Reply) -> Outcome:
        """The outcome of what ``run_in_worker`` returned for ``planned``."""
        kind, payload = reply
        return cls(planned, interrupted=payload) if kind == "interrupted" else cls(planned, payload)

    @classmethod
    def failed(cls, planned: Work, message: str) -> Outcome:
        """Work whose worker died or could not report a result: ``failed``, for each member."""
        return cls(planned, failed_result(planned, message))

    @classmethod
    def of_error(cls, planned: Work, exc: BaseException, *, stopping: bool, where: str) -> Outcome:
        """Work whose call to a worker raised (``where``: "its Ray task"): interrupted while the
        sweep is stopping, failed otherwise."""
        if stopping:
            return cls(planned, interrupted=f"{where} ended while stopping: {error_text(exc)}")
        return cls.failed(planned, f"{where} failed: {error_text(exc)}")


def failed_result(planned: Work, message: str) -> WorkResult:
    """A ``failed`` result for work whose worker died or could not report one (per member of a pack)."""
    now = time.time()
    failed = tuple(
        RunResult(run.run_id, "failed", error=message, started_at=now, finished_at=now) for run in members(planned)
    )
    return failed if isinstance(planned, PlannedPack) else failed[0]


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in words: "was killed by SIGKILL", "exited with code 1"."""
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def import_engine(module: str, extra: str) -> Any:
    """An executor's optional engine (``ray``, ``submitit``), or a PluginError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(
            f"the {extra!r} executor needs the {module} package, which is not installed ({exc}): "
            f"pip install 'bnbench[{extra}]'"
        ) from exc


@dataclass
class ExecutorContext:
    """What an executor receives besides the runs."""

    worker: WorkerSpec
    registry: Registry
    """The driver's registry: in-process executors use it (lifecycle plugins see the runs)."""
    stop: threading.Event
    """Set on SIGINT/SIGTERM: checkpoint the runs in progress, start no new ones, return."""
    progress: Progress
    keep_alive: Callable[[], None] = lambda: None
    """Call it while waiting on runs elsewhere: it refreshes their claims in the store (cheap,
    rate-limited), so other drivers do not take over runs whose owner looks silent."""
    files: Path | None = None
    """A directory beside the results store for the executor's own files (logs, job folders)."""

    def stopping(self) -> bool:
        """Whether a stop was requested; if so, tells workers elsewhere too (``worker.stop_file``)."""
        if not self.stop.is_set():
            return False
        if self.worker.stop_file is not None and not self.worker.stop_file.exists():
            StopFile(self.worker.stop_file).set()
        return True


class Executor(Protocol):
    """Runs the work it pulls from ``runs`` (runs and packs) and yields an ``Outcome`` for each
    unit, as they finish.

    It pulls a run only when it can start it. A run that raises is a ``failed`` result, never
    an exception out of ``execute``. When ``context.stop`` is set it stops pulling, lets the
    runs in progress checkpoint, yields them as interrupted and returns.
    """

    def execute(self, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]: ...

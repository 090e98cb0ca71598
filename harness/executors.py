"""The executor contract: where the runs of a sweep execute.

The driver (``harness.sweep``) hands an executor the pending runs, lazily, one at a time as
the executor asks for them (each is claimed in the store just before it is handed over), and
receives one ``Outcome`` per run. Only the driver writes the results store: workers need no
database. Executors are plugins (``bnbench_register_executors``); ``local`` runs in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.checkpoint import Checkpoints
from harness.manifest import PlannedRun
from harness.progress import Progress
from harness.registry import Registry, load_registry
from harness.runner import Runner, RunResult
from harness.spec import ExecutionSettings


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
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)

    def runner(
        self,
        stop: threading.Event | None,
        *,
        registry: Registry | None = None,
        device: str | None = None,
        threads: int | None = None,
    ) -> Runner:
        """A runner for this sweep; ``registry`` defaults to loading the plugins afresh."""
        execution = self.execution
        if threads is not None and not execution.threads:
            execution = execution.model_copy(update={"threads": threads})
        return Runner(
            registry or load_registry(self.plugins, base_dir=self.base_dir),
            base_dir=self.base_dir,
            device=device or self.device,
            divergence_check_every=self.divergence_check_every,
            checkpoints=Checkpoints(self.checkpoint_dir),
            checkpoint_every=self.checkpoint_every,
            stop=stop,
            execution=execution,
        )


@dataclass
class Outcome:
    """What became of one run: its result, or why it stopped before having one."""

    planned: PlannedRun
    result: RunResult | None = None
    interrupted: str | None = None
    """Set when the run was stopped (checkpointed if possible) before finishing."""


@dataclass
class ExecutorContext:
    """What an executor receives besides the runs."""

    worker: WorkerSpec
    registry: Registry
    """The driver's registry: in-process executors use it (lifecycle plugins see the runs)."""
    stop: threading.Event
    """Set on SIGINT/SIGTERM: checkpoint the runs in progress, start no new ones, return."""
    progress: Progress


class Executor(Protocol):
    """Runs the runs it pulls from ``runs`` and yields an ``Outcome`` for each, as they finish.

    It pulls a run only when it can start it. A run that raises is a ``failed`` result, never
    an exception out of ``execute``. When ``context.stop`` is set it stops pulling, lets the
    runs in progress checkpoint, yields them as interrupted and returns.
    """

    def execute(self, runs: Iterator[PlannedRun], context: ExecutorContext) -> Iterator[Outcome]: ...

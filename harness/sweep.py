"""Driving a sweep: a plan's work (``bnbench.plan``) claimed, run on the executor, and its results
written as they finish."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from bnbench.api import TrackerContext
from bnbench.checkpoint import Checkpoints
from bnbench.data import prepare_datasets
from bnbench.errors import ManifestError, StoreError
from bnbench.executors import ExecutorContext, StopFile, WorkerSpec
from bnbench.manifest import Manifest
from bnbench.plan import Plan, make_plan
from bnbench.progress import Progress, metrics_text
from bnbench.records import FINISHED, PlannedPack, PlannedRun, RunResult, Work, members
from bnbench.registry import Registry, load_registry
from bnbench.runner import close_trackers, make_trackers
from bnbench.store import Store


@dataclass
class SweepSummary:
    planned: int
    skipped: int
    statuses: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    busy: int = 0
    """Runs skipped because another live process had claimed them."""
    finished_elsewhere: int = 0
    """Runs skipped because another sweep finished them after this one planned them."""
    rerunning: int = 0
    """Runs with a final result that another live sweep is running again (``--rerun``)."""
    stopped: int = 0
    """Runs that a stop (Ctrl-C, SIGTERM, a stop file, an abort) left unfinished: recorded as
    interrupted, they resume (from their last checkpoint, if they wrote one) when the sweep runs again."""
    not_started: int = 0
    """Pending runs the sweep stopped before starting (nor skipped for another sweep)."""


def headline_metrics(registry: Registry) -> tuple[str, ...]:
    """The metrics a run's one-line summary shows: the training loss and the test accuracy, as
    the metrics registered for them declare (``measures``, ``split``)."""
    found = (registry.metric_named("loss", "train"), registry.metric_named("accuracy", "test"))
    return tuple(name for name in found if name is not None)


def summarize(result: RunResult, headline: tuple[str, ...] = ()) -> str:
    """A run's progress line after its status: the headline metrics and the time it took (a probe:
    the time alone, in parentheses), where it diverged, or its error's first line; a resumed run
    says from which step."""
    resumed = result.info.get("resumed_from_step")
    note = f"resumed from step {resumed}" if resumed else ""
    if result.status == "diverged":
        return f"diverged at step {result.diverged_step}" + (f" ({note})" if note else "")
    if result.status == "failed":
        lines = (result.error or "").strip().splitlines()
        return (lines[0] if lines else "no error recorded") + (f" ({note})" if note else "")
    last = result.epochs[-1].metrics if result.epochs else {}
    text = metrics_text({k: v for k, v in last.items() if k in headline})
    timing = ", ".join(part for part in (f"{result.duration_s:.1f}s", note) if part)
    return f"{text} ({timing})".strip()


@contextmanager
def stop_on_signals(stop: threading.Event, log: Callable[[str], None]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the current run to checkpoint at its next step and stop.

    A second Ctrl-C aborts at once (the run in progress is then not checkpointed).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        name = signal.Signals(signum).name
        log(f"{name}: checkpointing the current run at its next step, then stopping (Ctrl-C again aborts now)")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Heartbeat:
    """Keeps claimed runs' ``updated_at`` fresh so other processes see their owner is alive:
    at each epoch end of in-process runs (through ``Progress.keep_alive``), and whenever an
    executor waiting on runs elsewhere calls ``keep_alive`` (at most once per ``every_s``)."""

    def __init__(self, store: Store, claimed: dict[str, PlannedRun], every_s: float) -> None:
        self.store = store
        self.claimed = claimed
        self.every_s = every_s
        self.last = time.monotonic()

    def keep_alive(self) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            for run_id in list(self.claimed):
                self.store.heartbeat(run_id)


def run_manifest(
    manifest: Manifest,
    *,
    registry: Registry | None = None,
    rerun: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
    verbose: bool = False,
    handle_signals: bool = False,
) -> SweepSummary:
    """Plan ``manifest`` (``bnbench.plan.make_plan``) and run the plan (``run_plan``). ``registry``:
    the plugins the manifest was validated with (a ``Session``'s); by default the installed plugins
    and the manifest's own."""
    if registry is None:
        registry = load_registry(manifest.settings.plugins, base_dir=manifest.base_dir)
    _check_device(manifest, device)
    plan = make_plan(manifest, registry, rerun=rerun, device=device)
    return run_plan(plan, device=device, progress=progress, verbose=verbose, handle_signals=handle_signals)


def _check_device(manifest: Manifest, device: str | None) -> None:
    if (device or manifest.settings.device) == "cuda" and not torch.cuda.is_available():
        raise ManifestError(
            'device = "cuda", but no CUDA device is available here; use "auto" or "cpu"', file=str(manifest.path)
        )


def run_plan(
    plan: Plan,
    *,
    device: str | None = None,
    progress: Progress | None = None,
    verbose: bool = False,
    handle_signals: bool = False,
) -> SweepSummary:
    """Run every pending run of ``plan`` on its manifest's executor, recording each result as it finishes.

    A run is claimed in the store just before the executor starts it, so two sweeps over
    one store never run the same run at once; the plan is refreshed against the store's statuses
    once the store is open (another sweep may have finished runs meanwhile). SIGINT/SIGTERM
    checkpoint the runs in progress and stop the sweep; every finished result is kept and running
    the same command resumes. ``verbose``: off a terminal, a line per epoch too.
    ``handle_signals``: SIGINT/SIGTERM checkpoint and stop the sweep (the CLI's; off by default, so
    a program calling the library keeps its own handlers; ``stop_on_signals`` restores them after).
    """
    manifest, registry, rerun = plan.manifest, plan.registry, plan.rerun
    runs = manifest.runs()
    settings = manifest.settings
    started = time.time()
    _check_device(manifest, device)
    prepare_datasets([r.spec.dataset for r in plan.pending if r.spec.dataset], registry, manifest.base_dir)
    if plan.pending:  # made once here too: a tracker's missing extra stops the sweep before anything is recorded
        context = TrackerContext(base_dir=manifest.base_dir, results=manifest.results_path)
        close_trackers(make_trackers(registry, manifest.trackers, context))
    with Store(manifest.results_path) as store:
        store.link(runs)
        store.register((t.key, t.study, t.definition()) for t in [*manifest.claims, *manifest.checks])
        statuses = store.statuses(r.run_id for r in plan.runs)
        plan = plan.refreshed(statuses)
        pending = plan.pending
        summary = SweepSummary(planned=len(plan.runs), skipped=len(plan.runs) - len(pending))
        checkpoints = Checkpoints.beside(manifest.results_path)
        owned = store.live_owners((r.run_id for r in plan.runs), settings.claim_timeout_s)
        summary.rerunning = sum(1 for run_id, status in statuses.items() if status in FINISHED and run_id in owned)
        if not rerun:  # a kill between recording a result and deleting its checkpoints left them behind
            for run_id in checkpoints.run_ids():
                if run_id in owned:
                    continue  # a rerun in progress elsewhere: its checkpoints are live
                if statuses.get(run_id) in FINISHED or finished_pack(checkpoints, run_id, store):
                    with contextlib.suppress(OSError):
                        checkpoints.discard(run_id)
        if not pending:
            return summary
        try:
            checkpoints.check_writable()
        except OSError as exc:
            raise StoreError(
                f"cannot write checkpoints in {checkpoints.directory}: {exc.strerror or exc}; nothing was run"
            ) from exc
        remote_stop = StopFile(checkpoints.directory / f"stop-{uuid.uuid4().hex}")
        worker = WorkerSpec(
            plugins=tuple(settings.plugins),
            base_dir=manifest.base_dir,
            device=device or settings.device,
            divergence_check_every=settings.divergence_check_every,
            checkpoint_dir=checkpoints.directory,
            checkpoint_every=settings.checkpoint_every,
            performance=settings.performance,
            stop_file=remote_stop.path,
            trackers=tuple(manifest.trackers),
            results=manifest.results_path,
        )
        executor = registry.build("executor", manifest.executor)
        stop = threading.Event()
        headline = headline_metrics(registry)
        progress = progress or Progress(len(pending), headline=headline, verbose=verbose)
        claimed: dict[str, PlannedRun] = {}

        def claim(planned: PlannedRun) -> bool:
            """Claim one run in the store (False: it is finished or running elsewhere; skipped)."""
            refused = store.claim(
                planned, stale_after=settings.claim_timeout_s, replace_finished_before=started if rerun else None
            )
            if refused is not None and refused.startswith("finished: "):
                summary.finished_elsewhere += 1
                progress.log(f"{planned.run_id}: {refused.removeprefix('finished: ')} by another sweep; skipped")
                return False
            if refused is not None:
                summary.busy += 1
                progress.log(f"{planned.run_id}: being run by {refused}; skipped")
                return False
            if rerun:
                checkpoints.discard(planned.run_id)
            checkpoints.reset_attempts(planned.run_id)
            claimed[planned.run_id] = planned
            return True

        def claim_as_needed() -> Iterator[Work]:
            """The pending work, each run claimed just before its unit is handed over; a pack
            keeps the members it could claim."""
            for notice in plan.notices:
                progress.log(notice)
            for unit in plan.work:
                if stop.is_set():
                    return
                runs = tuple(run for run in members(unit) if claim(run))
                if len(runs) > 1:
                    pack = PlannedPack(runs)
                    if rerun:
                        checkpoints.discard(pack.key)
                    checkpoints.reset_attempts(pack.key)
                    yield pack
                elif runs:
                    yield runs[0]

        heartbeat = _Heartbeat(store, claimed, every_s=min(60.0, settings.claim_timeout_s / 4))
        progress.keep_alive = heartbeat.keep_alive
        files = manifest.results_path.with_name(manifest.results_path.name + ".executor")
        context = ExecutorContext(worker, registry, stop, progress, heartbeat.keep_alive, files)
        unwritable: str | None = None
        """Why the store stopped accepting writes mid-sweep (a read-only disk, a full one)."""
        try:
            with stop_on_signals(stop, progress.log) if handle_signals else contextlib.nullcontext():
                for outcome in executor.execute(claim_as_needed(), context):
                    if outcome.result is None and unwritable is None:
                        summary.interrupted = True
                        progress.log(f"stopped: {outcome.interrupted}; run the same command again to resume")
                    for run, result in outcome.results():
                        planned = claimed.pop(run.run_id, run)
                        if unwritable is not None:
                            continue  # stopping: nothing can be recorded; the checkpoints are kept
                        try:
                            if result is None:
                                store.mark_interrupted(planned.run_id)
                            else:
                                record(store, planned, result, checkpoints, outcome.planned)
                        except sqlite3.Error as exc:
                            unwritable = f"cannot write the results store {manifest.results_path}: {exc}"
                            progress.log(f"{unwritable}; stopping the sweep (runs in progress checkpoint)")
                            stop.set()
                            continue
                        if result is None:
                            summary.stopped += 1
                            continue
                        discard_checkpoints(checkpoints, planned.run_id, progress)
                        summary.statuses[result.status] += 1
                        progress.end_run(result.status, summarize(result, headline), label=planned.label)
                    if isinstance(outcome.planned, PlannedPack) and outcome.result is not None and unwritable is None:
                        discard_checkpoints(checkpoints, outcome.planned.key, progress)
        except KeyboardInterrupt:
            progress.log("aborted: the runs in progress are not recorded; finished runs are kept")
        finally:
            for planned in claimed.values():  # claimed, never finished: not done, resumable
                with contextlib.suppress(sqlite3.Error):
                    store.mark_interrupted(planned.run_id)
                summary.interrupted = True
                summary.stopped += 1
            accounted = sum(summary.statuses.values()) + summary.stopped + summary.busy + summary.finished_elsewhere
            summary.not_started = max(0, len(pending) - accounted)
            with contextlib.suppress(OSError):
                remote_stop.clear()
            progress.close()
        if unwritable is not None:
            raise StoreError(
                f"{unwritable}. Every result recorded before it is kept, and so are the checkpoints of the runs "
                "that were in progress: make the store writable and run the same command again to resume."
            )
        summary.interrupted = summary.interrupted or stop.is_set()
    return summary


def record(store: Store, planned: PlannedRun, result: RunResult, checkpoints: Checkpoints, work: Work) -> None:
    """Write a run's result, with the attempts its work took (a worker that died before reporting counts)."""
    attempts = checkpoints.attempts(work.key)
    if attempts:
        result.info.setdefault("attempts", attempts)
    store.record(planned, result)


def finished_pack(checkpoints: Checkpoints, run_id: str, store: Store) -> bool:
    """Whether ``run_id`` names a pack whose runs all have final results (its checkpoints are
    then stale: a kill came between recording its results and removing them)."""
    if not PlannedPack.is_pack_id(run_id):
        return False
    saved = checkpoints.load_latest(run_id, lambda message: None)
    runs = saved.get("runs") if saved is not None else None
    if not isinstance(runs, list) or not runs:
        return False
    statuses = store.statuses(str(r) for r in runs)
    return all(statuses.get(str(r)) in FINISHED for r in runs)


def discard_checkpoints(checkpoints: Checkpoints, run_id: str, progress: Progress) -> None:
    """Remove a finished run's (or pack's) checkpoints; a failure only warns (the result is safe,
    and a later sweep cleans the folder up)."""
    try:
        checkpoints.discard(run_id)
    except OSError as exc:
        progress.log(f"warning: cannot remove the checkpoints of {run_id}: {exc}")

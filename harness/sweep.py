"""Driving a sweep: which runs are pending, running them, writing results as they finish."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from harness.manifest import Manifest, PlannedRun
from harness.progress import Progress
from harness.runner import FINISHED, Runner, RunResult
from harness.store import Store


@dataclass
class SweepSummary:
    planned: int
    skipped: int
    statuses: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False


def unique_runs(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Runs in order, each id once (two studies may share a configuration)."""
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.run_id, run)
    return list(seen.values())


def pending_runs(runs: list[PlannedRun], store: Store, rerun: bool = False) -> list[PlannedRun]:
    """Runs without a final result (``done`` or ``diverged``), or all of them with ``rerun``."""
    unique = unique_runs(runs)
    if rerun:
        return unique
    statuses = store.statuses(r.run_id for r in unique)
    return [r for r in unique if statuses.get(r.run_id) not in FINISHED]


def summarize(result: RunResult) -> str:
    if result.status == "diverged":
        return f"diverged at step {result.diverged_step}"
    if result.status == "failed":
        return (result.error or "").splitlines()[0]
    last = result.epochs[-1].metrics if result.epochs else {}
    shown = {k: v for k, v in last.items() if k in ("train_loss", "test_accuracy")}
    text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    return f"{text} ({result.duration_s:.1f}s)"


def run_manifest(
    manifest: Manifest,
    *,
    rerun: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
) -> SweepSummary:
    """Run every pending run of ``manifest``, recording each result as it finishes.

    Ctrl-C stops the sweep: the run in progress is recorded ``interrupted`` (not done) and
    every finished result is kept; running the same command again resumes.
    """
    runs = manifest.runs()
    with Store(manifest.results_path) as store:
        store.link(runs)
        pending = pending_runs(runs, store, rerun)
        summary = SweepSummary(planned=len(unique_runs(runs)), skipped=len(unique_runs(runs)) - len(pending))
        if not pending:
            return summary
        runner = Runner(
            manifest.registry,
            base_dir=manifest.base_dir,
            device=device or manifest.settings.device,
            divergence_check_every=manifest.settings.divergence_check_every,
        )
        progress = progress or Progress(len(pending))
        try:
            for planned in pending:
                store.mark_running(planned)
                try:
                    result = runner.run(planned, progress)
                except KeyboardInterrupt:
                    store.mark_interrupted(planned.run_id)
                    summary.interrupted = True
                    progress.log(f"interrupted: {planned.run_id} not recorded; finished runs are kept")
                    break
                store.record(planned, result)
                summary.statuses[result.status] += 1
                progress.end_run(result.status, summarize(result))
        finally:
            progress.close()
    return summary

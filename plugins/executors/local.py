"""The ``local`` executor: runs in the driver's process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Iterator

from bnbench import NoOptions
from bnbench.executors import ExecutorContext, Outcome, RunInterrupted
from bnbench.records import Work
from bnbench.worker import build_runner


class LocalExecutor:
    """Runs in this process, one after another, with the driver's plugins and progress bars."""

    def execute(self, runs: Iterator[Work], context: ExecutorContext) -> Iterator[Outcome]:
        runner = build_runner(context.worker, context.stop, registry=context.registry)
        try:
            for notice in runner.performance.notices:
                context.progress.log(f"notice: {notice}")
            for planned in runs:
                try:
                    result = runner.run_work(planned, context.progress)
                except RunInterrupted as stopped:
                    yield Outcome(planned, interrupted=str(stopped))
                    return
                yield Outcome(planned, result)
                if context.stop.is_set():
                    return
        finally:
            runner.close()  # the driver's registry outlives the sweep: its trackers do not


def local(options: NoOptions) -> LocalExecutor:
    """In-process and sequential (the default): progress bars per run, lifecycle plugins in-process."""
    return LocalExecutor()

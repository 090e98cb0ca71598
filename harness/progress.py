"""What a sweep hears from its runs: a progress display (tqdm bars on a terminal, plain log lines
otherwise), and a sign of life at each epoch end (``keep_alive``: the sweep refreshes the claims
of its runs there, so that other sweeps see their owner is alive)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from tqdm import tqdm

from bnbench.errors import terminal_text


def metrics_text(metrics: Mapping[str, float]) -> str:
    """``name=value`` pairs of a progress line, four significant digits."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def duration_text(seconds: float, digits: int = 0) -> str:
    """A duration in its unit: ``45s``, ``12 min``, ``3.5 h`` (``digits`` after the point in
    seconds and minutes; hours always one)."""
    if seconds < 90:
        return f"{seconds:.{digits}f}s"
    if seconds < 5400:
        return f"{seconds / 60:.{digits}f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """One bar for the sweep and one for the current run (loss and accuracy in its postfix)."""

    def __init__(
        self,
        total_runs: int,
        *,
        stream: TextIO | None = None,
        bars: bool | None = None,
        headline: tuple[str, ...] = (),
        verbose: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``headline``: the metrics a bar's postfix shows (the sweep passes the training loss and
        test accuracy, found by what metrics declare they measure). Off a terminal, each run is one
        line when it ends, with an estimate of the sweep's time left (its elapsed time per finished
        run, times the runs left); ``verbose`` adds a line when it starts and one per epoch."""
        self.stream = stream or sys.stderr
        self.headline = headline
        self.keep_alive: Callable[[], None] = lambda: None
        """Called at each epoch end of an in-process run (the sweep sets it)."""
        self.bars = self.stream.isatty() if bars is None else bars
        self.verbose = verbose
        self.total_runs = total_runs
        self.done = 0
        self.clock = clock
        self.started = clock()
        self._sweep = (
            tqdm(total=total_runs, desc="sweep", unit="run", position=0, file=self.stream) if self.bars else None
        )
        self._run: tqdm | None = None
        self._label = ""

    def log(self, message: str) -> None:
        message = terminal_text(message)
        if self.bars:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def start_run(self, label: str, total_steps: int) -> None:
        self._label = label
        if self.bars:
            self._run = tqdm(
                total=total_steps, desc=terminal_text(label), unit="step", position=1, leave=False, file=self.stream
            )
        elif self.verbose:
            self.log(f"[{self.done + 1}/{self.total_runs}] {label}: {total_steps} steps")

    def advance(self, steps: int, loss: float) -> None:
        if self._run is not None:
            self._run.update(steps)
            self._run.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        self.keep_alive()
        if self._run is not None:
            short = {k: f"{v:.4g}" for k, v in metrics.items() if k in self.headline}
            self._run.set_postfix(epoch=f"{epoch}/{epochs}", **short)
        elif self.verbose:
            self.log(f"  {self._label} epoch {epoch}/{epochs} {metrics_text(metrics)}")

    def end_run(self, status: str, summary: str, label: str | None = None) -> None:
        self.done += 1
        self._label = label or self._label
        if self._run is not None:
            self._run.close()
            self._run = None
        if self._sweep is not None:
            self._sweep.update(1)
        count = "" if self.bars else f"[{self.done}/{self.total_runs}] "
        separator = " " if summary.startswith("(") else " — "  # a probe's summary is its time alone
        left = self.time_left()
        self.log(f"{count}{self._label}: {status}{separator + summary if summary else ''}{'; ' + left if left else ''}")

    def time_left(self) -> str:
        """``about 5 min left``: the sweep's elapsed time per finished run times the runs left (runs
        in parallel count as they finish); empty when none is left, under a second, or on a terminal
        (the sweep's bar shows tqdm's estimate)."""
        left = self.total_runs - self.done
        if self.bars or left <= 0 or self.done <= 0:
            return ""
        seconds = (self.clock() - self.started) / self.done * left
        return f"about {duration_text(seconds)} left" if seconds >= 1 else ""

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
        if self._sweep is not None:
            self._sweep.close()

"""The records of a run, from plan to store, in one torch-free module at the bottom of the core.

A run has one shape per stage that needs a different one, and every module uses these:

- ``PlannedRun`` (manifest, plan, executors): what to run: its id, study, resolved spec and axis values.
- ``PlannedPack`` (plan, executors): runs that train together; ``Work`` is either, a unit of
  work, and its ``key`` names its checkpoints and attempts (a run id, or a pack id).
- ``RunResult`` (runner, workers → sweep): what running it produced; ``WorkResult`` is a
  run's result or one per member of a pack. Its timing is wall-clock ``started_at`` and
  ``finished_at``, because the store records when.
- ``RunRecord`` (store → report, analyses, frames): a run as the store holds it: the result
  with its spec as plain JSON (read back from the store, not re-validated), seed, axis values
  and ``duration_s``.
- ``EpochRecord``: one epoch's metrics, the same in all of them.

A study likewise: ``spec.StudyHeader`` (the raw TOML table, validated before expansion),
``manifest.Study`` (expanded into runs), ``report.StudyRuns`` (its runs against the store) and
``api.StudyResults`` (what an analysis reads). Which runs are still to run is the plan's
business (``bnbench.plan``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from bnbench.spec import RunSpec

Status = Literal["done", "diverged", "failed"]
"""How a run ended. A stored run may also be ``running`` (claimed) or ``interrupted``."""
FINISHED: tuple[str, ...] = ("done", "diverged")
"""Statuses of a run whose result is final: a re-run of the manifest skips them."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its id, resolved spec, and the values of the study's axes."""

    run_id: str
    study: str
    spec: RunSpec
    axes: dict[str, Any]
    """Swept field (dotted path) → value, for this run; the seed is ``spec.seed``."""
    pack: int = 1
    """How many runs of its study may train together with it (the study's ``pack``)."""

    @property
    def key(self) -> str:
        """What a unit of work's checkpoints and attempts go by: a run's is its id (a pack's, its pack id)."""
        return self.run_id

    @property
    def label(self) -> str:
        """A short human label: study, axis values and seed."""
        axes = " ".join(f"{k.split('.')[-1]}={v}" for k, v in self.axes.items())
        return f"{self.study} {axes} seed={self.spec.seed}".replace("  ", " ")


PACK_PREFIX = "pack"
"""A pack's id is this prefix and a hash of its runs' ids (run ids are plain hexadecimal)."""


@dataclass(frozen=True)
class PlannedPack:
    """Runs trained together in one process, each still its own run (``bnbench.plan``).

    Executors handle a pack as they handle a run: one unit of work, sent to one worker, whose
    result is one ``RunResult`` per member. Its ``key`` (a pack id, never a run id) names its
    checkpoints and attempts.
    """

    members: tuple[PlannedRun, ...]

    @property
    def key(self) -> str:
        digest = hashlib.sha256(" ".join(sorted(m.run_id for m in self.members)).encode()).hexdigest()
        return f"{PACK_PREFIX}{digest[:16]}"

    @property
    def run_id(self) -> str:
        """Deprecated name of ``key`` (a pack has no run id of its own): executors written for a
        run's ``run_id`` keep working on packs."""
        return self.key

    @staticmethod
    def is_pack_id(run_id: str) -> bool:
        """Whether ``run_id`` names a pack (its checkpoints) rather than a run."""
        return run_id.startswith(PACK_PREFIX)

    @property
    def study(self) -> str:
        return self.members[0].study

    @property
    def label(self) -> str:
        first = self.members[0].label.removeprefix(self.study).strip()
        return f"{self.study} pack of {len(self.members)} ({first}, ...)"


class EpochRecord(NamedTuple):
    """The metrics of one epoch, and the step it ended at (unpacks as ``epoch, step, metrics``)."""

    epoch: int
    step: int
    metrics: dict[str, float]


@dataclass
class RunResult:
    """What a run produced. Only ``done`` and ``diverged`` results are final."""

    run_id: str
    status: Status
    epochs: list[EpochRecord] = field(default_factory=list)
    diverged_step: int | None = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    """Versions, host, device and performance options of the process that ran it."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts about the built run: parameter count, normalized sites, steps per epoch, attempts."""
    measurements: dict[str, Any] = field(default_factory=dict)
    """What a probe measured (probe runs only)."""

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


@dataclass
class RunRecord:
    """One stored run as reports and analyses see it."""

    run_id: str
    axes: dict[str, Any]
    """The study's swept fields (dotted paths) → this run's values; the seed is ``seed``."""
    seed: int
    spec: dict[str, Any]
    status: str
    diverged_step: int | None
    epochs: list[EpochRecord]
    """One record per epoch, in order, for training runs."""
    measurements: dict[str, Any]
    """What the probe returned, for probe runs."""
    duration_s: float | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    """Versions, host, device and performance options of the process that ran it."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts about the built run: parameters, normalized sites, steps per epoch, total steps."""
    error: str | None = None
    """Why a ``failed`` run failed."""

    @property
    def images_per_second(self) -> float | None:
        """Training images processed per second of the run's wall time."""
        steps, batch = self.info.get("total_steps"), self.spec.get("batch_size")
        if not steps or not batch or not self.duration_s:
            return None
        return steps * batch / self.duration_s

    def series(self, metric: str) -> list[float]:
        return [m[metric] for _, _, m in self.epochs if m.get(metric) is not None]

    def final(self, metric: str) -> float | None:
        values = self.series(metric)
        return values[-1] if values else None

    def best(self, metric: str) -> float | None:
        values = self.series(metric)
        return max(values) if values else None


Work = PlannedRun | PlannedPack
"""A unit of work an executor runs: one run, or a pack of runs."""
WorkResult = RunResult | tuple[RunResult, ...]
"""What a unit of work produced: a run's result, or one result per member of a pack."""


def members(work: Work) -> tuple[PlannedRun, ...]:
    """The runs of a unit of work."""
    return work.members if isinstance(work, PlannedPack) else (work,)

"""One run, start to end: assemble it, train it (or run its probe), and turn how it ended into a
``RunResult``. Divergence and exceptions are results; the lifecycle hooks see every run.

The pieces live beside it: ``bnbench.assembly`` (model, placement, normalizer),
``bnbench.inputs`` (transforms and fixed samples), ``bnbench.training`` (the loop),
``bnbench.run_state`` (position and checkpoints), ``bnbench.evaluation`` (splits and metrics).
"""

from __future__ import annotations

import json
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bnbench
from bnbench.api import ProbeContext, TrackerContext
from bnbench.assembly import assemble_model, resolve_device
from bnbench.checkpoint import Checkpoints
from bnbench.data import DataCache, DeviceData, StreamData
from bnbench.errors import failure_text
from bnbench.inputs import InputPipeline
from bnbench.packed_training import Pack, PackRefused
from bnbench.performance import Performance
from bnbench.progress import Progress
from bnbench.records import PlannedPack, PlannedRun, RunResult, Status, Work, WorkResult
from bnbench.registry import Registry
from bnbench.spec import Component, PerformanceSettings
from bnbench.training import (
    DEFAULT_CHECK_EVERY,
    Diverged,
    Loop,
    Member,
    OneRun,
    RunInterrupted,
    StopRequest,
    Training,
    determinism,
    seed_everything,
)

__all__ = ["Diverged", "RunInterrupted", "Runner", "StopRequest", "environment"]


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, host and device of this process, recorded with every result."""
    import torchvision

    env = {
        "bnbench": bnbench.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def make_trackers(registry: Registry, trackers: Iterable[Component], context: TrackerContext) -> list[object]:
    """The trackers' plugin objects, made by their factories (``bnbench_register_trackers``)."""
    return [registry.build("tracker", component, context) for component in trackers]


def close_trackers(trackers: Iterable[object]) -> None:
    """Call ``close()`` on the trackers that have one."""
    for tracker in trackers:
        close = getattr(tracker, "close", None)
        if callable(close):
            close()


class Runner:
    """Executes resolved runs. Holds the dataset cache shared by the runs of a sweep."""

    def __init__(
        self,
        registry: Registry,
        *,
        base_dir: Path,
        device: str = "auto",
        divergence_check_every: int = 0,
        checkpoints: Checkpoints | None = None,
        checkpoint_every: int = 0,
        stop: StopRequest | None = None,
        performance: PerformanceSettings | None = None,
        trackers: Sequence[object] = (),
    ) -> None:
        self.registry = registry
        self.trackers = list(trackers)
        """Experiment trackers: plugin objects of lifecycle hooks, registered until ``close()``."""
        for tracker in self.trackers:
            registry.manager.register(tracker, name=f"tracker-{id(tracker)}")
        self.checkpoints = checkpoints
        self.checkpoint_every = checkpoint_every
        self.stop = stop
        """Set (by a signal handler) to checkpoint at the next step boundary and stop."""
        self.device = resolve_device(device)
        self.performance = Performance.resolve(performance or PerformanceSettings(), self.device)
        self.data = DataCache(registry, base_dir)
        self.check_every = divergence_check_every or DEFAULT_CHECK_EVERY

    def close(self) -> None:
        """Unregister the trackers and close them (those with a ``close()``)."""
        for tracker in self.trackers:
            self.registry.manager.unregister(tracker)
        close_trackers(self.trackers)
        self.trackers = []

    def run(self, planned: PlannedRun, progress: Progress | None = None) -> RunResult:
        """Run one run to its end. Divergence and exceptions become results; a stop request
        raises ``RunInterrupted`` after a checkpoint, and Ctrl-C propagates.

        ``bnbench_run_start`` fires once a training run is built; ``bnbench_run_end`` fires for
        every run that ends, probe runs and runs that failed to build included (``run`` is then
        None).
        """
        started = time.time()
        info: dict[str, Any] = {}
        measurements: dict[str, Any] = {}
        member: Member | None = None
        error: str | None = None
        try:
            with determinism(planned.spec.deterministic):
                if planned.spec.is_probe:
                    measurements = self._probe(planned, info, progress)
                else:
                    training, facts = self.assemble(planned, progress)
                    info.update(facts, **training.facts)
                    stepper = OneRun(training)
                    member = stepper.members[0]
                    self.registry.hook.bnbench_run_start(run=training.context, planned=planned)
                    self._train(Loop(stepper, self.check_every), planned.label, progress)
        except Exception as exc:
            error = failure_text(exc)
        return self._finish(planned, member, started, error, info=info, measurements=measurements)

    def run_work(self, work: Work, progress: Progress | None = None) -> WorkResult:
        """Run one unit of work: a run (``run``) or a pack (``run_pack``)."""
        return self.run_pack(work, progress) if isinstance(work, PlannedPack) else self.run(work, progress)

    def run_pack(self, pack: PlannedPack, progress: Progress | None = None) -> tuple[RunResult, ...]:
        """Train the runs of ``pack`` together (``bnbench.packed_training``), one result per member,
        in order. A pack that cannot train packed (its model or normalizer fails under ``vmap``, a
        performance option packs do not support) trains its runs one by one, with a notice: the
        same runs, the same results within float tolerance. Hooks fire per member, as for runs."""
        warn = progress.log if progress else _to_stderr
        refusal = self._pack_refusal()
        if refusal is None:
            try:
                return self._train_pack(pack, progress, warn)
            except PackRefused as exc:
                refusal = str(exc)
        warn(f"{pack.label}: cannot train packed ({refusal}); training its {len(pack.members)} runs one by one")
        results = tuple(self.run(member, progress) for member in pack.members)
        for result in results:
            result.info["pack_fallback"] = refusal
        return results

    def _pack_refusal(self) -> str | None:
        if self.performance.compile != "off":
            return f"compile = {self.performance.compile!r}: packs run eagerly"
        if self.performance.loss_scaling:
            return "fp16 with loss scaling: packs use fp32 or bf16"
        return None

    def _train_pack(
        self, pack: PlannedPack, progress: Progress | None, warn: Callable[[str], None]
    ) -> tuple[RunResult, ...]:
        started = time.time()
        with determinism(pack.members[0].spec.deterministic):
            try:
                built = [self.assemble(member, progress, resume=False) for member in pack.members]
            except Exception as exc:  # one by one, each run reports its own failure
                raise PackRefused(f"assembling a member failed: {type(exc).__name__}: {exc}") from exc
            if isinstance(built[0][0].data, StreamData):
                raise PackRefused(f"dataset {pack.members[0].spec.dataset.name!r} streams its examples")
            try:
                pack_stepper = Pack.start(
                    pack.key, [training for training, _ in built], checkpoints=self.checkpoints, warn=warn
                )
            except PackRefused:
                raise
            except Exception as exc:  # one by one, each run reports its own failure
                raise PackRefused(f"stacking its members failed: {type(exc).__name__}: {exc}") from exc
            for planned, (training, _) in zip(pack.members, built, strict=True):
                self.registry.hook.bnbench_run_start(run=training.context, planned=planned)
            facts = [
                {**model_facts, **training.facts, "pack": pack.key, "pack_size": len(pack.members)}
                for training, model_facts in built
            ]
            error: str | None = None
            try:
                self._train(Loop(pack_stepper, self.check_every), pack.label, progress)
            except Exception as exc:
                error = failure_text(exc)
        return tuple(
            self._finish(planned, member, started, error, info=info)
            for planned, member, info in zip(pack.members, pack_stepper.members, facts, strict=True)
        )

    def _train(self, loop: Loop, label: str, progress: Progress | None) -> None:
        loop.train(
            self.registry,
            stop=self.stop,
            progress=progress,
            label=label,
            checkpoints=self.checkpoints,
            checkpoint_every=self.checkpoint_every,
        )

    def _finish(
        self,
        planned: PlannedRun,
        member: Member | None,
        started: float,
        error: str | None,
        *,
        info: dict[str, Any],
        measurements: dict[str, Any] | None = None,
    ) -> RunResult:
        """The run's result from how its member ended (``error``: what stopped its loop or its
        assembly), stamped with its end time and this process's environment, after
        ``bnbench_run_end`` has seen it."""
        status: Status = "done"
        diverged_step = None
        if member is not None and member.diverged is not None:
            status, diverged_step, error = "diverged", member.diverged.step, str(member.diverged)
        elif member is not None and member.error is not None:
            status, error = "failed", member.error
        elif error is not None:
            status = "failed"
        result = RunResult(
            planned.run_id,
            started_at=started,
            finished_at=time.time(),
            environment={**environment(self.device), **self.performance.describe()},
            status=status,
            epochs=list(member.records) if member is not None else [],
            diverged_step=diverged_step,
            error=error,
            info=info,
            measurements=measurements or {},
        )
        self.registry.hook.bnbench_run_end(
            run=member.training.context if member else None, result=result, planned=planned
        )
        return result

    def build_model(self, spec: Any, data: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The run's model on this runner's device, normalized at the placement's sites."""
        return assemble_model(self.registry, spec, data, self.device)

    def assemble(
        self, planned: PlannedRun, progress: Progress | None, *, resume: bool = True
    ) -> tuple[Training, dict[str, Any]]:
        """The run ready to train, resumed from its checkpoint if it has one (and ``resume``), and
        its model's facts."""
        spec = planned.spec
        seed_everything(spec.seed)
        data = self.data.get(spec.dataset, self.device, spec.validation_size)
        model, facts = assemble_model(self.registry, spec, data.bundle.info, self.device)
        training = Training.start(
            planned.run_id,
            model,
            data,
            InputPipeline.build(self.registry, spec, data, self.device),
            self.performance,
            spec=spec,
            device=self.device,
            check_every=self.check_every,
            checkpoints=self.checkpoints if resume else None,
            warn=progress.log if progress else (lambda message: None),
        )
        return training, facts

    def _probe(self, planned: PlannedRun, info: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        """Run the spec's probe; what it measured (``info`` gets the facts of the models it built)."""
        spec = planned.spec
        assert spec.probe is not None
        name = spec.probe.name
        seed_everything(spec.seed)

        def data() -> DeviceData:
            if spec.dataset is None:
                raise ValueError(f"probe {name!r} needs a dataset, and the study names none")
            return self.data.get(spec.dataset, self.device, spec.validation_size)

        def build() -> nn.Module:
            if spec.model is None:
                raise ValueError(f"probe {name!r} needs a model, and the study names none")
            model, facts = assemble_model(self.registry, spec, data().bundle.info, self.device)
            info.update(facts)
            return model.train()

        generator = torch.Generator(device=self.device).manual_seed(spec.seed)
        context = ProbeContext(spec=spec, device=self.device, generator=generator, build_model=build, data=data)
        if progress:
            progress.start_run(planned.label, 1)
        measurements = self.registry.build("probe", spec.probe, context)
        if not isinstance(measurements, Mapping):
            raise TypeError(f"probe {name!r} returned {type(measurements).__name__}; probes return a mapping")
        try:
            plain = json.loads(json.dumps(measurements, default=_plain))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"probe {name!r} returned measurements that are not JSON-serialisable: {exc}") from None
        if progress:
            progress.advance(1, float("nan"))
        return plain


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    """Tensors and numpy values as plain Python (for JSON)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

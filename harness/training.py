"""The training loop, written once (``Loop``): the learning-rate schedule (``LambdaLR``), the step
hook, divergence checks at the exact step, progress, stop and checkpoint, per-epoch metrics and
periodic checkpoints. A ``Stepper`` takes each step: ``OneRun`` for a run alone, or
``bnbench.packed_training.Pack`` for runs stacked under ``vmap``. ``Training`` assembles one run
(optimizer, generators, schedule, its position restored from a checkpoint). The loop computes the
epoch's training loss and accuracy (facts of the loop, which metrics read from ``EpochContext``);
which metric is a loss, and so can diverge, the metrics declare."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from bnbench.api import EpochContext, EvalResult, RunContext
from bnbench.checkpoint import Checkpoints
from bnbench.data import DeviceData
from bnbench.errors import failure_text
from bnbench.evaluation import compute_metrics, evaluate_split
from bnbench.executors import RunInterrupted, StopRequest
from bnbench.inputs import InputPipeline
from bnbench.performance import Performance
from bnbench.progress import Progress
from bnbench.records import EpochRecord
from bnbench.registry import Registry
from bnbench.run_state import TrainingState, restore_latest
from bnbench.spec import Component

DEFAULT_CHECK_EVERY = 25
"""Steps between checks of the loss for NaN/inf (each check costs a host sync on a GPU, and
tiny-op overhead on a CPU). The exact step of a divergence is recorded either way, and
parameters are checked at every epoch end."""


class Diverged(Exception):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} is not finite at step {step}")
        self.step, self.what = step, what


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


@contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run, restoring the previous settings."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]


@dataclass
class Training:
    """One run ready to train: its live context (model, optimizer, data), inputs and position.

    ``start`` assembles the optimizer, generators and (from a checkpoint) the position; ``epochs``
    trains from there, yielding each epoch's record.
    """

    context: RunContext
    data: DeviceData
    inputs: InputPipeline
    performance: Performance
    generator: torch.Generator
    generators: dict[str, torch.Generator]
    epochs_total: int
    state: TrainingState
    check_every: int
    schedule: LambdaLR = field(init=False)
    """The run's learning-rate schedule on its optimizer, positioned at ``state.step``."""

    def __post_init__(self) -> None:
        self.position_schedule()

    def position_schedule(self) -> None:
        """The schedule at ``state.step`` (a fresh run's 0, a restored one's): the optimizer's
        rates set from the spec's base rate, whatever a restored checkpoint held."""
        context = self.context
        context.start_step = self.state.step
        for group in context.optimizer.param_groups:
            group["initial_lr"] = context.spec.optimizer.lr
        factor = partial(context.spec.schedule.factor, total_steps=context.total_steps)
        self.schedule = LambdaLR(context.optimizer, factor, last_epoch=self.state.step - 1)

    @classmethod
    def start(
        cls,
        run_id: str,
        model: nn.Module,
        data: DeviceData,
        inputs: InputPipeline,
        performance: Performance,
        *,
        spec: Any,
        device: torch.device,
        check_every: int,
        checkpoints: Checkpoints | None,
        warn: Callable[[str], None],
    ) -> Training:
        steps_per_epoch = data.train_size // spec.batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {spec.batch_size} is larger than the training set ({data.train_size} examples)"
            )
        total_steps = spec.steps or spec.epochs * steps_per_epoch
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=spec.optimizer.lr,
            momentum=spec.optimizer.momentum,
            weight_decay=spec.optimizer.weight_decay,
            nesterov=spec.optimizer.nesterov,
        )
        generator = torch.Generator(device=device).manual_seed(spec.seed)
        generators = {"data": generator, **inputs.generators()}
        state = None
        if checkpoints is not None:
            state = restore_latest(
                checkpoints, run_id, warn, model, optimizer, generators, steps_per_epoch, data.train_size, device
            )
        context = RunContext(run_id, spec, model, optimizer, device, data.bundle, steps_per_epoch, total_steps)
        return cls(
            context=context,
            data=data,
            inputs=inputs,
            performance=performance,
            generator=generator,
            generators=generators,
            epochs_total=math.ceil(total_steps / steps_per_epoch),
            state=state or TrainingState.fresh(device, check_every),
            check_every=check_every,
        )

    @property
    def facts(self) -> dict[str, Any]:
        """Where the run stands and how long it is, for the result's ``info``."""
        facts = {
            "steps_per_epoch": self.context.steps_per_epoch,
            "total_steps": self.context.total_steps,
            "epochs": self.epochs_total,
        }
        if self.state.step:
            facts["resumed_from_step"] = self.state.step
        return facts

    def epoch_context(self, model: nn.Module, epoch: int, step: int, train_loss: float) -> EpochContext:
        """What the run's metrics read at the end of ``epoch``; evaluations are shared between them."""
        spec, inputs, state = self.context.spec, self.inputs, self.state
        evaluations: dict[tuple[str, bool], EvalResult] = {}

        def evaluate(split: str, transformed: bool = True) -> EvalResult:
            if split not in ("train", "test", "validation"):
                raise ValueError(f"evaluate() takes 'train', 'test' or 'validation', not {split!r}")
            key = (split, transformed and inputs.transform is not None)
            if key not in evaluations:
                extra = inputs.eval_extra(split) if key[1] else None
                evaluations[key] = evaluate_split(
                    model, self.data, split, spec.eval_batch_size, extra, self.performance
                )
            return evaluations[key]

        return EpochContext(
            run=self.context,
            epoch=epoch,
            step=step,
            train_loss=train_loss,
            train_accuracy=float(state.correct) / max(1, state.seen),
            evaluate=evaluate,
            sample=inputs.sample,
        )


@dataclass
class Member:
    """One run trained by a ``Loop``: its training (model, optimizer, state) and how it ended so far."""

    training: Training
    records: list[EpochRecord] = field(default_factory=list)
    model: nn.Module | None = None
    """The module its metrics evaluate: the run's model, or the one the stepper trains (compiled)."""
    diverged: Diverged | None = None
    error: str | None = None
    """Why the run failed on its own (a metric or hook raised for it); the other members go on."""

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.training.context.model

    @property
    def active(self) -> bool:
        return self.diverged is None and self.error is None


class Stepper(Protocol):
    """How a ``Loop`` takes one optimizer step for all its members at once: one run alone
    (``OneRun``) or a pack of runs stacked under ``vmap`` (``bnbench.packed_training.Pack``)."""

    key: str
    """The id its checkpoints are saved under: the run id, or the pack id."""
    members: list[Member]

    def batches(self, epoch_start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the epoch's batches from batch ``epoch_start``: images and labels, with a
        leading member dimension for packs."""
        ...

    def step(self, images: torch.Tensor, labels: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward, backward and optimizer step of every active member: the members'
        detached losses and correct predictions, one entry per member."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The checkpoint of the members at the position their states hold."""
        ...


class OneRun:
    """The stepper of a run trained alone: its model (as ``Performance`` prepares it), mixed
    precision and loss scaling; its checkpoint is the run's ``TrainingState``."""

    def __init__(self, training: Training) -> None:
        self.training = training
        self.key = training.context.run_id
        self.model = training.performance.prepare_model(training.context.model)
        self.members = [Member(training, records=list(training.state.records), model=self.model)]
        self.scaler = training.performance.grad_scaler()
        self.compiling = training.performance.compile == "step"
        self.compiled = training.performance.compile_step(self._train)
        self.stepped = False
        if self.compiling:
            for group in training.context.optimizer.param_groups:  # the scheduler fills them in place
                if not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]))

    def batches(self, epoch_start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t = self.training
        return t.data.train_batches(
            t.context.spec.batch_size, t.generator, t.state.order, epoch_start, t.inputs.train_extra
        )

    def step(self, images: torch.Tensor, labels: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.training.context.optimizer.zero_grad(set_to_none=True)
        if not self.stepped or not self.compiling:
            # eagerly: the first step of a start or resume goes through the scheduler's wrapper of
            # optimizer.step (it records that the optimizer stepped) and checks the logits' shape
            self.stepped = True
            return self._train(images, labels, check=first, wrapped=True)
        return self.compiled(images, labels, check=False, wrapped=False)

    def _train(
        self, images: torch.Tensor, labels: torch.Tensor, check: bool, wrapped: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward and update (what ``compile = 'step'`` compiles whole); ``wrapped``:
        step through ``optimizer.step`` as the scheduler wrapped it (compile does not trace into
        that wrapper, so compiled steps call the optimizer's own ``step``)."""
        t = self.training
        performance, optimizer = t.performance, t.context.optimizer
        with performance.autocast():
            logits = self.model(performance.prepare_inputs(images))
            if check:
                check_logits(logits, images.shape[0], t.data.bundle.num_classes, t.context.spec.model.name)
            loss = F.cross_entropy(logits.float(), labels)
        outcome = loss.detach().view(1), (logits.detach().argmax(1) == labels).sum().view(1)
        if self.scaler is None:
            loss.backward()
            if wrapped:
                optimizer.step()
            else:
                type(optimizer).step(optimizer)
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        return outcome

    def snapshot(self) -> dict[str, Any]:
        t, member = self.training, self.members[0]
        return t.state.snapshot(t.context.model, t.context.optimizer, t.generators, member.records)


class Loop:
    """The training loop, written once for one run and for packs: the schedule, the step hook,
    the divergence window, progress, stop and checkpoint, epoch-end checks and metrics, periodic
    checkpoints. The stepper takes the steps; each member keeps its own optimizer, schedule,
    metrics and outcome. A member whose loss turns non-finite is recorded ``diverged`` at its
    exact step and stops updating; the others go on."""

    def __init__(self, stepper: Stepper, check_every: int) -> None:
        self.stepper = stepper
        self.members = stepper.members
        self.check_every = check_every
        first = self.members[0].training
        self.total_steps = first.context.total_steps
        self.steps_per_epoch = first.context.steps_per_epoch
        self.epochs_total = first.epochs_total
        self.device = first.context.device

    def train(
        self,
        registry: Registry,
        *,
        stop: StopRequest | None,
        progress: Progress | None,
        label: str,
        checkpoints: Checkpoints | None,
        checkpoint_every: int,
    ) -> None:
        """Train every member to its end (or its divergence); ``members`` then hold the outcomes.

        Raises ``RunInterrupted`` (with the stepper's key) after checkpointing when a stop is requested."""
        members, check_every, stepper = self.members, self.check_every, self.stepper
        count = len(members)
        position = members[0].training.state  # epoch, batch and step are the same for every member
        hook = registry.hook
        step_hook = hook.bnbench_step_end if hook.bnbench_step_end.get_hookimpls() else None
        metrics = [member.training.context.spec.metrics for member in members]
        losses_measured = set().union(*(loss_metrics(registry, components) for components in metrics))
        losses = torch.zeros(check_every, count, device=self.device)  # since the last check
        for index, member in enumerate(members):
            if member.training.state.losses.shape == (check_every,):  # a checkpoint's, at the same interval
                losses[:, index] = member.training.state.losses
        loss_sum = torch.stack([m.training.state.loss_sum.float() for m in members])
        correct = torch.stack([m.training.state.correct for m in members])
        seen = position.seen
        step = position.step

        def sync_states(epoch: int) -> None:
            for index, member in enumerate(members):
                state = member.training.state
                state.epoch, state.batch, state.step, state.seen = epoch, batch, step, seen
                state.loss_sum = loss_sum[index].clone()
                state.correct = correct[index].clone()
                state.losses = losses[:, index].clone()

        def save(epoch: int) -> Path | None:
            if checkpoints is None:
                return None
            sync_states(epoch)
            return checkpoints.save(stepper.key, stepper.snapshot())

        if progress:
            progress.start_run(label, self.total_steps)
            if step:
                progress.advance(step, float("nan"))
        batch = position.batch
        for epoch in range(position.epoch, self.epochs_total + 1):
            for member in members:
                member.training.context.model.train()
                state = member.training.state
                if state.order is None:
                    state.begin_epoch(member.training.data.epoch_order(member.training.generator))
            if batch == 0:
                loss_sum.zero_()
                correct.zero_()
                seen = 0
            for images, labels in stepper.batches(batch):
                if step >= self.total_steps:
                    break
                detached, right = stepper.step(images, labels, step == 0)
                for member in members:
                    if member.active:
                        member.training.schedule.step()
                losses[step % check_every] = detached
                loss_sum += detached
                correct += right
                seen += labels.shape[-1]
                step += 1
                batch += 1
                if step_hook is not None:
                    for index, member in enumerate(members):
                        if member.active:
                            step_hook(run=member.training.context, step=step, loss=detached[index])
                if step % check_every == 0:
                    self._check_finite(losses, step)
                    if progress:
                        progress.advance(check_every, self._mean_active(detached))
                if not any(m.active for m in members):
                    return
                if stop is not None and stop.is_set() and step < self.total_steps:
                    raise RunInterrupted(stepper.key, step, save(epoch))
            self._check_finite(losses, step)  # the steps since the last periodic check
            if not any(m.active for m in members):
                return
            sync_states(epoch)
            for index, member in enumerate(members):
                if member.active:
                    self._end_epoch(registry, member, metrics[index], losses_measured, epoch, step, loss_sum[index])
            if progress:
                active = [m for m in members if m.active]
                if active:
                    progress.epoch(epoch, self.epochs_total, active[0].records[-1].metrics)
            if not any(m.active for m in members):
                return
            for member in members:
                member.training.state.order = None
            batch = 0
            if checkpoint_every and epoch % checkpoint_every == 0 and epoch < self.epochs_total:
                save(epoch + 1)

    def _end_epoch(
        self,
        registry: Registry,
        member: Member,
        metrics: Iterable[Component],
        losses_measured: set[str],
        epoch: int,
        step: int,
        loss_sum: torch.Tensor,
    ) -> None:
        """The member's parameter check, metrics and ``bnbench_epoch_end``; a divergence or a
        failure ends this member only."""
        training = member.training
        try:
            _check_parameters(training.context.model, step)
            train_loss = float(loss_sum) / max(1, training.state.batch)
            values = compute_metrics(registry, metrics, training.epoch_context(member.model, epoch, step, train_loss))
            check_loss_metrics(values, losses_measured, step)
            registry.hook.bnbench_epoch_end(run=training.context, epoch=epoch, metrics=values)
        except Diverged as exc:
            member.diverged = exc
            return
        except Exception as exc:  # this member's failure, as it would be alone
            member.error = failure_text(exc)
            return
        member.records.append(EpochRecord(epoch, step, values))

    def _check_finite(self, losses: torch.Tensor, step: int) -> None:
        """Mark each active member whose loss was not finite since the last check as diverged at
        its first such step (checks happen every ``check_every`` steps and at epoch ends)."""
        count = step % self.check_every or self.check_every
        window = losses[:count]
        finite = torch.isfinite(window)
        if bool(finite.all()):
            return
        for index, member in enumerate(self.members):
            column = finite[:, index]
            if member.active and not bool(column.all()):
                bad = int((~column).nonzero()[0])
                member.diverged = Diverged(step - count + bad + 1, f"training loss ({float(window[bad, index])})")

    def _mean_active(self, losses: torch.Tensor) -> float:
        active = [i for i, m in enumerate(self.members) if m.active]
        return float(losses[active].mean()) if active else float("nan")


def loss_metrics(registry: Registry, metrics: Iterable[Component]) -> set[str]:
    """The names of the metrics that declare ``measures="loss"``."""
    return {m.name for m in metrics if registry.get("metric", m.name).extras.get("measures") == "loss"}


def check_loss_metrics(values: dict[str, float], losses_measured: set[str], step: int) -> None:
    """Raise ``Diverged`` if a loss metric (declared so) is not finite."""
    for name, value in values.items():
        if not math.isfinite(value) and name.split(".")[0] in losses_measured:
            raise Diverged(step, f"{name} ({value})")


def check_logits(logits: Any, batch: int, classes: int, model: str) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch, classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model {model!r} returned {shape}; expected logits of shape ({batch}, {classes})")


def _check_parameters(model: nn.Module, step: int) -> None:
    """Raise ``Diverged`` if any parameter is NaN or infinite (never train on from NaN weights)."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
        raise Diverged(step, "a parameter")

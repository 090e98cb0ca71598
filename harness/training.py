"""The training loop of one run: SGD steps on the run's batches, the learning-rate schedule,
divergence checks, per-epoch metrics, and checkpoints. It yields one ``EpochRecord`` per epoch;
a divergence raises ``Diverged`` at its exact step and a stop request ``RunInterrupted`` after a
checkpoint. It computes the epoch's training loss and accuracy (facts of the loop, which metrics
read from ``EpochContext``); which metric is a loss, and so can diverge, the metrics declare."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import EpochContext, EvalResult, RunContext
from harness.checkpoint import Checkpoints
from harness.data import DeviceData
from harness.evaluation import compute_metrics, evaluate_split
from harness.inputs import InputPipeline
from harness.performance import Performance
from harness.progress import Progress
from harness.records import EpochRecord
from harness.registry import Registry
from harness.run_state import TrainingState, restore_latest

DEFAULT_CHECK_EVERY = 25
"""Steps between checks of the loss for NaN/inf (each check costs a host sync on a GPU, and
tiny-op overhead on a CPU). The exact step of a divergence is recorded either way, and
parameters are checked at every epoch end."""


class StopRequest(Protocol):
    """What the loop polls once per step to know it must checkpoint and stop
    (a ``threading.Event``, a ``multiprocessing`` flag, or a ``harness.executors.StopFile``)."""

    def is_set(self) -> bool: ...


class RunInterrupted(BaseException):
    """A stop was requested: the run checkpointed at ``step`` (to ``path``) and stopped."""

    def __init__(self, run_id: str, step: int, path: Path | None) -> None:
        where = f"checkpoint {path}" if path else "no checkpoint store"
        super().__init__(f"run {run_id} stopped at step {step} ({where})")
        self.run_id, self.step, self.path = run_id, step, path


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
        context.start_step = state.step if state is not None else 0
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

    def epochs(
        self,
        registry: Registry,
        *,
        stop: StopRequest | None,
        progress: Progress | None,
        label: str,
        checkpoints: Checkpoints | None,
        checkpoint_every: int,
    ) -> Iterator[EpochRecord]:
        """Train to the end, yielding each epoch's record as it ends (not those restored)."""
        context, data, state, performance = self.context, self.data, self.state, self.performance
        spec, model, optimizer = context.spec, context.model, context.optimizer
        inputs, generator, check_every = self.inputs, self.generator, self.check_every
        train_model = performance.prepare_model(model)
        scaler = performance.grad_scaler()
        hook = registry.hook
        step_hook = hook.bnbench_step_end if hook.bnbench_step_end.get_hookimpls() else None
        metrics = [(m, registry.get("metric", m.name)) for m in spec.metrics]
        losses_measured = loss_metrics(metrics)
        losses = state.losses
        schedule, base_lr = spec.schedule, spec.optimizer.lr
        total_steps = context.total_steps
        records = list(state.records)

        def save() -> Path | None:
            if checkpoints is None:
                return None
            return checkpoints.save(context.run_id, state.snapshot(model, optimizer, self.generators, records))

        if progress:
            progress.start_run(label, total_steps)
            if state.step:
                progress.advance(state.step, float("nan"))
        step = state.step
        current_lr = None
        for epoch in range(state.epoch, self.epochs_total + 1):
            model.train()
            if state.order is None:
                state.begin_epoch(data.epoch_order(generator))
            for images, labels in data.train_batches(
                spec.batch_size, generator, state.order, state.batch, inputs.train_extra
            ):
                if step >= total_steps:
                    break
                lr = base_lr * schedule.factor(step, total_steps)
                if lr != current_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    current_lr = lr
                with performance.autocast():
                    logits = train_model(performance.prepare_inputs(images))
                    if step == 0:
                        _check_logits(logits, images.shape[0], data.bundle.num_classes, spec.model.name)
                    loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                detached = loss.detach()
                losses[step % check_every] = detached
                state.loss_sum += detached
                state.correct += (logits.detach().argmax(1) == labels).sum()
                state.seen += labels.shape[0]
                state.batch += 1
                step += 1
                if step_hook is not None:
                    step_hook(run=context, step=step, loss=detached)
                if step % check_every == 0:
                    _check_finite(losses, step, check_every)
                    if progress:
                        progress.advance(check_every, float(detached))
                if stop is not None and stop.is_set() and step < total_steps:
                    state.step, state.epoch = step, epoch
                    raise RunInterrupted(context.run_id, step, save())
            _check_finite(losses, step, check_every)  # the steps since the last periodic check
            _check_parameters(model, step)
            train_loss = float(state.loss_sum) / max(1, state.batch)
            values = compute_metrics(metrics, self._epoch_context(train_model, epoch, step, train_loss))
            check_loss_metrics(values, losses_measured, step)
            hook.bnbench_epoch_end(run=context, epoch=epoch, metrics=values)
            record = EpochRecord(epoch, step, values)
            records.append(record)
            yield record
            if progress:
                progress.epoch(epoch, self.epochs_total, values)
            state.order = None
            state.step, state.epoch = step, epoch + 1
            if checkpoint_every and epoch % checkpoint_every == 0 and epoch < self.epochs_total:
                save()

    def _epoch_context(self, train_model: nn.Module, epoch: int, step: int, train_loss: float) -> EpochContext:
        spec, inputs, state = self.context.spec, self.inputs, self.state
        evaluations: dict[tuple[str, bool], EvalResult] = {}

        def evaluate(split: str, transformed: bool = True) -> EvalResult:
            if split not in ("train", "test", "validation"):
                raise ValueError(f"evaluate() takes 'train', 'test' or 'validation', not {split!r}")
            key = (split, transformed and inputs.transform is not None)
            if key not in evaluations:
                extra = inputs.eval_extra(split) if key[1] else None
                evaluations[key] = evaluate_split(
                    train_model, self.data, split, spec.eval_batch_size, extra, self.performance
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


def loss_metrics(metrics: list[tuple[Any, Any]]) -> set[str]:
    """The names of the metrics (``(component, entry)`` pairs) that declare ``measures="loss"``."""
    return {component.name for component, entry in metrics if entry.extras.get("measures") == "loss"}


def check_loss_metrics(values: dict[str, float], losses_measured: set[str], step: int) -> None:
    """Raise ``Diverged`` if a loss metric (declared so) is not finite."""
    for name, value in values.items():
        if not math.isfinite(value) and name.split(".")[0] in losses_measured:
            raise Diverged(step, f"{name} ({value})")


def _check_logits(logits: Any, batch: int, classes: int, model: str) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch, classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model {model!r} returned {shape}; expected logits of shape ({batch}, {classes})")


def _check_parameters(model: nn.Module, step: int) -> None:
    """Raise ``Diverged`` if any parameter is NaN or infinite (never train on from NaN weights)."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
        raise Diverged(step, "a parameter")


def _check_finite(losses: torch.Tensor, step: int, check_every: int) -> None:
    """Raise ``Diverged`` at the first non-finite loss since the last check.

    Checks happen every ``check_every`` steps (and at the last step), so the losses since the
    last check fill ``losses[:count]`` in order.
    """
    count = step % check_every or check_every
    finite = torch.isfinite(losses[:count])
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise Diverged(step - count + bad + 1, f"training loss ({float(losses[bad])})")

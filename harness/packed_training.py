"""Packed training: the runs of a pack train in lockstep, one forward and backward for all of them
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``), each still its own run.

Every member is first assembled exactly as it would be alone (``Training.start``: its seed, init,
optimizer, data order generator and input transform). Its parameters and buffers are then moved
into stacked tensors, one slice per member, and the member's own module is re-pointed at its
slice (``harness.stacking``), so the member's optimizer (a plain ``torch.optim.SGD`` with its
own learning rate, momentum, weight decay and schedule), its metrics, hooks and checkpoints see
an ordinary model. Each step gathers every member's batch in its own order, runs the members'
forwards at once (batch statistics and running statistics per member), and steps each member's
optimizer on its slice of the gradient. A member whose loss turns non-finite is recorded
``diverged`` at its exact step and stops updating; the others go on.

Results equal one-by-one training within float tolerance, not bitwise: the batched kernels sum
in another order (see docs/packing.md for the tolerance and how it is tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.checkpoint import Checkpoints
from harness.errors import failure_text
from harness.evaluation import compute_metrics
from harness.progress import Progress
from harness.records import EpochRecord
from harness.registry import Registry
from harness.run_state import TrainingState
from harness.stacking import StackedModules
from harness.training import (
    Diverged,
    RunInterrupted,
    StopRequest,
    Training,
    _check_logits,
    _check_parameters,
    check_loss_metrics,
    loss_metrics,
)


class PackRefused(Exception):
    """The pack cannot train packed (its model does not run under ``vmap``): train its runs one by one."""


@dataclass
class Member:
    """One run of a pack: its training (model, optimizer, state) and how it ended so far."""

    training: Training
    records: list[EpochRecord] = field(default_factory=list)
    diverged: Diverged | None = None
    error: str | None = None
    """Why the member failed on its own (a metric or hook raised for it); the others go on."""

    @property
    def active(self) -> bool:
        return self.diverged is None and self.error is None


class PackedTraining:
    """The members of one pack, their parameters stacked, trained together to the end."""

    def __init__(self, pack_id: str, trainings: list[Training], check_every: int) -> None:
        self.pack_id = pack_id
        self.members = [Member(t, records=list(t.state.records)) for t in trainings]
        self.check_every = check_every
        first = trainings[0]
        self.steps_per_epoch = first.context.steps_per_epoch
        self.total_steps = first.context.total_steps
        self.epochs_total = first.epochs_total
        self.device = first.context.device
        self.position = first.state  # epoch, batch and step are the same for every member

    # --- assembling -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        pack_id: str,
        trainings: list[Training],
        *,
        check_every: int,
        checkpoints: Checkpoints | None,
        warn: Callable[[str], None],
    ) -> PackedTraining:
        """The pack, resumed from its newest checkpoint that fits when it has one."""
        packed = cls(pack_id, trainings, check_every)
        if checkpoints is not None:
            packed._restore(checkpoints, warn)
        packed._stack()
        packed._try_step()
        return packed

    def _restore(self, checkpoints: Checkpoints, warn: Callable[[str], None]) -> None:
        ids = [m.training.context.run_id for m in self.members]
        for path, saved in checkpoints.candidates(self.pack_id, warn):
            try:
                if saved.get("runs") != ids:
                    raise ValueError("it holds other runs")
                if len(saved["diverged"]) != len(ids):
                    raise ValueError("its record of diverged members does not match its runs")
                for member, state in zip(self.members, saved["members"], strict=True):
                    t = member.training
                    TrainingState.check(
                        state,
                        t.context.model,
                        t.context.optimizer,
                        t.generators,
                        self.steps_per_epoch,
                        t.data.train_size,
                    )
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                checkpoints.reject(path, f"does not fit this pack ({type(exc).__name__}: {exc})", warn)
                continue
            for member, state, ended in zip(self.members, saved["members"], saved["diverged"], strict=True):
                t = member.training
                t.state = TrainingState.restore(state, t.context.model, t.context.optimizer, t.generators, self.device)
                member.records = list(t.state.records)
                member.diverged = None if ended is None else Diverged(int(ended[0]), str(ended[1]))
            self.position = self.members[0].training.state
            return

    def _stack(self) -> None:
        """Move the members' parameters and buffers into stacked tensors (one slice each) and
        point each member's own modules at its slice."""
        self.stack = StackedModules([m.training.context.model for m in self.members])

    def _try_step(self) -> None:
        """One forward and backward of the pack on copies of its buffers, before any training:
        ``PackRefused`` (with the reason) when the model or normalizer does not run under ``vmap``
        (random ops, Python branching on tensor values, in-place updates of unbatched state)."""
        first = self.members[0].training
        data, batch = first.data, min(first.context.spec.batch_size, first.data.train_size)
        images = data.prepare(data.train_images[:batch]).expand(len(self.members), *[-1] * (data.train_images.dim()))
        buffers = {name: tensor.clone() for name, tensor in self.stack.buffers.items()}
        try:
            with first.performance.autocast():
                logits = self.stack.forward(images, buffers)
            logits.float().sum().backward()
        except Exception as exc:
            raise PackRefused(
                f"it does not run under torch.func.vmap: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from exc
        finally:
            self.stack.zero_grad()

    # --- training ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The pack as one checkpoint: every member's state (its own tensors, not the stack's)."""
        members = []
        for member in self.members:
            t = member.training
            state = t.state.snapshot(t.context.model, t.context.optimizer, t.generators, member.records)
            state["model"] = {k: v.clone() for k, v in state["model"].items()}
            members.append(state)
        return {
            "step": self.position.step,
            "runs": [m.training.context.run_id for m in self.members],
            "members": members,
            "diverged": [None if m.diverged is None else [m.diverged.step, m.diverged.what] for m in self.members],
        }

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

        Raises ``RunInterrupted`` after checkpointing the pack when a stop is requested."""
        members, position, check_every = self.members, self.position, self.check_every
        count = len(members)
        first = members[0].training
        data, spec = first.data, first.context.spec
        hook = registry.hook
        step_hook = hook.bnbench_step_end if hook.bnbench_step_end.get_hookimpls() else None
        metrics = [[(m, registry.get("metric", m.name)) for m in t.training.context.spec.metrics] for t in members]
        losses_measured = set().union(*(loss_metrics(entries) for entries in metrics))
        losses = torch.zeros(check_every, count, device=self.device)  # since the last check
        for index, member in enumerate(members):
            if member.training.state.losses.shape == (check_every,):  # a checkpoint's, at the same interval
                losses[:, index] = member.training.state.losses
        loss_sum = torch.stack([m.training.state.loss_sum.float() for m in members])
        correct = torch.stack([m.training.state.correct for m in members])
        seen = position.seen
        performance = first.performance
        plain_batches = data.bundle.train_transform is None and all(
            m.training.inputs.train_extra is None for m in members
        )

        def sync_states() -> None:
            for index, member in enumerate(members):
                state = member.training.state
                state.epoch, state.batch, state.step, state.seen = position.epoch, position.batch, position.step, seen
                state.loss_sum = loss_sum[index].clone()
                state.correct = correct[index].clone()
                state.losses = losses[:, index].clone()

        def save() -> Path | None:
            if checkpoints is None:
                return None
            sync_states()
            return checkpoints.save(self.pack_id, self.snapshot())

        def batch(orders: torch.Tensor, number: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = orders[:, number * spec.batch_size : (number + 1) * spec.batch_size]
            labels = data.train_labels[index]
            if plain_batches:
                return data.prepare(data.train_images[index]), labels
            images = [
                data.prepare(data.train_images[index[i]], m.training.generator, m.training.inputs.train_extra)
                for i, m in enumerate(members)
            ]
            return torch.stack(images), labels

        if progress:
            progress.start_run(label, self.total_steps)
            if position.step:
                progress.advance(position.step, float("nan"))
        step = position.step
        current_lr: list[float | None] = [None] * count
        base_lrs = [m.training.context.spec.optimizer.lr for m in members]
        schedules = [m.training.context.spec.schedule for m in members]
        for epoch in range(position.epoch, self.epochs_total + 1):
            if not any(m.active for m in members):
                break
            for member in members:
                member.training.context.model.train()
                state = member.training.state
                if state.order is None:
                    state.begin_epoch(data.epoch_order(member.training.generator))
            if position.batch == 0:
                loss_sum.zero_()
                correct.zero_()
                seen = 0
            orders = torch.stack([m.training.state.order for m in members])  # type: ignore[misc]
            for number in range(position.batch, self.steps_per_epoch):
                if step >= self.total_steps:
                    break
                for index, member in enumerate(members):
                    lr = base_lrs[index] * schedules[index].factor(step, self.total_steps)
                    if lr != current_lr[index]:
                        for group in member.training.context.optimizer.param_groups:
                            group["lr"] = lr
                        current_lr[index] = lr
                images, labels = batch(orders, number)
                with performance.autocast():
                    logits = self.stack.forward(images)
                    if step == 0:
                        for i in range(count):
                            _check_logits(logits[i], images.shape[1], data.bundle.num_classes, spec.model.name)
                    per_example = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
                    member_losses = per_example.view(count, -1).mean(1)
                self.stack.zero_grad()
                member_losses.sum().backward()
                self.stack.repoint_gradients()
                for member in members:
                    if member.active:
                        member.training.context.optimizer.step()
                detached = member_losses.detach()
                losses[step % check_every] = detached
                loss_sum += detached
                correct += (logits.detach().argmax(-1) == labels).sum(1)
                seen += labels.shape[1]
                step += 1
                position.batch, position.step = number + 1, step
                if step_hook is not None:
                    for index, member in enumerate(members):
                        if member.active:
                            step_hook(run=member.training.context, step=step, loss=detached[index])
                if step % check_every == 0:
                    self._check_finite(losses, step)
                    if progress:
                        progress.advance(check_every, self._mean_active(detached))
                if not any(m.active for m in members):
                    break
                if stop is not None and stop.is_set() and step < self.total_steps:
                    position.epoch = epoch
                    raise RunInterrupted(self.pack_id, step, save())
            self._check_finite(losses, step)  # the steps since the last periodic check
            position.seen = seen
            sync_states()
            for index, member in enumerate(members):
                if not member.active:
                    continue
                try:
                    values = self._epoch_metrics(member, metrics[index], losses_measured, epoch, step, loss_sum[index])
                    hook.bnbench_epoch_end(run=member.training.context, epoch=epoch, metrics=values)
                except Diverged as exc:
                    member.diverged = exc
                    continue
                except Exception as exc:  # this member's failure, as it would be alone
                    member.error = failure_text(exc)
                    continue
                member.records.append(EpochRecord(epoch, step, values))
            if progress:
                active = [m for m in members if m.active]
                if active:
                    progress.epoch(epoch, self.epochs_total, active[0].records[-1].metrics)
            for member in members:
                member.training.state.order = None
            position.epoch, position.batch = epoch + 1, 0
            for member in members:
                member.training.state.epoch, member.training.state.batch = epoch + 1, 0
            if checkpoint_every and epoch % checkpoint_every == 0 and epoch < self.epochs_total:
                save()

    def _epoch_metrics(
        self,
        member: Member,
        metrics: list[tuple[Any, Any]],
        losses_measured: set[str],
        epoch: int,
        step: int,
        loss_sum: torch.Tensor,
    ) -> dict[str, float]:
        training = member.training
        model = training.context.model
        _check_parameters(model, step)
        train_loss = float(loss_sum) / max(1, training.state.batch)
        values = compute_metrics(metrics, training._epoch_context(model, epoch, step, train_loss))
        check_loss_metrics(values, losses_measured, step)
        return values

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

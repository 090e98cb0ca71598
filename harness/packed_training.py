"""The stepper of a pack (``Pack``): its runs train in lockstep, one forward and backward for all of them
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``), each still its own run.

Every member is first assembled exactly as it would be alone (``Training.start``: its seed, init,
optimizer, data order generator and input transform). Its parameters and buffers are then moved
into stacked tensors, one slice per member, and the member's own module is re-pointed at its
slice (``bnbench.stacking``), so the member's optimizer (a plain ``torch.optim.SGD`` with its
own learning rate, momentum, weight decay and schedule), its metrics, hooks and checkpoints see
an ordinary model. Each step gathers every member's batch in its own order, runs the members'
forwards at once (batch statistics and running statistics per member), and steps each member's
optimizer on its slice of the gradient. The loop around it (``bnbench.training.Loop``) is the
one a run alone trains in.

Results equal one-by-one training within float tolerance, not bitwise: the batched kernels sum
in another order (see docs/packing.md for the tolerance and how it is tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from bnbench.checkpoint import Checkpoints
from bnbench.run_state import TrainingState
from bnbench.stacking import StackedModules
from bnbench.training import Diverged, Member, Training, check_logits


class PackRefused(Exception):
    """The pack cannot train packed (its model does not run under ``vmap``): train its runs one by one."""


class Pack:
    """The stepper of a pack: its members' parameters stacked, one forward and backward for all."""

    def __init__(self, pack_id: str, trainings: list[Training]) -> None:
        self.key = pack_id
        self.members = [Member(t, records=list(t.state.records)) for t in trainings]
        first = trainings[0]
        self.data = first.data
        self.spec = first.context.spec
        self.performance = first.performance
        self.plain_batches = self.data.bundle.train_transform is None and all(
            t.inputs.train_extra is None for t in trainings
        )
        augment = self.data.bundle.train_transform
        transforms = [t.inputs.transform for t in trainings]
        kind = type(transforms[0])
        transforms_stack = all(t is None for t in transforms) or (
            callable(getattr(kind, "stack", None))
            and all(type(t.inputs.transform) is kind and t.inputs.train_generator is not None for t in trainings)
        )
        augment_stacks = augment is None or callable(getattr(augment, "stack", None))
        self.stacked_transform = not self.plain_batches and augment_stacks and transforms_stack
        """Whether the batch's augmentation and the members' input transforms apply to the stacked
        batch at once (each with a ``stack``, each member's draws from its own generator): else
        member by member."""
        self.stacked: list[int] = list(range(len(self.members)))
        """The members in the stack, by index: the active ones (the pack shrinks when a member ends)."""

    @classmethod
    def start(
        cls,
        pack_id: str,
        trainings: list[Training],
        *,
        checkpoints: Checkpoints | None,
        warn: Callable[[str], None],
    ) -> Pack:
        """The pack, resumed from its newest checkpoint that fits when it has one, stacked and
        tried once (``PackRefused`` when it does not run under ``vmap``)."""
        pack = cls(pack_id, trainings)
        if checkpoints is not None:
            pack._restore(checkpoints, warn)
        pack.stacked = [i for i, m in enumerate(pack.members) if m.active]
        pack._restack()
        pack._try_step()
        return pack

    def _restore(self, checkpoints: Checkpoints, warn: Callable[[str], None]) -> None:
        ids = [m.training.context.run_id for m in self.members]
        for path, saved in checkpoints.candidates(self.key, warn):
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
                        t.context.steps_per_epoch,
                        t.data.train_size,
                    )
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                checkpoints.reject(path, f"does not fit this pack ({type(exc).__name__}: {exc})", warn)
                continue
            for member, state, ended in zip(self.members, saved["members"], saved["diverged"], strict=True):
                t = member.training
                t.state = TrainingState.restore(
                    state, t.context.model, t.context.optimizer, t.generators, t.context.device
                )
                t.position_schedule()
                member.records = list(t.state.records)
                member.diverged = None if ended is None else Diverged(int(ended[0]), str(ended[1]))
            return

    def _try_step(self) -> None:
        """One forward and backward of the pack on copies of its buffers, before any training:
        ``PackRefused`` (with the reason) when the model or normalizer does not run under ``vmap``
        (random ops, Python branching on tensor values, in-place updates of unbatched state)."""
        data, batch = self.data, min(self.spec.batch_size, self.data.train_size)
        images = data.prepare(data.train_images[:batch]).expand(len(self.stacked), *[-1] * (data.train_images.dim()))
        buffers = {name: tensor.clone() for name, tensor in self.stack.buffers.items()}
        try:
            with self.performance.autocast():
                logits = self.stack.forward(images, buffers)
            logits.float().sum().backward()
        except Exception as exc:
            raise PackRefused(
                f"it does not run under torch.func.vmap: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from exc
        finally:
            self.stack.zero_grad()

    def batches(self, epoch_start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each active member's batch in its own order, stacked: images ``(members, batch, ...)``."""
        data, size, members = self.data, self.spec.batch_size, self.members
        orders = torch.stack([m.training.state.order for m in members])  # type: ignore[misc]
        for number in range(epoch_start, members[0].training.context.steps_per_epoch):
            self._shrink()
            index = orders[self.stacked, number * size : (number + 1) * size]
            labels = data.train_labels[index]
            if self.plain_batches:
                yield data.prepare(data.train_images[index]), labels
                continue
            if self.stacked_transform:
                x = data.scale(data.train_images[index])
                if data.bundle.train_transform is not None:
                    x = data.bundle.train_transform.stack(x, self.data_generators)
                if self.transforms[0] is not None:
                    x = type(self.transforms[0]).stack(self.transforms, x, self.transform_generators, "train")
                yield data.normalize(x), labels
                continue
            images = [
                data.prepare(
                    data.train_images[rows], members[i].training.generator, members[i].training.inputs.train_extra
                )
                for i, rows in zip(self.stacked, index, strict=True)
            ]
            yield torch.stack(images), labels

    def _shrink(self) -> None:
        """Restack without the members that ended (diverged or failed): their forward, backward and
        optimizer step cost nothing from then on. Their own modules keep their last weights."""
        active = [i for i in self.stacked if self.members[i].active]
        if active and active != self.stacked:
            self.stacked = active
            self._restack()

    def _restack(self) -> None:
        """The stacked members' parameters (and momentum buffers) stacked anew, and what their
        batches are prepared with (data generators, input transforms and their generators)."""
        members = [self.members[i].training for i in self.stacked]
        self.stack = StackedModules([t.context.model for t in members])
        self.optimizer = StackedSGD.over(self.stack, [t.context.optimizer for t in members])
        self.data_generators = [t.generator for t in members]
        self.transforms = [t.inputs.transform for t in members]
        self.transform_generators = [t.inputs.train_generator for t in members]

    def step(self, images: torch.Tensor, labels: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self.stacked)
        with self.performance.autocast():
            logits = self.stack.forward(images)
            if first:
                for i in range(count):
                    check_logits(logits[i], images.shape[1], self.data.bundle.num_classes, self.spec.model.name)
            per_example = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
            member_losses = per_example.view(count, -1).mean(1)
        self.stack.zero_grad()
        member_losses.sum().backward()
        self.stack.repoint_gradients()
        if self.optimizer is not None:
            self.optimizer.step()
        else:
            for i in self.stacked:
                self.members[i].training.context.optimizer.step()
        right = (logits.detach().argmax(-1) == labels).sum(1)
        if len(self.stacked) == len(self.members):
            return member_losses.detach(), right
        losses = torch.zeros(len(self.members), device=member_losses.device)  # ended members: nothing
        correct = torch.zeros(len(self.members), dtype=torch.long, device=member_losses.device)
        losses[self.stacked] = member_losses.detach()
        correct[self.stacked] = right
        return losses, correct

    def snapshot(self) -> dict[str, Any]:
        """The pack as one checkpoint: every member's state (its own tensors, not the stack's)."""
        members = []
        for member in self.members:
            t = member.training
            state = t.state.snapshot(t.context.model, t.context.optimizer, t.generators, member.records)
            state["model"] = {k: v.clone() for k, v in state["model"].items()}
            members.append(state)
        return {
            "step": self.members[0].training.state.step,
            "runs": [m.training.context.run_id for m in self.members],
            "members": members,
            "diverged": [None if m.diverged is None else [m.diverged.step, m.diverged.what] for m in self.members],
        }


class StackedSGD:
    """The members' SGD steps as one update of the stacked parameters: each member's learning rate,
    momentum and weight decay enter as a tensor over the member dimension, so a step costs a
    fixed number of operations per parameter whatever the pack's size (each member's own
    ``torch.optim.SGD`` stepping its slice costs that many per member). The arithmetic is
    ``torch.optim.SGD``'s (weight decay added to the gradient, momentum buffer, Nesterov, then the
    update); its roundings may differ in the last bit, within the packing tolerance.

    The members' optimizers keep their state: each one's momentum buffers are views of the stacked
    ones, so checkpoints hold them as before, and their learning rates (set by each member's
    schedule) are read at every step."""

    def __init__(self, stack: StackedModules, optimizers: list[torch.optim.Optimizer]) -> None:
        self.stack = stack
        self.optimizers = optimizers
        self.groups = [optimizer.param_groups[0] for optimizer in optimizers]
        self.nesterov = bool(self.groups[0]["nesterov"])
        first = next(iter(stack.params.values()))
        self.momentum = self._per_member("momentum", first)
        self.weight_decay = self._per_member("weight_decay", first)
        self.decays = bool(self.weight_decay.any())
        self.uses_momentum = bool(self.momentum.any())
        self.buffers: dict[str, torch.Tensor] | None = None
        for optimizer in optimizers:  # what a scheduler checks to know a step comes before its own
            optimizer._opt_called = True  # type: ignore[attr-defined]
        members = [dict(zip(stack.params, group["params"], strict=True)) for group in self.groups]
        self.member_params = members
        held = [
            optimizer.state[p].get("momentum_buffer")
            for optimizer, m in zip(optimizers, members, strict=True)
            for p in m.values()
        ]
        if self.uses_momentum and held and all(buffer is not None for buffer in held):
            self.buffers = {
                name: torch.stack(
                    [
                        optimizer.state[m[name]]["momentum_buffer"]
                        for optimizer, m in zip(optimizers, members, strict=True)
                    ]
                )
                for name in stack.params
            }
            self._point_members_at_buffers()

    @classmethod
    def over(cls, stack: StackedModules, optimizers: list[torch.optim.Optimizer]) -> StackedSGD | None:
        """The stacked optimizer of these members, or None when they cannot share one (not plain
        SGD with one parameter group in the model's order, dampening, maximize, Nesterov differing
        between members, or momentum buffers held by some members only): they then step one by one."""
        for optimizer in optimizers:
            groups = optimizer.param_groups
            if type(optimizer) is not torch.optim.SGD or len(groups) != 1:
                return None
            group = groups[0]
            if (
                group["dampening"]
                or group["maximize"]
                or group["nesterov"] != optimizers[0].param_groups[0]["nesterov"]
            ):
                return None
            if [tuple(p.shape) for p in group["params"]] != [tuple(t.shape[1:]) for t in stack.params.values()]:
                return None  # not the model's parameters in the model's order
        held = {
            optimizer.state[p].get("momentum_buffer") is None
            for optimizer in optimizers
            for p in optimizer.param_groups[0]["params"]
        }
        if len(held) > 1:
            return None
        return cls(stack, optimizers)

    def _per_member(self, key: str, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([float(group[key]) for group in self.groups], dtype=like.dtype, device=like.device)

    def _point_members_at_buffers(self) -> None:
        assert self.buffers is not None
        for index, (optimizer, params) in enumerate(zip(self.optimizers, self.member_params, strict=True)):
            for name, param in params.items():
                optimizer.state[param]["momentum_buffer"] = self.buffers[name][index]

    @torch.no_grad()
    def step(self) -> None:
        first = next(iter(self.stack.params.values()))
        lr = torch.tensor([float(group["lr"]) for group in self.groups], dtype=first.dtype, device=first.device)
        fresh = self.uses_momentum and self.buffers is None
        if fresh:
            self.buffers = {}
        for name, param in self.stack.params.items():
            shape = (len(self.groups),) + (1,) * (param.dim() - 1)
            grad = param.grad
            assert grad is not None
            if self.decays:
                grad = grad + self.weight_decay.view(shape) * param
            if not self.uses_momentum:
                param.sub_(lr.view(shape) * grad)
                continue
            momentum = self.momentum.view(shape)
            if fresh:
                buffer = self.buffers[name] = grad.clone()
            else:
                buffer = self.buffers[name]
                buffer.mul_(momentum).add_(grad)
            update = grad + momentum * buffer if self.nesterov else buffer
            param.sub_(lr.view(shape) * update)
        if fresh:
            self._point_members_at_buffers()

"""Where a training run stands (its epoch, batch, data order and running sums), as checkpoints
save it and a resumed run restores it, checked to fit the run before anything is restored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnbench.checkpoint import Checkpoints, capture_rng, restore_rng
from bnbench.records import EpochRecord


@dataclass
class TrainingState:
    """Where a run is: the next epoch and batch, the epoch's data order and running sums."""

    epoch: int
    batch: int
    step: int
    order: torch.Tensor | None
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    losses: torch.Tensor
    """The losses since the last divergence check."""
    records: list[EpochRecord] = field(default_factory=list)

    @classmethod
    def fresh(cls, device: torch.device, check_every: int) -> TrainingState:
        return cls(
            epoch=1,
            batch=0,
            step=0,
            order=None,
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.long),
            seen=0,
            losses=torch.zeros(check_every, device=device),
        )

    def begin_epoch(self, order: torch.Tensor) -> None:
        self.order = order
        self.batch = self.seen = 0
        self.loss_sum.zero_()
        self.correct.zero_()

    def snapshot(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        records: list[EpochRecord],
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "order": None if self.order is None else self.order.cpu(),
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "losses": self.losses.cpu(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": capture_rng(generators),
            "records": [[r.epoch, r.step, r.metrics] for r in records],
        }

    @staticmethod
    def check(
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        steps_per_epoch: int,
        train_size: int,
    ) -> None:
        """Raise (``KeyError``, ``TypeError``, ``ValueError``) unless ``saved`` fits this run, before
        anything is restored: a checkpoint that fails half-way would leave the model half-loaded."""
        expected = model.state_dict()
        weights = saved["model"]
        if set(weights) != set(expected):
            raise KeyError(f"model keys differ: {sorted(set(weights) ^ set(expected))[:5]}")
        for name, tensor in expected.items():
            if not isinstance(weights[name], torch.Tensor) or weights[name].shape != tensor.shape:
                raise ValueError(
                    f"model tensor {name!r} has shape {tuple(getattr(weights[name], 'shape', ()))}, "
                    f"the run's has {tuple(tensor.shape)}"
                )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        groups = saved["optimizer"]["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError("the optimizer's parameter groups differ")
        for index, entry in saved["optimizer"]["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[int(index)].shape:
                    raise ValueError(f"optimizer state {key!r} of parameter {index} has the wrong shape")
        rng = saved["rng"]
        if not {"torch", "python", "generators"} <= set(rng) or set(rng["generators"]) != set(generators):
            raise KeyError("random states are missing")
        order = saved["order"]
        if order is not None and (
            order.dim() != 1 or len(order) != train_size or int(order.min()) < 0 or int(order.max()) >= train_size
        ):
            raise ValueError("the data order does not index this run's training set")
        if not 0 <= int(saved["batch"]) <= steps_per_epoch or int(saved["step"]) < 0 or int(saved["epoch"]) < 1:
            raise ValueError("the position in training is out of range")
        for key in ("loss_sum", "correct", "losses"):
            if not isinstance(saved[key], torch.Tensor):
                raise TypeError(f"{key!r} is not a tensor")
        if not isinstance(saved["records"], list):
            raise TypeError("the recorded epochs are not a list")

    @classmethod
    def restore(
        cls,
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        device: torch.device,
    ) -> TrainingState:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        restore_rng(saved["rng"], generators)
        order = saved["order"]
        return cls(
            epoch=saved["epoch"],
            batch=saved["batch"],
            step=saved["step"],
            order=None if order is None else order.to(device),
            loss_sum=saved["loss_sum"].to(device),
            correct=saved["correct"].to(device),
            seen=saved["seen"],
            losses=saved["losses"].to(device),
            records=[EpochRecord(e, s, dict(m)) for e, s, m in saved["records"]],
        )


def restore_latest(
    checkpoints: Checkpoints,
    run_id: str,
    warn: Callable[[str], None],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    steps_per_epoch: int,
    train_size: int,
    device: torch.device,
) -> TrainingState | None:
    """The state of the newest intact checkpoint that fits this run, restored into ``model``,
    ``optimizer`` and ``generators``; None (a fresh start) when none does. One that loads but
    does not fit (a tensor of another shape, a missing key, a data order out of range) is set
    aside like a damaged one and the next older one is tried: a good checkpoint is never lost."""
    for path, saved in checkpoints.candidates(run_id, warn):
        try:
            TrainingState.check(saved, model, optimizer, generators, steps_per_epoch, train_size)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            checkpoints.reject(path, f"does not fit this run ({type(exc).__name__}: {exc})", warn)
            continue
        return TrainingState.restore(saved, model, optimizer, generators, device)
    return None

"""Evaluating a model on a split, and computing a run's metrics at the end of an epoch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.api import EpochContext, EvalResult
from bnbench.data import BatchFunction, DeviceData
from bnbench.performance import Performance
from bnbench.registry import Registry
from bnbench.spec import Component


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: DeviceData,
    split: str,
    batch_size: int,
    extra: BatchFunction | None = None,
    performance: Performance | None = None,
) -> EvalResult:
    model.eval()
    total_loss = torch.zeros((), device=data.mean.device)
    correct = torch.zeros((), device=data.mean.device, dtype=torch.long)
    count = 0
    autocast = performance.autocast if performance is not None else contextlib.nullcontext
    for images, labels in data.eval_batches(split, batch_size, extra):
        with autocast():
            logits = model(performance.prepare_inputs(images) if performance is not None else images).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += labels.shape[0]
    model.train()
    return EvalResult(loss=float(total_loss) / max(1, count), accuracy=float(correct) / max(1, count))


def compute_metrics(registry: Registry, metrics: Iterable[Component], context: EpochContext) -> dict[str, float]:
    """Each metric's values at the end of an epoch, under its name (``name.key`` for a mapping)."""
    values: dict[str, float] = {}
    for component in metrics:
        try:
            value = registry.build("metric", component, context)
        except Exception as exc:
            plugin = registry.get("metric", component.name).plugin
            raise RuntimeError(f"metric {component.name!r} ({plugin}) raised {type(exc).__name__}: {exc}") from exc
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, number in items:
            name = component.name if key is None else f"{component.name}.{key}"
            try:
                values[name] = float(number)
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {component.name!r} returned {number!r} for {name!r}; metrics return numbers"
                ) from None
    return values

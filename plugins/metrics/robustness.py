"""Accuracy under input noise and the generalization gap (Annamalai & Thakur 2022, MNIST experiments)."""

from __future__ import annotations

import torch
from pydantic import Field

from bnbench import EpochContext
from bnbench.plugins.metrics.geometry import IntervalOptions, due


class RobustnessOptions(IntervalOptions):
    train_sample: int = Field(
        1000,
        ge=0,
        description="Training examples (a fixed sample, transformed like training inputs) evaluated in eval mode "
        "for the train-test gap; 0: use the epoch's running training accuracy instead (no extra pass).",
    )


@torch.no_grad()
def sample_accuracy(context: EpochContext, n: int) -> float:
    """Accuracy in eval mode on the fixed sample of ``n`` training examples (``EpochContext.sample``)."""
    model = context.run.model
    images, labels = context.sample(n)
    batch = context.run.spec.eval_batch_size
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
            for i in range(0, images.shape[0], batch)
        )
    finally:
        model.train(was_training)
    return correct / max(1, images.shape[0])


def robustness(context: EpochContext, options: RobustnessOptions) -> dict[str, float]:
    """Clean and noisy test accuracy, their difference, and the train-test gap (Annamalai & Thakur 2022).

    Keys: ``clean_test_accuracy`` (test inputs without the run's transform: one extra test
    pass when the run has one), ``noisy_test_accuracy`` (with it: the pass ``test_accuracy``
    shares), ``noise_drop`` (clean − noisy), ``train_accuracy`` (eval mode on a fixed sample of
    ``train_sample`` training examples, noisy like training inputs: a forward pass of that
    many examples) and ``train_test_gap`` (that minus the noisy test accuracy).
    """
    if not due(context, options.every):
        return {}
    noisy = context.evaluate("test").accuracy
    clean = context.evaluate("test", transformed=False).accuracy
    train = sample_accuracy(context, options.train_sample) if options.train_sample else context.train_accuracy
    return {
        "clean_test_accuracy": clean,
        "noisy_test_accuracy": noisy,
        "noise_drop": clean - noisy,
        "train_accuracy": train,
        "train_test_gap": train - noisy,
    }

"""Loss and accuracy metrics. Test metrics share one evaluation pass per epoch."""

from __future__ import annotations

from bnbench import EpochContext, NoOptions


def train_loss(context: EpochContext, options: NoOptions) -> float:
    """Mean training loss over the epoch's mini-batches (training mode, augmented data)."""
    return context.train_loss


def train_accuracy(context: EpochContext, options: NoOptions) -> float:
    """Share of the epoch's training examples classified correctly while training."""
    return context.train_accuracy


def test_loss(context: EpochContext, options: NoOptions) -> float:
    """Mean cross-entropy on the test set (eval mode)."""
    return context.evaluate("test").loss


def test_accuracy(context: EpochContext, options: NoOptions) -> float:
    """Share of the test set classified correctly (eval mode)."""
    return context.evaluate("test").accuracy


def validation_loss(context: EpochContext, options: NoOptions) -> float:
    """Mean cross-entropy on the held-out validation split (needs the study's validation_size)."""
    return context.evaluate("validation").loss


def validation_accuracy(context: EpochContext, options: NoOptions) -> float:
    """Share of the held-out validation split classified correctly (needs validation_size)."""
    return context.evaluate("validation").accuracy

"""Built-in per-epoch metrics: training and test loss and accuracy."""

from __future__ import annotations

from harness import hookimpl
from harness.hookspecs import Register
from plugins.metrics.basic import (
    test_accuracy,
    test_loss,
    train_accuracy,
    train_loss,
    validation_accuracy,
    validation_loss,
)


@hookimpl
def bnbench_register_metrics(register: Register) -> None:
    register("train_loss", train_loss)
    register("train_accuracy", train_accuracy)
    register("test_loss", test_loss)
    register("test_accuracy", test_accuracy)
    register("validation_loss", validation_loss)
    register("validation_accuracy", validation_accuracy)

"""Built-in per-epoch metrics: training, test and validation loss and accuracy; weight geometry,
implied regularization and robustness to input noise (Annamalai & Thakur 2022)."""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.metrics.basic import (
    test_accuracy,
    test_loss,
    train_accuracy,
    train_loss,
    validation_accuracy,
    validation_loss,
)
from bnbench.plugins.metrics.geometry import GeometryOptions, implied_regularization, weight_geometry
from bnbench.plugins.metrics.robustness import RobustnessOptions, robustness


@hookimpl
def bnbench_register_metrics(register: Register) -> None:
    # the metrics a study records when it names none (default=True), in this order
    register("train_loss", train_loss, measures="loss", split="train", default=True)
    register("train_accuracy", train_accuracy, measures="accuracy", split="train", default=True)
    register("test_loss", test_loss, measures="loss", split="test", default=True)
    register("test_accuracy", test_accuracy, measures="accuracy", split="test", default=True)
    register("validation_loss", validation_loss, measures="loss", split="validation")
    register("validation_accuracy", validation_accuracy, measures="accuracy", split="validation")
    register("weight_geometry", weight_geometry, options=GeometryOptions)
    register("implied_regularization", implied_regularization, options=GeometryOptions)
    register("robustness", robustness, options=RobustnessOptions)

"""Built-in experiment trackers: the runs' curves in TensorBoard and MLflow as they train.

Off unless a manifest names them (``[harness] trackers = ["tensorboard"]``) or ``bnbench run
--track mlflow`` does; each needs its optional extra (``bnbench[tensorboard]``,
``bnbench[mlflow]``). Both work through the lifecycle hooks only, as a third-party tracker would.
"""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.trackers.mlflow import MlflowOptions, mlflow_tracker
from bnbench.plugins.trackers.tensorboard import TensorBoardOptions, tensorboard_tracker


@hookimpl
def bnbench_register_trackers(register: Register) -> None:
    register("tensorboard", tensorboard_tracker, options=TensorBoardOptions)
    register("mlflow", mlflow_tracker, options=MlflowOptions)

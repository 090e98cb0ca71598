"""Built-in analyses of the regularization study of Annamalai & Thakur 2022 (docs/studies.md).

=========================  =====================================================================
analysis                   what it reports
=========================  =====================================================================
``implied_regularization`` BN's implied multiplier λ̂, its ridge rate, per-unit SNR and the noise
                           bound against the input-noise level (table, figure, trend values)
``tuned_l2_comparison``    accuracy under noise: BN, no BN, and no BN with the weight decay tuned
                           on the validation split (never on the test set)
``trajectories``           raw weight norms and ‖γ‖ over training, against batch size
=========================  =====================================================================

They read the metrics ``weight_geometry``, ``implied_regularization``, ``robustness`` and
``validation_accuracy`` (``plugins.metrics``).
"""

from __future__ import annotations

from harness import hookimpl
from harness.hookspecs import Register
from plugins.analyses.regularization import (
    ImpliedRegularizationOptions,
    TrajectoryOptions,
    TunedL2Options,
    implied_regularization_analysis,
    trajectories,
    tuned_l2_comparison,
)


@hookimpl
def bnbench_register_analyses(register: Register) -> None:
    register("implied_regularization", implied_regularization_analysis, options=ImpliedRegularizationOptions)
    register("tuned_l2_comparison", tuned_l2_comparison, options=TunedL2Options)
    register("trajectories", trajectories, options=TrajectoryOptions)

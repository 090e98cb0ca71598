"""Built-in analyses of training studies (the probes' own analyses live with them, ``bnbench.plugins.probes``).

=========================  =====================================================================
analysis                   what it reports
=========================  =====================================================================
``results_table``          the standard table of every training study (``standard=True``): final
                           and best accuracy, final loss, seeds, divergences, cost, per configuration
``other_metrics``          standard too: every metric no analysis of the study shows (``reads=``),
                           final value per configuration and curves over epochs
``lr_sweep``               Bjorck et al. 2018: accuracy against the learning rate, each seed's
                           best rate chosen on the validation split, training curves (Fig. 1)
``placement_share``        Bjorck et al. 2018: the final layer's share of BN's benefit (RQ4)
``implied_regularization`` BN's implied multiplier λ̂, its ridge rate, per-unit SNR and the noise
                           bound against the input-noise level (table, figure, trend values)
``tuned_l2_comparison``    accuracy under noise: BN, no BN, and no BN with the weight decay tuned
                           on the validation split (never on the test set)
``trajectories``           raw weight norms and ‖γ‖ over training, against batch size
=========================  =====================================================================

The last three belong to the regularization study of Annamalai & Thakur 2022
(docs/studies.md); they read the metrics ``weight_geometry``, ``implied_regularization``, ``robustness`` and
``validation_accuracy`` (``bnbench.plugins.metrics``).
"""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.analyses.lr_sweep import LrSweepOptions, PlacementShareOptions, lr_sweep, placement_share
from bnbench.plugins.analyses.metrics_table import OtherMetricsOptions, other_metrics
from bnbench.plugins.analyses.regularization import (
    ImpliedRegularizationOptions,
    TrajectoryOptions,
    TunedL2Options,
    implied_regularization_analysis,
    trajectories,
    tuned_l2_comparison,
)
from bnbench.plugins.analyses.results_table import ResultsTableOptions, results_table


@hookimpl
def bnbench_register_analyses(register: Register) -> None:
    register(
        "results_table", results_table, options=ResultsTableOptions, standard=True, reads=lambda o: (o.accuracy, o.loss)
    )
    register("other_metrics", other_metrics, options=OtherMetricsOptions, standard="after")
    curves = ("train_accuracy",)  # lr_sweep's training curves
    register("lr_sweep", lr_sweep, options=LrSweepOptions, reads=lambda o: (o.metric, o.select_on, *curves))
    register("placement_share", placement_share, options=PlacementShareOptions, reads=lambda o: (o.metric, o.select_on))
    register(
        "implied_regularization",
        implied_regularization_analysis,
        options=ImpliedRegularizationOptions,
        reads=lambda o: (o.metric, o.geometry_metric),
    )
    register(
        "tuned_l2_comparison",
        tuned_l2_comparison,
        options=TunedL2Options,
        reads=lambda o: (o.metric, o.clean_metric, o.selection_metric, o.train_loss_metric, o.train_accuracy_metric),
    )
    register("trajectories", trajectories, options=TrajectoryOptions, reads=lambda o: (o.geometry_metric,))

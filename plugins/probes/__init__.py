"""Built-in probes and analyses reproducing Bjorck et al. 2018, "Understanding Batch Normalization".

====================  ====================  ===========================================================================
probe                 default analysis      measures (paper)
====================  ====================  ===========================================================================
``loss_landscape``    ``loss_landscape``    relative loss of one SGD step vs step size (Fig. 2)
``activation_stats``  ``activation_depth``  channel mean/variance vs depth, at init and after a large step (Figs. 4–5)
``gradient_stats``    ``gradient_stats``    gradient norms, histograms, per-example agreement (Figs. 3, 6)
``class_bias``        ``class_bias``        one-class predictions, output-gradient heat map (Fig. 5)
``random_matrix``     ``random_matrix``     singular-value spread of random products vs theory (Fig. 7)
``max_lr``            ``max_lr_depth``      largest non-diverging learning rate vs depth (Fig. 8)
``jacobian_spectrum`` ``jacobian_spectrum`` input-output Jacobian's singular values vs depth, BN vs none (Sec. 4)
====================  ====================  ===========================================================================

The analyses of Bjorck et al.'s training studies (``lr_sweep``, ``placement_share``) are in
``bnbench.plugins.analyses``.
"""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.probes.activations import ActivationOptions, activation_depth, activation_stats
from bnbench.plugins.probes.class_bias import ClassBiasOptions, class_bias, class_bias_analysis
from bnbench.plugins.probes.common import CompareOptions
from bnbench.plugins.probes.gradients import GradientOptions, gradient_analysis, gradient_stats
from bnbench.plugins.probes.jacobian import (
    JacobianAnalysisOptions,
    JacobianOptions,
    jacobian_analysis,
    jacobian_spectrum,
)
from bnbench.plugins.probes.landscape import (
    LandscapeAnalysisOptions,
    LandscapeOptions,
    landscape_analysis,
    loss_landscape,
)
from bnbench.plugins.probes.max_lr import MaxLrAnalysisOptions, MaxLrOptions, max_lr, max_lr_analysis
from bnbench.plugins.probes.random_matrix import RandomMatrixOptions, random_matrix, random_matrix_analysis


@hookimpl
def bnbench_register_probes(register: Register) -> None:
    register("loss_landscape", loss_landscape, options=LandscapeOptions, analyses=["loss_landscape"])
    register("activation_stats", activation_stats, options=ActivationOptions, analyses=["activation_depth"])
    register("gradient_stats", gradient_stats, options=GradientOptions, analyses=["gradient_stats"])
    register("class_bias", class_bias, options=ClassBiasOptions, analyses=["class_bias"])
    register("random_matrix", random_matrix, options=RandomMatrixOptions, analyses=["random_matrix"])
    register("max_lr", max_lr, options=MaxLrOptions, analyses=["max_lr_depth"])
    register("jacobian_spectrum", jacobian_spectrum, options=JacobianOptions, analyses=["jacobian_spectrum"])


@hookimpl
def bnbench_register_analyses(register: Register) -> None:
    register("loss_landscape", landscape_analysis, options=LandscapeAnalysisOptions)
    register("activation_depth", activation_depth, options=CompareOptions)
    register("gradient_stats", gradient_analysis, options=CompareOptions)
    register("class_bias", class_bias_analysis, options=CompareOptions)
    register("random_matrix", random_matrix_analysis)
    register("max_lr_depth", max_lr_analysis, options=MaxLrAnalysisOptions)
    register("jacobian_spectrum", jacobian_analysis, options=JacobianAnalysisOptions)

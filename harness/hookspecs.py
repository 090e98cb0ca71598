"""The whole plugin contract of bnbench, hook by hook.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are hooks
below. It is loaded from the ``bnbench`` entry-point group of an installed package, or named
in a manifest's ``[harness] plugins`` list. Built-in plugins load the same way.

Registration hooks receive a ``register`` callback::

    register(name, factory, *, options=NoOptions, description=None)

``name`` is what a manifest writes; ``options`` is a pydantic model (subclass
``bnbench.Options``) validating the keys a manifest gives beside ``name``; ``description``
defaults to the first line of the factory's docstring. Some kinds accept extra keywords,
documented on their hook; any other keyword is an error. Two plugins registering the same
name for the same kind is an error naming both. What ``factory`` must be differs by kind
and is documented on each hook.

Registration hooks are called one implementation at a time (``Registry`` walks
``get_hookimpls()``), not through the hook relay: each component is then attributed to the
plugin that registered it (``bnbench plugins`` shows the package), and a plugin whose
registration raises is set aside with its error while the others load. Hook wrappers and
``firstresult`` therefore do not apply to registration hooks; lifecycle hooks go through the
relay (``registry.hook``) with pluggy's ordering and wrappers.

Lifecycle hooks observe a run; they must not change its results unless that is their
documented purpose. They run in the training process, on every step for
``bnbench_step_end``: keep them cheap (no host synchronisation on the GPU).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch

    from bnbench.api import RunContext
    from bnbench.records import PlannedRun, RunResult

PROJECT = "bnbench"

REGISTRATION_HOOKS: dict[str, str] = {
    "model": "bnbench_register_models",
    "normalizer": "bnbench_register_normalizers",
    "placement": "bnbench_register_placements",
    "dataset": "bnbench_register_datasets",
    "transform": "bnbench_register_transforms",
    "metric": "bnbench_register_metrics",
    "probe": "bnbench_register_probes",
    "analysis": "bnbench_register_analyses",
    "executor": "bnbench_register_executors",
    "tracker": "bnbench_register_trackers",
}
"""Kind of component → the hook through which plugins register it (each documented below)."""

KINDS: tuple[str, ...] = tuple(REGISTRATION_HOOKS)

DISABLE_ENV = "BNBENCH_DISABLE_PLUGINS"
"""Comma-separated installed plugins not to load (package or entry-point names), as ``--disable-plugin``."""


def disabled_plugins() -> set[str]:
    """The installed plugins ``BNBENCH_DISABLE_PLUGINS`` (set by ``--disable-plugin``) leaves out."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback registration hooks receive."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        options: Any = None,
        description: str | None = None,
        **extras: Any,
    ) -> None: ...


@hookspec
def bnbench_register_models(register: Register) -> None:
    """Register model factories.

    ``factory(options, data: DataInfo) -> torch.nn.Module``. The model returns logits of
    shape ``(N, data.num_classes)`` for inputs of shape ``(N, *data.input_shape)`` and puts a
    ``bnbench.NormSite`` wherever a normalizer may go (role ``"output"`` for one on the
    logits). It never builds a normalizer itself.

    Optionally, a site carries ``tags`` placements can select on (the built-in ResNet tags
    ``stem``, ``residual_branch`` and ``residual_branch_end``) and a ``source``: the layer whose
    output it sees (``NormSite(c, "conv", source=self.conv1)``). Normalizers that act on that
    layer's weights (weight standardization) need it; a model that names no sources still
    works with every other normalizer.
    """


@hookspec
def bnbench_register_normalizers(register: Register) -> None:
    """Register normalizer factories (a normalizer named by a string, as in timm).

    ``factory(num_features: int, kind: "conv" | "fc", options) -> torch.nn.Module``. The
    module maps a tensor of the site's shape (``(N, C, H, W)`` for ``conv``, ``(N, C)`` for
    ``fc``) to a tensor of the same shape and dtype, in training and eval mode.

    Extra keyword ``traits``: a ``bnbench.NormalizerTraits``, or a function of the validated
    options returning one (default: ``NormalizerTraits()``), saying which site kinds it
    supports, whether it works on a batch of one example in training mode, whether an
    example's output depends on its batch-mates, whether it keeps running statistics (eval
    mode differs from training mode), whether it works on low-precision inputs under
    ``torch.autocast`` (sites run it in float32 under autocast regardless), and whether
    it needs the site's source layer. The core refuses to attach it at a site of another kind
    or, if it needs a source, at a site without one; ``bnbench.testing`` checks the rest.

    If the module defines ``bind_source(layer: torch.nn.Module) -> None``, the core calls it
    once, before the model moves to its device, with the layer feeding the site when the model
    names one (weight standardization reparametrizes that layer's weight with
    ``torch.nn.utils.parametrize``). Without a source it is not called.
    """


@hookspec
def bnbench_register_placements(register: Register) -> None:
    """Register placements: which of a model's sites receive the normalizer.

    ``factory(sites: Sequence[SiteInfo], options) -> Iterable[str]``: the names of the chosen
    sites (a subset of ``[s.name for s in sites]``). Extra keyword ``default=True``: the placement
    the contract kits train with when they test another kind of plugin.
    """


@hookspec
def bnbench_register_datasets(register: Register) -> None:
    """Register datasets.

    ``factory(options, context: BuildContext) -> DataBundle``. Relative paths in options are
    resolved with ``context.resolve``. A dataset whose files are missing raises
    ``bnbench.DatasetNotFoundError`` naming the directory and the expected files. Bundles are
    cached by the core across the runs of a sweep that use the same dataset options. A dataset
    too large for memory gives ``SampleSource`` splits, read per example (see ``DataBundle``).

    Extra keywords: ``describe(options[, context]) -> DatasetDescription`` tells ``plan`` and
    ``run`` the input shape, classes and training size without loading the data (read sizes from
    the files when ``context`` is taken); ``prepare(options, context) -> None`` makes the files
    ready once per sweep, before anything trains or is recorded (downloading them where the
    options allow), and raises ``bnbench.DatasetNotFoundError`` listing the missing files and
    where they go, so a missing dataset fails once with its fix instead of once per run.
    ``default=True``: the dataset the contract kits train on when they test another kind of plugin
    (it must build from its options' defaults plus ``image_shape``, ``num_classes``,
    ``train_size`` and ``test_size``).
    """


@hookspec
def bnbench_register_transforms(register: Register) -> None:
    """Register input transforms (e.g. additive noise), named by a study's ``input_transform``.

    ``factory(options) -> InputTransform``: a callable ``(images, generator, split) -> images``
    on ``[0, 1]`` pixels before normalization (see ``bnbench.api.InputTransform``).
    """


@hookspec
def bnbench_register_metrics(register: Register) -> None:
    """Register per-epoch metrics.

    ``factory(context: EpochContext, options) -> float | Mapping[str, float]``, called at
    the end of each epoch; a single number is stored under the metric's registered name,
    a mapping key by key under ``"<name>.<key>"``. Use
    ``context.evaluate(split)`` for evaluation passes: they are shared between metrics.

    Extra keywords: ``measures`` (``"loss"`` or ``"accuracy"``) and ``split`` (``"train"``,
    ``"validation"`` or ``"test"``) declare what the metric is. A declared loss that is not finite
    makes the run ``diverged``; the standard results table and progress lines show the metrics
    declared as the training loss and the test accuracy. The core names no metric itself.
    """


@hookspec
def bnbench_register_probes(register: Register) -> None:
    """Register probes: measurements of a network instead of a training run.

    ``factory(context: ProbeContext, options) -> Mapping[str, Any]``: JSON-serialisable
    measurements, stored with the run like a training run's metrics. A study names its probe
    with ``probe = "NAME"`` (or a table with options). Extra keyword ``analyses``: names of
    the analysis plugins that summarize this probe's studies when a study lists none.
    """


@hookspec
def bnbench_register_analyses(register: Register) -> None:
    """Register analyses: tables, figures and claimable values computed from a study's runs.

    ``factory(study: StudyResults, options) -> AnalysisResult``. A study lists its analyses
    with ``analyses = ["NAME", ...]``; ``bnbench report`` prints their tables,
    ``--figures DIR`` saves their figures, and ``[[claims]]`` in the manifest test their
    values against thresholds. Report a value computed over seeds as an ``Estimate`` of one
    replicate per seed (``bnbench.analysis.over_seeds``), so claims are decided on an interval;
    a plain number is a point value.

    Extra keywords: ``standard=True`` runs the analysis on every training study, before the
    study's own (``standard="after"``: after them); ``reads`` names the metrics the analysis
    shows (a tuple of names, or a function of its options giving one; a name covers its keys:
    ``weight_geometry`` covers ``weight_geometry.layer0.w_norm``), so that the standard table of
    other metrics (``StudyResults.shown``) leaves them out.
    """


@hookspec
def bnbench_register_executors(register: Register) -> None:
    """Register executors: where the runs of a sweep execute (``[harness] executor``).

    ``factory(options) -> Executor`` (see ``bnbench.executors``): pulls runs one at a time,
    yields an ``Outcome`` per run. Only the driver writes the results store. Executors whose
    runs execute elsewhere call ``bnbench.worker.run_in_worker`` there, and
    ``context.keep_alive()`` / ``context.stopping()`` while they wait.
    """


@hookspec
def bnbench_register_trackers(register: Register) -> None:
    """Register experiment trackers: where runs' curves go besides the results store (TensorBoard,
    MLflow), named by ``[harness] trackers`` or ``bnbench run --track``; off unless named.

    ``factory(options, context: TrackerContext) -> object``: a plugin object whose methods are
    lifecycle hooks below (``bnbench_run_start``, ``bnbench_epoch_end``, ``bnbench_run_end``,
    marked ``@hookimpl``). It is made in each process that trains runs, registered for the
    sweep and unregistered after it (``close()`` is called then when it has one). A run that
    resumes starts at ``run.start_step``: a tracker continues its curves from there without
    repeating points.
    """


@hookspec
def bnbench_run_start(run: RunContext, planned: PlannedRun) -> None:
    """Called when a training run starts, once its model, normalizer, data and optimizer are built
    (and restored from its checkpoint when it resumes). Probe runs build their own models: they
    have no start, only an end. The runs of a pack (a study's ``pack``) each get their own call,
    as do the step, epoch and end hooks; a pack's diverged member gets no further steps."""


@hookspec
def bnbench_step_end(run: RunContext, step: int, loss: torch.Tensor) -> None:
    """Called after each optimizer step. ``loss`` is a detached 0-d tensor on the device."""


@hookspec
def bnbench_epoch_end(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """Called after the metrics of an epoch are computed (before they are stored)."""


@hookspec
def bnbench_run_end(run: RunContext | None, result: RunResult, planned: PlannedRun) -> None:
    """Called for every run that ends: finished, diverged or failed (``result.status``), probe runs
    and runs that failed to build included. ``run`` is the live training run, or None when none
    was built (a probe run, a build that failed); ``planned`` always names the run. A run stopped
    by a signal has not ended: it resumes later."""

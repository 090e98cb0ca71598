"""bnbench: a plugin-based benchmark harness for studying batch normalization.

Everything a plugin needs is importable from here (``from bnbench import hookimpl, Options``);
the modules behind it are bnbench's own and may change. Names that need torch load on first use,
so ``import bnbench`` (and ``bnbench --help``) stays light.

- hooks: ``hookimpl``, ``Register`` (what a ``bnbench_register_*`` hook receives)
- options: ``Options``, ``NoOptions``, ``runtime_option``
- normalizers and models: ``NormSite``, ``NormalizerTraits``, ``SiteInfo``, ``SiteKind``,
  ``SiteRole``, ``find_sites``
- datasets: ``DataBundle``, ``DataInfo``, ``DatasetDescription``, ``SampleSource``,
  ``BatchTransform``, ``BuildContext``
- transforms, metrics, probes, trackers: ``InputTransform``, ``RunContext``, ``EpochContext``,
  ``EvalResult``, ``ProbeContext``, ``TrackerContext``
- analyses: ``StudyResults``, ``AnalysisResult``, ``Table``, ``Figure``, ``Estimate`` (and the
  toolkit in ``bnbench.analysis``)
- executors (``bnbench.executors`` is their contract): ``PlannedRun``, ``PlannedPack``, ``Work``,
  ``RunResult``, ``WorkResult``, ``EpochRecord``, ``RunInterrupted``
- errors: ``BnbenchError``, ``ManifestError``, ``PluginError``, ``DatasetError``,
  ``DatasetNotFoundError``
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnbench._compat import install as _install_compat
from bnbench.errors import BnbenchError, DatasetError, DatasetNotFoundError, ManifestError, PluginError
from bnbench.executors import RunInterrupted
from bnbench.hookspecs import Register, hookimpl
from bnbench.records import EpochRecord, PlannedPack, PlannedRun, RunResult, Work, WorkResult

__version__ = "0.1.0"

_install_compat()

_FROM_API = (
    "AnalysisResult",
    "BatchTransform",
    "BuildContext",
    "DataBundle",
    "DataInfo",
    "DatasetDescription",
    "EpochContext",
    "Estimate",
    "EvalResult",
    "Figure",
    "find_sites",
    "InputTransform",
    "NoOptions",
    "NormalizerTraits",
    "NormSite",
    "Options",
    "ProbeContext",
    "RunContext",
    "runtime_option",
    "SampleSource",
    "SiteInfo",
    "SiteKind",
    "SiteRole",
    "StudyResults",
    "Table",
    "TrackerContext",
)
"""Names of ``bnbench.api`` (which imports torch), loaded on first use."""

if TYPE_CHECKING:
    from bnbench.api import (
        AnalysisResult,
        BatchTransform,
        BuildContext,
        DataBundle,
        DataInfo,
        DatasetDescription,
        EpochContext,
        Estimate,
        EvalResult,
        Figure,
        InputTransform,
        NoOptions,
        NormalizerTraits,
        NormSite,
        Options,
        ProbeContext,
        RunContext,
        SampleSource,
        SiteInfo,
        SiteKind,
        SiteRole,
        StudyResults,
        Table,
        TrackerContext,
        find_sites,
        runtime_option,
    )


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        value = getattr(importlib.import_module("bnbench.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bnbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AnalysisResult",
    "BatchTransform",
    "BnbenchError",
    "BuildContext",
    "DataBundle",
    "DataInfo",
    "DatasetDescription",
    "DatasetError",
    "DatasetNotFoundError",
    "EpochContext",
    "EpochRecord",
    "Estimate",
    "EvalResult",
    "Figure",
    "InputTransform",
    "ManifestError",
    "NoOptions",
    "NormSite",
    "NormalizerTraits",
    "Options",
    "PlannedPack",
    "PlannedRun",
    "PluginError",
    "ProbeContext",
    "Register",
    "RunContext",
    "RunInterrupted",
    "RunResult",
    "SampleSource",
    "SiteInfo",
    "SiteKind",
    "SiteRole",
    "StudyResults",
    "Table",
    "TrackerContext",
    "Work",
    "WorkResult",
    "__version__",
    "find_sites",
    "hookimpl",
    "runtime_option",
]

"""bnbench: a plugin-based benchmark harness for studying batch normalization.

The names a plugin author needs are importable from here.
"""

from harness.api import (
    BatchTransform,
    BuildContext,
    DataBundle,
    DataInfo,
    DatasetDescription,
    EpochContext,
    EvalResult,
    NoOptions,
    NormalizerTraits,
    NormSite,
    Options,
    RunContext,
    SampleSource,
    SiteInfo,
    SiteKind,
    SiteRole,
    TrackerContext,
    find_sites,
    runtime_option,
)
from harness.errors import (
    BnbenchError,
    DatasetError,
    DatasetNotFoundError,
    ManifestError,
    PluginError,
)
from harness.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "BatchTransform",
    "BnbenchError",
    "BuildContext",
    "DataBundle",
    "DataInfo",
    "DatasetDescription",
    "DatasetError",
    "DatasetNotFoundError",
    "EpochContext",
    "EvalResult",
    "ManifestError",
    "NoOptions",
    "NormSite",
    "NormalizerTraits",
    "Options",
    "PluginError",
    "RunContext",
    "SampleSource",
    "SiteInfo",
    "SiteKind",
    "SiteRole",
    "TrackerContext",
    "__version__",
    "find_sites",
    "hookimpl",
    "runtime_option",
]

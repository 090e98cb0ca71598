"""The types a plugin author works with: sites, options, data bundles and run contexts.

Everything a plugin needs from the core is importable from here (or from ``harness``);
plugins never reach into the runner or the store.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field
from torch import nn

from bnbench.records import RunRecord
from bnbench.spec import StrictModel

if TYPE_CHECKING:
    from bnbench.spec import RunSpec

SiteKind = Literal["conv", "fc"]
"""``conv``: the site sees ``(N, C, H, W)`` tensors; ``fc``: ``(N, C)`` tensors."""

SiteRole = Literal["hidden", "output"]
"""``hidden``: after an intermediate layer; ``output``: on the logits, before the softmax."""


class Options(StrictModel):
    """Base class for a plugin's options model: unknown fields are errors, values immutable.

    A plugin declares its options as a subclass; the manifest's keys beside ``name`` are
    validated through it and the plugin's factory receives the validated instance.
    """

    @classmethod
    def runtime_fields(cls) -> frozenset[str]:
        """The options declared with ``runtime_option``: left out of run ids."""
        return frozenset(
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("run_identity") is False
        )


def runtime_option(default: Any, *, description: str, **constraints: Any) -> Any:
    """Declare an option that changes how a component runs, not what a run computes (e.g. how
    many loader processes read a dataset): it is left out of run ids, so changing it neither
    makes a finished run pending nor keeps an interrupted one from resuming."""
    return Field(default, description=description, json_schema_extra={"run_identity": False}, **constraints)


class NoOptions(Options):
    """The options model of a plugin that takes no options."""


class NormSite(nn.Module):
    """A place in a model where a normalizer may be inserted.

    A model puts one ``NormSite`` wherever a normalization layer could go and never knows
    which normalizer it gets: a placement plugin chooses which sites are used and the core
    attaches the configured normalizer to them. An unused site is the identity.

    ``source`` (optional) is the layer whose output the site sees, e.g. the convolution just
    before it: normalizers that act on weights (weight standardization) reach it through
    ``bind_source``. The site holds it by weak reference, not as a submodule, so the layer's
    parameters are not registered (nor saved in ``state_dict``) twice.

    ``activated``: the model applies its activation right after this site, through
    ``site.activate(x, activation)``, which skips it when the attached normalizer includes its
    own (``NormalizerTraits.includes_activation``, a norm + activation layer such as FRN+TLU).
    """

    def __init__(
        self,
        num_features: int,
        kind: SiteKind,
        role: SiteRole = "hidden",
        tags: Iterable[str] = (),
        source: nn.Module | None = None,
        activated: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("conv", "fc"):
            raise ValueError(f"NormSite kind must be 'conv' or 'fc', got {kind!r}")
        if role not in ("hidden", "output"):
            raise ValueError(f"NormSite role must be 'hidden' or 'output', got {role!r}")
        if source is not None and not isinstance(source, nn.Module):
            raise TypeError(f"NormSite source must be a torch.nn.Module (the layer feeding the site), got {source!r}")
        self.num_features = num_features
        self.kind: SiteKind = kind
        self.role: SiteRole = role
        self.tags: frozenset[str] = frozenset(tags)
        """Free-form labels placements may select on, e.g. ``residual_branch_end``."""
        self._source_ref = weakref.ref(source) if source is not None else None
        self.activated = activated
        """Whether the model applies its activation right after this site (``activate``)."""
        self.norm: nn.Module = nn.Identity()
        self.includes_activation = False
        """Whether the attached normalizer applies its own activation (the model's is then skipped)."""

    @property
    def source(self) -> nn.Module | None:
        """The layer whose output this site sees, if the model named one."""
        if self._source_ref is None:
            return None
        layer = self._source_ref()
        if layer is None:
            raise RuntimeError(
                "the source layer of this NormSite no longer exists: a site holds it weakly, so the model "
                "must keep it (as a submodule)"
            )
        return layer

    def attach(self, normalizer: nn.Module, includes_activation: bool = False) -> None:
        """Use ``normalizer`` at this site (``includes_activation``: it applies its own activation,
        so ``activate`` leaves the model's out).

        If the normalizer defines ``bind_source(layer)`` and the site has a source, it is called
        once with the source layer first.
        """
        bind = getattr(normalizer, "bind_source", None)
        source = self.source
        if callable(bind) and source is not None:
            bind(source)
        self.norm = normalizer
        self.includes_activation = includes_activation and self.activated

    def activate(self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The model's ``activation`` of this site's output, or the output itself when the attached
        normalizer applied its own (``NormalizerTraits.includes_activation``)."""
        return x if self.includes_activation else activation(x)

    @property
    def is_normalized(self) -> bool:
        return not isinstance(self.norm, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_precision and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # normalizers compute in fp32
                return self.norm(x.float())
        return self.norm(x)

    @property
    def full_precision(self) -> bool:
        """Whether mixed precision leaves this site in fp32 (any attached normalizer)."""
        return self.is_normalized

    def extra_repr(self) -> str:
        tags = f", tags={sorted(self.tags)}" if self.tags else ""
        layer = self._source_ref() if self._source_ref is not None else None
        source = f", source={type(layer).__name__}" if layer is not None else ""
        activated = ", activated" if self.activated else ""
        return f"{self.num_features}, kind={self.kind}, role={self.role}{tags}{source}{activated}"

    # A weak reference cannot be pickled or deep-copied to the copy's layer: hold the source
    # strongly while copying, so the copy refers to its own copy of the layer.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_source_ref"] = self._source_ref() if self._source_ref is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        source = state.pop("_source_ref", None)
        super().__setstate__(state)
        self._source_ref = weakref.ref(source) if source is not None else None


@dataclass(frozen=True)
class SiteInfo:
    """What a placement sees of one site: its module path, size, kind, role, order and tags."""

    name: str
    num_features: int
    kind: SiteKind
    role: SiteRole
    index: int
    tags: frozenset[str] = frozenset()
    has_source: bool = False
    """Whether the model named the layer feeding the site (``NormSite(..., source=layer)``)."""
    activated: bool = False
    """Whether the model applies its activation right after the site (``NormSite(..., activated=True)``)."""


def find_sites(model: nn.Module) -> list[tuple[SiteInfo, NormSite]]:
    """Every ``NormSite`` of ``model`` in registration order, with its description."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, NormSite):
            info = SiteInfo(
                name,
                module.num_features,
                module.kind,
                module.role,
                len(found),
                module.tags,
                module.source is not None,
                module.activated,
            )
            found.append((info, module))
    return found


@dataclass(frozen=True)
class NormalizerTraits:
    """What a normalizer says about itself, given as ``register(..., traits=...)``.

    The core relies on ``site_kinds`` and ``needs_source`` when it attaches the normalizer; the
    contract kit (``bnbench.testing``) checks every claim. The defaults describe a per-example
    normalizer without state (layer norm, group norm).
    """

    site_kinds: frozenset[SiteKind] = frozenset({"conv", "fc"})
    """The site kinds it can normalize; the core refuses a placement that chooses another kind."""
    train_batch_of_one: bool = True
    """It works in training mode on a batch of one example (batch statistics need two)."""
    batch_dependent: bool = False
    """In training mode an example's output depends on the other examples of its batch."""
    running_stats: bool = False
    """It keeps running statistics, updated by training-mode forwards and used in eval mode.
    When ``False``, eval mode gives the same output as training mode."""
    mixed_precision: bool = True
    """The module itself works on low-precision inputs under ``torch.autocast`` (bf16 on the CPU,
    fp16 on CUDA). A ``NormSite`` runs its normalizer in float32 under autocast regardless."""
    needs_source: bool = False
    """It acts on the layer feeding the site (``bind_source``): every site it goes to must have
    a source, or the core refuses to build the run."""
    packable: bool = True
    """Its runs can train packed (``pack`` in a study): it works under ``torch.func.vmap``, with its
    parameters and buffers batched per member and no Python branching on tensor values. When
    ``False``, packs of its runs train one by one; the contract kit checks a ``True`` claim."""
    includes_activation: bool = False
    """It applies its own activation after normalizing (a norm + activation layer: FRN+TLU,
    EvoNorm). At a site the model activates (``NormSite(..., activated=True)``) the model's own
    activation is then skipped; at other sites (a residual branch's end, the logits) its factory
    is called with ``activation=False`` and must leave its activation out (a factory without that
    keyword is refused there). The contract kit checks that the activated module is nonlinear."""

    def __post_init__(self) -> None:
        kinds = frozenset(self.site_kinds)
        if not kinds or not kinds <= {"conv", "fc"}:
            raise ValueError(f"NormalizerTraits.site_kinds must be a non-empty subset of {{'conv', 'fc'}}, got {kinds}")
        object.__setattr__(self, "site_kinds", kinds)

    def refusal(self, site: SiteInfo) -> str | None:
        """Why the normalizer cannot go at ``site``, or ``None`` if it can."""
        if site.kind not in self.site_kinds:
            kinds = " and ".join(sorted(self.site_kinds))
            return f"it supports {kinds} sites only, and {site.name!r} is a {site.kind} site"
        if self.needs_source and not site.has_source:
            return (
                f"it acts on the layer feeding the site, and the model names none for {site.name!r} "
                "(NormSite(..., source=layer))"
            )
        return None


TraitsSpec = NormalizerTraits | Callable[[Any], NormalizerTraits]
"""A normalizer's ``traits``: fixed, or a function of its validated options."""


def resolve_traits(traits: TraitsSpec | None, options: Any) -> NormalizerTraits:
    """The traits of a normalizer with these options (the defaults when it registered none)."""
    if traits is None:
        return NormalizerTraits()
    if isinstance(traits, NormalizerTraits):
        return traits
    resolved = traits(options)
    if not isinstance(resolved, NormalizerTraits):
        raise TypeError(f"a normalizer's traits function returned {resolved!r}, not a NormalizerTraits")
    return resolved


@dataclass(frozen=True)
class DataInfo:
    """What a model factory knows of its data: input shape ``(C, H, W)`` and class count."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class DatasetDescription:
    """What a dataset will be, known from its options without loading it (``describe=`` when it
    registers): lets ``plan`` and ``run`` check a study before anything trains."""

    info: DataInfo
    train_size: int
    """Training examples (before any validation split is held out)."""


BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""A transform of a whole batch of ``[0, 1]`` images on the training device (augmentation).

It receives the batch and the run's data generator (on the same device) and returns the
transformed batch; it runs before per-channel normalization. A function with a ``stack``
attribute, ``stack(images, generators)``, augments a pack's batches at once (``images``: members
first, one generator per member), drawing each member's randomness from its own generator as the
function does (the built-in CIFAR augmentation has one); without it a pack augments member by member.
"""


class InputTransform(Protocol):
    """A run's transform of input batches (``[0, 1]`` images, before normalization).

    Called for training batches (after augmentation) with ``split="train"`` and for
    evaluation batches with ``split="test"`` or ``"train"``; it returns the batch unchanged
    for splits it does not apply to. ``generator`` is on the batch's device, seeded from the
    run's seed: a fresh stream for training, and for evaluation the same draws at every
    evaluation (so epochs are compared on the same noisy test set).
    """

    def __call__(self, images: torch.Tensor, generator: torch.Generator, split: str) -> torch.Tensor: ...


@runtime_checkable
class SampleSource(Protocol):
    """A split read one example at a time, for datasets too large to hold as tensors.

    A dataset plugin may put one in a ``DataBundle`` in place of an images tensor (the labels
    stay a tensor). The core reads it through a ``torch.utils.data.DataLoader`` (worker
    processes: ``DataBundle.loader_workers``) in the order it would index the tensor, moves each
    batch to the training device and prepares it there as it would a batch of the tensor, so a
    run gives the same results either way. Worker processes get a copy of the source: keep it
    picklable and free of open handles that cannot be shared.
    """

    def __len__(self) -> int:
        """The number of examples."""
        ...

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of every example."""
        ...

    def __getitem__(self, index: int) -> torch.Tensor:
        """Example ``index`` as a ``(C, H, W)`` tensor: uint8 (0..255) or float in [0, 1]."""
        ...


Images = torch.Tensor | SampleSource
"""A split's images: a tensor ``(N, C, H, W)`` or a ``SampleSource`` read per example."""


def image_shape(images: Images) -> tuple[int, ...]:
    """``(C, H, W)`` of a split's examples, tensor or source."""
    return tuple(images.shape[1:]) if isinstance(images, torch.Tensor) else tuple(images.image_shape)


@dataclass
class DataBundle:
    """A dataset: images ``(N, C, H, W)`` as uint8 (0..255) or float in [0, 1], labels ``(N,)``.

    The core moves the tensors to the training device once, draws batches by a permutation
    on that device, applies ``train_transform`` to training batches, then normalizes each
    batch with ``mean`` and ``std`` (per channel, in [0, 1] units).

    For a dataset too large for memory, ``train_images`` and ``test_images`` may be
    ``SampleSource`` objects read one example at a time (both or neither); only the labels
    are moved to the device, and each batch's examples are read by a ``DataLoader`` with
    ``loader_workers`` worker processes, then prepared on the device like a tensor's batch.
    """

    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_transform: BatchTransform | None = None
    description: str = ""
    loader_workers: int = 0
    """``DataLoader`` worker processes reading ``SampleSource`` splits (0: in the training process)."""

    @property
    def info(self) -> DataInfo:
        return DataInfo(image_shape(self.train_images), self.num_classes)

    @property
    def streamed(self) -> bool:
        """Whether the splits are ``SampleSource`` objects read per example."""
        return not isinstance(self.train_images, torch.Tensor)

    def check(self, source: str) -> None:
        """Raise ``ValueError`` naming ``source`` if the bundle is inconsistent."""
        problems = []
        kinds = {isinstance(self.train_images, torch.Tensor), isinstance(self.test_images, torch.Tensor)}
        if len(kinds) > 1:
            problems.append("train_images and test_images must both be tensors or both SampleSource objects")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if isinstance(images, torch.Tensor):
                count, shape, dtype = images.shape[0] if images.dim() else 0, tuple(images.shape), images.dtype
                if images.dim() != 4:
                    problems.append(f"{split}_images must be (N, C, H, W), got {shape}")
            elif isinstance(images, SampleSource):
                count, shape, dtype = len(images), image_shape(images), None
                if len(shape) != 3:
                    problems.append(f"{split}_images.image_shape must be (C, H, W), got {shape}")
                elif count:
                    first = images[0]
                    if not isinstance(first, torch.Tensor) or tuple(first.shape) != shape:
                        got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
                        problems.append(f"{split}_images[0] must be a tensor of image_shape {shape}, got {got}")
                    else:
                        dtype = first.dtype
            else:
                problems.append(f"{split}_images must be a tensor or a SampleSource, got {type(images).__name__}")
                continue
            if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != count:
                got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                problems.append(f"{split}_labels must be (N,) matching {split}_images, got {got}")
            if dtype is not None and dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
                problems.append(f"{split}_images must be uint8 or float, got {dtype}")
        train = self.train_images
        shape = image_shape(train) if isinstance(train, (torch.Tensor, SampleSource)) else ()
        channels = shape[0] if len(shape) == 3 else None
        if channels is not None and not (len(self.mean) == len(self.std) == channels):
            problems.append(f"mean and std need {channels} values (one per channel)")
        if not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            problems.append(f"loader_workers must be a non-negative integer, got {self.loader_workers!r}")
        if problems:
            raise ValueError(f"dataset {source!r} returned an invalid DataBundle: " + "; ".join(problems))


@dataclass(frozen=True)
class BuildContext:
    """What a dataset factory may use besides its options."""

    base_dir: Path
    """Directory of the manifest: relative paths in options are resolved against it."""

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute relative to the manifest's directory (``~`` expanded)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()


@dataclass(frozen=True)
class TrackerContext(BuildContext):
    """What a tracker knows of the sweep it records (``bnbench_register_trackers``); ``resolve``
    makes a path in its options relative to the manifest."""

    results: Path
    """The sweep's results store."""

    def beside_results(self, suffix: str) -> Path:
        """A path beside the results store: ``results.sqlite`` → ``results.sqlite.<suffix>``."""
        return self.results.with_name(f"{self.results.name}.{suffix}")


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of the model on one split, over the whole split."""

    loss: float
    accuracy: float


@dataclass
class RunContext:
    """The live state of one run, handed to lifecycle hooks and metrics."""

    run_id: str
    spec: RunSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    data: DataBundle
    steps_per_epoch: int
    total_steps: int
    extra: dict[str, Any] = field(default_factory=dict)
    """Scratch space where plugins may keep per-run state between hook calls."""
    start_step: int = 0
    """The step the run starts from: 0, or its checkpoint's step when it resumes."""

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) under the run's schedule. The
        optimizer's own rate is already the next step's once a step is taken (``LambdaLR``):
        a metric about the weights an epoch ended with asks for ``learning_rate(step - 1)``."""
        return self.spec.optimizer.lr * self.spec.schedule.factor(step, self.total_steps)


@dataclass
class EpochContext:
    """What a metric sees at the end of an epoch."""

    run: RunContext
    epoch: int
    step: int
    train_loss: float
    """Mean training loss over the epoch's steps (in training mode, augmented batches)."""
    train_accuracy: float
    """Share of training examples of the epoch classified correctly while training."""
    evaluate: Callable[..., EvalResult]
    """``evaluate("test")``, ``evaluate("train")`` or ``evaluate("validation")`` (with the
    study's ``validation_size``): one pass in eval mode over the split, cached per epoch.
    With an input transform, ``evaluate("test", transformed=False)`` evaluates clean inputs."""
    sample: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    """``sample(n, split="train", transformed=True)``: the same ``n`` examples at every epoch,
    normalized (and transformed), without augmentation: for metrics that need a batch."""


MetricValue = float | Mapping[str, float]
"""A metric returns one number (stored under the metric's name) or several named numbers."""


# -- probes and analyses ------------------------------------------------------------------------
@dataclass
class ProbeContext:
    """What a probe receives: the run's spec and ways to build what it names.

    ``build_model()`` returns a fresh model with the normalizer attached at the placement's
    sites, on ``device``, in training mode, initialised from the global RNG (seeded with the
    run's seed before the probe starts). ``data()`` returns the dataset on the device
    (``bnbench.data.DeviceData``: ``train_batches``, ``eval_batches``, ``prepare``).
    """

    spec: RunSpec
    device: torch.device
    generator: torch.Generator
    """Seeded with the run's seed, on ``device``: use it for every random draw of the probe."""
    build_model: Callable[[], nn.Module]
    data: Callable[[], Any]


Measurements = Mapping[str, Any]
"""What a probe returns: JSON-serialisable values (numbers, strings, lists, nested mappings)."""


@dataclass
class StudyResults:
    """A study's configuration and the runs the store holds of it (missing runs left out)."""

    name: str
    axes: list[str]
    runs: list[RunRecord]
    planned: int
    """How many runs the study has, stored or not."""
    plan: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    """``(run id, axes, seed)`` of every planned run, stored or not, in plan order."""
    shown: frozenset[str] = frozenset()
    """The metrics the study's analyses show (their ``reads=``; a name covers its keys)."""

    def is_shown(self, metric: str) -> bool:
        """Whether one of the study's analyses shows ``metric`` (or the metric it is a key of)."""
        return any(metric == name or metric.startswith(name + ".") for name in self.shown)


@dataclass
class Table:
    """A table an analysis contributes to the report."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    records: list[dict[str, Any]] | None = None
    """The same rows for machines (numbers, not formatted text), keyed by column: CSV output uses them."""


@dataclass
class Figure:
    """A figure an analysis contributes; ``draw`` fills a matplotlib ``Figure``.

    The report saves it as ``<study>__<name>.png``: keep ``name`` stable.
    """

    name: str
    draw: Callable[[Any], None]


@dataclass(frozen=True)
class Estimate:
    """A value claims can test, with what its uncertainty is computed from.

    ``replicates`` are the independent per-seed values the estimate summarizes: ``value`` is
    their mean (``scale="linear"``) or geometric mean (``scale="log"``, for ratios and scales),
    and the report puts an interval around it at each claim's confidence level, the one that fits
    its ``kind`` (``bnbench.intervals``). A value with no replicates is a point value and ``basis``
    says why (``"closed form"``, ``"pooled over seeds"``); its verdict rests on the point alone.
    ``undecidable`` is a reason the value cannot decide a claim whatever it is (a rank trend
    over two levels can only be +1 or -1): the verdict is then ``inconclusive``.
    """

    value: float
    replicates: tuple[float, ...] = ()
    scale: Literal["linear", "log"] = "linear"
    basis: str = ""
    undecidable: str = ""
    kind: Literal["mean", "share", "bracket", "ratio", "rank"] = "mean"
    """What the quantity is, which decides its interval (``bnbench.intervals``): a mean over seeds,
    a share of 0/1 outcomes, a grid-valued value with its brackets, a ratio of means, a rank trend."""
    brackets: tuple[tuple[float, float], ...] = ()
    """``kind="bracket"``: each replicate's ``(low, high)``, the neighbouring grid points (0 or inf
    where the value sits at the grid's end)."""
    denominators: tuple[float, ...] = ()
    """``kind="ratio"``: the per-seed denominators (``replicates`` are the numerators)."""
    pairs: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = ()
    """``kind="rank"``: each seed's ``(x values, y values)`` for the exact permutation test."""
    unit: str = ""
    """The value's unit as the report shows it beside the value ("points", "x", "share", ...)."""


ClaimValue = float | Estimate
"""What an analysis reports under a value name: a plain number (a point value) or an ``Estimate``."""


@dataclass
class AnalysisResult:
    """What an analysis returns: tables, figures, and named values that claims can test."""

    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    values: dict[str, ClaimValue] = field(default_factory=dict)

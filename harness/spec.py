"""Pydantic models of a manifest and of one fully resolved run.

A manifest's study may give any field as a list to sweep it (see ``bnbench.manifest``); the
models here describe one value of each field, which is what a resolved ``RunSpec`` holds.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

"""The metrics of a study that lists none (the manifest schema's default; the built-ins register them)."""
"""Where runs execute when a manifest names no executor (the built-in in-process executor)."""

MAX_EPOCHS = 100_000
MAX_PACK = 1024
"""The most runs one pack may hold."""
MAX_STEPS = 10**9
MAX_BATCH = 2**20
MAX_EXAMPLES = 10**9
MAX_SEED = 2**32 - 1
"""Bounds on run fields, far above any study's needs: a value beyond them is a typo or a run that
never ends (``epochs = 1e26``), caught when the manifest is read rather than hours into a sweep."""
MAX_PATH_BYTES = 4096
MAX_PATH_COMPONENT_BYTES = 255
MAX_PATH_DEPTH = 256
"""Folders a manifest's path may nest (a deeper one makes Python's own path handling recurse)."""


class StrictModel(BaseModel):
    """Unknown fields are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(StrictModel):
    """A plugin component by registered name, with its validated options.

    In a manifest, write ``normalizer = "batchnorm"`` or
    ``normalizer = { name = "batchnorm", eps = 1e-3 }``: keys beside ``name`` are the
    plugin's options.
    """

    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    runtime: dict[str, Any] = Field(default_factory=dict, exclude=True)
    """Options the plugin declares with ``runtime_option``: passed to it, left out of run ids."""

    @property
    def all_options(self) -> dict[str, Any]:
        """What the plugin's options model validates: ``options`` and ``runtime`` together."""
        return {**self.options, **self.runtime}

    def label(self) -> str:
        """``name`` alone, or ``name(key=value, ...)`` for the options given explicitly."""
        if not self.options:
            return self.name
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({inner})"


class OptimizerSpec(StrictModel):
    """SGD with momentum and weight decay."""

    lr: float = Field(0.1, gt=0, description="Peak learning rate (after warm-up).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum coefficient.")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay on every parameter.")
    nesterov: bool = Field(False, description="Use Nesterov momentum.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerSpec:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov = true needs momentum > 0")
        return self


class ScheduleSpec(StrictModel):
    """Learning-rate schedule, evaluated per optimizer step."""

    kind: Literal["constant", "multistep"] = Field(
        "multistep", description="constant: lr throughout; multistep: multiply by gamma at milestones."
    )
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75],
        description="Fractions of training (0 < m < 1) at which the lr is multiplied by gamma.",
    )
    gamma: float = Field(0.1, gt=0, description="Factor applied at each milestone.")
    warmup_steps: int = Field(0, ge=0, description="Length of the warm-up, in optimizer steps.")
    warmup: Literal["linear", "constant"] = Field(
        "linear",
        description="linear: ramp from warmup_factor·lr to lr; constant: warmup_factor·lr throughout "
        "(He et al. 2016 warm ResNet-110 up at 0.01 = 0.1·lr for ~400 steps).",
    )
    warmup_factor: float = Field(0.1, gt=0, le=1, description="Starting lr multiplier of the warm-up.")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in value):
            raise ValueError("milestones are fractions of training: each must be between 0 and 1")
        if sorted(value) != value:
            raise ValueError("milestones must be increasing")
        return value

    def factor(self, step: int, total_steps: int) -> float:
        """The lr multiplier at optimizer step ``step`` (0-based) of ``total_steps``."""
        factor = 1.0
        if self.kind == "multistep":
            for milestone in self.milestones:
                if step >= round(milestone * total_steps):
                    factor *= self.gamma
        if step < self.warmup_steps:
            if self.warmup == "constant":
                factor *= self.warmup_factor
            else:
                progress = step / self.warmup_steps
                factor *= self.warmup_factor + (1 - self.warmup_factor) * progress
        return factor


class RunSpec(StrictModel):
    """Everything that determines one run's result. Its hash is the run id.

    A training run names a model, dataset, normalizer and placement and a length (epochs or
    steps). A probe run names a ``probe`` and whichever components the probe uses.
    """

    model: Component | None = Field(None, description="Model plugin, e.g. resnet_cifar or mlp.")
    dataset: Component | None = Field(None, description="Dataset plugin, e.g. cifar10, mnist or synthetic.")
    normalizer: Component | None = Field(None, description="Normalizer plugin placed at the chosen sites.")
    placement: Component | None = Field(None, description="Placement plugin: which sites get the normalizer.")
    input_transform: Component | None = Field(
        None, description="Transform plugin applied to input batches, e.g. gaussian_noise."
    )
    probe: Component | None = Field(
        None, description="Probe plugin: measure instead of train (activation statistics, loss landscape, ...)."
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: int | None = Field(
        None, gt=0, le=MAX_EPOCHS, description=f"Training length in epochs, at most {MAX_EPOCHS:,} (or give steps)."
    )
    steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description=f"Training length in optimizer steps, at most {MAX_STEPS:,}."
    )
    batch_size: int = Field(128, gt=0, le=MAX_BATCH, description=f"Training mini-batch size, at most {MAX_BATCH:,}.")
    validation_size: int | None = Field(
        None,
        gt=0,
        le=MAX_EXAMPLES,
        description="Hold out this many training examples (a fixed subset) for validation: "
        "metrics can evaluate('validation'), and tuning picks on it, never on the test set.",
    )
    eval_batch_size: int = Field(1000, gt=0, le=MAX_BATCH, description="Mini-batch size of evaluation passes.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds model init, data order and augmentation (0 to 2**32 - 1)."
    )
    metrics: list[Component] = Field(
        default_factory=list,
        description="Metric plugins recorded at the end of every epoch (a manifest that names none gets those "
        "the metric plugins declare as defaults: the training and test loss and accuracy).",
    )
    deterministic: bool = Field(False, description="Bitwise-repeatable runs (deterministic kernels).")

    @model_validator(mode="after")
    def _complete(self) -> RunSpec:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give exactly one of epochs and steps")
        if self.probe is None:
            missing = [f for f in ("model", "dataset", "normalizer", "placement") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a training study needs {', '.join(missing)} (or name a probe)")
            if self.epochs is None and self.steps is None:
                raise ValueError("give exactly one of epochs and steps")
        return self

    @property
    def is_probe(self) -> bool:
        return self.probe is not None

    def canonical_json(self) -> str:
        """Stable JSON of the resolved spec: sorted keys, defaults filled in, unset fields left out."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))

    def run_id(self) -> str:
        """Stable id of this spec: the same spec gives the same id on any machine."""
        digest = hashlib.sha256(f"bnbench-run-v1:{self.canonical_json()}".encode())
        return digest.hexdigest()[:16]


MAX_NAME_LENGTH = 100
"""Longest study name: it becomes part of figure file names, which file systems cap at 255 bytes."""


class StudyHeader(BaseModel):
    """The fields of a ``[[studies]]`` table that describe the study, not its runs (the others
    are run fields, swept by giving a list; ``analyses`` is resolved through its plugins)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(
        description=f"The study's name: printable, at most {MAX_NAME_LENGTH} characters (it names files and "
        "report sections), unique in the manifest.",
    )
    description: str = Field("", description="What the study tests, shown in reports.")
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="The replicates: each configuration runs once per seed (0 to 2**32 - 1, no repeats).",
    )
    enabled: bool = Field(True, description="false leaves the study out (a profile can run a subset).")
    pack: int = Field(
        1,
        ge=1,
        le=MAX_PACK,
        description=f"Train up to this many of the study's runs at once in one process (torch.func.vmap, at most "
        f"{MAX_PACK}): runs that differ only in seed, optimizer, schedule and input transform. Each stays its own "
        "run (same id, own init, data order, statistics and status); results equal one-by-one training within "
        "float tolerance. 1: one by one. Pays off where one run leaves the device idle (small models on a GPU).",
    )

    reading_axis: str = Field(
        "",
        description="An axis whose values are readings of a choice the paper leaves open (an initialization): the "
        "study's analyses run once per value, the report shows each, and every claim on the study is decided at "
        "each reading and summarized ('holds at every reading', 'holds at ... only', 'does not hold'). Empty: none.",
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        if not name.strip():
            raise ValueError('every study needs name = "..." (a non-empty string)')
        if not name.isprintable() or len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"a study name must be printable (no control characters or terminal escapes) and at most "
                f"{MAX_NAME_LENGTH} characters: it names files and report sections"
            )
        return name

    @field_validator("seeds", mode="before")
    @classmethod
    def _one_seed(cls, seeds: Any) -> Any:
        return [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if any(not 0 <= s <= MAX_SEED for s in seeds):
            raise ValueError(f"seeds are integers from 0 to {MAX_SEED}, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds!r}")
        return seeds


STUDY_ONLY_FIELDS = ("name", "description", "seeds", "analyses", "enabled", "pack", "reading_axis")
"""Study fields that are not fields of a run (``seeds`` expands into each run's ``seed``;
``enabled = false`` leaves a study out, so a profile can run a subset of the manifest)."""

COMPONENT_FIELDS: dict[str, str] = {
    "model": "model",
    "dataset": "dataset",
    "normalizer": "normalizer",
    "placement": "placement",
    "input_transform": "transform",
    "probe": "probe",
}
"""Study field → kind of plugin it names."""


class PerformanceSettings(StrictModel):
    """How runs execute: speed options that do not change what a run is (not part of run ids).

    Each falls back on the CPU (or without support) with a one-line notice.
    """

    threads: int = Field(
        0,
        ge=0,
        le=4096,
        description="CPU threads per run (torch.set_num_threads, at most 4096); 0: all cores, or a worker's share.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast dtype for forward passes; normalizer sites always compute in fp32."
    )
    channels_last: bool = Field(False, description="NHWC memory format for convolutional models and inputs.")
    compile: Literal["off", "model", "step"] = Field(
        "off",
        description="torch.compile: 'model' compiles the model's forward; 'step' compiles a run's whole "
        "training step (forward, loss, backward, optimizer update), runs alone only; true means 'model'.",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default",
        description="torch.compile's mode; 'reduce-overhead' replays CUDA graphs on a GPU (a fixed-shape step: "
        "every built-in model) and compiles like 'default' on the CPU.",
    )
    cudnn_benchmark: bool = Field(True, description="Let cuDNN pick the fastest kernels (off in deterministic runs).")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_flag(cls, value: Any) -> Any:
        """``compile = true`` / ``false`` (the earlier switch) read as 'model' / 'off'."""
        if isinstance(value, bool):
            return "model" if value else "off"
        return value


class HarnessSettings(StrictModel):
    """The ``[harness]`` table of a manifest."""

    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    executor: str | dict[str, Any] | None = Field(
        None,
        description="Executor plugin, a name or a table with its options (default: the one executor plugin "
        "that declares itself the default, in-process and sequential).",
    )

    results: str | None = Field(
        None,
        description="SQLite results store, relative to the manifest "
        "(default results/<manifest name>.sqlite beside the manifest).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    plugins: list[str] = Field(
        default_factory=list,
        description="Extra plugin modules (import names or .py paths relative to the manifest).",
    )
    checkpoint_every: int = Field(
        1, ge=0, le=MAX_EPOCHS, description="Checkpoint a run every N epochs (0: only when stopped by a signal)."
    )
    claim_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="A run claimed by a process on another host with no sign of life for this long "
        "is taken over (same-host owners are checked directly).",
    )
    max_runs: int = Field(
        1000, gt=0, le=10**9, description="`bnbench run` asks for confirmation (or --yes) above this many pending runs."
    )
    profile_notes: dict[str, str] = Field(
        default_factory=dict,
        description="Profile name → what its results are worth, shown in the claims table's title and beside "
        'each verdict, e.g. { smoke = "smoke scale: checks the software, not the claims" }.',
    )
    trackers: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description='Experiment trackers the runs\' curves also go to: "tensorboard", "mlflow" or tables '
        'such as { name = "mlflow", tracking_uri = "http://host:5000" } (off unless named; or `run --track`).',
    )
    memory_gib: float | None = Field(
        None,
        gt=0,
        le=2**20,
        description="Memory a run's model may take (GiB), checked before anything trains "
        "(default: this machine's memory, or its GPU's with device cuda; raise it for executors on bigger hosts).",
    )
    divergence_check_every: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="Check the loss for NaN/inf every N steps (0: the default, 25). "
        "The exact step of divergence is recorded either way.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "execution" in data:
            raise ValueError(
                "[harness] execution is now called performance (the same options): write performance = { ... }"
            )
        return data

    @field_validator("results", "plugins")
    @classmethod
    def _paths(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or []:
            check_path(text)
        return value


def check_path(text: str) -> str:
    """A path a manifest names: no NUL byte, no component over 255 bytes, at most 4096 bytes in all
    (what Linux and macOS accept), so that it fails here, not with an OS error mid-sweep."""
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL byte")
    if len(text.encode()) > MAX_PATH_BYTES:
        raise ValueError(f"the path is {len(text.encode())} bytes long; at most {MAX_PATH_BYTES} are allowed")
    depth = len([part for part in text.split("/") if part]) - 1  # the folders above the file
    if depth > MAX_PATH_DEPTH:
        raise ValueError(f"the path nests {depth} folders; at most {MAX_PATH_DEPTH} are allowed")
    longest = max(text.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > MAX_PATH_COMPONENT_BYTES:
        raise ValueError(
            f"the path component {longest[:40]!r}... is {len(longest.encode())} bytes long; "
            f"file systems allow at most {MAX_PATH_COMPONENT_BYTES}"
        )
    return text


class ThresholdSpec(StrictModel):
    """What a claim and a check share: a value of a study's analyses and the bounds it is tested against."""

    id: str = Field(
        "",
        max_length=200,
        description="A name to refer to it by (a claim's `requires`); default: the value's name.",
    )
    study: str = Field(min_length=1, description="The study whose analyses report the value.")
    value: str = Field(min_length=1, description="Name of the value (see the analysis' documentation).")
    at_least: float | None = Field(None, description="It holds if the value is >= this (in the value's unit).")
    at_most: float | None = Field(None, description="It holds if the value is <= this (in the value's unit).")
    source: str = Field(
        "",
        description="Where it and its threshold come from: a figure, table or section of the paper, "
        "or 'our reading: <why>'. The report shows it.",
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="Confidence level of the interval the verdict is decided on."
    )

    @model_validator(mode="after")
    def _threshold(self) -> ThresholdSpec:
        if self.at_least is None and self.at_most is None:
            raise ValueError("a claim needs a threshold: at_least, at_most or both")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least:g}) is larger than at_most ({self.at_most:g})")
        return self

    @property
    def key(self) -> str:
        """The id, or the value's name when none is given."""
        return self.id or self.value

    def threshold(self) -> str:
        parts = ([f">= {self.at_least:g}"] if self.at_least is not None else []) + (
            [f"<= {self.at_most:g}"] if self.at_most is not None else []
        )
        return " and ".join(parts)

    def definition(self) -> dict[str, Any]:
        """What the claim says, for pre-registration: its text, study, value, thresholds and
        confidence (not its source, nor fields a later version adds: rewording where a threshold
        comes from, or upgrading bnbench, does not make a claim post hoc)."""
        text = getattr(self, "claim", None) or getattr(self, "check", "")
        fields = ("study", "value", "at_least", "at_most", "confidence")
        return {"text": text, **{name: getattr(self, name) for name in fields}}


class ClaimSpec(ThresholdSpec):
    """A claim of a paper, tested against a value an analysis of a study reports."""

    claim: str = Field(min_length=1, description="The claim in words, as the report shows it.")
    requires: list[str] = Field(
        default_factory=list,
        description="Ids of [[checks]] that must pass for the verdict to count (a fairness guard, a reading's "
        "precondition): when one fails or is not established the verdict reads 'inconclusive (precondition ...)'.",
    )


class CheckSpec(ThresholdSpec):
    """A check: a test that cannot speak for the paper (an identity of a simulator, the criterion a
    reading was chosen by, a fairness guard), shown apart from the claims; claims may require it."""

    check: str = Field(min_length=1, description="What is checked, in words, as the report shows it.")
    kind: Literal["identity", "precondition", "guard"] = Field(
        description="identity: the software against a closed form (cannot fail for the paper's reasons); "
        "precondition: a criterion by which a reading was chosen; guard: a condition a comparison needs to be fair."
    )


class ManifestFile(StrictModel):
    """The top level of a manifest file."""

    harness: HarnessSettings = Field(default_factory=HarnessSettings)
    studies: list[dict[str, Any]] = Field(min_length=1, description="The [[studies]] tables.")
    claims: list[ClaimSpec] = Field(
        default_factory=list, description="[[claims]]: thresholds on values reported by analyses."
    )
    checks: list[CheckSpec] = Field(
        default_factory=list,
        description="[[checks]]: identities, preconditions and guards, shown apart from the claims.",
    )
    profiles: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description='Named overlays: [profiles.NAME."*"] applies to every study, [profiles.NAME.STUDY] to one.',
    )

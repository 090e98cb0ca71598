"""One run: build it from plugins, train it, record per-epoch metrics, detect divergence."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import socket
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.api import (
    DataInfo,
    EpochContext,
    EvalResult,
    InputTransform,
    ProbeContext,
    RunContext,
    find_sites,
    resolve_traits,
)
from harness.checkpoint import Checkpoints, capture_rng, restore_rng
from harness.data import BatchFunction, DataCache, DeviceData
from harness.errors import BnbenchError
from harness.execution import Execution
from harness.progress import Progress
from harness.records import EpochRecord, PlannedRun, RunResult
from harness.registry import Registry
from harness.spec import ExecutionSettings, RunSpec

DEFAULT_CHECK_EVERY = 25
"""Steps between checks of the loss for NaN/inf (each check costs a host sync on a GPU, and
tiny-op overhead on a CPU). The exact step of a divergence is recorded either way, and
parameters are checked at every epoch end."""


class StopRequest(Protocol):
    """What a ``Runner`` polls once per step to know it must checkpoint and stop
    (a ``threading.Event``, a ``multiprocessing`` event, or a ``harness.executors.StopFile``)."""

    def is_set(self) -> bool: ...


class RunInterrupted(BaseException):
    """A stop was requested: the run checkpointed at ``step`` (to ``path``) and stopped."""

    def __init__(self, run_id: str, step: int, path: Path | None) -> None:
        where = f"checkpoint {path}" if path else "no checkpoint store"
        super().__init__(f"run {run_id} stopped at step {step} ({where})")
        self.run_id, self.step, self.path = run_id, step, path


class Diverged(Exception):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} is not finite at step {step}")
        self.step = step


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BnbenchError('device = "cuda" but no CUDA device is available; use "auto" or "cpu"')
    return torch.device(device)


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env = {
        "bnbench": harness.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


@contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run, restoring the previous settings."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]


class Runner:
    """Executes resolved runs. Holds the dataset cache shared by the runs of a sweep."""

    def __init__(
        self,
        registry: Registry,
        *,
        base_dir: Path,
        device: str = "auto",
        divergence_check_every: int = 0,
        checkpoints: Checkpoints | None = None,
        checkpoint_every: int = 0,
        stop: StopRequest | None = None,
        execution: ExecutionSettings | None = None,
    ) -> None:
        self.registry = registry
        self.checkpoints = checkpoints
        self.checkpoint_every = checkpoint_every
        self.stop = stop
        """Set (by a signal handler) to checkpoint at the next step boundary and stop."""
        self.device = resolve_device(device)
        self.execution = Execution.resolve(execution or ExecutionSettings(), self.device)
        self.data = DataCache(registry, base_dir)
        self.check_every = divergence_check_every or DEFAULT_CHECK_EVERY

    # -- building ------------------------------------------------------------------------
    def build_model(self, spec: RunSpec, data: DataInfo) -> tuple[nn.Module, dict[str, Any]]:
        """Model from its plugin, with the normalizer attached at the placement's sites."""
        model_entry = self.registry.get("model", spec.model.name)
        model = model_entry.factory(model_entry.options.model_validate(spec.model.all_options), data)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model plugin {spec.model.name!r} returned {type(model).__name__}, not a torch.nn.Module")
        sites = find_sites(model)
        if spec.placement is None or spec.normalizer is None:  # a probe of the bare model
            return model.to(self.device), {"parameters": _count(model), "sites": len(sites), "normalized_sites": []}
        placement = self.registry.get("placement", spec.placement.name)
        chosen = set(
            placement.factory([info for info, _ in sites], placement.options.model_validate(spec.placement.all_options))
        )
        unknown = chosen - {info.name for info, _ in sites}
        if unknown:
            raise ValueError(f"placement {spec.placement.name!r} chose sites the model lacks: {sorted(unknown)}")
        normalizer = self.registry.get("normalizer", spec.normalizer.name)
        norm_options = normalizer.options.model_validate(spec.normalizer.all_options)
        traits = resolve_traits(normalizer.extras.get("traits"), norm_options)
        for info, site in sites:
            if info.name in chosen:
                refusal = traits.refusal(info)
                if refusal:
                    raise ValueError(
                        f"normalizer {spec.normalizer.name!r} cannot go at site {info.name!r} of model "
                        f"{spec.model.name!r} (placement {spec.placement.name!r}): {refusal}"
                    )
                module = normalizer.factory(info.num_features, info.kind, norm_options)
                if not isinstance(module, nn.Module):
                    raise TypeError(
                        f"normalizer plugin {spec.normalizer.name!r} returned {type(module).__name__}, "
                        "not a torch.nn.Module"
                    )
                site.attach(module)
        info = {
            "parameters": _count(model),
            "sites": len(sites),
            "normalized_sites": sorted(chosen),
        }
        return model.to(self.device), info

    # -- running -------------------------------------------------------------------------
    def run(self, planned: PlannedRun, progress: Progress | None = None) -> RunResult:
        """Train one run. Divergence and exceptions become results; Ctrl-C propagates."""
        result = RunResult(
            planned.run_id,
            "done",
            started_at=time.time(),
            environment={**environment(self.device), **self.execution.describe()},
        )
        built: list[RunContext] = []
        try:
            with determinism(planned.spec.deterministic):
                if planned.spec.is_probe:
                    self._probe(planned, result, progress)
                else:
                    self._train(planned, result, progress, built)
        except Diverged as exc:
            result.status = "diverged"
            result.diverged_step = exc.step
            result.error = str(exc)
        except Exception as exc:
            result.status = "failed"
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            result.error = f"{detail}\n\n{traceback.format_exc()}"
        result.finished_at = time.time()
        if built:
            self.registry.hook.bnbench_run_end(run=built[0], result=result)
        return result

    def _probe(self, planned: PlannedRun, result: RunResult, progress: Progress | None) -> None:
        spec = planned.spec
        assert spec.probe is not None
        name = spec.probe.name
        seed_everything(spec.seed)
        entry = self.registry.get("probe", name)

        def data() -> DeviceData:
            if spec.dataset is None:
                raise ValueError(f"probe {name!r} needs a dataset, and the study names none")
            return self.data.get(spec.dataset, self.device, spec.validation_size)

        def build() -> nn.Module:
            if spec.model is None:
                raise ValueError(f"probe {name!r} needs a model, and the study names none")
            model, info = self.build_model(spec, data().bundle.info)
            result.info.update(info)
            return model.train()

        generator = torch.Generator(device=self.device).manual_seed(spec.seed)
        context = ProbeContext(spec=spec, device=self.device, generator=generator, build_model=build, data=data)
        if progress:
            progress.start_run(planned.label, 1)
        measurements = entry.factory(context, entry.options.model_validate(spec.probe.all_options))
        if not isinstance(measurements, Mapping):
            raise TypeError(f"probe {name!r} returned {type(measurements).__name__}; probes return a mapping")
        try:
            result.measurements = json.loads(json.dumps(measurements, default=_plain))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"probe {name!r} returned measurements that are not JSON-serialisable: {exc}") from None
        if progress:
            progress.advance(1, float("nan"))

    def _train(
        self, planned: PlannedRun, result: RunResult, progress: Progress | None, built: list[RunContext]
    ) -> None:
        spec = planned.spec
        seed_everything(spec.seed)
        data = self.data.get(spec.dataset, self.device, spec.validation_size)
        model, info = self.build_model(spec, data.bundle.info)
        result.info.update(info)
        steps_per_epoch = data.train_size // spec.batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {spec.batch_size} is larger than the training set ({data.train_size} examples)"
            )
        total_steps = spec.steps or spec.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
        result.info.update(steps_per_epoch=steps_per_epoch, total_steps=total_steps, epochs=epochs)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=spec.optimizer.lr,
            momentum=spec.optimizer.momentum,
            weight_decay=spec.optimizer.weight_decay,
            nesterov=spec.optimizer.nesterov,
        )
        execution = self.execution
        train_model = execution.prepare_model(model)
        scaler = execution.grad_scaler()
        generator = torch.Generator(device=self.device).manual_seed(spec.seed)
        inputs = InputPipeline.build(self.registry, spec, data, self.device)
        generators = {"data": generator, **inputs.generators()}
        state = TrainingState.fresh(self.device, self.check_every)
        restored = self._restore_checkpoint(
            planned.run_id, progress, model, optimizer, generators, steps_per_epoch, data.train_size
        )
        if restored is not None:
            state = restored
            result.epochs = state.records
            result.info["resumed_from_step"] = state.step
        context = RunContext(
            planned.run_id, spec, model, optimizer, self.device, data.bundle, steps_per_epoch, total_steps
        )
        built.append(context)
        hook = self.registry.hook
        hook.bnbench_run_start(run=context)
        step_hook = hook.bnbench_step_end if hook.bnbench_step_end.get_hookimpls() else None
        metrics = [(m, self.registry.get("metric", m.name)) for m in spec.metrics]
        check_every = self.check_every
        losses = state.losses
        schedule, base_lr = spec.schedule, spec.optimizer.lr
        stop = self.stop
        if progress:
            progress.start_run(planned.label, total_steps)
            if state.step:
                progress.advance(state.step, float("nan"))

        step = state.step
        current_lr = None
        for epoch in range(state.epoch, epochs + 1):
            model.train()
            if state.order is None:
                state.begin_epoch(data.epoch_order(generator))
            for images, labels in data.train_batches(
                spec.batch_size, generator, state.order, state.batch, inputs.train_extra
            ):
                if step >= total_steps:
                    break
                lr = base_lr * schedule.factor(step, total_steps)
                if lr != current_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    current_lr = lr
                with execution.autocast():
                    logits = train_model(execution.prepare_inputs(images))
                    if step == 0:
                        _check_logits(logits, images.shape[0], data.bundle.num_classes, spec.model.name)
                    loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                detached = loss.detach()
                losses[step % check_every] = detached
                state.loss_sum += detached
                state.correct += (logits.detach().argmax(1) == labels).sum()
                state.seen += labels.shape[0]
                state.batch += 1
                step += 1
                if step_hook is not None:
                    step_hook(run=context, step=step, loss=detached)
                if step % check_every == 0:
                    _check_finite(losses, step, check_every)
                    if progress:
                        progress.advance(check_every, float(detached))
                if stop is not None and stop.is_set() and step < total_steps:
                    state.step, state.epoch = step, epoch
                    path = self._save_checkpoint(planned.run_id, state, model, optimizer, generators, result)
                    raise RunInterrupted(planned.run_id, step, path)
            _check_finite(losses, step, check_every)  # the steps since the last periodic check
            _check_parameters(model, step)
            evaluations: dict[tuple[str, bool], EvalResult] = {}

            def evaluate(
                split: str, transformed: bool = True, _cache: dict[tuple[str, bool], EvalResult] = evaluations
            ) -> EvalResult:
                if split not in ("train", "test", "validation"):
                    raise ValueError(f"evaluate() takes 'train', 'test' or 'validation', not {split!r}")
                key = (split, transformed and inputs.transform is not None)
                if key not in _cache:
                    extra = inputs.eval_extra(split) if key[1] else None
                    _cache[key] = _evaluate(train_model, data, split, spec.eval_batch_size, extra, execution)
                return _cache[key]

            epoch_context = EpochContext(
                run=context,
                epoch=epoch,
                step=step,
                train_loss=float(state.loss_sum) / max(1, state.batch),
                train_accuracy=float(state.correct) / max(1, state.seen),
                evaluate=evaluate,
                sample=inputs.sample,
            )
            values = _compute_metrics(metrics, epoch_context)
            for name, value in values.items():
                if not math.isfinite(value) and name.endswith("loss"):
                    raise Diverged(step, f"{name} ({value})")
            hook.bnbench_epoch_end(run=context, epoch=epoch, metrics=values)
            result.epochs.append(EpochRecord(epoch, step, values))
            if progress:
                progress.epoch(epoch, epochs, values)
            state.order = None
            state.step, state.epoch = step, epoch + 1
            if self.checkpoint_every and epoch % self.checkpoint_every == 0 and epoch < epochs:
                self._save_checkpoint(planned.run_id, state, model, optimizer, generators, result)

    # -- checkpoints ---------------------------------------------------------------------
    def _restore_checkpoint(
        self,
        run_id: str,
        progress: Progress | None,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        steps_per_epoch: int,
        train_size: int,
    ) -> TrainingState | None:
        """The state of the newest intact checkpoint that fits this run, restored into ``model``,
        ``optimizer`` and ``generators``; None (a fresh start) when none does. One that loads but
        does not fit (a tensor of another shape, a missing key, a data order out of range) is set
        aside like a damaged one and the next older one is tried: a good checkpoint is never lost."""
        if self.checkpoints is None:
            return None
        warn = progress.log if progress else (lambda message: None)
        for path, saved in self.checkpoints.candidates(run_id, warn):
            try:
                TrainingState.check(saved, model, optimizer, generators, steps_per_epoch, train_size)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                self.checkpoints.reject(path, f"does not fit this run ({type(exc).__name__}: {exc})", warn)
                continue
            return TrainingState.restore(saved, model, optimizer, generators, self.device)
        return None

    def _save_checkpoint(
        self,
        run_id: str,
        state: TrainingState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        result: RunResult,
    ) -> Path | None:
        if self.checkpoints is None:
            return None
        return self.checkpoints.save(run_id, state.snapshot(model, optimizer, generators, result.epochs))


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose of a run (its own random stream), stable across machines."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class InputPipeline:
    """A run's input transform with its random streams, and fixed samples for metrics."""

    data: DeviceData
    transform: InputTransform | None
    seed: int
    device: torch.device
    train_generator: torch.Generator | None = None
    _sample_order: torch.Tensor | None = None

    @classmethod
    def build(cls, registry: Registry, spec: RunSpec, data: DeviceData, device: torch.device) -> InputPipeline:
        transform = None
        if spec.input_transform is not None:
            entry = registry.get("transform", spec.input_transform.name)
            transform = entry.factory(entry.options.model_validate(spec.input_transform.all_options))
            if not callable(transform):
                raise TypeError(f"transform plugin {spec.input_transform.name!r} returned a non-callable")
        pipeline = cls(data, transform, spec.seed, device)
        if transform is not None:
            pipeline.train_generator = torch.Generator(device=device).manual_seed(derived_seed(spec.seed, "train"))
        return pipeline

    def generators(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint must capture."""
        return {"transform": self.train_generator} if self.train_generator is not None else {}

    def _fixed(self, split: str, purpose: str) -> BatchFunction | None:
        if self.transform is None:
            return None
        transform = self.transform
        generator = torch.Generator(device=self.device).manual_seed(derived_seed(self.seed, purpose))
        seen_as = "train" if split == "train" else "test"  # validation inputs are treated like test inputs
        return lambda x: transform(x, generator, seen_as)

    @property
    def train_extra(self) -> BatchFunction | None:
        if self.transform is None or self.train_generator is None:
            return None
        transform, generator = self.transform, self.train_generator
        return lambda x: transform(x, generator, "train")

    def eval_extra(self, split: str) -> BatchFunction | None:
        """The transform for one evaluation pass: the same draws at every evaluation."""
        return self._fixed(split, f"eval:{split}")

    def sample(self, n: int, split: str = "train", transformed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The same ``n`` examples of ``split`` at every call, prepared without augmentation."""
        images, labels = self.data.split(split)
        if self._sample_order is None:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "sample"))
            self._sample_order = torch.randperm(self.data.train_size, generator=generator).to(self.device)
        index = (
            self._sample_order[: min(n, images.shape[0])]
            if split == "train"
            else torch.arange(min(n, images.shape[0]), device=self.device)
        )
        extra = self._fixed(split, f"sample:{split}") if transformed else None
        return self.data.prepare(images[index], None, extra), labels[index]


@dataclass
class TrainingState:
    """Where a run is: the next epoch and batch, the epoch's data order and running sums."""

    epoch: int
    batch: int
    step: int
    order: torch.Tensor | None
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    losses: torch.Tensor
    """The losses since the last divergence check."""
    records: list[EpochRecord] = field(default_factory=list)

    @classmethod
    def fresh(cls, device: torch.device, check_every: int) -> TrainingState:
        return cls(
            epoch=1,
            batch=0,
            step=0,
            order=None,
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.long),
            seen=0,
            losses=torch.zeros(check_every, device=device),
        )

    def begin_epoch(self, order: torch.Tensor) -> None:
        self.order = order
        self.batch = self.seen = 0
        self.loss_sum.zero_()
        self.correct.zero_()

    def snapshot(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        records: list[EpochRecord],
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "order": None if self.order is None else self.order.cpu(),
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "losses": self.losses.cpu(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": capture_rng(generators),
            "records": [[r.epoch, r.step, r.metrics] for r in records],
        }

    @staticmethod
    def check(
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        steps_per_epoch: int,
        train_size: int,
    ) -> None:
        """Raise (``KeyError``, ``TypeError``, ``ValueError``) unless ``saved`` fits this run, before
        anything is restored: a checkpoint that fails half-way would leave the model half-loaded."""
        expected = model.state_dict()
        weights = saved["model"]
        if set(weights) != set(expected):
            raise KeyError(f"model keys differ: {sorted(set(weights) ^ set(expected))[:5]}")
        for name, tensor in expected.items():
            if not isinstance(weights[name], torch.Tensor) or weights[name].shape != tensor.shape:
                raise ValueError(
                    f"model tensor {name!r} has shape {tuple(getattr(weights[name], 'shape', ()))}, "
                    f"the run's has {tuple(tensor.shape)}"
                )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        groups = saved["optimizer"]["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError("the optimizer's parameter groups differ")
        for index, entry in saved["optimizer"]["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[int(index)].shape:
                    raise ValueError(f"optimizer state {key!r} of parameter {index} has the wrong shape")
        rng = saved["rng"]
        if not {"torch", "python", "generators"} <= set(rng) or set(rng["generators"]) != set(generators):
            raise KeyError("random states are missing")
        order = saved["order"]
        if order is not None and (
            order.dim() != 1 or len(order) != train_size or int(order.min()) < 0 or int(order.max()) >= train_size
        ):
            raise ValueError("the data order does not index this run's training set")
        if not 0 <= int(saved["batch"]) <= steps_per_epoch or int(saved["step"]) < 0 or int(saved["epoch"]) < 1:
            raise ValueError("the position in training is out of range")
        for key in ("loss_sum", "correct", "losses"):
            if not isinstance(saved[key], torch.Tensor):
                raise TypeError(f"{key!r} is not a tensor")
        if not isinstance(saved["records"], list):
            raise TypeError("the recorded epochs are not a list")

    @classmethod
    def restore(
        cls,
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        device: torch.device,
    ) -> TrainingState:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        restore_rng(saved["rng"], generators)
        order = saved["order"]
        return cls(
            epoch=saved["epoch"],
            batch=saved["batch"],
            step=saved["step"],
            order=None if order is None else order.to(device),
            loss_sum=saved["loss_sum"].to(device),
            correct=saved["correct"].to(device),
            seen=saved["seen"],
            losses=saved["losses"].to(device),
            records=[EpochRecord(e, s, dict(m)) for e, s, m in saved["records"]],
        )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plain(value: Any) -> Any:
    """Tensors and numpy values as plain Python (for JSON)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _check_logits(logits: Any, batch: int, classes: int, model: str) -> None:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch, classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model {model!r} returned {shape}; expected logits of shape ({batch}, {classes})")


def _check_parameters(model: nn.Module, step: int) -> None:
    """Raise ``Diverged`` if any parameter is NaN or infinite (never train on from NaN weights)."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
        raise Diverged(step, "a parameter")


def _check_finite(losses: torch.Tensor, step: int, check_every: int) -> None:
    """Raise ``Diverged`` at the first non-finite loss since the last check.

    Checks happen every ``check_every`` steps (and at the last step), so the losses since the
    last check fill ``losses[:count]`` in order.
    """
    count = step % check_every or check_every
    finite = torch.isfinite(losses[:count])
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise Diverged(step - count + bad + 1, f"training loss ({float(losses[bad])})")


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    data: DeviceData,
    split: str,
    batch_size: int,
    extra: BatchFunction | None = None,
    execution: Execution | None = None,
) -> EvalResult:
    model.eval()
    total_loss = torch.zeros((), device=data.mean.device)
    correct = torch.zeros((), device=data.mean.device, dtype=torch.long)
    count = 0
    autocast = execution.autocast if execution is not None else contextlib.nullcontext
    for images, labels in data.eval_batches(split, batch_size, extra):
        with autocast():
            logits = model(execution.prepare_inputs(images) if execution is not None else images).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += labels.shape[0]
    model.train()
    return EvalResult(loss=float(total_loss) / max(1, count), accuracy=float(correct) / max(1, count))


def _compute_metrics(metrics: list[tuple[Any, Any]], context: EpochContext) -> dict[str, float]:
    values: dict[str, float] = {}
    for component, entry in metrics:
        try:
            value = entry.factory(context, entry.options.model_validate(component.all_options))
        except Exception as exc:
            raise RuntimeError(
                f"metric {component.name!r} ({entry.plugin}) raised {type(exc).__name__}: {exc}"
            ) from exc
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, number in items:
            name = component.name if key is None else f"{component.name}.{key}"
            try:
                values[name] = float(number)
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {component.name!r} returned {number!r} for {name!r}; metrics return numbers"
                ) from None
    return values

"""Performance options of runs: threads, mixed precision, channels-last, compilation, cuDNN autotuning.

They change how fast a run goes, not what it is, so they are harness settings rather than
part of a run's spec (and id). Options the device cannot honour fall back with a notice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from bnbench.spec import PerformanceSettings

P = ParamSpec("P")
R = TypeVar("R")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Performance:
    """The options in effect on one device, and the notices of those that fell back."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: str = "off"
    """'off', 'model' (the model's forward) or 'step' (a run's whole training step, see ``compile_step``)."""
    compile_mode: str = "default"
    notices: list[str] = field(default_factory=list)

    @classmethod
    def resolve(cls, settings: PerformanceSettings, device: torch.device) -> Performance:
        performance = cls(device, channels_last=settings.channels_last)
        notices = performance.notices
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if settings.precision != "fp32":
            dtype = DTYPES[settings.precision]
            if device.type == "cpu" and dtype == torch.float16:
                notices.append("precision fp16: CPU autocast uses bf16 instead (no fp16 loss scaling on CPU)")
                dtype = torch.bfloat16
            elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                notices.append("precision bf16: this GPU lacks bf16; using fp16 with loss scaling")
                dtype = torch.float16
            performance.amp_dtype = dtype
        if settings.compile != "off":
            performance.compile, performance.compile_mode = settings.compile, settings.compile_mode
            if device.type != "cuda" and settings.compile_mode == "reduce-overhead":
                notices.append("compile_mode reduce-overhead: CUDA graphs need a GPU; compiling as 'default' on CPU")
                performance.compile_mode = "default"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = settings.cudnn_benchmark
        return performance

    @property
    def loss_scaling(self) -> bool:
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """For the run's recorded environment."""
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        compiled = self.compile if self.compile == "off" else f"{self.compile} ({self.compile_mode})"
        return {"precision": precision, "channels_last": self.channels_last, "compile": compiled}

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            yield

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The module to call for training (channels-last, compiled); ``model`` keeps its state."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return torch.compile(model, mode=self.compile_mode) if self.compile == "model" else model

    def compile_step(self, step: Callable[P, R]) -> Callable[P, R]:
        """``step`` compiled whole when ``compile = 'step'`` (else unchanged): forward and backward
        in one graph (autograd traced), the optimizer update in another, as PyTorch's compiled
        optimizers split them. A scheduler must keep learning rates as tensors (no recompiles)."""
        if self.compile != "step":
            return step
        import torch._dynamo

        compiled = torch.compile(step, mode=self.compile_mode)
        if not hasattr(torch._dynamo.config, "trace_autograd_ops"):  # older torch: backward is a graph break
            return compiled

        @functools.wraps(step)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return compiled(*args, **kwargs)

        return traced

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.loss_scaling else None

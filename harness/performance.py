"""Performance options of runs: threads, mixed precision, channels-last, compilation, cuDNN autotuning.

They change how fast a run goes, not what it is, so they are harness settings rather than
part of a run's spec (and id). Options the device cannot honour fall back with a notice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnbench.spec import PerformanceSettings

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Performance:
    """The options in effect on one device, and the notices of those that fell back."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
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
        if settings.compile:
            if device.type == "cuda":
                performance.compile = True
            else:
                notices.append("compile: torch.compile is used on CUDA only; running eagerly on CPU")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = settings.cudnn_benchmark
        return performance

    @property
    def loss_scaling(self) -> bool:
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """For the run's recorded environment."""
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return {"precision": precision, "channels_last": self.channels_last, "compile": self.compile}

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
        return torch.compile(model) if self.compile else model

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.loss_scaling else None

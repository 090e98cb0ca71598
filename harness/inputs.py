"""A run's inputs beyond its dataset: the input transform with its own random streams, and the
fixed samples metrics draw on (the same examples at every epoch)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from bnbench.api import InputTransform
from bnbench.data import BatchFunction, DeviceData
from bnbench.registry import Registry
from bnbench.spec import RunSpec


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
            transform = registry.build("transform", spec.input_transform)
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

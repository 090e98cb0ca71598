"""Datasets resident on the training device, cached across the runs of a sweep."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.api import BuildContext, DataBundle
from harness.registry import Registry
from harness.spec import Component

BatchFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DeviceData:
    """A ``DataBundle`` moved to the device, with batch preparation (scale, augment, normalize)."""

    bundle: DataBundle
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_bundle(cls, bundle: DataBundle, device: torch.device) -> DeviceData:
        shape = (1, len(bundle.mean), 1, 1)
        return cls(
            bundle=bundle,
            train_images=bundle.train_images.to(device),
            train_labels=bundle.train_labels.to(device, torch.long),
            test_images=bundle.test_images.to(device),
            test_labels=bundle.test_labels.to(device, torch.long),
            mean=torch.tensor(bundle.mean, dtype=torch.float32, device=device).view(shape),
            std=torch.tensor(bundle.std, dtype=torch.float32, device=device).view(shape),
        )

    @property
    def train_size(self) -> int:
        return self.train_images.shape[0]

    def prepare(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        extra: BatchFunction | None = None,
    ) -> torch.Tensor:
        """Scale to [0, 1]; augment (the dataset's training transform) when a generator is
        given; apply ``extra`` (a run's input transform, e.g. noise); normalize."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        if generator is not None and self.bundle.train_transform is not None:
            x = self.bundle.train_transform(x, generator)
        if extra is not None:
            x = extra(x)
        return (x - self.mean) / self.std

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A fresh permutation of the training set, drawn on the generator's device."""
        return torch.randperm(self.train_size, generator=generator, device=generator.device)

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        order: torch.Tensor | None = None,
        start_batch: int = 0,
        extra: BatchFunction | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented training batches (the last partial batch dropped).

        ``order`` (default: a fresh ``epoch_order``) and ``start_batch`` resume an epoch midway.
        """
        if order is None:
            order = self.epoch_order(generator)
        for start in range(start_batch * batch_size, self.train_size - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield self.prepare(self.train_images[index], generator, extra), self.train_labels[index]

    def eval_batches(
        self, split: str, batch_size: int, extra: BatchFunction | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, normalized, without augmentation (``extra`` still applies)."""
        images = self.test_images if split == "test" else self.train_images
        labels = self.test_labels if split == "test" else self.train_labels
        for start in range(0, images.shape[0], batch_size):
            yield self.prepare(images[start : start + batch_size], None, extra), labels[start : start + batch_size]


class DataCache:
    """Builds datasets through their plugins and keeps the most recent ones on the device."""

    def __init__(self, registry: Registry, base_dir: Path, capacity: int = 2) -> None:
        self.registry = registry
        self.context = BuildContext(base_dir=base_dir)
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, str], DeviceData] = OrderedDict()

    def get(self, dataset: Component, device: torch.device) -> DeviceData:
        key = (dataset.model_dump_json(), str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = self.registry.get("dataset", dataset.name)
        bundle = entry.factory(entry.options.model_validate(dataset.options), self.context)
        if not isinstance(bundle, DataBundle):
            raise TypeError(
                f"dataset plugin {dataset.name!r} ({entry.plugin}) returned {type(bundle).__name__}, "
                "not a harness.DataBundle"
            )
        bundle.check(dataset.name)
        data = DeviceData.from_bundle(bundle, device)
        self._cache[key] = data
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return data

"""Datasets resident on the training device, cached across the runs of a sweep.

A dataset whose plugin returns ``SampleSource`` splits (too large for memory) is served by
``StreamData`` instead: the same batches in the same order, read per example through a
``DataLoader`` and prepared on the device the same way.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bnbench.api import BuildContext, DataBundle, SampleSource
from bnbench.registry import Registry
from bnbench.spec import Component

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
    validation_images: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None

    def hold_out(self, size: int) -> DeviceData:
        """A view with ``size`` training examples held out for validation.

        The held-out examples are a fixed random subset (the same for every run seed and
        configuration, so hyperparameters are tuned on one validation set)."""
        if not 0 < size < self.train_size:
            raise ValueError(f"validation_size must be between 1 and {self.train_size - 1}, got {size}")
        order = torch.randperm(self.train_size, generator=torch.Generator().manual_seed(0)).to(self.mean.device)
        keep, held = order[size:].sort().values, order[:size].sort().values
        return replace(
            self,
            train_images=self._subset(self.train_images, keep),
            train_labels=self.train_labels[keep],
            validation_images=self._subset(self.train_images, held),
            validation_labels=self.train_labels[held],
        )

    @staticmethod
    def _subset(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return images[index]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``train``, ``test`` or ``validation``."""
        if name == "validation":
            if self.validation_images is None or self.validation_labels is None:
                raise ValueError("no validation split: set validation_size in the study")
            return self.validation_images, self.validation_labels
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}: train, test or validation")
        return (self.train_images, self.train_labels) if name == "train" else (self.test_images, self.test_labels)

    @classmethod
    def from_bundle(cls, bundle: DataBundle, device: torch.device) -> DeviceData:
        """The bundle on ``device``: ``StreamData`` when its splits are read per example."""
        if bundle.streamed:
            return StreamData.from_source(bundle, device)
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
        x = self.scale(images)
        if generator is not None and self.bundle.train_transform is not None:
            x = self.bundle.train_transform(x, generator)
        if extra is not None:
            x = extra(x)
        return self.normalize(x)

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """Stored images as float ``[0, 1]`` pixels (``prepare``'s first step)."""
        return images.float().div_(255) if images.dtype == torch.uint8 else images.float()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel normalization (``prepare``'s last step)."""
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
        images, labels = self.split(split)
        for start in range(0, images.shape[0], batch_size):
            yield self.prepare(images[start : start + batch_size], None, extra), labels[start : start + batch_size]


class StreamImages:
    """The images of a split read per example from a ``SampleSource``, in a chosen order.

    It stands in for a device tensor of images: ``len``, ``shape`` and ``images[index]`` (a
    tensor of positions, on any device, or a slice) give what the tensor would, read from the
    source and moved to the device; ``batches`` reads many batches through a ``DataLoader``.
    It holds the source and, for a subset, the source index of each position: no images.
    """

    def __init__(
        self, source: SampleSource, device: torch.device, workers: int = 0, indices: torch.Tensor | None = None
    ) -> None:
        self.source = source
        self.device = device
        self.workers = workers
        self.indices = indices
        """Source index of each position (CPU, long); ``None``: position ``i`` is example ``i``."""

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else self.indices.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.source.image_shape)

    def _source_indices(self, positions: torch.Tensor) -> torch.Tensor:
        positions = positions.cpu()
        return positions if self.indices is None else self.indices[positions]

    def select(self, positions: torch.Tensor) -> StreamImages:
        """The examples at ``positions`` as a smaller split of the same source (nothing is read)."""
        return StreamImages(self.source, self.device, self.workers, self._source_indices(positions).clone())

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The examples at ``index`` (positions), read in this process, on the device."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        indices = self._source_indices(index).tolist()
        if not indices:
            return torch.empty((0, *self.source.image_shape), dtype=torch.uint8, device=self.device)
        return torch.stack([self.source[i] for i in indices]).to(self.device)

    def batches(self, positions: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each batch of ``positions`` in turn, on the device.

        A ``DataLoader`` over the source reads them, ``workers`` processes reading ahead; on a
        GPU the batches are pinned and copied asynchronously.
        """
        if not positions:
            return
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            self.source,
            batch_sampler=[self._source_indices(batch).tolist() for batch in positions],
            num_workers=self.workers,
            pin_memory=cuda,
        )
        for images in loader:
            yield images.to(self.device, non_blocking=cuda)


@dataclass
class StreamData(DeviceData):
    """A dataset of ``SampleSource`` splits: the labels on the device, the images read per batch.

    It serves what ``DeviceData`` serves, in the same order (the epoch permutation, resumed
    at ``start_batch``, the last partial batch dropped; evaluation in order; the same held-out
    validation examples and fixed samples), prepared by the same ``prepare`` on the device, so
    a run gives the same results from either. The examples of each batch are read through a
    ``DataLoader`` with the bundle's ``loader_workers`` worker processes.
    """

    train_images: StreamImages
    test_images: StreamImages
    validation_images: StreamImages | None = None

    @classmethod
    def from_source(cls, bundle: DataBundle, device: torch.device) -> StreamData:
        train, test = bundle.train_images, bundle.test_images
        assert isinstance(train, SampleSource) and isinstance(test, SampleSource)
        shape = (1, len(bundle.mean), 1, 1)
        workers = bundle.loader_workers
        return cls(
            bundle=bundle,
            train_images=StreamImages(train, device, workers),
            train_labels=bundle.train_labels.to(device, torch.long),
            test_images=StreamImages(test, device, workers),
            test_labels=bundle.test_labels.to(device, torch.long),
            mean=torch.tensor(bundle.mean, dtype=torch.float32, device=device).view(shape),
            std=torch.tensor(bundle.std, dtype=torch.float32, device=device).view(shape),
        )

    @staticmethod
    def _subset(images: StreamImages, index: torch.Tensor) -> StreamImages:
        return images.select(index)

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        order: torch.Tensor | None = None,
        start_batch: int = 0,
        extra: BatchFunction | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As ``DeviceData.train_batches``: the same batches, their images read by a ``DataLoader``."""
        if order is None:
            order = self.epoch_order(generator)
        starts = range(start_batch * batch_size, self.train_size - batch_size + 1, batch_size)
        host_order = order.cpu()  # one transfer per epoch, not one per batch
        images = self.train_images.batches([host_order[start : start + batch_size] for start in starts])
        for start, batch in zip(starts, images, strict=True):
            yield self.prepare(batch, generator, extra), self.train_labels[order[start : start + batch_size]]

    def eval_batches(
        self, split: str, batch_size: int, extra: BatchFunction | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As ``DeviceData.eval_batches``: the whole split in order, read by a ``DataLoader``."""
        images, labels = self.split(split)
        starts = range(0, len(images), batch_size)
        positions = torch.arange(len(images))
        read = images.batches([positions[start : start + batch_size] for start in starts])
        for start, batch in zip(starts, read, strict=True):
            yield self.prepare(batch, None, extra), labels[start : start + batch_size]


_RESIDENT: OrderedDict[tuple[str, ...], DeviceData] = OrderedDict()
"""Datasets on their devices, shared by every ``DataCache`` of the process (most recent last)."""


def prepare_datasets(datasets: Iterable[Component], registry: Registry, base_dir: Path) -> None:
    """Each distinct dataset made ready once through its plugin's ``prepare=`` (its files checked,
    or downloaded where its options allow), before anything trains: a missing dataset fails here
    with one ``DatasetNotFoundError`` instead of once per run."""
    seen: set[str] = set()
    context = BuildContext(base_dir=base_dir)
    for dataset in datasets:
        key = json.dumps([dataset.name, dataset.all_options], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        prepare = registry.get("dataset", dataset.name).extras.get("prepare")
        if prepare is not None:
            prepare(registry.options("dataset", dataset), context)


class DataCache:
    """Builds datasets through their plugins and keeps the most recent ones on the device.

    The datasets are shared process-wide (keyed by plugin, options, manifest directory and
    device), so consecutive sweeps in one process build each dataset once.
    """

    def __init__(self, registry: Registry, base_dir: Path, capacity: int = 2) -> None:
        self.registry = registry
        self.context = BuildContext(base_dir=base_dir)
        self.capacity = capacity
        self._cache = _RESIDENT

    def get(self, dataset: Component, device: torch.device, validation_size: int | None = None) -> DeviceData:
        """The dataset on ``device``, with ``validation_size`` training examples held out."""
        data = self._get(dataset, device)
        return data.hold_out(validation_size) if validation_size else data

    def _get(self, dataset: Component, device: torch.device) -> DeviceData:
        entry = self.registry.get("dataset", dataset.name)
        options = json.dumps(dataset.all_options, sort_keys=True)
        key = (str(entry.plugin), dataset.name, options, str(self.context.base_dir), str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        bundle = self.registry.build("dataset", dataset, self.context)
        if not isinstance(bundle, DataBundle):
            raise TypeError(
                f"dataset plugin {dataset.name!r} ({entry.plugin}) returned {type(bundle).__name__}, "
                "not a bnbench.DataBundle"
            )
        bundle.check(dataset.name)
        data = DeviceData.from_bundle(bundle, device)
        self._cache[key] = data
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return data

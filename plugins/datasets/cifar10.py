"""CIFAR-10 (Krizhevsky 2009) through ``torchvision.datasets.CIFAR10``."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from bnbench import BuildContext, DataBundle, DataInfo, DatasetDescription
from bnbench.api import Images
from bnbench.plugins.datasets.augment import cifar_augment
from bnbench.plugins.datasets.common import (
    FileDatasetOptions,
    fetch_quietly,
    head,
    missing_files,
    one_label_per_image,
    open_dataset,
    require_files,
    stream_split,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"
FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


class Cifar10Options(FileDatasetOptions):
    augment: bool = Field(True, description="4-pixel pad, random crop and flip on training batches.")
    verify_checksums: bool = Field(True, description="Check the files' MD5 sums against the originals.")


@functools.cache
def _unchecked_cifar10() -> Any:
    """torchvision's loader without MD5 sums: its integrity checks test that files exist (made on
    first use: importing torchvision takes seconds that a report or a plan need not spend)."""
    import torchvision

    class UncheckedCIFAR10(torchvision.datasets.CIFAR10):
        train_list: ClassVar = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
        test_list: ClassVar = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
        meta: ClassVar = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    return UncheckedCIFAR10


def batch_count(path: Path) -> int | None:
    """The examples in a CIFAR batch file (its pickled ``labels``), ``None`` if unreadable."""
    try:
        with path.open("rb") as file:
            entry = pickle.load(file, encoding="latin1")
        return len(entry["labels"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError):
        return None


def describe_cifar10(options: Cifar10Options, context: BuildContext | None = None) -> DatasetDescription:
    """CIFAR-10 without loading it: 3×32×32 images, 10 classes, and the training images on disk (the
    five batch files' labels, when they are there; else the original 50,000), or ``train_size``."""
    available = 50_000
    if context is not None:
        folder = context.resolve(options.root) / FOLDER
        counts = [batch_count(folder / f"data_batch_{i}") for i in range(1, 6)]
        if all(c is not None for c in counts):
            available = sum(c for c in counts if c is not None)
    return DatasetDescription(DataInfo((3, 32, 32), 10), min(options.train_size or available, available))


def how_to_get(root: Path) -> str:
    return (
        "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
        f"extract it into {root} (it creates {FOLDER}/)"
    )


def prepare_cifar10(options: Cifar10Options, context: BuildContext) -> None:
    """The batch files in place before any run trains: downloaded once when missing and
    ``download = true``; else ``DatasetNotFoundError`` listing the missing files and where they go."""
    root = context.resolve(options.root)
    tried = None
    if options.download and missing_files(root / FOLDER, FILES):
        import torchvision

        tried = fetch_quietly(lambda: torchvision.datasets.CIFAR10(str(root), train=True, download=True))
    require_files("CIFAR-10", root / FOLDER, FILES, how_to_get(root), tried)


def load_cifar10(options: Cifar10Options, context: BuildContext) -> DataBundle:
    """CIFAR-10: 50,000 training and 10,000 test 32×32 colour images in 10 classes.

    With ``storage = "stream"`` the splits are ``TorchvisionSource`` objects read per example.
    """
    root = context.resolve(options.root)
    if not options.download:
        require_files("CIFAR-10", root / FOLDER, FILES, how_to_get(root))
    import torchvision

    loader = torchvision.datasets.CIFAR10 if options.verify_checksums else _unchecked_cifar10()

    def split(train: bool, size: int | None) -> tuple[Images, torch.Tensor]:
        ds = open_dataset("CIFAR-10", root / FOLDER, lambda: loader(str(root), train=train, download=options.download))
        if options.storage == "stream":
            return stream_split("CIFAR-10", root / FOLDER, ds, size)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.long)
        return head(*one_label_per_image("CIFAR-10", root / FOLDER, images, labels), size)

    train_images, train_labels = split(True, options.train_size)
    test_images, test_labels = split(False, options.test_size)
    return DataBundle(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        mean=MEAN,
        std=STD,
        train_transform=cifar_augment if options.augment else None,
        description=f"CIFAR-10 from {root}" + (", read per example" if options.storage == "stream" else ""),
        loader_workers=options.loader_workers,
    )

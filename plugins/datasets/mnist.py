"""MNIST (LeCun et al. 1998) through ``torchvision.datasets.MNIST``."""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from bnbench import BuildContext, DataBundle, DataInfo, DatasetDescription
from bnbench.api import Images
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

MEAN = (0.1307,)
STD = (0.3081,)
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class MnistOptions(FileDatasetOptions):
    pass


def idx_count(path: Path) -> int | None:
    """The example count in an IDX file's header (bytes 4-8, big-endian), ``None`` if unreadable."""
    try:
        with path.open("rb") as file:
            header = file.read(8)
    except OSError:
        return None
    return struct.unpack(">I", header[4:8])[0] if len(header) == 8 else None


def describe_mnist(options: MnistOptions, context: BuildContext | None = None) -> DatasetDescription:
    """MNIST without loading it: 1×28×28 images, 10 classes, and the training images on disk (read
    from the IDX header when the file is there; else the original 60,000), or ``train_size``."""
    available = 60_000
    if context is not None:
        found = idx_count(context.resolve(options.root) / "MNIST" / "raw" / FILES[0])
        available = found if found is not None else available
    return DatasetDescription(DataInfo((1, 28, 28), 10), min(options.train_size or available, available))


def how_to_get(raw: Path) -> str:
    return f"Put the four uncompressed IDX files from http://yann.lecun.com/exdb/mnist/ in {raw}"


def prepare_mnist(options: MnistOptions, context: BuildContext) -> None:
    """The four IDX files in place before any run trains: downloaded once when missing and
    ``download = true``; else ``DatasetNotFoundError`` listing the missing files and where they go."""
    root = context.resolve(options.root)
    raw = root / "MNIST" / "raw"
    tried = None
    if options.download and missing_files(raw, FILES):
        import torchvision

        tried = fetch_quietly(lambda: torchvision.datasets.MNIST(str(root), train=True, download=True))
    require_files("MNIST", raw, FILES, how_to_get(raw), tried)


def load_mnist(options: MnistOptions, context: BuildContext) -> DataBundle:
    """MNIST: 60,000 training and 10,000 test 28×28 grey-scale digits.

    With ``storage = "stream"`` the splits are ``TorchvisionSource`` objects read per example.
    """
    root = context.resolve(options.root)
    raw = root / "MNIST" / "raw"
    if not options.download:
        require_files("MNIST", raw, FILES, how_to_get(raw))

    import torchvision

    def split(train: bool, size: int | None) -> tuple[Images, torch.Tensor]:
        ds = open_dataset(
            "MNIST", raw, lambda: torchvision.datasets.MNIST(str(root), train=train, download=options.download)
        )
        if options.storage == "stream":
            return stream_split("MNIST", raw, ds, size)
        return head(*one_label_per_image("MNIST", raw, ds.data.unsqueeze(1).contiguous(), ds.targets.long()), size)

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
        description=f"MNIST from {root}" + (", read per example" if options.storage == "stream" else ""),
        loader_workers=options.loader_workers,
    )

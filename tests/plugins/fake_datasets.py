"""Tiny CIFAR-10 and MNIST files in the real on-disk formats, for tests that cannot download.

The writers take images as ``(N, C, H, W)`` uint8 arrays, the layout the dataset plugins
return, and encode them the way the original files do, so that a test can read them back
through the real torchvision loaders and compare pixel by pixel.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cifar_row(image: np.ndarray) -> np.ndarray:
    """One CIFAR record: 3072 bytes, the 32×32 R plane row-major, then the G plane, then B."""
    c, h, w = image.shape
    assert (c, h, w) == (3, 32, 32) and image.dtype == np.uint8
    row = np.empty(3 * 32 * 32, dtype=np.uint8)
    for channel in range(3):  # spelled out rather than a reshape, so the test does not share the loader's layout logic
        for y in range(32):
            start = channel * 1024 + y * 32
            row[start : start + 32] = image[channel, y, :]
    return row


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch file as in cifar-10-python.tar.gz: a pickled dict with ``data`` (N×3072) and ``labels``.

    The originals are Python 2 pickles whose ``str`` keys load as ``str`` under torchvision's
    ``pickle.load(..., encoding="latin1")`` (they only appear as ``b"data"`` when loaded with
    ``encoding="bytes"``), so the keys here are ``str`` too.
    """
    data = np.stack([cifar_row(image) for image in images]) if len(images) else np.zeros((0, 3072), np.uint8)
    entry = {"batch_label": path.name, "labels": [int(label) for label in labels], "data": data}
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10(
    root: Path,
    train: list[tuple[np.ndarray, list[int]]],
    test: tuple[np.ndarray, list[int]],
) -> Path:
    """Write ``<root>/cifar-10-batches-py`` with five training batches, the test batch and the meta file.

    ``train`` holds the five batches' (images, labels) in order; returns the batch folder.
    """
    assert len(train) == len(CIFAR_TRAIN_BATCHES)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip(CIFAR_TRAIN_BATCHES, train, strict=True):
        write_cifar_batch(folder / name, images, labels)
    write_cifar_batch(folder / "test_batch", *test)
    meta = {"num_cases_per_batch": 10000, "label_names": CIFAR_LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def idx_images(images: np.ndarray) -> bytes:
    """An IDX3 image file: big-endian magic 0x00000803, count, rows, cols, then the uint8 pixels."""
    n, h, w = images.shape
    assert images.dtype == np.uint8
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.tobytes(order="C")


def idx_labels(labels: list[int]) -> bytes:
    """An IDX1 label file: big-endian magic 0x00000801, count, then one uint8 per label."""
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def write_mnist(
    root: Path,
    train: tuple[np.ndarray, list[int]],
    test: tuple[np.ndarray, list[int]],
) -> Path:
    """Write the four uncompressed IDX files into ``<root>/MNIST/raw``; images are (N, 28, 28) uint8.

    Returns the raw folder.
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for is_train, (images, labels) in ((True, train), (False, test)):
        image_name, label_name = MNIST_FILES[is_train]
        (raw / image_name).write_bytes(idx_images(images))
        (raw / label_name).write_bytes(idx_labels(labels))
    return raw

"""What the torchvision-backed datasets share: subset and storage options, per-sample sources, errors."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field

from bnbench import DatasetError, DatasetNotFoundError, Options, runtime_option

T = TypeVar("T")


class FileDatasetOptions(Options):
    root: str = Field("data", description="Directory holding the dataset, relative to the manifest.")
    download: bool = runtime_option(False, description="Download the files into root when they are missing.")
    train_size: int | None = Field(None, gt=0, description="Use only the first N training images.")
    test_size: int | None = Field(None, gt=0, description="Use only the first N test images.")
    storage: Literal["memory", "stream"] = runtime_option(
        "memory",
        description=(
            "memory: the images as tensors, moved to the training device once (fast); stream: read per "
            "example through torchvision's dataset and a DataLoader, batch by batch (same results, slower; "
            "for datasets too large for device memory)."
        ),
    )
    loader_workers: int = runtime_option(
        0, ge=0, description="DataLoader worker processes reading examples with storage = 'stream' (0: none)."
    )


def missing_files(directory: Path, names: list[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def require_files(dataset: str, directory: Path, names: list[str], how_to_get: str, tried: str | None = None) -> None:
    """Raise ``DatasetNotFoundError`` naming the directory and the missing files (and, given
    ``tried``, why the download failed)."""
    missing = missing_files(directory, names)
    if missing:
        if tried:
            advice = f"download = true could not fetch them ({tried}). {how_to_get}."
        else:
            advice = f"{how_to_get} (or set download = true where the network can reach the dataset's host)."
        raise DatasetNotFoundError(f"{dataset} files are missing from {directory}: {', '.join(missing)}. {advice}")


def fetch_quietly(download: Callable[[], object]) -> str | None:
    """Run a torchvision download with its prints and progress bars silenced: ``None`` when it
    succeeded, else why it failed in one line (an offline host tries every mirror, printing each)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            download()
        except Exception as exc:
            text = " ".join(line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip())
            return text if len(text) <= 400 else text[:399] + "…"
    return None


def open_dataset(dataset: str, directory: Path, load: Callable[[], T]) -> T:
    """Run a torchvision loader, turning its failures into errors naming the directory."""
    try:
        return load()
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"cannot read {dataset} from {directory}: {type(exc).__name__}: {exc}. "
            "The files may be truncated or of the wrong format; replace them with the originals."
        ) from exc


def one_label_per_image(
    dataset: str, directory: Path, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``, or ``DatasetError`` naming the directory when their counts differ."""
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"cannot read {dataset} from {directory}: {images.shape[0]} images but {labels.shape[0]} labels. "
            "The files may be truncated or mixed up; replace them with the originals."
        )
    return images, labels


def head(images: torch.Tensor, labels: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` examples (all of them when ``size`` is None)."""
    if size is None:
        return images, labels
    return images[:size].contiguous(), labels[:size].contiguous()


class TorchvisionSource:
    """A torchvision dataset's split as a ``bnbench.api.SampleSource``: the classic per-sample path.

    Example ``i`` is decoded by the dataset's own ``__getitem__`` (a PIL image) and made a uint8
    ``(C, H, W)`` tensor by ``pil_to_tensor``, so it holds the same pixels as the in-memory tensors.
    Only the first ``size`` examples are used (all when ``None``).

    The source keeps no images of its own, but torchvision's dataset keeps what it keeps:
    ``MNIST`` and ``CIFAR10`` read their whole files into host memory when opened (uint8
    arrays, about 55 MB and 185 MB for both splits) and decode each example from there. So for
    these two, streaming spares the device copy and the tensor copy, not host memory; a dataset
    that reads each example from disk (``ImageFolder``) keeps only its file list.
    """

    def __init__(self, dataset: Any, size: int | None = None) -> None:
        self.dataset = dataset
        self.size = len(dataset) if size is None else min(size, len(dataset))
        self.image_shape: tuple[int, ...] = tuple(self[0].shape) if self.size else ()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.size:
            raise IndexError(f"example {index} of a split of {self.size}")
        image, _ = self.dataset[index]
        from torchvision.transforms.functional import pil_to_tensor

        return image if isinstance(image, torch.Tensor) else pil_to_tensor(image)


def stream_split(dataset: str, directory: Path, split: Any, size: int | None) -> tuple[TorchvisionSource, torch.Tensor]:
    """A torchvision split as ``(source, labels)``; ``DatasetError`` naming the directory when its
    labels do not match its images or it has none."""
    labels = torch.as_tensor(split.targets, dtype=torch.long)
    if len(split) != labels.shape[0]:
        raise DatasetError(
            f"cannot read {dataset} from {directory}: {len(split)} images but {labels.shape[0]} labels. "
            "The files may be truncated or mixed up; replace them with the originals."
        )
    if len(split) == 0:
        raise DatasetError(f"cannot read {dataset} from {directory}: a split holds no images.")
    source = open_dataset(dataset, directory, lambda: TorchvisionSource(split, size))
    return source, labels[: len(source)].contiguous()

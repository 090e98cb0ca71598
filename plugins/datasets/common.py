"""What the torchvision-backed datasets share: subset options and error translation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from pydantic import Field

from harness import DatasetError, DatasetNotFoundError, Options

T = TypeVar("T")


class FileDatasetOptions(Options):
    root: str = Field("data", description="Directory holding the dataset, relative to the manifest.")
    download: bool = Field(False, description="Download the files into root when they are missing.")
    train_size: int | None = Field(None, gt=0, description="Use only the first N training images.")
    test_size: int | None = Field(None, gt=0, description="Use only the first N test images.")


def missing_files(directory: Path, names: list[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def require_files(dataset: str, directory: Path, names: list[str], how_to_get: str) -> None:
    """Raise ``DatasetNotFoundError`` naming the directory and the missing files."""
    missing = missing_files(directory, names)
    if missing:
        raise DatasetNotFoundError(
            f"{dataset} files are missing from {directory}: {', '.join(missing)}. {how_to_get} "
            "(or set download = true where the network can reach the dataset's host)."
        )


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

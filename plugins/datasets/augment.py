"""Augmentation of whole batches on the training device (no per-sample Python).

``cifar_augment`` also augments a pack's batches at once (``cifar_augment.stack``): each member's
random draws come from its own generator, in the order its run alone draws them, and the crops
and flips of every member are then applied in one indexing operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PADDING = 4


def crop_offsets(n: int, generator: torch.Generator, padding: int, device: torch.device) -> torch.Tensor:
    """Each image's crop offsets ``(dy, dx)`` as a ``(2, n)`` tensor, drawn as ``random_crop`` draws them."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    return torch.stack([dy, dx])


def crop_at(images: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and crop each image at its offsets (``crop_offsets``)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    dy, dx = offsets
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and take a random crop of the original size per image."""
    if padding <= 0:
        return images
    return crop_at(images, crop_offsets(images.shape[0], generator, padding, images.device), padding)


def flip_draws(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` images to mirror (probability 1/2 each)."""
    return torch.rand(n, generator=generator, device=device) < 0.5


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    return flip_where(images, flip_draws(images.shape[0], generator, images.device))


def cifar_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation: 4-pixel zero padding, random 32×32 crop, random flip."""
    return random_flip(random_crop(images, generator, PADDING), generator)


def _cifar_augment_stack(images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``cifar_augment`` of a pack's batches (``images``: members first), each member's draws from
    its own generator; bitwise what each member's own call gives."""
    members, n = images.shape[:2]
    device = images.device
    offsets, flips = [], []
    for generator in generators:  # a member's draws in its run's order: crop offsets, then flips
        offsets.append(crop_offsets(n, generator, PADDING, device))
        flips.append(flip_draws(n, generator, device))
    flat = images.reshape(members * n, *images.shape[2:])
    out = flip_where(crop_at(flat, torch.cat(offsets, dim=1), PADDING), torch.cat(flips))
    return out.reshape(images.shape)


cifar_augment.stack = _cifar_augment_stack  # type: ignore[attr-defined]

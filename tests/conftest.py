"""Shared fixtures: the installed plugin registry and tiny manifests on synthetic data."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness.registry import Registry, load_registry

torch.set_num_threads(1)

TINY_STUDY = """
[[studies]]
name = "tiny"
model = {{ name = "mlp", widths = [16] }}
dataset = {{ name = "synthetic", image_shape = [1, 8, 8], num_classes = 4, train_size = 128, test_size = 64 }}
normalizer = "batchnorm"
placement = {placement}
epochs = {epochs}
batch_size = 32
seeds = {seeds}

[studies.optimizer]
lr = {lr}
weight_decay = 0.0
"""


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


def tiny_manifest(
    placement: str = '["all", "none"]', lr: str = "0.05", seeds: str = "[0]", epochs: int = 2, extra: str = ""
) -> str:
    """A manifest with one tiny MLP study on synthetic data (runs in well under a second)."""
    header = '[harness]\nresults = "results.sqlite"\ndevice = "cpu"\n'
    return header + TINY_STUDY.format(placement=placement, lr=lr, seeds=seeds, epochs=epochs) + extra


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    """Write a manifest (text, dedented) into the test's directory and return its path."""

    def write(text: str, name: str = "manifest.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write

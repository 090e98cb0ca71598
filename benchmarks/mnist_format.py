"""Write MNIST-format IDX files of the real size (60,000 training and 10,000 test 28x28 digits).

For timing the `cpu` profile where MNIST cannot be downloaded: the images are the synthetic
plugin's class-structured images (seeded prototypes plus pixel noise), written in MNIST's
on-disk format, so the real torchvision loader reads them. They are not MNIST: verdicts on them
say nothing about the paper, only the time a profile takes and that its claims can come out
either way.

    python benchmarks/mnist_format.py data            # then: bnbench run benchmarks.toml --profile cpu
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import torch

from bnbench import BuildContext
from bnbench.plugins.datasets.synthetic import SyntheticOptions, make_synthetic

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(raw: Path, train: bool, images: torch.Tensor, labels: torch.Tensor) -> None:
    pixels = (images.squeeze(1) * 255).round().to(torch.uint8)
    n, h, w = pixels.shape
    image_name, label_name = FILES[train]
    (raw / image_name).write_bytes(struct.pack(">IIII", 0x803, n, h, w) + pixels.numpy().tobytes())
    (raw / label_name).write_bytes(struct.pack(">II", 0x801, n) + labels.to(torch.uint8).numpy().tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the dataset root (files go to ROOT/MNIST/raw)")
    parser.add_argument("--noise", type=float, default=0.6, help="pixel noise of the synthetic images")
    args = parser.parse_args()
    options = SyntheticOptions(
        image_shape=[1, 28, 28], num_classes=10, train_size=60_000, test_size=10_000, noise=args.noise
    )
    bundle = make_synthetic(options, BuildContext(Path.cwd()))
    raw = args.root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw, True, bundle.train_images, bundle.train_labels)
    write_idx(raw, False, bundle.test_images, bundle.test_labels)
    print(f"wrote 60,000 + 10,000 MNIST-format images to {raw}")


if __name__ == "__main__":
    main()

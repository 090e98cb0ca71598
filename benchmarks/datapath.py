"""Data path: bnbench's in-memory tensors against the usual per-sample DataLoader recipe.

    python benchmarks/datapath.py

Generates MNIST-format files (60,000 random 28×28 digits, the real IDX layout) in a temporary
directory and trains the MNIST MLP for one epoch on the CPU two ways, same model, batch size
and optimizer: (a) ``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize`` through a
shuffling ``DataLoader`` (per-sample Python), (b) bnbench's ``mnist`` plugin: tensors held in
memory, batches by a permutation, normalization on whole batches. Prints both epoch times and
the ratio.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from harness.api import BuildContext, DataInfo
from harness.data import DeviceData
from plugins.datasets.mnist import MnistOptions, load_mnist
from plugins.models.mlp import MLPOptions, build_mlp


def write_idx(raw: Path, prefix: str, count: int, generator: torch.Generator) -> None:
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), dtype=torch.uint8, generator=generator)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, count, 28, 28) + images.numpy().tobytes()
    )
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.numpy().tobytes())


def train_epoch(model: torch.nn.Module, batches) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        generator = torch.Generator().manual_seed(0)
        write_idx(raw, "train", 60_000, generator)
        write_idx(raw, "t10k", 10_000, generator)

        def model() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_mlp(MLPOptions(), DataInfo((1, 28, 28), 10))

        recipe = datasets.MNIST(
            str(root),
            train=True,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
        )
        bundle = load_mnist(MnistOptions(root=str(root)), BuildContext(base_dir=root))
        data = DeviceData.from_bundle(bundle, torch.device("cpu"))
        loader_times, tensor_times = [], []
        for _ in range(args.repeats):
            loader = DataLoader(recipe, batch_size=args.batch_size, shuffle=True, drop_last=True)
            loader_times.append(train_epoch(model(), loader))
            batches = data.train_batches(args.batch_size, torch.Generator().manual_seed(0))
            tensor_times.append(train_epoch(model(), batches))
    loader_time, tensor_time = min(loader_times), min(tensor_times)
    print(f"MNIST MLP, one epoch of 60,000 images, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads")
    print(f"DataLoader + ToTensor/Normalize: {loader_time:7.2f} s")
    print(f"bnbench in-memory tensors:       {tensor_time:7.2f} s")
    print(f"speed-up: {loader_time / tensor_time:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

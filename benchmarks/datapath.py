"""Data path: bnbench's in-memory tensors against the usual per-sample DataLoader recipe.

    python benchmarks/datapath.py

Generates MNIST-format files (60,000 random 28×28 digits, the real IDX layout) in a temporary
directory and trains the MNIST MLP for one epoch on the CPU two ways, same model, batch size
and optimizer: (a) ``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize`` through a
shuffling ``DataLoader`` (per-sample Python), (b) bnbench's ``mnist`` plugin: tensors held in
memory, batches by a permutation, normalization on whole batches; and (c) the same plugin with
``storage = "stream"`` (per-sample decoding through torchvision, batched in the same order).
Each path is timed drawing its batches only and training on them; a fixed batch repeated for
the same number of steps gives the floor the model's own compute sets on any data path.
Prints the times and the ratios against the recipe.
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
from tabulate import tabulate
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


def train_epoch(model: torch.nn.Module | None, batches) -> float:
    """Seconds for one pass over ``batches``: training ``model`` on them, or only drawing them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if model is not None else None
    start = time.perf_counter()
    for x, y in batches:
        if model is None or optimizer is None:
            continue
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
        context = BuildContext(base_dir=root)
        memory = DeviceData.from_bundle(load_mnist(MnistOptions(root=str(root)), context), torch.device("cpu"))
        stream = DeviceData.from_bundle(
            load_mnist(MnistOptions(root=str(root), storage="stream"), context), torch.device("cpu")
        )
        steps = 60_000 // args.batch_size
        fixed = next(memory.train_batches(args.batch_size, torch.Generator().manual_seed(0)))
        paths = {
            "DataLoader + ToTensor/Normalize": lambda: DataLoader(
                recipe, batch_size=args.batch_size, shuffle=True, drop_last=True
            ),
            "bnbench in-memory tensors": lambda: memory.train_batches(
                args.batch_size, torch.Generator().manual_seed(0)
            ),
            "bnbench storage=stream": lambda: stream.train_batches(args.batch_size, torch.Generator().manual_seed(0)),
            "one fixed batch (no data path)": lambda: (fixed for _ in range(steps)),
        }
        times = {(name, trained): float("inf") for name in paths for trained in (False, True)}
        for _ in range(args.repeats):
            for name, batches in paths.items():
                for trained in (False, True):
                    elapsed = train_epoch(model() if trained else None, batches())
                    times[name, trained] = min(times[name, trained], elapsed)
    print(
        f"MNIST MLP {MLPOptions().widths}, one epoch of 60,000 images, batch {args.batch_size}, CPU, "
        f"{torch.get_num_threads()} threads (best of {args.repeats})"
    )
    recipe_name = "DataLoader + ToTensor/Normalize"
    rows = [("path", "batches only", "ratio", "training epoch", "ratio")]
    for name in paths:
        data_s, epoch_s = times[name, False], times[name, True]
        rows.append(
            (
                name,
                f"{data_s:.3f} s",
                f"{times[recipe_name, False] / data_s:.1f}x" if name != "one fixed batch (no data path)" else "",
                f"{epoch_s:.2f} s",
                f"{times[recipe_name, True] / epoch_s:.1f}x",
            )
        )
    print(tabulate(rows[1:], headers=rows[0], tablefmt="github"))
    memory_ratio = times[recipe_name, True] / times["bnbench in-memory tensors", True]
    print(f"epoch speed-up of the in-memory path over the recipe: {memory_ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data path: bnbench's in-memory tensors against the usual per-sample DataLoader recipe.

    python benchmarks/datapath.py                     # 60,000 images, batch 64, 1 torch thread, 5 rounds
    python benchmarks/datapath.py --train-size 2048 --repeats 1    # a quick check that it runs

Generates MNIST-format files (``--train-size`` random 28×28 digits, 60,000 by default, and
10,000 test digits, the real IDX layout) in a temporary directory and trains the MNIST MLP
for one epoch on the CPU several ways, same model, batch size and optimizer: "DataLoader":
``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize`` through a shuffling
``DataLoader`` (per-sample Python); "in-memory": bnbench's ``mnist`` plugin, tensors held in
memory, batches by a permutation, normalization on whole batches; "stream": the same plugin
with ``storage = "stream"`` (per-sample decoding through torchvision, batched in the same
order); and "fixed batch": one batch repeated for the same number of steps, the floor the
model's own compute sets on any data path.

Two comparisons, each after one untimed warm-up round and then alternating its sides over
``--repeats`` rounds (the order reversed every other round), with ``--threads`` torch threads
(default 1): drawing the batches only (DataLoader, in-memory, stream), and a training epoch
(all four). Printed for each: min / median / max of every side's images per second and of the
per-round ratios side / DataLoader (the speed-up over the recipe).
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from sides import add_arguments, alternate, table
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bnbench.api import BuildContext, DataInfo
from bnbench.data import DeviceData
from bnbench.plugins.datasets.mnist import MnistOptions, load_mnist
from bnbench.plugins.models.mlp import MLPOptions, build_mlp

RECIPE = "DataLoader"


def write_idx(raw: Path, prefix: str, count: int, generator: torch.Generator) -> None:
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), dtype=torch.uint8, generator=generator)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, count, 28, 28) + images.numpy().tobytes()
    )
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.numpy().tobytes())


def train_epoch(model: torch.nn.Module | None, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Images per second over one pass of ``batches``: training ``model`` on them, or only drawing them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if model is not None else None
    images = 0
    start = time.perf_counter()
    for x, y in batches:
        images += x.shape[0]
        if model is None or optimizer is None:
            continue
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=60_000, help="training images generated (default 60,000)")
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        generator = torch.Generator().manual_seed(0)
        write_idx(raw, "train", args.train_size, generator)
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
        steps = args.train_size // args.batch_size
        fixed = next(memory.train_batches(args.batch_size, torch.Generator().manual_seed(0)))
        paths: dict[str, Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]] = {
            RECIPE: lambda: DataLoader(recipe, batch_size=args.batch_size, shuffle=True, drop_last=True),
            "in-memory": lambda: memory.train_batches(args.batch_size, torch.Generator().manual_seed(0)),
            "stream": lambda: stream.train_batches(args.batch_size, torch.Generator().manual_seed(0)),
            "fixed batch": lambda: (fixed for _ in range(steps)),
        }

        def side(name: str, trained: bool) -> Callable[[], float]:
            return lambda: train_epoch(model() if trained else None, paths[name]())

        drawn = alternate({name: side(name, False) for name in paths if name != "fixed batch"}, args.repeats)
        trained = alternate({name: side(name, True) for name in paths}, args.repeats)
    print(
        f"MNIST MLP {MLPOptions().widths}, one epoch of {steps * args.batch_size:,} images "
        f"({steps} batches of {args.batch_size}), CPU"
    )
    print(
        f"{RECIPE}: torchvision MNIST + ToTensor/Normalize, shuffled per sample; in-memory: bnbench tensors; "
        "stream: bnbench storage=stream; fixed batch: no data path (the compute floor)"
    )
    for title, values in (("drawing the batches only", drawn), ("a training epoch", trained)):
        ratios = [(name, RECIPE) for name in values if name != RECIPE]
        print(f"\n{title}:")
        print(table(values, "images/s", ratios=ratios, threads=args.threads, floatfmt=".6g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

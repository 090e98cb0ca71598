"""Harness overhead: a run through bnbench against a minimal hand-written PyTorch loop.

    python benchmarks/overhead.py --model mlp
    python benchmarks/overhead.py --model resnet20
    python benchmarks/overhead.py --model resnet110 --train-size 512 --epochs 1

Both train the same model (built by the same plugin), on the same in-memory data, with the
same batch size, optimizer and number of steps, and evaluate on the test set once per epoch.
bnbench runs with everything on: lifecycle hooks, the default metrics, divergence checks,
checkpoints every epoch, progress output and store writes. After one untimed warm-up of each,
the two sides ("bnbench" and "plain") run alternately over ``--repeats`` rounds (the order
reversed every other round) with ``--threads`` torch threads (default 1). Prints min / median
/ max of each side's throughput (training images per second of wall time) and of the
per-round ratio bnbench / plain, with the thread count.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sides import add_arguments, alternate, table

from bnbench.progress import Progress
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.sweep import run_manifest

MODELS = {
    "mlp": ('{ name = "mlp", widths = [256, 256, 256] }', [1, 28, 28], 64),
    "resnet20": ('{ name = "resnet_cifar", depth = 20 }', [3, 32, 32], 128),
    "resnet110": ('{ name = "resnet_cifar", depth = 110 }', [3, 32, 32], 128),
}

MANIFEST = """
[harness]
results = "overhead.sqlite"
device = "cpu"
{extra}

[[studies]]
name = "overhead"
model = {model}
dataset = {{ name = "synthetic", noise = 0.15, image_shape = {shape}, train_size = {train}, test_size = {test} }}
normalizer = "batchnorm"
placement = "all"
epochs = {epochs}
batch_size = {batch}
"""


def plain_loop(model: torch.nn.Module, data, spec, epochs: int) -> None:
    """What a researcher would write by hand: device tensors, a permutation, forward, backward, step."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=spec.optimizer.lr,
        momentum=spec.optimizer.momentum,
        weight_decay=spec.optimizer.weight_decay,
    )
    mean, std = data.mean, data.std
    n, batch = data.train_size, spec.batch_size
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n - batch + 1, batch):
            index = order[start : start + batch]
            x = (data.train_images[index] - mean) / std
            loss = F.cross_entropy(model(x), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, data.test_images.shape[0], 1000):
                x = (data.test_images[start : start + 1000] - mean) / std
                F.cross_entropy(model(x), data.test_labels[start : start + 1000]).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="mlp")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=8192)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--harness", default="", help="extra [harness] lines, e.g. 'divergence_check_every = 25'")
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_toml, shape, batch = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.toml"
        path.write_text(
            MANIFEST.format(
                model=model_toml,
                shape=shape,
                train=args.train_size,
                test=args.test_size,
                epochs=args.epochs,
                extra=args.harness.replace("\\n", "\n"),
                batch=batch,
            )
        )
        manifest = open_session(path).manifest
        planned = manifest.runs()[0]
        runner = Runner(load_registry(), base_dir=manifest.base_dir, device="cpu")
        data = runner.data.get(planned.spec.dataset, runner.device)
        images = args.epochs * (data.train_size // batch) * batch

        def harness() -> float:
            start = time.perf_counter()
            run_manifest(manifest, rerun=True, progress=Progress(1, stream=io.StringIO(), bars=False))
            return images / (time.perf_counter() - start)

        def plain() -> float:
            torch.manual_seed(0)
            model, _ = runner.build_model(planned.spec, data.bundle.info)
            start = time.perf_counter()
            plain_loop(model, data, planned.spec, args.epochs)
            return images / (time.perf_counter() - start)

        # one untimed warm-up round first: dataset build, allocator, first-call costs
        values = alternate({"bnbench": harness, "plain": plain}, args.repeats)
    print(f"model {args.model}, batch {batch}, {images} training images per run, CPU")
    print(table(values, "images/s", ratios=[("bnbench", "plain")], threads=args.threads, floatfmt=".5g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

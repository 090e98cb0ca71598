"""Operator calls per packed training step, against the pack's size (issue: a pack step whose cost
does not grow with the pack).

Counts every operator ``torch.profiler`` records during one ``Pack.step`` (forward, backward and
every member's SGD update, after a first step has made the momentum buffers) for packs of the
MLP sweep's shape (3 x 256, batch 128, 28x28 inputs, BN at every hidden layer), with the stacked
optimizer (``StackedSGD``) and with each member's own ``torch.optim.SGD`` stepping in turn. Counts,
not timings: they do not depend on the machine's load.

    python benchmarks/pack_ops.py [--sizes 1 4 16 64] [--model mlp|resnet20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bnbench.packed_training import Pack
from bnbench.runner import Runner
from bnbench.session import open_session

MODELS = {
    "mlp": ('{ name = "mlp", widths = [256, 256, 256] }', "[1, 28, 28]", 128),
    "resnet20": ('{ name = "resnet_cifar", depth = 20 }', "[3, 32, 32]", 32),
    "resnet110": ('{ name = "resnet_cifar", depth = 110 }', "[3, 32, 32]", 32),
}

MANIFEST = """
[harness]
results = "r.sqlite"
device = "cpu"

[[studies]]
name = "ops"
model = {model}
dataset = {{ name = "synthetic", image_shape = {shape}, num_classes = 10, train_size = {train}, test_size = 64 }}
normalizer = "batchnorm"
placement = "all"{transform}
epochs = 1
batch_size = {batch}
seeds = {seeds}
pack = {pack}

[studies.optimizer]
lr = 0.02
momentum = 0.9
weight_decay = 1e-4
"""


NOISE = '\ninput_transform = { name = "gaussian_noise", std = 0.3, apply_to = "both" }'
"""``--transform``: the MNIST sweep's input noise (``GaussianNoise.stack`` prepares a pack's batch at once)."""


def operations(model: str, size: int, stacked: bool, folder: Path, transform: bool = False) -> tuple[int, int]:
    """Operators recorded in one packed step: all of them, and the leaves (those that call no
    other operator: on a GPU, roughly one kernel launch each)."""
    spec, shape, batch = MODELS[model]
    text = MANIFEST.format(
        model=spec,
        shape=shape,
        train=batch * 2,
        batch=batch,
        seeds=list(range(size)),
        pack=size,
        transform=NOISE if transform else "",
    )
    path = folder / f"{model}{size}{stacked}.toml"
    path.write_text(text)
    session = open_session(path)
    runner = Runner(session.registry, base_dir=folder, device="cpu")
    trainings = [runner.assemble(planned, None, resume=False)[0] for planned in session.manifest.runs()]
    pack = Pack.start("opscount", trainings, checkpoints=None, warn=print)
    if not stacked:
        pack.optimizer = None  # each member's own SGD, and its own input transform call
        pack.stacked_transform = False
    for member in pack.members:
        member.training.state.begin_epoch(member.training.data.epoch_order(member.training.generator))
    batches = pack.batches(0)
    images, labels = next(batches)
    pack.step(images, labels, False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        images, labels = next(batches)  # the batch's preparation (input transform) counts too
        pack.step(images, labels, False)
    events = prof.events()
    return len(events), sum(1 for event in events if not event.cpu_children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--transform", action="store_true", help="with the sweep's Gaussian input noise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| {args.model}: members | operators per step, stacked SGD (leaves) | each member's SGD (leaves) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            stacked, stacked_leaves = operations(args.model, size, True, Path(folder), args.transform)
            alone, alone_leaves = operations(args.model, size, False, Path(folder), args.transform)
            print(f"| {size} | {stacked} ({stacked_leaves}) | {alone} ({alone_leaves}) |")


if __name__ == "__main__":
    main()

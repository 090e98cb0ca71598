"""Which initialization makes the unnormalized ResNet-110 of Bjorck et al. (2018) trainable?

The paper trains ResNet-110 without normalization at lr 1e-4 (Fig. 1: ~82% test accuracy)
and reports that it diverges at larger rates. This script measures, for each convolution
initialization of the `resnet_cifar` model with no normalizer (placement "none"), on
CIFAR-shaped class-structured synthetic images (3x32x32, standardized per channel):

- the loss on the first batch and the logits' std;
- how activations grow with depth at initialization: the residual stream's std (output of
  the last block ÷ first block) and the convolution outputs' variance (last ÷ first);
- SGD (momentum 0.9, weight decay 1e-4, the protocol's) for ``--steps`` steps at each
  learning rate: ``done`` or ``diverged at step k`` (the paper's rule: a mini-batch loss above
  1e3, or a non-finite one), with the first and last losses.

    python benchmarks/resnet_init.py                       # ~5 min on 2 CPU cores
    python benchmarks/resnet_init.py --steps 300 --inits pytorch_default --lrs 0.1 0.01 0.001 0.0001

docs/studies.md quotes its output.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

from bnbench import DataInfo
from bnbench.plugins.datasets.synthetic import SyntheticOptions, make_synthetic
from bnbench.plugins.models.resnet_cifar import ResNetCifar, ResNetOptions

INITS = [
    "kaiming_normal",
    "kaiming_normal_fan_in",
    "xavier_normal",
    "pytorch_default",
    "kaiming_normal_fan_in*0.5",
    "kaiming_normal_fan_in*0.6",
]
"""``init`` or ``init*gain`` (the model's ``init_gain``)."""


def data(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    bundle = make_synthetic(SyntheticOptions(train_size=size, test_size=16, noise=0.25), context=None)  # type: ignore[arg-type]
    mean = torch.tensor(bundle.mean)[None, :, None, None]
    std = torch.tensor(bundle.std)[None, :, None, None]
    return (bundle.train_images - mean) / std, bundle.train_labels


def build(init: str, depth: int, seed: int, gain: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    return ResNetCifar(ResNetOptions(depth=depth, init=init, init_gain=gain), DataInfo((3, 32, 32), 10))


@torch.no_grad()
def at_init(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    conv_var: list[float] = []
    stream_std: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: conv_var.append(float(out.var(dim=(0, 2, 3)).mean())))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    hooks += [
        block.register_forward_hook(lambda _m, _i, out: stream_std.append(float(out.std())))
        for stage in model.stages
        for block in stage
    ]
    logits = model(images)
    for hook in hooks:
        hook.remove()
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "logit_std": float(logits.std()),
        "stream_growth": stream_std[-1] / stream_std[0],
        "conv_var_growth": conv_var[-1] / conv_var[0],
    }


def train(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float, steps: int, batch: int
) -> tuple[str, float, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    first = last = math.nan
    for step in range(1, steps + 1):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        value = float(loss.detach())
        first = value if step == 1 else first
        if not math.isfinite(value) or value > 1e3:
            return f"diverged at step {step}", first, value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = value
    return "done", first, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--inits", nargs="+", default=INITS, help="init names, or init*gain (e.g. xavier_normal*0.8)")
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.1, 0.01, 0.001, 0.0001])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = data(4096)
    print(
        f"ResNet-{args.depth}, no normalization, batch {args.batch_size}, {args.steps} SGD steps, "
        f"{args.threads} torch thread(s), seed {args.seed}"
    )
    init_rows, train_rows = [], []
    for init in args.inits:
        name, _, gain_text = init.partition("*")
        gain = float(gain_text or 1.0)
        stats = at_init(build(name, args.depth, args.seed, gain), images[: args.batch_size], labels[: args.batch_size])
        init_rows.append(
            [init, *(f"{stats[k]:.3g}" for k in ("loss", "logit_std", "stream_growth", "conv_var_growth"))]
        )
        for lr in args.lrs:
            start = time.perf_counter()
            model = build(name, args.depth, args.seed, gain)
            status, first, last = train(model, images, labels, lr, args.steps, args.batch_size)
            train_rows.append(
                [init, f"{lr:g}", status, f"{first:.3g}", f"{last:.3g}", f"{time.perf_counter() - start:.0f}"]
            )
            print(*train_rows[-1], flush=True)
    print()
    print(
        tabulate(
            init_rows,
            headers=["init", "first loss", "logit std", "stream std last/first", "conv var last/first"],
            tablefmt="github",
        )
    )
    print()
    print(tabulate(train_rows, headers=["init", "lr", "status", "first loss", "last loss", "s"], tablefmt="github"))


if __name__ == "__main__":
    main()

"""Overhead of the regularization-study metrics on a training step (Annamalai & Thakur 2022 study).

The MNIST MLP (3 x 256, BN at every hidden layer or none, Gaussian input noise 0.3, a
5000-example validation split) trains one epoch; every step is timed (batch preparation,
forward, backward, SGD step: what the runner does). Then, on the trained model, each metric
is called at the end of the epoch as the runner calls it: after one untimed warm-up call of
each, the metrics alternate over ``--repeats`` rounds (the order reversed every other round),
with the test pass that ``test_accuracy`` makes anyway already done (so a metric is charged
only for its own extra work). The metrics record once per epoch at their default interval,
so the slowdown of a training step is

    ratio = 1 + (metric time per epoch) / (steps per epoch x median step time),

all measured in this one process, with ``--threads`` torch threads (default 1):

    python benchmarks/metric_overhead.py                      # synthetic MNIST-shaped data (60k/10k)
    python benchmarks/metric_overhead.py --dataset mnist      # the real files under data/MNIST/raw

For each placement and batch size it prints min / median / max of the step time (over the
epoch's steps), of each metric's time and of the three together (over the rounds), and of
each one's ratio (per round, against the median step time), with the thread count; then the
largest median single-metric ratio against the 1.10 budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from sides import add_arguments, alternate, spread
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnbench.api import EpochContext, EvalResult, RunContext
from bnbench.evaluation import evaluate_split
from bnbench.inputs import InputPipeline
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.session import open_session

METRICS = ("weight_geometry", "implied_regularization", "robustness")
DATASETS = {
    "synthetic": '{ name = "synthetic", image_shape = [1, 28, 28], num_classes = 10, train_size = 60000, '
    "test_size = 10000, noise = 0.6 }",
    "mnist": '{ name = "mnist", root = "ROOT" }',
}


def manifest_text(dataset: str, batch_size: int, placement: str, device: str) -> str:
    return f"""
[harness]
results = "overhead.sqlite"
device = "{device}"

[[studies]]
name = "overhead"
model = {{ name = "mlp", widths = [256, 256, 256] }}
dataset = {dataset}
input_transform = {{ name = "gaussian_noise", std = 0.3 }}
normalizer = "batchnorm"
placement = "{placement}"
epochs = 1
batch_size = {batch_size}
validation_size = 5000
metrics = ["test_accuracy", {", ".join(f'"{m}"' for m in METRICS)}]

[studies.optimizer]
lr = 0.02
weight_decay = 0.0
"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runner: Runner, path: Path, repeats: int) -> tuple[list[float], dict[str, list[float]]]:
    """The time of every training step of one epoch, and of each metric at the epoch's end in
    each of ``repeats`` alternating rounds (after one untimed warm-up round)."""
    registry = runner.registry
    (planned,) = open_session(path, registry=registry).manifest.runs()
    spec, device = planned.spec, runner.device
    data = runner.data.get(spec.dataset, device, spec.validation_size)
    model, _ = runner.build_model(spec, data.bundle.info)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr, momentum=spec.optimizer.momentum)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = InputPipeline.build(registry, spec, data, device)
    steps = data.train_size // spec.batch_size
    run = RunContext("overhead", spec, model, optimizer, device, data.bundle, steps, steps)
    model.train()
    step_times = []
    batches = data.train_batches(spec.batch_size, generator, data.epoch_order(generator), 0, inputs.train_extra)
    sync(device)
    start = time.perf_counter()
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        now = time.perf_counter()
        step_times.append(now - start)
        start = now

    def metric(name: str) -> Callable[[], float]:
        def call() -> float:
            cache: dict[tuple[str, bool], EvalResult] = {}

            def evaluate(split: str, transformed: bool = True) -> EvalResult:
                key = (split, transformed)
                if key not in cache:
                    extra = inputs.eval_extra(split) if transformed else None
                    cache[key] = evaluate_split(model, data, split, spec.eval_batch_size, extra)
                return cache[key]

            context = EpochContext(run, 1, steps, 0.0, 0.0, evaluate, inputs.sample)
            evaluate("test")  # test_accuracy's pass: the baseline makes it anyway
            entry = registry.get("metric", name)
            options = entry.options()
            sync(device)
            start = time.perf_counter()
            entry.factory(context, options)
            sync(device)
            return time.perf_counter() - start

        return call

    return step_times, alternate({name: metric(name) for name in METRICS}, repeats)


def report(step_times: list[float], metrics: dict[str, list[float]], threads: int) -> tuple[str, float]:
    """Min / median / max of the step time, of each metric's time and the three together, and of
    their ratios (each round's time against the median step time); and the largest median
    single-metric ratio."""
    steps, step = len(step_times), statistics.median(step_times)
    times = {**metrics, "all three": [sum(round_times) for round_times in zip(*metrics.values(), strict=True)]}
    ratios = {name: [1 + t / (steps * step) for t in series] for name, series in times.items()}
    rows = [["training step", "ms", *(1e3 * v for v in spread(step_times))]]
    rows += [[name, "ms", *(1e3 * v for v in spread(series))] for name, series in times.items()]
    rows += [[f"ratio {name}", "x", *spread(series)] for name, series in ratios.items()]
    body = tabulate(rows, headers=["", "unit", "min", "median", "max"], floatfmt=".4f")
    rounds = len(next(iter(metrics.values())))
    footer = f"{steps} timed steps, {rounds} alternating rounds of the metrics, {threads} torch thread(s)"
    worst = max(statistics.median(ratios[name]) for name in metrics)
    return f"{body}\n{footer}", worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="synthetic")
    parser.add_argument("--root", default="data", help="MNIST root (with --dataset mnist)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--placements", nargs="+", default=["all", "none"])
    parser.add_argument("--device", default="cpu")
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry()
    dataset = DATASETS[args.dataset].replace("ROOT", str(Path(args.root).resolve()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}, data {args.dataset}")
    print("ratio = 1 + metric time per epoch / (steps per epoch x median step time)")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.toml"
        runner = Runner(registry, base_dir=Path(tmp), device=args.device)
        for placement in args.placements:
            for batch_size in args.batch_sizes:
                path.write_text(manifest_text(dataset, batch_size, placement, args.device))
                step_times, metrics = measure(runner, path, args.repeats)
                text, largest = report(step_times, metrics, args.threads)
                print(f"\nplacement {placement}, batch {batch_size}:")
                print(text)
                worst = max(worst, largest)
    print(f"\nlargest median single-metric ratio: {worst:.4f} (budget 1.10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

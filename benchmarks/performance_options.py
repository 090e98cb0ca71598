"""Performance options: training throughput of ResNet-110 runs with each option, against plain PyTorch.

    python benchmarks/performance_options.py                        # ResNet-110 on the GPU if present
    python benchmarks/performance_options.py --model resnet20 --train-size 512 --device cpu

Trains the same model (built by the same plugin) on CIFAR-shaped in-memory data through
bnbench once per configuration of ``[harness] performance`` (fp32, cuDNN autotuning off,
channels-last, bf16 and fp16 autocast, torch.compile and a combination; ``--only`` picks some),
and with a hand-written fp32 PyTorch loop in the same process as the baseline ("plain"). After
one untimed warm-up round (compilation, cuDNN autotuning, allocator), all the sides run
alternately over ``--repeats`` rounds, every configuration next to the baseline in each round
(the order reversed every other round), with ``--threads`` torch threads (default 1). Prints
min / median / max of each side's training images per second of wall time and of each
per-round ratio configuration / plain, the thread count, and then each configuration's median
CIFAR-10 epochs per second (49,920 training images per epoch at batch 128) with the notices of
options that fell back (on a CPU: fp16 → bf16, no compilation, no cuDNN).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from overhead import MANIFEST, MODELS, plain_loop
from sides import add_arguments, alternate, table
from tabulate import tabulate

from bnbench.assembly import resolve_device
from bnbench.manifest import Manifest
from bnbench.performance import Performance
from bnbench.progress import Progress
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.sweep import run_manifest

CIFAR10_EPOCH_IMAGES = 390 * 128
PLAIN = "plain"

CONFIGURATIONS = {
    "fp32": "{ cudnn_benchmark = true }",
    "fp32, no cudnn.benchmark": "{ cudnn_benchmark = false }",
    "channels_last": "{ channels_last = true }",
    "bf16": '{ precision = "bf16" }',
    "fp16": '{ precision = "fp16" }',
    "bf16 + channels_last": '{ precision = "bf16", channels_last = true }',
    "compile model": '{ compile = "model" }',
    "compile step": '{ compile = "step" }',
    "compile step, CUDA graphs": '{ compile = "step", compile_mode = "reduce-overhead" }',
    "bf16 + channels_last + compile step": '{ precision = "bf16", channels_last = true, compile = "step" }',
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[m for m in MODELS if m != "mlp"], default="resnet110")
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--only", action="append", choices=list(CONFIGURATIONS), help="these configurations only")
    add_arguments(parser, repeats=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_toml, shape, batch = MODELS[args.model]
    images = args.epochs * (args.train_size // batch) * batch
    notices: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def manifest_with(performance: str, name: str) -> Path:
            path = Path(tmp) / f"{name}.toml"
            text = MANIFEST.format(
                model=model_toml,
                shape=shape,
                train=args.train_size,
                test=args.test_size,
                epochs=args.epochs,
                extra=f"performance = {performance}",
                batch=batch,
            )
            path.write_text(text.replace('device = "cpu"', f'device = "{device.type}"'))
            return path

        def rate(start: float) -> float:
            """Images per second since ``start``, once the device has finished its work."""
            if device.type == "cuda":
                torch.cuda.synchronize()
            return images / (time.perf_counter() - start)

        baseline = open_session(manifest_with("{}", "plain")).manifest
        planned = baseline.runs()[0]
        runner = Runner(load_registry(), base_dir=baseline.base_dir, device=device.type)
        data = runner.data.get(planned.spec.dataset, runner.device)
        # each bnbench run sets cudnn.benchmark for the process; the plain loop keeps the one it started with
        plain_cudnn_benchmark = torch.backends.cudnn.benchmark

        def plain() -> float:
            torch.backends.cudnn.benchmark = plain_cudnn_benchmark
            torch.manual_seed(0)
            model, _ = runner.build_model(planned.spec, data.bundle.info)
            start = time.perf_counter()
            plain_loop(model, data, planned.spec, args.epochs)
            return rate(start)

        def harness(manifest: Manifest, name: str) -> Callable[[], float]:
            def measure() -> float:
                start = time.perf_counter()
                summary = run_manifest(manifest, rerun=True, progress=Progress(1, stream=io.StringIO(), bars=False))
                if set(summary.statuses) != {"done"}:
                    raise SystemExit(f"{name}: the run did not finish: {dict(summary.statuses)}")
                return rate(start)

            return measure

        sides: dict[str, Callable[[], float]] = {PLAIN: plain}
        for index, (name, performance) in enumerate(CONFIGURATIONS.items()):
            if args.only and name not in args.only:
                continue
            manifest = open_session(manifest_with(performance, f"c{index}")).manifest
            notices[name] = "; ".join(Performance.resolve(manifest.settings.performance, device).notices)
            sides[name] = harness(manifest, name)
        values = alternate(sides, args.repeats)  # one untimed warm-up round first
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model}, batch {batch}, {images} training images per run (+ test pass), {name}")
    print(f"{PLAIN}: a hand-written fp32 PyTorch loop; the others: bnbench runs with that performance setting")
    ratios = [(side, PLAIN) for side in values if side != PLAIN]
    print(table(values, "images/s", ratios=ratios, threads=args.threads, floatfmt=".5g"))
    rows = [
        (side, f"{statistics.median(series) / CIFAR10_EPOCH_IMAGES:.4f}", notices.get(side, ""))
        for side, series in values.items()
    ]
    print()
    print(tabulate(rows, headers=["configuration", "median CIFAR-10 epochs/s", "notices"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

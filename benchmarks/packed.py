"""Packed runs against one-by-one: the MNIST regularization sweep's shape, in runs per second.

    python benchmarks/packed.py                  # CPU, 1 torch thread, 5 alternating rounds
    python benchmarks/packed.py --device cuda    # the same on a GPU
    python benchmarks/packed.py --workload max_lr [--device cuda]   # the max-lr probe's scan

24 runs of the mnist_noise_bn_vs_l2 study's shape: an MLP 3 x 256 with batch norm after every
hidden layer, batch 128, SGD with momentum 0.9, differing in seed (2), learning rate (3),
weight decay (2) and input-noise std (2). The data are MNIST-shaped synthetic images
(1 x 28 x 28, 10 classes; MNIST itself cannot be downloaded here), ``--train-size`` of them,
one epoch per run with the test set evaluated at its end, as the study does every epoch.

``--workload max_lr``: the max-lr probe (``resnet_max_lr``'s grid of 11 learning rates, SGD
momentum 0.9, weight decay 1e-4) on a CIFAR-shaped ResNet (``--depth``, default 20) with and
without batch norm, ``--probe-steps`` steps of batch 128, scanning the rates one after another
(``packed = false``) against all at once (``packed = true``); probe runs per second.

Each side runs in a fresh child process (``--side``) so that the two never share a cache or
an allocator: "alone" trains the 24 runs one after another through ``Runner.run``, "packed"
trains them as one pack through ``Runner.run_pack``. Rounds alternate the sides. Printed: runs
per second of each side and their ratio (min / median / max), and memory per member: the
growth of the process's peak memory (CPU: max RSS; CUDA: peak allocated) from one run at a
time to the pack, divided by the 23 extra members. Last, the ceiling: a run's arithmetic
(its matrix products, counted by ``torch.utils.flop_counter``), the rate each side achieves, and
the best rate of a large matrix product on the device with the same threads; packing removes
per-run overhead, not arithmetic, so it can be at most that best rate over one by one's times
as fast.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sides import add_arguments, alternate, table

MANIFEST = """
[harness]
results = "packed.sqlite"
device = "{device}"

[[studies]]
name = "packed_benchmark"
model = {{ name = "mlp", widths = [256, 256, 256] }}
dataset = {{ name = "synthetic", image_shape = [1, 28, 28], num_classes = 10, train_size = {train}, test_size = {test} }}
normalizer = "batchnorm"
placement = "all"
input_transform = {{ name = "gaussian_noise", std = [0.0, 0.3], apply_to = "both" }}
epochs = 1
batch_size = 128
seeds = [0, 1]
pack = 24
metrics = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]

[studies.optimizer]
lr = [0.01, 0.02, 0.05]
momentum = 0.9
weight_decay = [0.0, 0.0001]
"""  # noqa: E501 - a TOML inline table cannot wrap


MAX_LR = """
[harness]
results = "max_lr.sqlite"
device = "{device}"

[[studies]]
name = "max_lr_benchmark"
probe = {{ name = "max_lr", steps = {steps}, batch_size = 128, packed = {packed}, learning_rates = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0] }}
model = {{ name = "resnet_cifar", depth = {depth}, init = "kaiming_normal_fan_in", init_gain = 0.6 }}
dataset = {{ name = "synthetic", noise = 0.15, image_shape = [3, 32, 32], num_classes = 10, train_size = {train}, test_size = 128 }}
normalizer = "batchnorm"
placement = ["all", "none"]
seeds = [0]

[studies.optimizer]
momentum = 0.9
weight_decay = 0.0001
"""  # noqa: E501 - a TOML inline table cannot wrap


def max_lr_child(side: str, device: str, depth: int, steps: int, threads: int, train: int) -> dict[str, float]:
    """The max-lr probe's scans, one rate after another or all at once; probe runs per second."""
    from bnbench.registry import load_registry
    from bnbench.runner import Runner
    from bnbench.session import open_session

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "max_lr.toml"
        packed = "true" if side == "packed" else "false"
        path.write_text(MAX_LR.format(device=device, depth=depth, steps=steps, packed=packed, train=train))
        session = open_session(path, registry=load_registry())
        runs = session.manifest.runs()
        runner = Runner(session.registry, base_dir=Path(folder), device=device)
        runner.data.get(runs[0].spec.dataset, runner.device, None)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        results = [runner.run(run) for run in runs]
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        assert all(r.status == "done" for r in results), [r.error for r in results if r.status != "done"]
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if runner.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        found = {r.run_id: r.measurements["max_lr"] for r in results}
        return {"runs_per_s": len(runs) / seconds, "peak_mib": peak, "max_lr": sorted(found.values())}


def child(side: str, device: str, train: int, test: int, threads: int) -> dict[str, float]:
    """Train the 24 runs one way in this process; runs per second and peak memory."""
    from bnbench.records import PlannedPack
    from bnbench.registry import load_registry
    from bnbench.runner import Runner
    from bnbench.session import open_session

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "packed.toml"
        path.write_text(MANIFEST.format(device=device, train=train, test=test))
        session = open_session(path, registry=load_registry())
        runs = session.manifest.runs()
        assert len(runs) == 24
        runner = Runner(session.registry, base_dir=Path(folder), device=device)
        runner.data.get(runs[0].spec.dataset, runner.device, runs[0].spec.validation_size)  # load outside the clock
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        if side == "packed":
            results = list(runner.run_pack(PlannedPack(tuple(runs))))
        else:
            results = [runner.run(run) for run in runs]
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        assert all(r.status == "done" for r in results), [r.error for r in results if r.status != "done"]
        assert side != "packed" or all("pack_fallback" not in r.info for r in results)
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if runner.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        return {"runs_per_s": len(runs) / seconds, "peak_mib": peak}


def arithmetic_child(device: str, train: int, test: int, threads: int) -> dict[str, float]:
    """The arithmetic of one run (its matrix products, counted by ``torch.utils.flop_counter``:
    every training step forward and backward, and the test pass) and the best rate this device
    reaches on a large matrix product with the same threads: the ceiling for any packing."""
    from torch.utils.flop_counter import FlopCounterMode

    from bnbench.api import DataInfo
    from bnbench.registry import load_registry
    from bnbench.runner import Runner
    from bnbench.session import open_session

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "packed.toml"
        path.write_text(MANIFEST.format(device=device, train=train, test=test))
        session = open_session(path, registry=load_registry())
        spec = session.manifest.runs()[0].spec
        runner = Runner(session.registry, base_dir=Path(folder), device=device)
        model, _ = runner.build_model(spec, DataInfo((1, 28, 28), 10))
    images = torch.randn(spec.batch_size, 1, 28, 28, device=runner.device)
    with FlopCounterMode(display=False) as step:
        model.train()(images).sum().backward()
    with FlopCounterMode(display=False) as evaluation, torch.no_grad():
        model.eval()(torch.randn(test, 1, 28, 28, device=runner.device))
    flops = train // spec.batch_size * step.get_total_flops() + evaluation.get_total_flops()
    size = 8192 if runner.device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=runner.device), torch.randn(size, size, device=runner.device)
    best = 0.0
    for _ in range(6):  # the first warms up; the best of the others
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return {"flops_per_run": flops, "matmul_flops_per_s": best, "matmul_size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--train-size", type=int, default=12800, help="training images (100 steps of 128)")
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--workload", choices=["sweep", "max_lr"], default="sweep")
    parser.add_argument("--depth", type=int, default=20, help="max_lr: the ResNet's depth")
    parser.add_argument("--probe-steps", type=int, default=20, help="max_lr: SGD steps per learning rate")
    parser.add_argument("--probe-train-size", type=int, default=2048, help="max_lr: training images")
    parser.add_argument("--side", choices=["alone", "packed", "arithmetic"], help=argparse.SUPPRESS)
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    if args.side and args.workload == "max_lr":
        print(
            json.dumps(
                max_lr_child(args.side, args.device, args.depth, args.probe_steps, args.threads, args.probe_train_size)
            )
        )
        return
    if args.side == "arithmetic":
        print(json.dumps(arithmetic_child(args.device, args.train_size, args.test_size, args.threads)))
        return
    if args.side:
        print(json.dumps(child(args.side, args.device, args.train_size, args.test_size, args.threads)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    peaks: dict[str, list[float]] = {"alone": [], "packed": []}
    found: dict[str, object] = {}

    def child_reply(name: str) -> dict:
        command = [
            sys.executable,
            __file__,
            "--side",
            name,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--train-size",
            str(args.train_size),
            "--test-size",
            str(args.test_size),
            "--workload",
            args.workload,
            "--depth",
            str(args.depth),
            "--probe-steps",
            str(args.probe_steps),
            "--probe-train-size",
            str(args.probe_train_size),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def side(name: str):
        def measure() -> float:
            reply = child_reply(name)
            peaks[name].append(reply["peak_mib"])
            found[name] = reply.get("max_lr")
            return reply["runs_per_s"]

        return measure

    values = alternate({"packed": side("packed"), "alone": side("alone")}, args.repeats)
    if args.workload == "max_lr":
        print(
            f"max-lr probe: ResNet-{args.depth} with and without BN, 11 learning rates, {args.probe_steps} steps "
            f"of batch 128, on {args.device}; max lr found: one by one {found['alone']}, packed {found['packed']}"
        )
        print(table(values, "probe runs/s", ratios=[("packed", "alone")], threads=args.threads))
        return
    steps = args.train_size // 128
    print(
        f"24 runs: MLP 3x256 + BN, batch 128, {steps} steps each + a {args.test_size}-image test pass, on {args.device}"
    )
    print(table(values, "runs/s", ratios=[("packed", "alone")], threads=args.threads))
    per_member = (min(peaks["packed"]) - min(peaks["alone"])) / 23
    kind = "peak allocated" if args.device == "cuda" else "max RSS"
    print(
        f"memory per member: {per_member:.1f} MiB ({kind}: alone {min(peaks['alone']):.0f} MiB, "
        f"pack of 24 {min(peaks['packed']):.0f} MiB)"
    )
    # The ceiling: packing saves per-run overhead, never arithmetic; if one by one already runs
    # near the device's best matrix-product rate, no packing can be much faster.
    work = child_reply("arithmetic")
    flops, best = work["flops_per_run"], work["matmul_flops_per_s"]
    achieved = {name: statistics.median(series) * flops for name, series in values.items()}
    print(
        f"arithmetic: {flops / 1e9:.2f} GFLOP per run (matrix products, torch.utils.flop_counter); "
        f"one by one {achieved['alone'] / 1e9:.1f} GFLOP/s, packed {achieved['packed'] / 1e9:.1f} GFLOP/s "
        f"(medians); a {work['matmul_size']}x{work['matmul_size']} matrix product here: {best / 1e9:.1f} GFLOP/s "
        f"(best of 5, {args.threads} thread(s)), so packing can be at most {best / achieved['alone']:.2f}x "
        "as fast as one by one on this device"
    )


if __name__ == "__main__":
    main()

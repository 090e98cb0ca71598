"""One prepared device check: what a GPU gives bnbench, in one command (at most 8 minutes on one GPU).

    python benchmarks/gpu_check.py                          # on the GPU: gpu_check.json and a table
    python benchmarks/gpu_check.py --device cpu --quick     # seconds, small sizes: the test suite runs it

Sections, each recorded in the JSON file (``--out``) whether it passes, fails or cannot run:

- ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda``); on a CPU only collected.
- ``precision``: a short ResNet run in fp32, bf16 autocast, channels-last and both; each one's
  final training loss and test accuracy against fp32's, within ``LOSS_TOLERANCE`` (relative)
  and ``ACCURACY_TOLERANCE`` (absolute). A short run of a chaotic process: the tolerance is for
  "the same training", not bitwise equality (that is the CPU tests' business).
- ``throughput``: ResNet-110 (``--quick``: ResNet-8) training images per second through bnbench
  against a minimal hand-written loop with the same settings (``overhead.plain_loop``),
  alternating sides, median and spread.
- ``packing``: runs per second one by one and packed for the MNIST sweep's shape (24 runs) and
  the ResNet-20 max-lr probe (``benchmarks/packed.py``'s sides, each in a fresh process), the
  ceiling (a run's matrix-product FLOP against the device's best matrix-product rate), and the
  peak memory per pack member.
- ``projection``: the full protocol of ``benchmarks.toml`` (its runs, training images and FLOP,
  counted from the manifest and ``torch.utils.flop_counter``) in GPU-hours: one by one (each
  model family at the rate measured above), packed (divided by the measured pack speed-up of the
  nearest workload), and the arithmetic floor (all FLOP at the best matrix-product rate).

Exit status 0 when every section that ran passed; 1 otherwise (the JSON says which).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from overhead import MANIFEST, plain_loop
from sides import alternate, spread
from tabulate import tabulate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOSS_TOLERANCE = 0.10
"""Final training loss of a precision setting within 10% of fp32's."""
ACCURACY_TOLERANCE = 0.05
"""Final test accuracy of a precision setting within 5 points of fp32's."""
PRECISIONS = {
    "fp32": "{}",
    "bf16": '{ precision = "bf16" }',
    "channels_last": "{ channels_last = true }",
    "bf16 + channels_last": '{ precision = "bf16", channels_last = true }',
}


def sizes(quick: bool) -> dict[str, Any]:
    """How big each section's work is: the real check, or seconds on a CPU (``--quick``)."""
    if quick:
        return {
            "quick": True,
            "precision_model": '{ name = "resnet_cifar", depth = 8, widths = [4, 8, 8] }',
            "precision_train": 256,
            "precision_epochs": 2,
            "throughput_model": '{ name = "resnet_cifar", depth = 8, widths = [4, 8, 8] }',
            "throughput_depth": 8,
            "throughput_train": 256,
            "repeats": 1,
            "sweep_train": 256,
            "sweep_test": 128,
            "max_lr_depth": 8,
            "max_lr_steps": 1,
            "max_lr_train": 256,
        }
    return {
        "quick": False,
        "precision_model": '{ name = "resnet_cifar", depth = 20 }',
        "precision_train": 8192,
        "precision_epochs": 3,
        "throughput_model": '{ name = "resnet_cifar", depth = 110, init = "kaiming_normal_fan_in", init_gain = 0.6 }',
        "throughput_depth": 110,
        "throughput_train": 8192,
        "repeats": 3,
        "sweep_train": 12800,
        "sweep_test": 2000,
        "max_lr_depth": 20,
        "max_lr_steps": 10,
        "max_lr_train": 2048,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def manifest_text(model: str, train: int, epochs: int, device: torch.device, performance: str) -> str:
    text = MANIFEST.format(
        model=model,
        shape=[3, 32, 32],
        train=train,
        test=min(1000, train),
        epochs=epochs,
        extra=f"performance = {performance}",
        batch=128,
    )
    return text.replace('device = "cpu"', f'device = "{device.type}"')


def open_manifest(folder: Path, name: str, text: str):
    from bnbench.session import open_session

    path = folder / f"{name}.toml"
    path.write_text(text)
    return open_session(path).manifest


def cuda_tests(device: torch.device) -> dict[str, Any]:
    """The CUDA-marked tests: run on a GPU, collected (so that they exist and import) elsewhere."""
    files = sorted(str(path) for path in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in path.read_text())
    if not files:
        return {"passed": False, "ran": False, "summary": "no test file marks a test cuda"}
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files]
    if device.type != "cuda":
        command.append("--collect-only")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    # 0: passed; 5: none collected, which is a broken check (the marker lost its tests)
    return {"passed": done.returncode == 0, "ran": device.type == "cuda", "summary": last}


def precision(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """A short run per precision setting; final loss and accuracy against fp32's."""
    from bnbench.runner import Runner
    from bnbench.spec import PerformanceSettings

    finals: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, performance) in enumerate(PRECISIONS.items()):
            text = manifest_text(
                size["precision_model"], size["precision_train"], size["precision_epochs"], device, performance
            )
            manifest = open_manifest(Path(folder), f"p{index}", text)
            planned = manifest.runs()[0]
            settings = PerformanceSettings(**manifest.settings.performance.model_dump())
            result = Runner(
                manifest_registry(), base_dir=manifest.base_dir, device=device.type, performance=settings
            ).run(planned)
            if result.status != "done":
                return {"passed": False, "error": f"{name}: {result.status}: {result.error}"}
            last = result.epochs[-1].metrics
            finals[name] = {"train_loss": last["train_loss"], "test_accuracy": last["test_accuracy"]}
    reference = finals["fp32"]
    rows = {}
    for name, final in finals.items():
        loss_gap = abs(final["train_loss"] - reference["train_loss"]) / max(abs(reference["train_loss"]), 1e-12)
        accuracy_gap = abs(final["test_accuracy"] - reference["test_accuracy"])
        rows[name] = {
            **final,
            "loss_gap": loss_gap,
            "accuracy_gap": accuracy_gap,
            "within": loss_gap <= LOSS_TOLERANCE and accuracy_gap <= ACCURACY_TOLERANCE,
        }
    return {
        "passed": all(row["within"] for row in rows.values()),
        "tolerance": {"loss_relative": LOSS_TOLERANCE, "accuracy_absolute": ACCURACY_TOLERANCE},
        "settings": rows,
    }


@functools.cache
def manifest_registry():
    """The plugin registry, loaded once for the in-process sections."""
    from bnbench.registry import load_registry

    return load_registry()


def throughput(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """ResNet training images/s through bnbench against the hand-written loop, alternating."""
    from bnbench.progress import Progress
    from bnbench.runner import Runner
    from bnbench.sweep import run_manifest

    train, batch = size["throughput_train"], 128
    images = (train // batch) * batch
    with tempfile.TemporaryDirectory() as folder:
        manifest = open_manifest(Path(folder), "t", manifest_text(size["throughput_model"], train, 1, device, "{}"))
        planned = manifest.runs()[0]
        runner = Runner(manifest_registry(), base_dir=manifest.base_dir, device=device.type)
        data = runner.data.get(planned.spec.dataset, runner.device)

        def plain() -> float:
            torch.manual_seed(0)
            model, _ = runner.build_model(planned.spec, data.bundle.info)
            synchronize(device)
            started = time.perf_counter()
            plain_loop(model, data, planned.spec, 1)
            synchronize(device)
            return images / (time.perf_counter() - started)

        def harness() -> float:
            started = time.perf_counter()
            summary = run_manifest(manifest, rerun=True, progress=Progress(1, stream=io.StringIO(), bars=False))
            synchronize(device)
            if set(summary.statuses) != {"done"}:
                raise RuntimeError(f"the bnbench run did not finish: {dict(summary.statuses)}")
            return images / (time.perf_counter() - started)

        values = alternate({"bnbench": harness, "plain": plain}, size["repeats"], warmup=size["repeats"] > 1)
    ratios = [a / b for a, b in zip(values["bnbench"], values["plain"], strict=True)]
    return {
        "passed": True,
        "depth": size["throughput_depth"],
        "images_per_run": images,
        "images_per_s": {name: spread(series) for name, series in values.items()},
        "ratio_bnbench_over_plain": spread(ratios),
    }


def packed_side(side: str, workload: str, device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """One side of ``benchmarks/packed.py`` in a fresh process (its JSON reply); in this process
    when ``--quick`` (seconds of process start-up saved; memory figures then mean little)."""
    if size["quick"]:
        import packed

        threads, train, test = torch.get_num_threads(), size["sweep_train"], size["sweep_test"]
        if side == "arithmetic":
            return packed.arithmetic_child(device.type, train, test, threads)
        if workload == "max_lr":
            depth, steps = size["max_lr_depth"], size["max_lr_steps"]
            return packed.max_lr_child(side, device.type, depth, steps, threads, size["max_lr_train"])
        return packed.child(side, device.type, train, test, threads)
    command = [
        sys.executable,
        str(HERE / "packed.py"),
        "--side",
        side,
        "--workload",
        workload,
        "--device",
        device.type,
        "--threads",
        str(torch.get_num_threads()),
        "--train-size",
        str(size["sweep_train"]),
        "--test-size",
        str(size["sweep_test"]),
        "--depth",
        str(size["max_lr_depth"]),
        "--probe-steps",
        str(size["max_lr_steps"]),
        "--probe-train-size",
        str(size["max_lr_train"]),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def packing(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """Packed against one by one for the sweep and the max-lr probe, the ceiling, memory per member."""
    workloads: dict[str, Any] = {}
    for workload, members in (("sweep", 24), ("max_lr", 11)):
        replies: dict[str, list[dict[str, Any]]] = {"alone": [], "packed": []}

        def side(name: str, workload: str = workload, replies: dict = replies) -> Callable[[], float]:
            def measure() -> float:
                reply = packed_side(name, workload, device, size)
                replies[name].append(reply)
                return reply["runs_per_s"]

            return measure

        rounds = min(size["repeats"], 2)  # fresh processes: no warm-up round needed
        values = alternate({"packed": side("packed"), "alone": side("alone")}, rounds, warmup=False)
        ratios = [a / b for a, b in zip(values["packed"], values["alone"], strict=True)]
        peak = {name: min(r["peak_mib"] for r in series) for name, series in replies.items()}
        workloads[workload] = {
            "runs_per_s": {name: spread(series) for name, series in values.items()},
            "speedup_packed_over_alone": spread(ratios),
            "peak_mib": peak,
            # a probe scan holds one learning rate alone and all 11 packed; the sweep one run or 24
            "mib_per_member": (peak["packed"] - peak["alone"]) / (members - 1),
        }
    arithmetic = packed_side("arithmetic", "sweep", device, size)
    alone_flops = workloads["sweep"]["runs_per_s"]["alone"][1] * arithmetic["flops_per_run"]  # the median
    workloads["ceiling"] = {
        "sweep_flops_per_run": arithmetic["flops_per_run"],
        "matmul_flops_per_s": arithmetic["matmul_flops_per_s"],
        "alone_flops_per_s": alone_flops,
        "max_speedup": arithmetic["matmul_flops_per_s"] / alone_flops,
    }
    return {"passed": True, **workloads}


def training_flops(registry: Any, spec: Any, info: Any) -> float:
    """FLOP of one training step (forward and backward of a batch), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from bnbench.assembly import build_bare_model

    with torch.device("meta"):
        model = build_bare_model(registry, spec, info)
        images = torch.empty(spec.batch_size, *info.input_shape)
    with FlopCounterMode(display=False) as counter:
        model.train()(images).sum().backward()
    return float(counter.get_total_flops())


def protocol(manifest_path: Path, profile: str | None) -> dict[str, Any]:
    """The protocol's training work from the manifest: per model family, runs, images and FLOP.

    Training runs count every step (epochs x steps per epoch, or ``steps``); the max-lr probe
    counts its scans (rates x steps x batch). Other probes evaluate a few batches each and are
    left out (seconds, not hours)."""
    from bnbench.plan import describe_dataset
    from bnbench.session import open_session

    session = open_session(manifest_path, profile)
    registry, manifest = session.registry, session.manifest
    families: dict[str, dict[str, float]] = {}
    flops_cache: dict[str, float] = {}
    probes_left_out = 0
    for planned in manifest.runs():
        spec = planned.spec
        if spec.model is None or spec.dataset is None:
            probes_left_out += 1
            continue
        description = describe_dataset(registry, spec.dataset, manifest.base_dir)
        if description is None:
            probes_left_out += 1
            continue
        if spec.probe is None:
            steps_per_epoch = (description.train_size - (spec.validation_size or 0)) // spec.batch_size
            steps, batch = spec.steps or spec.epochs * steps_per_epoch, spec.batch_size
        elif spec.probe.name == "max_lr":
            options = registry.options("probe", spec.probe)
            steps, batch = len(options.learning_rates) * options.steps, options.batch_size
        else:
            probes_left_out += 1
            continue
        key = spec.model.model_dump_json()
        if key not in flops_cache:
            flops_cache[key] = training_flops(registry, spec, description.info) / spec.batch_size
        depth = getattr(registry.options("model", spec.model), "depth", None)
        family = spec.model.name if depth is None else f"{spec.model.name}-{depth}"
        entry = families.setdefault(family, {"runs": 0, "images": 0.0, "flops": 0.0})
        entry["runs"] += 1
        entry["images"] += steps * batch
        entry["flops"] += steps * batch * flops_cache[key]
    return {"families": families, "runs_left_out": probes_left_out}


def projection(results: dict[str, Any], size: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The protocol in GPU-hours from the measured rates (see the module's docstring)."""
    work = protocol(ROOT / "benchmarks.toml", None)
    throughput_, packing_ = results.get("throughput", {}), results.get("packing", {})
    if not throughput_.get("passed") or not packing_.get("passed"):
        return {"passed": False, "error": "needs the throughput and packing sections", "work": work}
    # achieved FLOP/s one by one: the ResNet through bnbench, the MLP from the sweep's runs
    resnet_flops_per_image = reference_flops(size["throughput_model"], [3, 32, 32])
    resnet_rate = throughput_["images_per_s"]["bnbench"][1] * resnet_flops_per_image
    mlp_rate = packing_["ceiling"]["alone_flops_per_s"]
    speedups = {
        "resnet_cifar": packing_["max_lr"]["speedup_packed_over_alone"][1],
        "mlp": packing_["sweep"]["speedup_packed_over_alone"][1],
    }
    rates = {"resnet_cifar": resnet_rate, "mlp": mlp_rate}
    rows = {}
    for family, entry in work["families"].items():
        rate = rates[family.split("-")[0]]
        alone_h = entry["flops"] / rate / 3600
        rows[family] = {
            **entry,
            "achieved_flops_per_s": rate,
            "hours_one_by_one": alone_h,
            "pack_speedup": speedups[family.split("-")[0]],
            "hours_packed": alone_h / speedups[family.split("-")[0]],
        }
    best = packing_["ceiling"]["matmul_flops_per_s"]
    total_flops = sum(entry["flops"] for entry in work["families"].values())
    return {
        "passed": True,
        "device": device_name(device),
        "families": rows,
        "runs_left_out": work["runs_left_out"],
        "total_flops": total_flops,
        "hours_one_by_one": sum(row["hours_one_by_one"] for row in rows.values()),
        "hours_packed": sum(row["hours_packed"] for row in rows.values()),
        "hours_arithmetic_floor": total_flops / best / 3600,
        "note": "" if size["throughput_depth"] == 110 else "quick mode: rates from small models, not a projection",
    }


def reference_flops(model: str, shape: list[int]) -> float:
    """FLOP per training image of a model given as its manifest table (TOML), on input ``shape``."""
    with tempfile.TemporaryDirectory() as folder:
        text = manifest_text(model, 256, 1, torch.device("cpu"), "{}")
        session_manifest = open_manifest(Path(folder), "flops", text)
        spec = session_manifest.runs()[0].spec
    from bnbench.api import DataInfo

    return training_flops(manifest_registry(), spec, DataInfo(tuple(shape), 10)) / spec.batch_size


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def report(results: dict[str, Any]) -> str:
    """The results as tables a person reads."""
    lines = [f"device: {results['device']}; quick: {results['quick']}; {results['seconds']:.0f} s"]
    rows = [
        [name, "pass" if section.get("passed") else "FAIL", f"{section['seconds']:.0f}", section.get("error", "")]
        for name, section in results["sections"].items()
    ]
    lines.append(tabulate(rows, headers=["section", "result", "seconds", "error"], tablefmt="github"))
    sections = results["sections"]
    if "settings" in sections.get("precision", {}):
        rows = [
            [
                name,
                f"{r['train_loss']:.4f}",
                f"{r['test_accuracy']:.3f}",
                f"{r['loss_gap']:.1%}",
                f"{r['accuracy_gap']:.3f}",
                r["within"],
            ]
            for name, r in sections["precision"]["settings"].items()
        ]
        lines += ["", "precision against fp32 (tolerance: loss 10% relative, accuracy 0.05 absolute)"]
        lines.append(
            tabulate(
                rows, headers=["setting", "train loss", "test acc", "loss gap", "acc gap", "within"], tablefmt="github"
            )
        )
    if "images_per_s" in sections.get("throughput", {}):
        t = sections["throughput"]
        rows = [[name, *(f"{v:.1f}" for v in series)] for name, series in t["images_per_s"].items()]
        rows.append(["ratio bnbench / plain", *(f"{v:.3f}" for v in t["ratio_bnbench_over_plain"])])
        lines += ["", f"ResNet-{t['depth']} training images/s (min / median / max)"]
        lines.append(tabulate(rows, headers=["side", "min", "median", "max"], tablefmt="github"))
    if "ceiling" in sections.get("packing", {}):
        p = sections["packing"]
        rows = [
            [
                workload,
                *(f"{v:.3g}" for v in p[workload]["runs_per_s"]["alone"]),
                *(f"{v:.3g}" for v in p[workload]["runs_per_s"]["packed"]),
                f"{p[workload]['speedup_packed_over_alone'][1]:.2f}",
                f"{p[workload]['mib_per_member']:.1f}",
            ]
            for workload in ("sweep", "max_lr")
        ]
        lines += ["", "runs/s one by one and packed (min / median / max), median speed-up, MiB per member"]
        headers = [
            "workload",
            "alone min",
            "alone med",
            "alone max",
            "packed min",
            "packed med",
            "packed max",
            "speed-up",
            "MiB/member",
        ]
        lines.append(tabulate(rows, headers=headers, tablefmt="github"))
        c = p["ceiling"]
        lines.append(
            f"ceiling (sweep): one by one {c['alone_flops_per_s'] / 1e9:.1f} GFLOP/s of a best "
            f"{c['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s matrix product: packing can be at most "
            f"{c['max_speedup']:.2f}x as fast"
        )
    if "hours_packed" in sections.get("projection", {}):
        p = sections["projection"]
        rows = [
            [
                family,
                int(r["runs"]),
                f"{r['images']:.3g}",
                f"{r['flops']:.3g}",
                f"{r['achieved_flops_per_s'] / 1e9:.1f}",
                f"{r['hours_one_by_one']:.2f}",
                f"{r['pack_speedup']:.2f}",
                f"{r['hours_packed']:.2f}",
            ]
            for family, r in p["families"].items()
        ]
        lines += ["", f"the full protocol of benchmarks.toml on {p['device']} {p['note']}"]
        headers = ["model", "runs", "images", "FLOP", "GFLOP/s", "hours alone", "pack x", "hours packed"]
        lines.append(tabulate(rows, headers=headers, tablefmt="github"))
        lines.append(
            f"total: {p['hours_one_by_one']:.2f} h one by one, {p['hours_packed']:.2f} h packed, "
            f"{p['hours_arithmetic_floor']:.2f} h of arithmetic at the best matrix-product rate; "
            f"{p['runs_left_out']} probe runs of a few batches each left out"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds on a CPU (the test suite's mode)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file to write")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    from bnbench.assembly import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = sizes(args.quick)
    started = time.perf_counter()
    sections: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("cuda_tests", lambda: cuda_tests(device)),
        ("precision", lambda: precision(device, size)),
        ("throughput", lambda: throughput(device, size)),
        ("packing", lambda: packing(device, size)),
        ("projection", lambda: projection(sections, size, device)),
    ]
    for name, section in steps:
        print(f"{name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            sections[name] = section()
        except Exception as exc:  # one failed section is a result; the others still run
            sections[name] = {
                "passed": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        sections[name]["seconds"] = time.perf_counter() - began
    results = {
        "device": device_name(device),
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
        "sections": sections,
    }
    args.out.write_text(json.dumps(results, indent=2, default=float, allow_nan=True))
    print(report(results))
    print(f"written: {args.out}")
    return 0 if all(section.get("passed") for section in sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

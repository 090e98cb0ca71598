"""Parallel runs: the MNIST smoke sweep in-process (``local``) against two worker processes (``pool``).

    python benchmarks/parallel.py [--workers 2] [--start-method auto]

Runs the ``mlp_mnist`` study of the bundled manifest with ``--profile smoke`` twice, into
fresh stores, and prints both wall times and the speed-up.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.manifest import load_manifest
from harness.progress import Progress
from harness.spec import Component
from harness.sweep import run_manifest

ROOT = Path(__file__).resolve().parent.parent


def timed(path: Path, executor: Component) -> tuple[float, int]:
    manifest = load_manifest(path, "smoke", studies=["mlp_mnist"])
    manifest.executor = executor
    start = time.perf_counter()
    summary = run_manifest(manifest, progress=Progress(1, stream=io.StringIO(), bars=False))
    return time.perf_counter() - start, sum(summary.statuses.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="auto", choices=["auto", "fork", "forkserver", "spawn"])
    args = parser.parse_args()
    times = {}
    for name, executor in (
        ("local", Component(name="local")),
        (
            f"pool({args.workers})",
            Component(name="pool", options={"workers": args.workers, "start_method": args.start_method}),
        ),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "benchmarks.toml"
            shutil.copy(ROOT / "benchmarks.toml", path)
            times[name], runs = timed(path, executor)
        print(f"{name:>8}: {runs} runs in {times[name]:6.1f} s")
    local, pooled = times.values()
    print(f"speed-up with {args.workers} workers: {local / pooled:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

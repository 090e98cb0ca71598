"""Parallel runs: the MNIST smoke sweep in-process (``local``) against worker processes (``pool``).

    python benchmarks/parallel.py [--workers 2] [--start-method auto] [--repeats 5] [--threads 1] [--pack 1]

Runs the ``mlp_mnist`` study of the bundled manifest with ``--profile smoke`` (18 runs, one by
one: its ``pack`` is set to ``--pack``, default 1, so that each run is one unit of work; with
``--pack 6`` the 18 runs are 3 packs and the pool has 3 units to spread) into a fresh store each
time, once through the ``local`` executor (one unit at a time, in this process) and once
through ``pool`` (``--workers`` units at a time), every run with ``--threads`` torch threads
(default 1; set as ``[harness] performance.threads``, which pool workers take too). After one
untimed warm-up of each, the two sides alternate over ``--repeats`` rounds (the order reversed
every other round). Prints min / median / max of each side's runs per second of wall time and
of the per-round ratio pool / local: the pool's speed-up.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sides import add_arguments, alternate, table

from bnbench.progress import Progress
from bnbench.session import open_session
from bnbench.spec import Component
from bnbench.sweep import run_manifest

ROOT = Path(__file__).resolve().parent.parent


def runs_per_second(executor: Component, threads: int, pack: int, counts: set[int]) -> float:
    """The smoke ``mlp_mnist`` study into a fresh store through ``executor``: runs per second
    (the number of runs added to ``counts``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "benchmarks.toml"
        path.write_text(re.sub(r"(?m)^pack = \d+", f"pack = {pack}", (ROOT / "benchmarks.toml").read_text()))
        manifest = open_session(path, "smoke", studies=["mlp_mnist"]).manifest
        manifest.executor = executor
        performance = manifest.settings.performance.model_copy(update={"threads": threads})
        manifest.settings = manifest.settings.model_copy(update={"performance": performance})
        start = time.perf_counter()
        summary = run_manifest(manifest, progress=Progress(1, stream=io.StringIO(), bars=False))
        seconds = time.perf_counter() - start
    if set(summary.statuses) != {"done"}:
        raise SystemExit(f"{executor.name}: not every run finished: {dict(summary.statuses)}")
    runs = sum(summary.statuses.values())
    counts.add(runs)
    return runs / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="auto", choices=["auto", "fork", "forkserver", "spawn"])
    parser.add_argument("--pack", type=int, default=1, help="the study's pack (default 1: one run per unit)")
    add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    executors = {
        "local": Component(name="local"),
        "pool": Component(name="pool", options={"workers": args.workers, "start_method": args.start_method}),
    }

    counts: set[int] = set()

    def side(name: str) -> Callable[[], float]:
        return lambda: runs_per_second(executors[name], args.threads, args.pack, counts)

    values = alternate({name: side(name) for name in executors}, args.repeats)
    runs = ", ".join(map(str, sorted(counts)))
    print(
        f"smoke mlp_mnist sweep, {runs} runs (pack = {args.pack}): local (one unit of work at a time) against pool "
        f"({args.workers} workers, start method {args.start_method}), {args.threads} torch thread(s) per run"
    )
    print(table(values, "runs/s", ratios=[("pool", "local")], threads=args.threads))
    print("ratio pool / local (runs/s over runs/s): the pool's speed-up, above 1 when it is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Worker-kill soak: SIGKILL the workers of a running sweep at random times (as the OOM killer or a
GPU fault would), for the ``pool`` and ``ray`` executors, and run several sweeps on one store at
once; then check that every run ended with exactly the results of an undisturbed sweep.

    python benchmarks/worker_kills.py --trials 5                # pool, then 3 concurrent sweeps
    python benchmarks/worker_kills.py --executor ray --trials 3  # needs bnbench[ray]

Each trial starts a fresh sweep of 12 deterministic runs, kills ``--kills`` workers while it runs
(picked from the processes that logged an attempt of a run in progress), waits for the sweep to
end, and compares every run's status and metrics with an undisturbed local sweep, bitwise. The
concurrent trial starts ``--sweeps`` drivers on one store and counts how often each run trained.
Exit status 1 if any result was lost, differed, or a run trained twice.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_reliability import SLOW_PLUGIN, bnbench_process, deterministic_manifest, results_of

from bnbench.checkpoint import Checkpoints
from bnbench.session import open_session

COUNTER = """
import os
from bnbench import hookimpl

@hookimpl
def bnbench_run_start(run):
    with open(os.path.join(os.path.dirname(__file__), "starts.log"), "a") as log:
        log.write(run.spec.run_id() + "\\n")
"""


def manifest(folder: Path, name: str, executor: str, plugins: list[str]) -> Path:
    text = deterministic_manifest(f"{name}.sqlite", seeds="[0, 1, 2, 3, 4, 5]").replace(
        'placement = "all"', 'placement = ["all", "none"]'
    )
    header = f"executor = {executor}\nperformance = {{ threads = 1 }}\nplugins = [{', '.join(map(repr, plugins))}]\n"
    path = folder / f"{name}.toml"
    path.write_text(text.replace('device = "cpu"\n', 'device = "cpu"\n' + header.replace("'", '"')))
    return path


def kill_trial(folder: Path, executor: str, kills: int, rng: random.Random, expected: dict, trial: int) -> list[str]:
    path = manifest(folder, f"{trial}", executor, [str(SLOW_PLUGIN)])
    checkpoints = Checkpoints(folder / f"{trial}.sqlite.checkpoints")
    process = bnbench_process(path, sleep=0.03)
    killed = 0
    deadline = time.monotonic() + 300
    while killed < kills and process.poll() is None and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.5))
        in_progress = [run for run in checkpoints.run_ids() if checkpoints.attempt_pids(run)]
        if not in_progress:
            continue
        pid = checkpoints.attempt_pids(rng.choice(in_progress))[-1]
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    _, err = process.communicate(timeout=600)
    problems = [] if process.returncode == 0 else [f"trial {trial}: exit {process.returncode}: {err[-2000:]}"]
    got = results_of(folder / f"{trial}.sqlite", list(expected))
    problems += [f"trial {trial}: run {i} differs or is missing" for i in expected if got.get(i) != expected[i]]
    print(f"trial {trial}: {killed} workers killed; {sum(got.get(i) == expected[i] for i in expected)}/{len(expected)} "
          "runs identical to the undisturbed sweep")  # fmt: skip
    return problems


def concurrent_trial(folder: Path, sweeps: int, expected: dict) -> list[str]:
    (folder / "counter.py").write_text(COUNTER)
    path = manifest(folder, "shared", '"local"', [str(folder / "counter.py"), str(SLOW_PLUGIN)])
    processes = [bnbench_process(path, sleep=0.01) for _ in range(sweeps)]
    for process in processes:
        process.communicate(timeout=900)
    trainings = Counter((folder / "starts.log").read_text().split())
    got = results_of(folder / "shared.sqlite", list(expected))
    problems = [f"run {i} trained {n} times" for i, n in trainings.items() if n != 1]
    problems += [f"run {i} differs or is missing" for i in expected if got.get(i) != expected[i]]
    print(f"{sweeps} concurrent sweeps: {sum(trainings.values())} trainings for {len(expected)} runs; "
          f"{sum(got.get(i) == expected[i] for i in expected)} identical to the undisturbed sweep")  # fmt: skip
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", choices=("pool", "ray"), default="pool")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="workers killed per trial")
    parser.add_argument("--sweeps", type=int, default=3, help="concurrent sweeps in the last trial (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    executor = {"pool": '{ name = "pool", workers = 2 }', "ray": '{ name = "ray", num_cpus = 1 }'}[args.executor]
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference = manifest(folder, "reference", '"local"', [])
        subprocess.run([sys.executable, "-m", "bnbench", "run", str(reference), "--no-report"], check=True,
                       capture_output=True)  # fmt: skip
        ids = [r.run_id for r in open_session(reference).manifest.runs()]
        expected = results_of(folder / "reference.sqlite", ids)
        for trial in range(args.trials):
            problems += kill_trial(folder, executor, args.kills, rng, expected, trial)
        if args.sweeps:
            problems += concurrent_trial(folder, args.sweeps, expected)
    print("\n".join(problems) if problems else "every run ended exactly as in the undisturbed sweep")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Kill-and-resume soak: SIGKILL a bnbench sweep at random times, check the store after every
kill, then finish the sweep and compare with an uninterrupted one, bitwise.

    python benchmarks/kill_resume.py --trials 50

Prints how many kills landed, how many left a run mid-way, and whether any result was lost
or differed. Exit status 1 if anything was lost, corrupted or different.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_reliability import (
    assert_store_consistent,
    bnbench_process,
    deterministic_manifest,
    results_of,
    with_slow_plugin,
)

from harness.manifest import load_manifest


def _running(store: Path) -> bool:
    if not store.is_file():
        return False
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-delay", type=float, default=2.0, help="kill within this many seconds of the first run starting"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference_path = folder / "reference.toml"
        reference_path.write_text(deterministic_manifest("reference.sqlite", seeds="[0, 1, 2]"))
        subprocess.run(
            [sys.executable, "-m", "harness", "run", str(reference_path), "--no-report"],
            check=True,
            capture_output=True,
        )
        ids = [r.run_id for r in load_manifest(reference_path).runs()]
        expected = results_of(folder / "reference.sqlite", ids)

        path = folder / "manifest.toml"
        path.write_text(with_slow_plugin(deterministic_manifest("results.sqlite", seeds="[0, 1, 2]")))
        store = folder / "results.sqlite"
        kills = midway = 0
        for trial in range(args.trials):
            if trial % 3 == 0:  # start over now and then, so that kills land at every stage
                for leftover in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
                    leftover.unlink(missing_ok=True)
            process = bnbench_process(path, sleep=0.01)
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline and not _running(store):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, args.max_delay))
            if process.poll() is None:
                process.kill()
                kills += 1
            process.wait()
            if store.is_file():
                assert_store_consistent(store)
                with sqlite3.connect(store) as db:
                    midway += db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] > 0
        final = subprocess.run(
            [sys.executable, "-m", "harness", "run", str(path), "--no-report"], capture_output=True, text=True
        )
        got = results_of(store, ids) if final.returncode == 0 else {}
        identical = final.returncode == 0 and got == expected
        if final.returncode != 0:
            print(f"the final run failed ({final.returncode}):\n{final.stderr[-3000:]}")
        for run_id in ids if final.returncode == 0 else []:
            if got.get(run_id) != expected[run_id]:
                print(f"run {run_id} differs:\n  got      {got.get(run_id)}\n  expected {expected[run_id]}")
    print(f"trials: {args.trials}, SIGKILLs delivered: {kills}, kills that left a run mid-way: {midway}")
    print(
        f"store consistent after every kill: yes; final results identical to an uninterrupted sweep: "
        f"{'yes' if identical else 'NO'}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

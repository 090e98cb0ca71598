"""Fault soak: hurt a bnbench sweep the ways a failing machine or a hurried user would, check the
store after every fault, and compare what is left with an uninterrupted sweep, bitwise.

    python benchmarks/kill_resume.py --trials 20                  # every fault below
    python benchmarks/kill_resume.py --faults kill --trials 50    # only random SIGKILLs

Faults (``--faults``, comma-separated):

- ``kill``: SIGKILL ``bnbench run`` at a random time after a run starts; finish the sweep at the end.
- ``rerun``: SIGKILL ``bnbench run --rerun`` of a finished sweep at a random time; count the final
  results left after each kill (the old ones must stay until replaced), then let a rerun finish.
- ``wal``: SIGKILL a sweep, then copy only the ``.sqlite`` file (what a user backs up or sends),
  without its ``-wal``/``-shm``; count the results the copy holds against the store with its log.
- ``read-only``: put a finished store on a read-only bind mount (needs root; skipped otherwise);
  ``plan`` and ``report`` must succeed and write nothing.

Prints a table: fault, trials, faults delivered, results lost, and what each fault cost. Exit
status 1 if any result was lost, corrupted or different.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tabulate import tabulate
from test_reliability import (
    assert_store_consistent,
    bnbench_process,
    deterministic_manifest,
    results_of,
    with_slow_plugin,
)

from bnbench.session import open_session

FAULTS = ("kill", "rerun", "wal", "read-only")
SEEDS = "[0, 1, 2]"
STEP_SLEEP = 0.05
"""Seconds added to each training step: 16 steps a run, so a sweep of 3 runs lasts about 3 s."""


def _count(store: Path, status: str) -> int:
    """Runs of ``status`` in ``store`` as SQLite sees it with its log (0 when unreadable)."""
    if not store.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM runs WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _fresh(store: Path) -> None:
    for leftover in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(store.with_name(store.name + ".checkpoints"), ignore_errors=True)


def _claimed_since(store: Path, since: float) -> bool:
    """Whether a sweep has claimed a run (a fresh one, or a finished one it reruns) since ``since``."""
    if not store.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
            query = "SELECT count(*) FROM runs WHERE owner IS NOT NULL AND updated_at > ?"
            return db.execute(query, (since,)).fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _kill_at_random(path: Path, store: Path, rng: random.Random, max_delay: float, rerun: bool = False) -> bool:
    """Start a sweep, wait until it claims a run, SIGKILL it after a random delay: whether it was
    still running when the kill came."""
    started = time.time()
    process = bnbench_process(path, sleep=STEP_SLEEP, extra=("--rerun",) if rerun else ())
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline and not _claimed_since(store, started):
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, max_delay))
    killed = process.poll() is None
    if killed:
        process.kill()
    process.wait()
    return killed


def _finish(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--no-report", *extra], capture_output=True, text=True
    )


def _resumed(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        infos = [json.loads(row[0] or "{}") for row in db.execute("SELECT info FROM runs WHERE status = 'done'")]
    return sum(1 for info in infos if info.get("resumed_from_step"))


def _compare(store: Path, ids: list[str], expected: dict) -> int:
    """Runs whose final result is missing or differs from the uninterrupted sweep's."""
    got = results_of(store, ids)
    differing = [run_id for run_id in ids if got.get(run_id) != expected[run_id]]
    for run_id in differing:
        print(f"run {run_id} differs:\n  got      {got.get(run_id)}\n  expected {expected[run_id]}")
    return len(differing)


def fault_kill(path: Path, store: Path, ids: list[str], expected: dict, args, rng) -> list:
    kills = midway = resumed = 0
    for trial in range(args.trials):
        if trial % 3 == 0:  # start over now and then, so that kills land at every stage
            _fresh(store)
        kills += _kill_at_random(path, store, rng, args.max_delay)
        if store.is_file():
            assert_store_consistent(store)
            midway += _count(store, "running") > 0
        if trial % 3 == 2 or trial == args.trials - 1:
            final = _finish(path)
            if final.returncode != 0:
                print(f"the final run failed ({final.returncode}):\n{final.stderr[-3000:]}")
                return ["kill", args.trials, kills, "?", "the resuming sweep failed"]
            resumed += _resumed(store)
    lost = _compare(store, ids, expected)
    return [
        "kill",
        args.trials,
        kills,
        lost,
        f"{midway} kills left a run mid-way; {resumed} results resumed from a checkpoint, bitwise equal to "
        "an uninterrupted sweep",
    ]


def fault_rerun(path: Path, store: Path, ids: list[str], expected: dict, args, rng) -> list:
    _fresh(store)
    _finish(path)
    kills, fewest = 0, len(ids)
    for _ in range(args.trials):
        kills += _kill_at_random(path, store, rng, args.max_delay, rerun=True)
        assert_store_consistent(store)
        fewest = min(fewest, sum(_count(store, status) for status in ("done", "diverged")))
    final = _finish(path, "--rerun")
    lost = len(ids) - fewest + (_compare(store, ids, expected) if final.returncode == 0 else len(ids))
    return [
        "rerun kill",
        args.trials,
        kills,
        lost,
        f"final results after every kill: at least {fewest} of {len(ids)}; the killed rerun starts over",
    ]


def fault_wal(path: Path, store: Path, ids: list[str], expected: dict, args, rng) -> list:
    kills = lost = held = total = 0
    copy = store.with_name("copy.sqlite")
    for _ in range(args.trials):
        _fresh(store)
        kills += _kill_at_random(path, store, rng, args.max_delay)
        with_log = _count(store, "done")
        copy.unlink(missing_ok=True)
        if store.is_file():
            shutil.copy(store, copy)  # the file alone, as a user backs it up
        in_copy = _count(copy, "done")
        lost += max(0, with_log - in_copy)
        held += in_copy
        total += with_log
    return [
        "WAL loss",
        args.trials,
        kills,
        lost,
        f"the copied file alone held {held} of the {total} results its store had with its log",
    ]


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[Path | None]:
    """``folder`` bind-mounted read-only (None where mounting is not allowed)."""
    target = folder.with_name(folder.name + "-ro")
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(folder), str(target)], capture_output=True).returncode == 0
    try:
        if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True).returncode:
            yield None
        else:
            yield target if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], capture_output=True)
        target.rmdir()


def fault_read_only(path: Path, store: Path, ids: list[str], expected: dict, args, rng) -> list:
    _fresh(store)
    _finish(path)
    with read_only_mount(path.parent) as mounted:
        if mounted is None:
            return ["read-only store", 0, 0, "-", "skipped: a read-only bind mount needs root"]
        before = sorted(os.listdir(path.parent))
        codes = [
            subprocess.run(
                [sys.executable, "-m", "bnbench", command, str(mounted / path.name)], capture_output=True, text=True
            )
            for command in ("plan", "report")
            for _ in range(args.trials)
        ]
        failures = [c for c in codes if c.returncode != 0]
        for failed in failures[:1]:
            print(f"on a read-only mount: exit {failed.returncode}: {failed.stderr[-500:]}")
        written = sorted(set(os.listdir(path.parent)) - set(before))
    lost = len(failures) and len(ids)
    return [
        "read-only store",
        len(codes),
        len(codes),
        lost,
        f"plan and report exit 0 in {len(codes) - len(failures)} of {len(codes)}; files written: {len(written)}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="faults of each kind")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-delay", type=float, default=2.0, help="kill within this many seconds of the first run starting"
    )
    args = parser.parse_args()
    chosen = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference_path = folder / "reference.toml"
        reference_path.write_text(deterministic_manifest("reference.sqlite", seeds=SEEDS))
        subprocess.run(
            [sys.executable, "-m", "bnbench", "run", str(reference_path), "--no-report"],
            check=True,
            capture_output=True,
        )
        ids = [r.run_id for r in open_session(reference_path).manifest.runs()]
        expected = results_of(folder / "reference.sqlite", ids)
        sweep = folder / "sweep"
        sweep.mkdir()
        path = sweep / "manifest.toml"
        path.write_text(with_slow_plugin(deterministic_manifest("results.sqlite", seeds=SEEDS)))
        store = sweep / "results.sqlite"
        runners = {"kill": fault_kill, "rerun": fault_rerun, "wal": fault_wal, "read-only": fault_read_only}
        for fault in chosen:
            started = time.monotonic()
            row = runners[fault](path, store, ids, expected, args, rng)
            rows.append([*row, f"{time.monotonic() - started:.0f}"])
    print(
        tabulate(rows, headers=["fault", "trials", "delivered", "results lost", "what it cost", "s"], tablefmt="github")
    )
    return 1 if any(row[3] not in (0, "-") for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The SQLite results store: one row per run keyed by its spec hash, metrics per epoch.

Only the process driving a sweep writes the store. A run is written ``running`` when it
starts and gets its final status, timings and every epoch's metrics in one transaction
when it ends, so a run interrupted midway is never recorded as done.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from bnbench.errors import StoreError
from bnbench.records import FINISHED, EpochRecord, PlannedRun, RunRecord, RunResult

SCHEMA_VERSION = 3

REGISTRATIONS = """CREATE TABLE IF NOT EXISTS registrations (
    key TEXT NOT NULL,
    study TEXT NOT NULL,
    hash TEXT NOT NULL,
    definition TEXT NOT NULL,
    registered_at REAL NOT NULL,
    results_before INTEGER NOT NULL,
    PRIMARY KEY (key, hash)
)"""

MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE runs ADD COLUMN measurements TEXT"],
    3: [REGISTRATIONS],
}
READABLE_VERSIONS = (2, 3)
"""Versions a read-only command reads as they are (a version-2 store has no registrations)."""
"""Version → the statements that bring a store of the version before it up to it."""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    duration_s REAL,
    diverged_step INTEGER,
    error TEXT,
    environment TEXT,
    info TEXT,
    measurements TEXT,
    owner TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_runs (
    study TEXT NOT NULL,
    run_id TEXT NOT NULL,
    axes TEXT NOT NULL,
    PRIMARY KEY (study, run_id)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, name)
);
"""
    + REGISTRATIONS
    + ";"
)


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged (not merely busy, locked or unreadable)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text


def damaged(path: Path, detail: str) -> str:
    """The one line every command gives for a damaged store."""
    return f"results store {path} is damaged ({detail}): restore it from a copy, or move it aside to start afresh"


def definition_hash(definition: dict[str, Any]) -> str:
    """The hash a claim's definition is registered under (SHA-256 of its sorted JSON)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str, updated_at: float, stale_after: float) -> bool:
    """Whether the process that claimed a run may still be running it."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return time.time() - updated_at < stale_after
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SQLITE_MAGIC = b"SQLite format 3\x00"


def is_store_file(path: Path) -> bool:
    """Whether ``path`` is a SQLite database file (by its header), as a results store is."""
    try:
        with Path(path).open("rb") as file:
            return file.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def read_statuses(path: Path, run_ids: Iterable[str]) -> dict[str, str]:
    """The recorded status of each run that has one, read without writing anything (no store
    yet: none)."""
    if not path.is_file():
        return {}
    with Store(path, read_only=True) as store:
        return store.statuses(run_ids)


@contextmanager
def _creation_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the store's folder (``flock``), held by a sweep while it creates a store
    (file and schema) and taken by one that finds a store without its schema before refusing it:
    a sweep starting beside another never mistakes a store being created for a foreign file."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): creation races are not guarded
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _create_schema(db: sqlite3.Connection) -> None:
    """The current schema in an empty database, with its version."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


class Store:
    """Open (creating if needed) the store at ``path``."""

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        """``read_only``: for commands that only read (``plan``, ``report``): never writes, creates or
        migrates, so it works on a read-only file and leaves any file it is pointed at as it was."""
        self.path = Path(path)
        if (read_only or not create) and not self.path.is_file():
            raise StoreError(f"results store {self.path} does not exist")
        if read_only:
            self._open_read_only()
            return
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with nullcontext() if existed else _creation_lock(self.path.parent):
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                if existed:
                    self._check_integrity()
                with self.transaction():
                    unmade = existed and self._schema_version() is None
                    if not unmade:
                        self._create_or_migrate()
            if unmade:
                # Another sweep may have made the file and not yet its schema: it holds the creation
                # lock until the schema is committed. Wait for it (outside the write lock it needs).
                with _creation_lock(self.path.parent):
                    if self._schema_version() is None:
                        raise StoreError(self._no_schema())
                with self.transaction():
                    self._create_or_migrate()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise StoreError(damaged(self.path, str(exc))) from exc
            if not os.access(self.path.parent, os.W_OK) or (existed and not os.access(self.path, os.W_OK)):
                raise StoreError(f"cannot write results store {self.path}: permission denied ({exc})") from exc
            raise StoreError(f"cannot open results store {self.path}: {exc} (in use by a stuck process?)") from exc
        except OSError as exc:
            raise StoreError(f"cannot create results store {self.path}: {exc.strerror} ({exc.filename})") from exc

    def _check_integrity(self) -> None:
        """SQLite's ``quick_check`` (every page read, indexes not cross-checked): a damaged store is
        refused before anything runs on it, with the line ``report`` gives."""
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreError(damaged(self.path, "; ".join(problems)))

    def _no_schema(self) -> str:
        wal = Path(f"{self.path}-wal")
        if self.path.stat().st_size <= 4096 and not wal.exists():
            return (
                f"{self.path} is not a bnbench results store: it holds no tables. If it was copied while a sweep "
                f"was running, its results are in its write-ahead log {wal.name}, which is missing: copy both files"
            )
        return f"{self.path} is not a bnbench results store"

    def _open_read_only(self) -> None:
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"cannot read results store {self.path}: permission denied")
        # a store with no write-ahead log beside it (closed cleanly) opens immutable: no -wal or -shm
        # file is created (plan and report only read) and it works on read-only media; a store a sweep
        # is writing opens read-only and sees its latest results
        live = Path(f"{self.path}-wal").exists()
        mode = "mode=ro" if live else "immutable=1"
        try:
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{mode}", uri=True, timeout=30)
            version = self._schema_version()
            if version is not None:
                self._check_integrity()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise StoreError(damaged(self.path, str(exc))) from exc
            if live and not os.access(self.path.parent, os.W_OK):
                # read-only media with a log beside the file: the file alone (results are folded into it as
                # they are recorded; a result recorded just before the medium turned read-only may be missing)
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True, timeout=30)
                version = self._schema_version()
            else:
                raise StoreError(f"cannot read results store {self.path}: {exc}") from exc
        if version is None:
            raise StoreError(self._no_schema())
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"results store {self.path} has schema version {version}; this bnbench reads {SCHEMA_VERSION}"
                + (" (`bnbench run` migrates it; this command only reads)" if version < SCHEMA_VERSION else "")
            )

    def _schema_version(self) -> int | None:
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def _create_or_migrate(self) -> None:
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            _create_schema(self.db)
            return
        version = self._schema_version() or 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} has schema version {version}, newer than this "
                f"bnbench understands ({SCHEMA_VERSION}); upgrade bnbench to read it"
            )
        if version < 1:
            raise StoreError(f"{self.path} is not a bnbench results store (no schema version)")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                self.db.execute(statement)
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------
    def link(self, runs: Iterable[PlannedRun]) -> None:
        """Record which study each run belongs to, with its axis values (for reports)."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO study_runs VALUES (?, ?, ?)",
                [(r.study, r.run_id, json.dumps(r.axes, sort_keys=False)) for r in runs],
            )

    def register(self, tests: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Pre-register claims and checks as ``(key, study, definition)``: each definition not yet
        recorded under its key is recorded with its hash, the time, and how many finished results
        of its study the store held then (0: registered before any result, a tested prediction)."""
        with self.transaction():
            for key, study, definition in tests:
                digest = definition_hash(definition)
                if self.db.execute("SELECT 1 FROM registrations WHERE key = ? AND hash = ?", (key, digest)).fetchone():
                    continue
                self.db.execute(
                    "INSERT INTO registrations VALUES (?, ?, ?, ?, ?, ?)",
                    (key, study, digest, json.dumps(definition, sort_keys=True), time.time(), self.finished_in(study)),
                )

    def registrations(self) -> dict[tuple[str, str], tuple[float, int]]:
        """``(key, hash)`` → ``(registered at, finished results of its study then)``."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'registrations'").fetchone():
            return {}
        rows = self.db.execute("SELECT key, hash, registered_at, results_before FROM registrations")
        return {(key, digest): (at, before) for key, digest, at, before in rows}

    def finished_in(self, study: str) -> int:
        """How many finished results the store holds of ``study``."""
        finished = ",".join(f"'{status}'" for status in FINISHED)
        (count,) = self.db.execute(
            "SELECT count(*) FROM study_runs JOIN runs ON runs.id = study_runs.run_id "
            f"WHERE study_runs.study = ? AND runs.status IN ({finished})",
            (study,),
        ).fetchone()
        return int(count)

    def claim(
        self, planned: PlannedRun, *, stale_after: float = 3600.0, replace_finished_before: float | None = None
    ) -> str | None:
        """Claim a run for this process: status ``running``, old epochs dropped. Atomic.

        Returns None when claimed, or why not: the owner of a live claim by another process (a
        run being run elsewhere right now), or ``"finished: <status>"`` for a run that already
        has a final result (``done`` or ``diverged``), which is never taken over, so two sweeps
        over one store train each run once. ``replace_finished_before`` (a ``--rerun`` sweep's
        start time) replaces a result finished before then, but not one another sweep finished
        since. A claim whose owner is dead (same host: its pid is gone; other host: no
        heartbeat for ``stale_after`` seconds) is taken over.
        """
        me = _owner()
        now = time.time()
        with self.transaction():
            row = self.db.execute(
                "SELECT status, owner, updated_at, finished_at FROM runs WHERE id = ?", (planned.run_id,)
            ).fetchone()
            if row is not None:
                status, owner, updated_at, finished_at = row
                replaceable = replace_finished_before is not None and (finished_at or 0) < replace_finished_before
                taken = bool(owner) and owner != me and _alive(owner, updated_at, stale_after)
                if status in FINISHED and taken:
                    return owner  # being rerun by another sweep: its old result stays until the new one
                if status in FINISHED and not replaceable:
                    return f"finished: {status}"
                if status in FINISHED:
                    # a rerun keeps the old result (status, epochs) until ``record`` replaces it in one
                    # transaction: a kill at any moment leaves the old result or the new, never neither
                    self.db.execute("UPDATE runs SET owner = ?, updated_at = ? WHERE id = ?", (me, now, planned.run_id))
                    return None
                if status == "running" and taken:
                    return owner
            self.db.execute("DELETE FROM epochs WHERE run_id = ?", (planned.run_id,))
            self.db.execute(
                """INSERT INTO runs (id, spec, status, started_at, owner, updated_at)
                   VALUES (?, ?, 'running', ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET status='running', started_at=excluded.started_at,
                     finished_at=NULL, duration_s=NULL, diverged_step=NULL, error=NULL,
                     owner=excluded.owner, updated_at=excluded.updated_at""",
                (planned.run_id, planned.spec.canonical_json(), now, me, now),
            )
        return None

    def heartbeat(self, run_id: str) -> None:
        """Show that this process is still working on its claimed run."""
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET updated_at = ? WHERE id = ? AND owner = ?", (time.time(), run_id, _owner())
            )

    def mark_interrupted(self, run_id: str) -> None:
        """A stopped run: ``interrupted``, unowned; a stopped rerun keeps its old final result."""
        finished = ",".join(f"'{status}'" for status in FINISHED)
        with self.transaction():
            self.db.execute(
                f"UPDATE runs SET status = CASE WHEN status IN ({finished}) THEN status ELSE 'interrupted' END, "
                "owner = NULL, updated_at = ? WHERE id = ? AND (owner = ? OR owner IS NULL)",
                (time.time(), run_id, _owner()),
            )

    def live_owners(self, run_ids: Iterable[str], stale_after: float = 3600.0) -> dict[str, str]:
        """Run id → the live process (not this one) that owns it: running it, or rerunning a finished one."""
        me = _owner()
        ids = list(run_ids)
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT id, owner, updated_at FROM runs WHERE owner IS NOT NULL AND id IN ({marks})", chunk
            )
            found.update({i: o for i, o, at in rows if o != me and _alive(o, at, stale_after)})
        return found

    def record(self, planned: PlannedRun, result: RunResult) -> None:
        """Write a run's result and all its epochs in one transaction. A rerun that did not finish
        (``failed``) leaves the run's previous final result in place: it only gives up the claim."""
        with self.transaction():
            row = self.db.execute("SELECT status FROM runs WHERE id = ?", (result.run_id,)).fetchone()
            if row is not None and row[0] in FINISHED and result.status not in FINISHED:
                self.db.execute(
                    "UPDATE runs SET owner = NULL, updated_at = ? WHERE id = ?", (time.time(), result.run_id)
                )
                return
            self.db.execute("DELETE FROM epochs WHERE run_id = ?", (result.run_id,))
            self.db.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?)",
                [
                    (result.run_id, e.epoch, e.step, name, value)
                    for e in result.epochs
                    for name, value in e.metrics.items()
                ],
            )
            self.db.execute(
                """INSERT INTO runs (id, spec, status, started_at, finished_at, duration_s,
                     diverged_step, error, environment, info, measurements, owner, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
                   ON CONFLICT(id) DO UPDATE SET spec=excluded.spec, status=excluded.status,
                     started_at=excluded.started_at, finished_at=excluded.finished_at,
                     duration_s=excluded.duration_s, diverged_step=excluded.diverged_step,
                     error=excluded.error, environment=excluded.environment, info=excluded.info,
                     measurements=excluded.measurements, owner=NULL, updated_at=excluded.updated_at""",
                (
                    result.run_id,
                    planned.spec.canonical_json(),
                    result.status,
                    result.started_at,
                    result.finished_at,
                    result.duration_s,
                    result.diverged_step,
                    result.error,
                    json.dumps(result.environment),
                    json.dumps(result.info),
                    json.dumps(result.measurements) if result.measurements else None,
                    time.time(),
                ),
            )
        # fold the write-ahead log into the main file as results are recorded: a copy of the file
        # alone (a backup, a file sent after a kill) holds every finished result
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- reading -------------------------------------------------------------------------
    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT id, status FROM runs WHERE id IN ({marks})", chunk).fetchall())
        return found

    def studies(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Study name → ``(run id, axes)`` of its runs, as linked by the sweeps that ran them."""
        result: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for study, run_id, axes in self.db.execute("SELECT study, run_id, axes FROM study_runs ORDER BY rowid"):
            result.setdefault(study, []).append((run_id, json.loads(axes)))
        return result

    def load_studies(
        self, only: Iterable[str] | None = None
    ) -> Iterator[tuple[str, list[str], list[tuple[str, dict[str, Any]]], dict[str, RunRecord]]]:
        """Each study the store has runs of (or each of ``only``): its name, its axes (in the order
        they first appear), its runs as linked ``(run id, axes)``, and the stored ones by id with
        their axes set."""
        wanted = None if only is None else set(only)
        for name, members in self.studies().items():
            if wanted is not None and name not in wanted:
                continue
            stored = self.load(run_id for run_id, _ in members)
            axes: list[str] = []
            for _, run_axes in members:
                axes += [a for a in run_axes if a not in axes]
            records = {
                run_id: replace(stored[run_id], axes=run_axes) for run_id, run_axes in members if run_id in stored
            }
            yield name, axes, members, records

    def load(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        """The stored runs among ``run_ids`` (absent ids are left out), with their epochs. Their
        ``axes`` are empty: a run's axis values belong to a study (``studies()``)."""
        ids = list(dict.fromkeys(run_ids))
        runs: dict[str, RunRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                "SELECT id, spec, status, duration_s, diverged_step, error, environment, info, measurements "
                f"FROM runs WHERE id IN ({marks})",
                chunk,
            ):
                spec = json.loads(row[1])
                runs[row[0]] = RunRecord(
                    run_id=row[0],
                    axes={},
                    seed=int(spec.get("seed", 0)),
                    spec=spec,
                    status=row[2],
                    duration_s=row[3],
                    diverged_step=row[4],
                    error=row[5],
                    environment=json.loads(row[6] or "{}"),
                    info=json.loads(row[7] or "{}"),
                    measurements=json.loads(row[8] or "{}"),
                    epochs=[],
                )
            by_epoch: dict[tuple[str, int], tuple[int, dict[str, float]]] = {}
            for run_id, epoch, step, name, value in self.db.execute(
                f"SELECT run_id, epoch, step, name, value FROM epochs WHERE run_id IN ({marks}) ORDER BY run_id, epoch",
                chunk,
            ):
                by_epoch.setdefault((run_id, epoch), (step, {}))[1][name] = value
            for (run_id, epoch), (step, metrics) in sorted(by_epoch.items()):
                if run_id in runs:
                    runs[run_id].epochs.append(EpochRecord(epoch, step, metrics))
        return runs

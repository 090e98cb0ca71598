"""Checkpoints of runs in progress: written atomically, checksummed, loaded safely, damaged ones skipped.

A run's checkpoints live in ``<directory>/<run id>/step-<step>.pt``; the newest ``keep`` are
kept so that a damaged newest one falls back to the one before. Files are written to a
temporary name, fsynced and renamed; each starts with a line carrying the SHA-256 of the rest,
verified before anything is unpickled (a flipped bit inside a weight is caught, not resumed
from), and is read with ``torch.load(weights_only=True)``, which unpickles only tensors and
plain containers. A damaged checkpoint, or one that does not fit the run, is renamed
``*.corrupt`` (kept for inspection, never deleted first) and the next older one is tried.

Beside them, ``<run id>/attempts`` has one line per process that started or resumed the run
in the current sweep (host, pid, time): executors that retry a run whose worker died count
its attempts there, and a test or an operator can see which process holds a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
ATTEMPTS = "attempts"
"""The file, in a run's checkpoint folder, that logs the processes that started the run."""
MAGIC = b"bnbench-checkpoint sha256="
"""The first line of a checkpoint file: MAGIC, the hex SHA-256 of the rest of the file, a newline."""


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a run draws from: torch (CPU, CUDA), python, numpy, its own generators."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        kind, keys, pos, has_gauss, gauss = numpy.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    except ImportError:
        pass
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        try:
            import numpy

            kind, keys, pos, has_gauss, gauss = state["numpy"]
            numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        except ImportError:
            pass


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: Path) -> Any:
    """Load a checkpoint file after verifying its checksum. A file without one (not written by
    bnbench, or edited) is refused: a run never resumes from unverified weights."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("it has no checksum line, so its content cannot be verified")
    header, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC) :]:
        raise ValueError("its checksum does not match: the file is damaged")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's several-line "Weights only load failed" as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"it does not load as a checkpoint ({first})") from None


class Checkpoints:
    """The checkpoints of every run of one results store."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = directory
        self.keep = max(1, keep)

    @classmethod
    def beside(cls, results_path: Path) -> Checkpoints:
        """The checkpoints of a results store's runs: in a folder beside the store."""
        return cls(results_path.with_name(results_path.name + ".checkpoints"))

    def _run_dir(self, run_id: str) -> Path:
        if not run_id.isalnum():
            raise ValueError(f"invalid run id {run_id!r}")
        return self.directory / run_id

    def check_writable(self) -> None:
        """Create the directory and write a file in it, or raise ``OSError`` saying why not."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    def files(self, run_id: str) -> list[Path]:
        """The run's checkpoint files, newest first."""
        folder = self._run_dir(run_id)
        if not folder.is_dir():
            return []
        return sorted(folder.glob("step-*.pt"), reverse=True)

    def save(self, run_id: str, state: dict[str, Any]) -> Path:
        """Write ``state`` atomically, with its checksum, as the run's newest checkpoint; prune older ones."""
        folder = self._run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{state['step']:010d}.pt"
        temporary = folder / f".{path.name}.{os.getpid()}.tmp"
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "run_id": run_id, **state}, buffer)
        payload = buffer.getvalue()
        with temporary.open("wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(folder)
        for old in self.files(run_id)[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def candidates(self, run_id: str, warn: Callable[[str], None]) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The run's intact checkpoints, newest first, as ``(path, state)``. Damaged ones (a checksum
        that does not match, a file that does not unpickle, another run's) are reported and set aside."""
        for path in self.files(run_id):
            try:
                state = read_checkpoint(path)
                if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("run_id") != run_id:
                    raise ValueError("not a checkpoint of this run")
            except Exception as exc:
                self.reject(path, f"is unreadable ({type(exc).__name__}: {exc})", warn)
                continue
            yield path, state

    def load_latest(self, run_id: str, warn: Callable[[str], None]) -> dict[str, Any] | None:
        """The newest intact checkpoint of the run, or None."""
        return next((state for _, state in self.candidates(run_id, warn)), None)

    @staticmethod
    def reject(path: Path, reason: str, warn: Callable[[str], None]) -> None:
        """Set a checkpoint aside as ``*.corrupt`` (kept, not deleted) and say why."""
        warn(f"checkpoint {path} {reason}; trying an older one")
        path.rename(path.with_suffix(".corrupt"))

    def begin_attempt(self, run_id: str) -> int:
        """Note that this process starts (or resumes) the run; its attempt number in this sweep."""
        folder = self._run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ATTEMPTS).open("a") as log:  # one short append: atomic between processes
            log.write(f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n")
        return self.attempts(run_id)

    def attempts(self, run_id: str) -> int:
        """How many processes started or resumed the run in this sweep (0: none yet)."""
        try:
            return len((self._run_dir(run_id) / ATTEMPTS).read_text().splitlines())
        except OSError:
            return 0

    def attempt_pids(self, run_id: str) -> list[int]:
        """The process ids of the run's attempts on this host, oldest first."""
        try:
            lines = (self._run_dir(run_id) / ATTEMPTS).read_text().splitlines()
        except OSError:
            return []
        host = socket.gethostname()
        return [int(f[1]) for f in map(str.split, lines) if len(f) == 3 and f[0] == host and f[1].isdigit()]

    def reset_attempts(self, run_id: str) -> None:
        """Start counting the run's attempts afresh (a new sweep claimed it)."""
        with contextlib.suppress(OSError):
            (self._run_dir(run_id) / ATTEMPTS).unlink()

    def run_ids(self) -> list[str]:
        """The runs that have a checkpoint folder."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and p.name.isalnum())

    def discard(self, run_id: str) -> None:
        """Remove the run's checkpoints (once its result is recorded). A file another process
        writes meanwhile keeps the folder; it is removed on a later discard, never an error."""
        folder = self._run_dir(run_id)
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()

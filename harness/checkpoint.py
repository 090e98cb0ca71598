"""Checkpoints of runs in progress: written atomically, loaded safely, corrupt ones skipped.

A run's checkpoints live in ``<directory>/<run id>/step-<step>.pt``; the newest ``keep`` are
kept so that a corrupt newest one falls back to the one before. Files are written to a
temporary name, fsynced and renamed, and read with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


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


class Checkpoints:
    """The checkpoints of every run of one results store."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = directory
        self.keep = max(1, keep)

    def _run_dir(self, run_id: str) -> Path:
        if not run_id.isalnum():
            raise ValueError(f"invalid run id {run_id!r}")
        return self.directory / run_id

    def files(self, run_id: str) -> list[Path]:
        """The run's checkpoint files, newest first."""
        folder = self._run_dir(run_id)
        if not folder.is_dir():
            return []
        return sorted(folder.glob("step-*.pt"), reverse=True)

    def save(self, run_id: str, state: dict[str, Any]) -> Path:
        """Write ``state`` atomically as the run's newest checkpoint; prune older ones."""
        folder = self._run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{state['step']:010d}.pt"
        temporary = folder / f".{path.name}.{os.getpid()}.tmp"
        with temporary.open("wb") as f:
            torch.save({"format": FORMAT, "run_id": run_id, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(folder)
        for old in self.files(run_id)[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, run_id: str, warn: Callable[[str], None]) -> dict[str, Any] | None:
        """The newest readable checkpoint of the run, or None. Unreadable ones are reported and skipped."""
        for path in self.files(run_id):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("run_id") != run_id:
                    raise ValueError("not a checkpoint of this run")
                return state
            except Exception as exc:
                warn(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying an older one")
                path.rename(path.with_suffix(".corrupt"))
        return None

    def discard(self, run_id: str) -> None:
        """Remove the run's checkpoints (once its result is recorded)."""
        folder = self._run_dir(run_id)
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            folder.rmdir()

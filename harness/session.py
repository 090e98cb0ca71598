"""A command's session: the one object that owns the plugins, the plan and the results store.

``bnbench run``, ``plan``, ``report`` and ``export`` open one session: the manifest is read and
expanded once, with the registry of plugins it was validated against, and that registry is the
one the plan (``bnbench.plan``), the sweep and the report use (never reloaded, never re-expanded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bnbench.manifest import Manifest, read_manifest
from bnbench.registry import Registry
from bnbench.store import Store


@dataclass(frozen=True)
class Session:
    """The plan of a manifest (a pure value) and the registry of plugins it names."""

    manifest: Manifest
    registry: Registry

    def store(self, *, read_only: bool = False) -> Store:
        """The manifest's results store (``read_only`` for commands that only read)."""
        return Store(self.manifest.results_path, read_only=read_only)


def open_session(
    path: str | Path,
    profile: str | None = None,
    *,
    registry: Registry | None = None,
    studies: list[str] | None = None,
    executor: str | None = None,
    trackers: list[str] | None = None,
) -> Session:
    """The manifest at ``path`` read, validated and expanded (``bnbench.manifest.read_manifest``):
    the one way a command or a program opens a manifest. Every problem is a ``ManifestError``."""
    manifest, registry = read_manifest(
        path, profile, registry=registry, studies=studies, executor=executor, trackers=trackers
    )
    return Session(manifest, registry)

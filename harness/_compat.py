"""``import harness``: the name bnbench's core had before it installed as ``bnbench``.

Third-party plugins written against it (``from harness import hookimpl``) keep working, with a
``DeprecationWarning`` naming the new import: bnbench imports before it loads any plugin, and
this finder, first on ``sys.meta_path``, answers ``harness`` and ``harness.<module>`` with the
``bnbench`` modules themselves (one module object per name, never a second copy). It answers only
while bnbench is imported, so no generic top-level ``harness`` module is installed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

OLD, NEW = "harness", "bnbench"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != OLD and not fullname.startswith(OLD + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = NEW + spec.name[len(OLD) :]
        if spec.name == OLD:
            warnings.warn(
                f"'import {OLD}' is deprecated: bnbench installs as '{NEW}' (write 'from {NEW} import ...')",
                DeprecationWarning,
                stacklevel=2,
            )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The bnbench module is already executed."""


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())

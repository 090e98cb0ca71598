"""Files bnbench writes for a user (reports, figures): whole or not at all, errors in one line."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bnbench.errors import BnbenchError


class OutputError(BnbenchError):
    """A file the user asked for cannot be written (a missing folder, a folder in its place, a full disk)."""

    exit_code = 2


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a kill or
    a full disk during the write leaves the previous file as it was, never a truncated one."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = None, None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            handle = None
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if handle is not None:
            os.close(handle)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

"""Errors the CLI turns into a clear message and an exit status instead of a traceback."""

from __future__ import annotations

import difflib
import traceback
from collections.abc import Iterable


class BnbenchError(Exception):
    """Base class of every error bnbench reports to the user without a traceback."""

    exit_code = 1


class ManifestError(BnbenchError):
    """A manifest (or a profile, or a plugin's options in it) is invalid.

    The message names the file, the study and the dotted field path, and what is allowed.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        study: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.study = study
        self.field = field
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.study:
            where.append(f"study {self.study!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail

    def located(self, *, file: str | None = None, study: str | None = None, field_prefix: str = "") -> ManifestError:
        """Return a copy with missing location parts filled in."""
        field = self.field
        if field_prefix:
            field = f"{field_prefix}.{field}" if field else field_prefix
        located = ManifestError(
            self.detail,
            file=self.file or file,
            study=self.study or study,
            field=field,
        )
        located.__cause__ = self.__cause__
        return located


class PluginError(BnbenchError):
    """A plugin failed to load, registered something invalid, or collided with another."""

    exit_code = 2


class UnknownNameError(ManifestError):
    """A manifest names a plugin component that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], note: str = "", **where: str | None) -> None:
        known = sorted(known)
        plural = "analyses" if kind == "analysis" else f"{kind}s"
        message = f"unknown {kind} {name!r}; registered {plural}: {', '.join(known) or '(none)'}."
        message += did_you_mean(name, known)
        if note:
            message += f" ({note})"
        self.kind = kind
        self.name = name
        super().__init__(message, **where)


class DatasetError(BnbenchError):
    """A dataset's files cannot be read: missing, truncated or of the wrong format."""

    exit_code = 3


class DatasetNotFoundError(DatasetError):
    """A dataset's files are missing and could not be downloaded."""


class StoreError(BnbenchError):
    """The results store cannot be opened or is of an unsupported version."""

    exit_code = 2


def terminal_text(text: object) -> str:
    """``text`` safe for a terminal: every character that is not printable (an escape sequence that
    could clear the screen or set the window title, a carriage return, a NUL) shown as its Python
    escape, line breaks and tabs kept. Every user-supplied string bnbench prints passes through it."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def error_text(exc: BaseException) -> str:
    """One line naming an exception, as failed results show it."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def failure_text(exc: BaseException) -> str:
    """A failed run's ``error``: the exception's line, then the traceback being handled."""
    return f"{error_text(exc)}\n\n{traceback.format_exc()}"

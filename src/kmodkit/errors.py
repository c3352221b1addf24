"""The one exception family of kmodkit.

Every error names the thing it is about (a file, a value, a kernel) and, where
it is known, the fix.  The CLI prints ``error: <subject>: <problem>; <fix>``
and exits with the class's :attr:`KmodkitError.exit_status`.

* :class:`UserError`: you asked for something wrong (a bad argument, a
  corrupt module file, a broken manifest).  Exit status 2.
* :class:`EnvironmentNotReady`: the machine is not ready (a tool, a kernel or
  its headers missing, a syscall refused).  Exit status 3.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import NamedTuple


class KmodkitError(Exception):
    """Root of every error kmodkit raises on purpose."""

    exit_status = 1

    def __init__(self, subject: str, problem: str, fix: str | None = None) -> None:
        super().__init__(subject, problem, fix)
        #: what the error is about: a path, a module name, a value
        self.subject = subject
        #: what is wrong with it
        self.problem = problem
        #: how to fix it, as an imperative sentence, or None when unknown
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.subject}: {self.problem}" if self.subject else self.problem
        return f"{text}; {self.fix}" if self.fix else text

    def to_json(self) -> dict[str, object]:
        """The error object of ``--json`` output (schema: src/kmodkit/cli/error.schema.json): what, why, fix, exit."""
        return error_object(self.subject, self.problem, self.fix, self.exit_status)


class UserError(KmodkitError):
    """You asked for something wrong: a bad value, path or file."""

    exit_status = 2


class ModuleFormatError(UserError):
    """A module file is not a well-formed kernel module (ELF, compression, trailer)."""


class NotFoundError(UserError):
    """A module, kernel or file that was named does not exist."""


class ConfigError(UserError):
    """A configuration file (manifest, modprobe.d) is malformed; the subject is FILE:LINE."""


class EnvironmentNotReady(KmodkitError):
    """The machine is not ready: a tool, a kernel, headers or a permission is missing."""

    exit_status = 3


class SyscallError(EnvironmentNotReady):
    """A system call failed; :attr:`errno` keeps the kernel's error number."""

    def __init__(self, subject: str, err: int, problem: str | None = None, fix: str | None = None) -> None:
        #: the errno the kernel returned
        self.errno = err
        name = _errno.errorcode.get(err, str(err))
        text = problem or os.strerror(err)
        super().__init__(subject, f"{text} ({name})", fix)


class ItemError(NamedTuple):
    """One item of a batch that failed while the batch went on (sign, info --summary, ...).

    The CLI prints it as ``error: PATH: MESSAGE; FIX``
    (:func:`kmodkit.cli.output.report_item`); JSON carries :meth:`to_json`.
    """

    path: str  #: the item as the user named it: a file, a module name
    message: str  #: what is wrong with it, one line
    fix: str | None = None  #: how to fix it, as an imperative sentence; None when unknown
    exit_status: int = UserError.exit_status  #: the status this failure alone exits with (2 or 3)

    @classmethod
    def from_error(cls, path: str, exc: KmodkitError) -> ItemError:
        """The record of ``exc`` raised for the item ``path`` (its subject kept when it names something else)."""
        message = exc.problem if exc.subject in ("", path) else f"{exc.subject}: {exc.problem}"
        return cls(path, message, exc.fix, exc.exit_status)

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text

    def error_json(self) -> dict[str, object]:
        """The error object of ``--json`` output (what, why, fix, exit), as :meth:`KmodkitError.to_json`."""
        return error_object(self.path, self.message, self.fix, self.exit_status)

    def to_json(self) -> dict[str, object]:
        """The record as JSON-ready data: ``{"path": PATH, "error": ERROR-OBJECT}``."""
        return {"path": self.path, "error": self.error_json()}


def error_object(what: str, why: str, fix: str | None, exit_status: int) -> dict[str, object]:
    """The one shape of an error in JSON (``--json``): ``{"what", "why", "fix", "exit"}``.

    ``what`` names the file, value or command; ``why`` says what is wrong; ``fix`` is None when unknown;
    ``exit`` is the status this error alone exits with.
    """
    return {"what": what, "why": why, "fix": fix, "exit": exit_status}


def from_oserror(exc: OSError, subject: str | None = None) -> KmodkitError:
    """Turn an :class:`OSError` about a named file into the matching kmodkit error."""
    what = subject or str(exc.filename or "")
    reason = exc.strerror or str(exc)
    if exc.errno in (_errno.ENOENT, _errno.ENOTDIR):
        return NotFoundError(what, reason.lower())
    if exc.errno == _errno.EISDIR:
        return UserError(what, "is a directory, expected a file")
    if exc.errno in (_errno.EACCES, _errno.EPERM):
        return EnvironmentNotReady(what, reason.lower(), "run as a user that may read it (root?)")
    return UserError(what, reason.lower())

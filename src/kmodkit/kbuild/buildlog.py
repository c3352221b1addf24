"""Kbuild logs: the compiler's and modpost's warnings and errors, as ``file:line: severity: message``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Severity(Enum):
    """How bad a diagnostic is."""

    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Diagnostic:
    """One warning or error from a build log."""

    file: str  #: the file it is about, relative to the project when inside it
    line: int | None  #: its line, None for a whole-file message (modpost)
    severity: Severity  #: warning or error
    message: str  #: the compiler's or modpost's message, without the location

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.severity.value}: {self.message}"


#: gcc/clang: FILE:LINE[:COL]: (warning|error|fatal error): MESSAGE
_CC = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+)(?::\d+)?: (?P<sev>warning|error|fatal error): (?P<msg>.*)$")
#: modpost: (ERROR|WARNING): modpost: MESSAGE   (the module named inside the message)
_MODPOST = re.compile(r"^(?P<sev>ERROR|WARNING): modpost: (?P<msg>.*)$")
#: make: *** [FILE:LINE: TARGET] Error N  -- only used when nothing else explains a failure
_MAKE = re.compile(r"^make(?:\[\d+\])?: \*\*\* (?P<msg>.*)$")


#: gcc's typographic quotes, for logs made under a UTF-8 locale
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'"})


def parse(log: str, workdir: Path | None = None) -> list[Diagnostic]:
    """Warnings and errors of a build log, in order, each once; paths in ``workdir`` made relative to it."""
    out: list[Diagnostic] = []
    seen: set[Diagnostic] = set()
    prefix = f"{workdir}/" if workdir else None
    make_errors: list[str] = []
    for line in log.splitlines():
        line = line.translate(_QUOTES)
        m = _CC.match(line)
        if m:
            path = m.group("file")
            if prefix and path.startswith(prefix):
                path = path[len(prefix):]
            d = Diagnostic(path, int(m.group("line")),
                           Severity.WARNING if m.group("sev") == "warning" else Severity.ERROR, m.group("msg"))
        else:
            m = _MODPOST.match(line)
            if not m:
                mm = _MAKE.match(line)
                if mm:
                    make_errors.append(mm.group("msg"))
                continue
            msg = m.group("msg")
            if prefix:
                msg = msg.replace(prefix, "")
            d = Diagnostic("modpost", None, Severity.ERROR if m.group("sev") == "ERROR" else Severity.WARNING, msg)
        if d not in seen:
            seen.add(d)
            out.append(d)
    if make_errors and not any(d.severity is Severity.ERROR for d in out):
        msg = make_errors[0].replace(prefix, "") if prefix else make_errors[0]
        out.append(Diagnostic("make", None, Severity.ERROR, msg))
    return out

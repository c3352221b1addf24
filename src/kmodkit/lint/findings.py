"""The records every lint check shares: what it looks at (:class:`ModuleSources`) and what it finds."""

from __future__ import annotations

from dataclasses import dataclass

from kmodkit.lint.source import SourceFile


@dataclass(frozen=True)
class LintFinding:
    """One rule broken at one place."""

    file: str  #: the file, as named
    line: int  #: 1-based line
    rule: str  #: the rule's id
    message: str  #: what is wrong there

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"

    def to_json(self) -> dict[str, object]:
        """The finding as a JSON object."""
        return {"file": self.file, "line": self.line, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class ModuleSources:
    """What the checks look at: a module's parsed sources and what they are checked against."""

    name: str  #: the module's name (export prefix)
    sources: tuple[SourceFile, ...]  #: its C files
    gpl_only: frozenset[str] | None  #: GPL-only symbols of the target kernel, None when unknown
    headers: tuple[SourceFile, ...] = ()  #: the project's headers its sources include ("..."), directly or not

    def calls(self, *names: str) -> list[tuple[SourceFile, object]]:
        """(file, MacroCall) of every file-scope call to one of ``names``."""
        return [(s, c) for s in self.sources for c in s.calls if c.name in names]

"""The :class:`Linter`: which files make up a module, what they are checked against, and the findings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodkit.errors import NotFoundError, UserError, from_oserror
from kmodkit.lint.checks import CHECKS
from kmodkit.lint.findings import LintFinding, ModuleSources
from kmodkit.lint.rules import rules
from kmodkit.lint.source import SourceFile
from kmodkit.lint.symvers import gpl_only_symbols
from kmodkit.modfile.module import module_name, normalize_name


@dataclass(frozen=True)
class LintReport:
    """The findings of one lint run."""

    module: str  #: the module's name
    files: tuple[str, ...]  #: the files checked
    findings: tuple[LintFinding, ...]  #: every finding, by file and line
    symvers: str | None  #: the Module.symvers GPL-only symbols came from, None when none was found
    skipped: tuple[str, ...]  #: rules not run, with why ("gpl-only-symbol: no Module.symvers")

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {"module": self.module, "files": list(self.files), "symvers": self.symvers,
                "skipped": list(self.skipped), "findings": [f.to_json() for f in self.findings]}


class Linter:
    """Lint a module: a project directory (its manifest's sources, else every .c in it) or one .c file.

    ``symvers`` is the Module.symvers checked for GPL-only symbols; None means the first installed
    kernel's (or the manifest's first target's) headers; when none is found that rule is skipped.
    ``only`` limits the run to some rule ids.
    """

    def __init__(self, path: str | Path, symvers: str | Path | None = None, kernel: str | None = None,
                 name: str | None = None, only: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise NotFoundError(str(self.path), "no such file or directory", "name a module's .c file or project")
        unknown = [r for r in (only or []) if r not in CHECKS]
        if unknown:
            raise UserError(unknown[0], "is not a lint rule", f"use one of {', '.join(CHECKS)}")
        self.only = only or list(CHECKS)
        self.units, targets = self._units()
        if name:
            self.units[0] = _Unit(name, self.units[0].files, self.units[0].include)
        self.name = self.units[0].name
        self.files = [f for u in self.units for f in u.files]
        self.symvers = Path(symvers) if symvers else self._find_symvers(kernel, targets)
        if symvers and not self.symvers.is_file():  # type: ignore[union-attr]
            raise NotFoundError(str(symvers), "no such Module.symvers", "pass a kernel's headers' Module.symvers")

    def _units(self) -> tuple[list[_Unit], tuple[str, ...]]:
        # each module's translation units: the manifest's modules, else the Kbuild's obj-m and NAME-y lines,
        # else every .c of the directory as one module
        if self.path.is_file():
            return [_Unit(module_name(str(self.path)), [self.path], [])], ()
        from kmodkit.kbuild.manifest import MANIFEST, Manifest

        if (self.path / MANIFEST).is_file():
            m = Manifest.load(self.path)
            units = [_Unit(spec.name, [m.project / s for s in spec.sources if s.endswith(".c")],
                           [m.project / d for d in spec.include] + [m.project / spec.subdir])
                     for spec in m.modules]
            return units, m.targets
        from kmodkit.kbuild.adopt import Adoption

        try:
            found = [f for f in Adoption(self.path).modules if f.sources]
        except (UserError, OSError):  # no Kbuild with obj-m lines, or one that cannot be read: the .c files
            found = []
        if found:
            return [_Unit(f.name, [self.path / s for s in f.sources], [self.path / f.subdir, self.path])
                    for f in found], ()
        files = sorted(p for p in self.path.rglob("*.c") if not p.name.endswith(".mod.c")
                       and "out" not in p.relative_to(self.path).parts)
        if not files:
            raise UserError(str(self.path), "holds no .c file", "name a module's source or project directory")
        return [_Unit(normalize_name(self.path.resolve().name), files, [self.path])], ()

    @staticmethod
    def _find_symvers(kernel: str | None, targets: tuple[str, ...]) -> Path | None:
        from kmodkit.kbuild import kernels as kern

        names = [kernel] if kernel else [t for t in targets if t != "running"]
        candidates = [kern.kernel(n) for n in names] if names else kern.installed_kernels()
        for k in candidates:
            if k.headers is not None and (k.headers / "Module.symvers").is_file():
                return k.headers / "Module.symvers"
        if kernel:
            raise NotFoundError(kernel, "has no headers with a Module.symvers", "install its headers, or pass --symvers")
        return None

    def run(self) -> LintReport:
        """Parse every file and run the rules, module by module."""
        parsed: dict[Path, SourceFile] = {}
        gpl_only = gpl_only_symbols(self.symvers) if self.symvers and "gpl-only-symbol" in self.only else None
        findings: list[LintFinding] = []
        for unit in self.units:
            sources = tuple(_parse(f, parsed) for f in unit.files)
            module = ModuleSources(unit.name, sources, gpl_only, _headers(sources, unit.include, parsed))
            for rule_id in self.only:
                findings.extend(CHECKS[rule_id](module))
        order = list(rules())
        findings.sort(key=lambda f: (f.file, f.line, order.index(f.rule)))
        skipped = ("gpl-only-symbol: no Module.symvers found (pass --symvers or -k)",) \
            if self.symvers is None and "gpl-only-symbol" in self.only else ()
        return LintReport(self.name, tuple(str(f) for f in self.files), tuple(findings),
                          str(self.symvers) if self.symvers else None, skipped)


@dataclass(frozen=True)
class _Unit:
    name: str  # the module's name
    files: list[Path]  # its .c files
    include: list[Path]  # where its quoted #includes are looked for after the including file's directory


def _parse(path: Path, parsed: dict[Path, SourceFile]) -> SourceFile:
    if path not in parsed:
        try:
            parsed[path] = SourceFile.read(path)
        except OSError as exc:
            raise from_oserror(exc, str(path)) from None
    return parsed[path]


def _headers(sources: tuple[SourceFile, ...], include: list[Path],
             parsed: dict[Path, SourceFile]) -> tuple[SourceFile, ...]:
    # the headers reached through quoted #includes, the way the compiler looks for them (-I order);
    # one it cannot find is the kernel's or generated, and not the project's
    out: dict[Path, SourceFile] = {}
    todo = list(sources)
    while todo:
        src = todo.pop()
        for name in src.includes:
            for base in [src.path.parent, *include]:
                candidate = Path(os.path.normpath(base / name))
                if candidate.is_file():
                    if candidate not in out:
                        out[candidate] = _parse(candidate, parsed)
                        todo.append(out[candidate])
                    break
    return tuple(out.values())

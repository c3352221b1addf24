"""``kmodkit init``: a manifest for an existing Kbuild tree, read from its ``obj-m`` and ``NAME-y`` lines.

Kbuild reads ``Kbuild`` when a directory has one, else ``Makefile`` (for external modules, the part a
Makefile guards with ``ifneq ($(KERNELRELEASE),)``: the obj-m lines are read wherever they are).  Each
``obj-m += NAME.o`` is a module, built from ``NAME-y``/``NAME-objs`` (or NAME.c alone); each ``obj-m += DIR/``
is a subdirectory read the same way.  Lines whose words make expands (``$(...)``) or that build only under a
CONFIG option (``obj-$(CONFIG_X)``) are left out and reported, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kmodkit.errors import ConfigError, UserError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild.manifest import MANIFEST, parse
from kmodkit.kbuild.project import toml_string

#: VAR  (+= | := | = | ?=)  VALUE, after continuation lines are joined
_ASSIGN = re.compile(r"^\s*(?P<var>[A-Za-z0-9_./$()-]+)\s*(?P<op>\+=|:=|\?=|=)\s*(?P<value>.*)$")


@dataclass(frozen=True)
class FoundModule:
    """A module a Kbuild file builds."""

    name: str  #: the module's name (obj-m's NAME.o)
    subdir: str  #: the directory of the Kbuild that builds it, relative to the tree ("" for its top)
    sources: tuple[str, ...]  #: its .c files, relative to the tree


@dataclass
class Adoption:
    """What ``kmodkit init DIR`` finds in a tree and the manifest it writes; validated when built."""

    directory: Path
    modules: list[FoundModule] = field(default_factory=list)  #: filled on construction
    skipped: list[str] = field(default_factory=list)  #: lines left out, "FILE:LINE: text" each

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not self.directory.is_dir():
            raise UserError(str(self.directory), "is not a directory", "name the directory of a Kbuild tree")
        if (self.directory / MANIFEST).exists():
            raise UserError(str(self.directory / MANIFEST), "exists already; init never overwrites it",
                            "edit it, or remove it first to write a new one")
        self._read(Path(""), set())
        if not self.modules:
            raise UserError(str(self.directory), "holds no Kbuild or Makefile with obj-m lines",
                            "run init in the directory you pass to make as M=, or use 'kmodkit new'")

    def _read(self, rel: Path, seen: set[Path]) -> None:
        directory = self.directory / rel
        kbuild = directory / "Kbuild" if (directory / "Kbuild").is_file() else directory / "Makefile"
        if kbuild in seen or not kbuild.is_file():
            return
        seen.add(kbuild)
        objm: list[str] = []
        composite: dict[str, list[str]] = {}
        for lineno, line in _logical_lines(kbuild.read_text(errors="replace")):
            m = _ASSIGN.match(line)
            if not m:
                continue
            var, value = m.group("var"), m.group("value").split("#", 1)[0].split()
            if var == "obj-m":
                words = value
            elif var.startswith("obj-$"):
                self.skipped.append(f"{kbuild}:{lineno}: {line.strip()} (built only when a CONFIG option is set)")
                continue
            elif re.fullmatch(r"[A-Za-z0-9_]+-(y|objs)", var):
                name = var.rsplit("-", 1)[0]
                if m.group("op") in (":=", "="):
                    composite[name] = []
                words = value
                composite.setdefault(name, []).extend(w for w in words if "$" not in w)
                continue
            else:
                continue
            for w in words:
                if "$" in w:
                    self.skipped.append(f"{kbuild}:{lineno}: {w} (make expands it: not read)")
                else:
                    objm.append(w)
        for w in objm:
            if w.endswith("/"):
                self._read(rel / w.rstrip("/"), seen)
            elif w.endswith(".o"):
                name = w[:-2]
                objs = composite.get(name) or [w]
                sources = [str(rel / o[:-2]) + ".c" for o in objs if o.endswith(".o")]
                missing = [s for s in sources if not (self.directory / s).is_file()]
                if missing:  # an .S file, or one a rule generates: not a source the manifest can list
                    self.skipped.append(f"{kbuild}: {name}: {', '.join(missing)} not found (assembly or generated)")
                    sources = [s for s in sources if s not in missing]
                self.modules.append(FoundModule(name, "" if str(rel) == "." else str(rel), tuple(sources)))

    def render(self) -> str:
        """The manifest's text: one [[module]] per module found, in make's order."""
        out = ["# kmodkit.toml for an existing Kbuild tree, written by 'kmodkit init' from its obj-m lines.",
               "# The Kbuild files still say what make builds; kmodkit build checks that the two agree.",
               "# Every key: README.md, section kmodkit.toml.", ""]
        for m in self.modules:
            out.append("[[module]]")
            out.append(f"name = {toml_string(m.name)}")
            if m.subdir:
                out.append(f"subdir = {toml_string(m.subdir)}")
            out.append("sources = [" + ", ".join(toml_string(s) for s in m.sources) + "]")
            out.append("")
        out += ["[kernels]", "targets = []", ""]
        return "\n".join(out)

    def write(self) -> Path:
        """Write the manifest (checked by the manifest reader first); the path written."""
        path = self.directory / MANIFEST
        text = self.render()
        try:
            parse(text, path)
        except ConfigError as exc:  # a module name the manifest refuses (e.g. one the kernel has taken)
            raise UserError(str(self.directory), f"its modules cannot be described: {exc.problem}",
                            exc.fix) from None
        write_atomic(path, text.encode(), 0o644, durable=False)
        return path


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined and comments left in place."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for i, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        out.append((start, buf + raw))
        buf = ""
    if buf:
        out.append((start, buf))
    return out

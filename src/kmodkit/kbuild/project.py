"""``kmodkit new``: a module project, from the templates in ``templates/``, that builds as it is.

Every value enters a template through the quoting of the place it lands in: a C string literal, a C
comment, a TOML string, a shell word (:func:`c_string`, :func:`c_comment`, :func:`toml_string`,
:func:`shlex.quote`).  The name is checked by :func:`kmodkit.kbuild.names.name_problem`; the other
values may hold anything but control and invisible characters.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kmodkit.errors import UserError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild.manifest import MANIFEST
from kmodkit.kbuild.names import name_problem

#: a template's placeholder
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
#: the longest version, description or author accepted (they are one-line texts in .modinfo)
MAX_VALUE = 1024

#: template -> path in the project ({name} is the module name); the mode is 0755 for scripts
FILES: tuple[tuple[str, str, int], ...] = (
    ("module.c.tmpl", "{name}.c", 0o644),
    ("module.h.tmpl", "{name}.h", 0o644),
    ("Kbuild.tmpl", "Kbuild", 0o644),
    ("Makefile.tmpl", "Makefile", 0o644),
    ("kmodkit.toml.tmpl", MANIFEST, 0o644),
    ("vm-test.sh.tmpl", "tests/vm-test.sh", 0o755),
    ("gitignore.tmpl", ".gitignore", 0o644),
)


@dataclass(frozen=True)
class NewProject:
    """A project to create: validated on construction, written by :meth:`create`."""

    name: str  #: module name, a C identifier
    directory: Path  #: where to create it; may exist and hold other files, none of those it writes
    version: str = "0.1.0"  #: MODULE_VERSION
    description: str = ""  #: MODULE_DESCRIPTION; "" gives "the NAME module"
    author: str = "kmodkit"  #: MODULE_AUTHOR

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            raise UserError(shown(self.name), f"is not a valid module name: it {problem}",
                            "use a C identifier of letters, digits and _, starting with a letter")
        for what, value in (("version", self.version), ("description", self.description), ("author", self.author)):
            problem = _text_problem(value)
            if problem is not None:
                raise UserError(f"--{what} {shown(value)}", problem, f"pass a plain one-line {what}")
        if not self.version.strip():
            raise UserError("--version", "is empty", "pass a version such as 0.1.0")
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(str(self.directory), "exists and is not a directory", "choose a directory with --dir")
        # a directory with other files is fine (a repository's README, a .git): only overwriting is refused
        taken = [rel for rel in self.render() if os.path.lexists(self.directory / rel)]
        if taken:
            raise UserError(str(self.directory / taken[0]), "exists; new never overwrites a file",
                            "choose another directory with --dir, or 'kmodkit init' to adopt an existing tree")

    def render(self) -> dict[str, tuple[str, int]]:
        """Project-relative path -> (content, mode) of every file the project gets."""
        description = self.description or f"the {self.name} module"
        values = {  # placeholder -> the value quoted for where it lands
            "@NAME@": self.name,
            "@UPPER@": self.name.upper(),
            "@VERSION_C@": c_string(self.version),
            "@VERSION_TOML@": toml_string(self.version),
            "@VERSION_SH@": shlex.quote(self.version),
            "@DESCRIPTION_C@": c_string(description),
            "@DESCRIPTION_COMMENT@": c_comment(description),
            "@DESCRIPTION_TOML@": toml_string(description),
            "@AUTHOR_C@": c_string(self.author),
        }
        out = {}
        templates = resources.files("kmodkit.kbuild").joinpath("templates")
        for template, target, mode in FILES:
            # one pass: a value holding "@NAME@" stays as written
            text = _PLACEHOLDER.sub(lambda m: values[m.group()], templates.joinpath(template).read_text())
            out[target.format(name=self.name)] = (text, mode)
        return out

    def create(self) -> list[Path]:
        """Write the project; return the files written, in template order."""
        written = []
        for rel, (text, mode) in self.render().items():
            path = self.directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode(), mode & ~_umask() | (mode & stat.S_IXUSR), durable=False)
            written.append(path)
        return written


def c_string(value: str) -> str:
    """``value`` as a C string literal, quotes included (``\\``, ``"`` and ``??`` escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("??", "?\\?") + '"'


def c_comment(value: str) -> str:
    """``value`` made safe inside a ``/* */`` comment: no ``*/`` that ends it, no ``/*`` or ``??`` that warns."""
    return value.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, quotes included."""
    return json.dumps(value, ensure_ascii=False)  # JSON's escapes are a subset of TOML's


def shown(value: str) -> str:
    """``value`` for an error line: quoted (repr) when it holds anything but printable characters."""
    return value if value.isprintable() and value.strip() == value and value else repr(value)


def _text_problem(value: str) -> str | None:
    if len(value) > MAX_VALUE:
        return f"is {len(value)} characters long, more than {MAX_VALUE}"
    for c in value:
        # Cc control, Cf format (bidi overrides, zero-width), Cs lone surrogates (bytes that were not UTF-8),
        # Co private use, Cn unassigned, Zl/Zp line and paragraph separators
        category = unicodedata.category(c)
        if category[0] == "C" or category in ("Zl", "Zp"):
            what = ("a byte that is not UTF-8" if category == "Cs"
                    else f"the control or invisible character U+{ord(c):04X}")
            return f"holds {what}"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""``kmodkit new``: a module project, from the templates in ``templates/``, that builds as it is."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kmodkit.errors import UserError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild.manifest import MANIFEST, NAME_RE

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
    directory: Path  #: where to create it; must not exist or be empty
    version: str = "0.1.0"  #: MODULE_VERSION
    description: str = ""  #: MODULE_DESCRIPTION; "" gives "the NAME module"
    author: str = "kmodkit"  #: MODULE_AUTHOR

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise UserError(self.name, "is not a valid module name",
                            "use a C identifier (letters, digits, _; at most 55 characters)")
        for what, value in (("version", self.version), ("description", self.description), ("author", self.author)):
            if any(c in value for c in '"\\\n'):
                raise UserError(value, f"the {what} may not hold quotes, backslashes or newlines",
                                f"pass a plain one-line {what}")
        if self.directory.exists() and (not self.directory.is_dir() or any(self.directory.iterdir())):
            raise UserError(str(self.directory), "exists and is not empty", "choose a new directory with --dir")

    def render(self) -> dict[str, tuple[str, int]]:
        """Project-relative path -> (content, mode) of every file the project gets."""
        values = {
            "@NAME@": self.name,
            "@UPPER@": self.name.upper(),
            "@VERSION@": self.version,
            "@DESCRIPTION@": self.description or f"the {self.name} module",
            "@AUTHOR@": self.author,
        }
        out = {}
        templates = resources.files("kmodkit.kbuild").joinpath("templates")
        for template, target, mode in FILES:
            text = templates.joinpath(template).read_text()
            for k, v in values.items():
                text = text.replace(k, v)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""What a build depends on: the project's files, hashed, and copied into a kernel's own work directory."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

#: directories of a project that are never inputs
SKIP_DIRS = frozenset({"out", ".git", ".kmodkit", "__pycache__", ".tmp_versions"})
#: files of a project that are build products, never inputs
_PRODUCT = re.compile(r"(\.(o|ko|mod|mod\.c|a|cmd|order|symvers|swp)|~)$|^Module\.symvers$|^modules\.order$|^\.")
#: characters make and Kbuild cannot take in a path given as M=... (whitespace splits words,
#: ':' and '#' and '$' and '%' mean something to make, ';' '&' '|' ... to the shell Kbuild runs)
_UNSAFE = re.compile(r"[^A-Za-z0-9_./+@,=-]")


def project_files(project: Path) -> list[Path]:
    """The project's input files, relative to it and sorted; build products and out/ excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            if name in (".gitignore",) or not _PRODUCT.search(name):
                out.append((base / name).relative_to(project))
    return sorted(out)


def inputs_hash(project: Path, files: list[Path], extra: list[str]) -> str:
    """SHA-256 over the files' names and contents, then the ``extra`` strings (kernel, compiler, key)."""
    h = hashlib.sha256()
    for rel in files:
        h.update(str(rel).encode() + b"\0")
        h.update((project / rel).read_bytes())
        h.update(b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()


def make_safe(path: Path) -> bool:
    """Whether ``path`` can be given to make as M=PATH (no spaces or make/shell metacharacters)."""
    return not _UNSAFE.search(str(path))


def copy_tree(project: Path, files: list[Path], dest: Path) -> None:
    """Make ``dest`` a fresh copy of the project's input files (what was there before is removed)."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, target)

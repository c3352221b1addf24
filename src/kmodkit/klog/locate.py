"""Finding the file of a module named in a report: given directories, ``kmodkit build``'s out/KVER/,
the kernel's module tree and /usr/lib/debug, matched by build id when the report prints one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

from kmodkit.errors import KmodkitError
from kmodkit.modfile.modname import MODULE_SUFFIXES, normalize_name

log = logging.getLogger(__name__)

SUFFIXES = MODULE_SUFFIXES
_norm = normalize_name


def _walk(root: str, depth: int = 6) -> Iterator[str]:
    """Module files under ``root`` (nothing when it does not exist)."""
    if not os.path.isdir(root):
        return
    base = root.rstrip("/").count("/")
    for d, subdirs, files in os.walk(root):
        if d.count("/") - base >= depth:
            subdirs[:] = []
        for f in files:
            if f.endswith(SUFFIXES) or f.endswith(".ko.debug"):
                yield os.path.join(d, f)


class ModuleFinder:
    """Where the module files of a report are: searched in ``paths`` first, then ``out/KVER/`` under
    ``project`` (kmodkit build), ``/lib/modules/KVER`` and ``/usr/lib/debug``.  Each directory is
    listed once; :meth:`find` returns None when no file (with that build id) is found."""

    def __init__(self, paths: Sequence[str] = (), kver: str | None = None, project: str = ".",
                 root: str = "/") -> None:
        self.paths = tuple(paths)  #: the --module-path directories
        self.kver = kver  #: the kernel release (-k, else the report's)
        self.project = project  #: where out/KVER/ of kmodkit build is looked for
        self.root = root  #: the filesystem root (tests)
        self._index: dict[str, dict[str, list[str]]] = {}  # directory -> module name -> files

    def _dirs(self, kver: str | None) -> list[str]:
        dirs = list(self.paths)
        k = kver or self.kver
        if k:
            dirs += [os.path.join(self.project, "out", k), os.path.join(self.root, "usr/lib/debug/lib/modules", k),
                     os.path.join(self.root, "lib/modules", k)]
        return dirs

    def _listing(self, d: str) -> dict[str, list[str]]:
        if d not in self._index:
            found: dict[str, list[str]] = {}
            for path in _walk(d):
                name = os.path.basename(path)
                for suf in SUFFIXES + (".ko.debug",):
                    if name.endswith(suf):
                        found.setdefault(_norm(name[: -len(suf)]), []).append(path)
                        break
            self._index[d] = found
        return self._index[d]

    def candidates(self, module: str, kver: str | None = None) -> list[str]:
        """Every file that may be ``module``, in search order."""
        out = []
        for d in self._dirs(kver):
            out += self._listing(d).get(_norm(module), [])
        return out

    def find(self, module: str, build_id: str | None = None, kver: str | None = None) -> str | None:
        """The file of ``module``: the first with ``build_id`` when given, else the first found."""
        from kmodkit.modfile.module import ModuleFile

        if build_id:
            by_id = os.path.join(self.root, "usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug")
            if os.path.isfile(by_id):
                return by_id
        for path in self.candidates(module, kver):
            if not build_id:
                return path
            try:
                with ModuleFile.open(path) as mf:
                    if mf.build_id == build_id:
                        return path
            except KmodkitError as exc:
                log.debug("%s: %s", path, exc)
        return None

"""Finding modules by name or alias in an installed kernel tree, as libkmod does.

This first version reads depmod's text files (modules.dep, modules.alias,
modules.symbols, modules.builtin, modules.builtin.modinfo).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from functools import cached_property

from kmodkit.errors import NotFoundError
from kmodkit.modfile.module import module_name, normalize_name, split_modinfo


@dataclass(frozen=True)
class FoundModule:
    """A module a lookup found."""

    name: str  #: the module name (underscores)
    path: str | None  #: absolute path of its file, None for a built-in module
    builtin_info: tuple[tuple[bytes, bytes], ...] = ()  #: .modinfo fields of a built-in module

    @property
    def is_builtin(self) -> bool:
        """Whether the module is built into the kernel image."""
        return self.path is None


def kernel_dir(kver: str | None, basedir: str | None) -> str:
    """``BASEDIR/lib/modules/KVER`` (KVER defaults to the running kernel's release)."""
    release = kver or os.uname().release
    return f"{basedir or ''}/lib/modules/{release}"


class ModuleTree:
    """The module tree of one kernel at ``dirname`` (``/lib/modules/KVER``)."""

    def __init__(self, dirname: str) -> None:
        if not os.path.isdir(dirname):
            raise NotFoundError(dirname, "no such module directory",
                                "install the kernel's modules or name another kernel with -k KVER")
        #: the tree's directory
        self.dirname = dirname

    def _read(self, name: str) -> str:
        try:
            with open(os.path.join(self.dirname, name), encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _abs(self, rel: str) -> str:
        return rel if rel.startswith("/") else f"{self.dirname}/{rel}"

    @cached_property
    def _dep_paths(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self._read("modules.dep").splitlines():
            path, colon, _ = line.partition(":")
            if colon:
                out.setdefault(module_name(path), self._abs(path))
        return out

    @cached_property
    def _builtin(self) -> dict[str, list[tuple[bytes, bytes]]]:
        info: dict[str, list[tuple[bytes, bytes]]] = {}
        for line in self._read("modules.builtin").splitlines():
            if line.strip():
                info.setdefault(module_name(line.strip()), [])
        try:
            with open(os.path.join(self.dirname, "modules.builtin.modinfo"), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        for item in split_modinfo(raw):
            modkey, eq, value = item.partition(b"=")
            mod, dot, key = modkey.partition(b".")
            if not dot:
                continue
            info.setdefault(mod.decode("utf-8", "replace"), []).append((key, value))
        return info

    @cached_property
    def _aliases(self) -> list[tuple[str, str]]:
        out = []
        for fname in ("modules.alias", "modules.symbols"):
            for line in self._read(fname).splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias":
                    out.append((parts[1], parts[2]))
        return out

    def _found(self, name: str) -> FoundModule | None:
        if name in self._dep_paths:
            return FoundModule(name, self._dep_paths[name])
        if name in self._builtin:
            return FoundModule(name, None, tuple(self._builtin[name]))
        return None

    def lookup_name(self, name: str) -> FoundModule | None:
        """The module called ``name`` (``-`` and ``_`` alike), or None."""
        return self._found(normalize_name(name))

    def lookup(self, alias: str) -> list[FoundModule]:
        """Modules for a name or alias, in libkmod's order; ``[]`` when nothing matches."""
        found = self.lookup_name(alias)
        if found is not None:
            return [found]
        result: list[FoundModule] = []
        seen: set[str] = set()
        for pattern, mod in self._aliases:
            if mod not in seen and fnmatch.fnmatchcase(alias, pattern):
                hit = self._found(mod)
                if hit is not None:
                    seen.add(mod)
                    result.append(hit)
        if not result:
            for mod, fields in self._builtin.items():
                for key, value in fields:
                    if key == b"alias" and fnmatch.fnmatchcase(alias, value.decode("utf-8", "replace")):
                        result.append(FoundModule(mod, None, tuple(fields)))
                        break
        return result

"""Finding modules by name or alias in a kernel tree, exactly as libkmod does (kmod 30).

:meth:`ModuleTree.lookup` tries, in order, and stops at the first that
finds anything (libkmod-module.c ``kmod_module_new_from_lookup``):

1. ``alias`` lines of modprobe.d (glob patterns, file order);
2. modules.dep.bin (the name itself; names never hold ``:``);
3. modules.symbols.bin, for ``symbol:NAME``;
4. ``install`` / ``remove`` lines naming the module (first one only);
5. modules.alias.bin (glob patterns; results by module priority);
6. modules.builtin.bin (the name of a built-in module);
7. modules.builtin.alias.bin (aliases of built-in modules).

The alias is normalised first (``-`` as ``_`` outside brackets).  Only the
``.bin`` files are read, as modprobe reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from kmodkit.errors import NotFoundError, UserError
from kmodkit.fileio import finish_commit
from kmodkit.index.config import ModprobeConfig
from kmodkit.index.glob import alias_normalize, fnmatch
from kmodkit.index.trie import IndexReader
from kmodkit.modfile.module import normalize_name, split_modinfo


@dataclass(frozen=True)
class FoundModule:
    """A module a lookup found."""

    name: str  #: the module name (underscores)
    path: str | None  #: absolute path of its file, None for a built-in module (or an unknown name)
    builtin_info: tuple[tuple[bytes, bytes], ...] = ()  #: .modinfo fields of a built-in module
    alias: str | None = None  #: the alias (or config pattern) it was found by, None when found by name
    builtin: bool = False  #: whether the kernel image holds it
    install: str | None = None  #: the install command it was found by (lookup step 4)

    @property
    def is_builtin(self) -> bool:
        """Whether the module is built into the kernel image."""
        return self.builtin or (self.path is None and bool(self.builtin_info))


def kernel_dir(kver: str | None, basedir: str | None) -> str:
    """``BASEDIR/lib/modules/KVER`` (KVER defaults to the running kernel's release).

    Without a BASEDIR, a kernel that is not installed but was fetched (``kmodkit kernels fetch``) is
    found in kmodkit's cache: one named by KVER, or the running one (a fetched kernel booted by ``vm run``).
    """
    release = kver or os.uname().release
    if basedir is None:
        basedir = kernel_basedir(release)
    return f"{basedir or ''}/lib/modules/{release}"


def kernel_basedir(release: str) -> str | None:
    """The BASEDIR below which kernel ``release``'s /lib/modules is: None for this machine, the cache's
    directory for a kernel that was fetched and is not installed here."""
    if os.path.lexists(f"/lib/modules/{release}"):
        return None
    from kmodkit.kbuild.kernels import kernel_root

    root = kernel_root(release)
    return None if root.is_host else str(root.path)


class ModuleTree:
    """The module tree of one kernel at ``dirname`` (``/lib/modules/KVER``).

    ``config`` is the modprobe.d configuration lookups consult (none by
    default: the tree alone, as ``kmodkit info -k`` wants it).
    """

    def __init__(self, dirname: str, config: ModprobeConfig | None = None) -> None:
        if not os.path.isdir(dirname):
            raise NotFoundError(dirname, "no such module directory",
                                "install the kernel's modules or name another kernel with -k KVER")
        finish_commit(dirname)  # a killed `kmodkit index` left its files half renamed: finish (or refuse) first
        #: the tree's directory
        self.dirname = dirname
        #: the modprobe.d configuration lookups consult
        self.config = config or ModprobeConfig()
        self._deplines: dict[str, str | None] = {}  # a plan asks for the same dependency many times

    def _index(self, name: str) -> IndexReader | None:
        return IndexReader.open(os.path.join(self.dirname, name))

    @cached_property
    def dep_index(self) -> IndexReader | None:
        """modules.dep.bin, or None when missing."""
        return self._index("modules.dep.bin")

    @cached_property
    def alias_index(self) -> IndexReader | None:
        """modules.alias.bin, or None when missing."""
        return self._index("modules.alias.bin")

    @cached_property
    def symbol_index(self) -> IndexReader | None:
        """modules.symbols.bin, or None when missing."""
        return self._index("modules.symbols.bin")

    @cached_property
    def builtin_index(self) -> IndexReader | None:
        """modules.builtin.bin, or None when missing."""
        return self._index("modules.builtin.bin")

    @cached_property
    def builtin_alias_index(self) -> IndexReader | None:
        """modules.builtin.alias.bin, or None when missing."""
        return self._index("modules.builtin.alias.bin")

    @cached_property
    def builtin_modinfo(self) -> dict[str, list[tuple[bytes, bytes]]]:
        """Built-in module name -> its ``(key, value)`` pairs from modules.builtin.modinfo; {} when missing."""
        try:
            with open(os.path.join(self.dirname, "modules.builtin.modinfo"), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        info: dict[str, list[tuple[bytes, bytes]]] = {}
        for item in split_modinfo(raw):
            modkey, _eq, value = item.partition(b"=")
            mod, dot, key = modkey.partition(b".")
            if dot:
                info.setdefault(mod.decode("utf-8", "replace"), []).append((key, value))
        return info

    def depline(self, name: str) -> str | None:
        """The modules.dep line of module ``name`` (``PATH: DEP...``), or None."""
        if name in self._deplines:
            return self._deplines[name]
        line = None if self.dep_index is None else self.dep_index.search(name.encode())
        found = line.decode("utf-8", "surrogateescape") if line is not None else None
        self._deplines[name] = found
        return found

    def path_of(self, name: str) -> str | None:
        """Absolute path of module ``name`` from modules.dep.bin, or None."""
        line = self.depline(name)
        if line is None:
            return None
        rel = line.split(":", 1)[0]
        return rel if rel.startswith("/") else f"{self.dirname}/{rel}"

    def dependencies(self, name: str) -> list[str]:
        """Absolute paths of ``name``'s dependencies as modules.dep lists them (nearest first); [] when none."""
        line = self.depline(name)
        if line is None or ":" not in line:
            return []
        deps = line.split(":", 1)[1].split()
        return [d if d.startswith("/") else f"{self.dirname}/{d}" for d in deps]

    def is_builtin(self, name: str) -> bool:
        """Whether modules.builtin.bin lists ``name``."""
        return self.builtin_index is not None and self.builtin_index.search(name.encode()) is not None

    def _found(self, name: str, alias: str | None = None, builtin: bool = False,
               install: str | None = None) -> FoundModule:
        path = self.path_of(name)
        is_builtin = builtin or (path is None and self.is_builtin(name))
        info = tuple(self.builtin_modinfo.get(name, ())) if is_builtin else ()
        return FoundModule(name, path, info, alias, is_builtin, install)

    def lookup_name(self, name: str) -> FoundModule | None:
        """The module called ``name`` (``-`` and ``_`` alike) in modules.dep or built in, or None."""
        norm = normalize_name(name)
        if self.path_of(norm) is not None:
            return self._found(norm)
        if self.is_builtin(norm):
            return self._found(norm, builtin=True)
        return None

    def lookup(self, alias: str) -> list[FoundModule]:
        """Modules for a name or alias, in libkmod's order; ``[]`` when nothing matches.

        Raises :class:`UserError` for an alias with an unmatched bracket.
        """
        norm = alias_normalize(alias)
        if norm is None:
            raise UserError(alias, "invalid alias: unmatched bracket")
        cfg = self.config
        found = [self._found(mod, pattern) for pattern, mod in cfg.aliases
                 if fnmatch(pattern.encode(), norm.encode())]
        if found:
            return found
        if ":" not in norm and self.path_of(norm) is not None:
            return [self._found(norm)]
        if norm.startswith("symbol:") and self.symbol_index is not None:
            found = [self._found(v.decode(), norm) for _p, v in self.symbol_index.search_wild(norm.encode())]
            if found:
                return found
        for table in (cfg.install, cfg.remove):
            for cmd in table:
                if cmd.module == norm:
                    return [self._found(norm, install=cmd.command if table is cfg.install else None)]
        if self.alias_index is not None:
            found = [self._found(v.decode(), norm) for _p, v in self.alias_index.search_wild(norm.encode())]
            if found:
                return found
        if self.is_builtin(norm):
            return [self._found(norm, builtin=True)]
        if self.builtin_alias_index is not None:
            return [self._found(v.decode(), norm, builtin=True)
                    for _p, v in self.builtin_alias_index.search_wild(norm.encode())]
        return []

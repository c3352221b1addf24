"""depmod's model of a kernel tree: which module files count, what each needs, in which order.

:class:`Depmod` follows kmod's tools/depmod.c (v30) step by step, because
the order of every output line depends on it:

1. depmod.d (``search``, ``override``, ``external``, ``exclude``) decides
   which file wins when two carry the same module name;
2. the modules are listed in the order of depmod's name hash table, then
   stably sorted by their line in modules.order (unlisted ones last);
3. kernel symbols (Module.symvers with -E, System.map with -F) are added
   first, then each module's exports, a later exporter replacing an earlier;
4. each module's needed symbols give its dependencies (first use first);
5. a topological sort (a stack of modules nobody needs) numbers the modules,
   and every dependency list is written in that numbering.

A dependency cycle stops the run, as it stops depmod, with depmod's messages
and exit status 1.
"""

from __future__ import annotations

import logging
import os
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from kmodkit.errors import ConfigError, ItemError, KmodkitError
from kmodkit.index.inputs import KmodCompat, TreeInputs, TreeWalk
from kmodkit.index.khash import MODULE_BUCKETS, superfast
from kmodkit.index.scan import ModuleRecord, scan_paths

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from kmodkit.index.cache import IndexCache

log = logging.getLogger(__name__)

#: symbols the kernel provides without exporting them (added with -E / -F, as depmod does)
_FAKE_SYMBOLS = (b"__this_module", b"_GLOBAL_OFFSET_TABLE_", b"TOC.")


@dataclass
class Module:
    """One module of the tree as depmod sees it (mutable while the model is built)."""

    name: str  #: module name (underscores)
    path: str  #: absolute path of the file
    relpath: str | None  #: path relative to the tree, None for files outside it (external)
    record: ModuleRecord  #: what the file holds
    sort_idx: int = 1  #: position from modules.order (negative), 1 when unlisted
    idx: int = 0  #: position in the final module list
    dep_sort_idx: int = 0  #: topological number (modules nobody needs come first)
    deps: list[Module] = field(default_factory=list)  #: direct dependencies, first use first
    users: int = 0  #: how many modules depend on this one
    weakdeps: tuple[bytes, ...] = ()  #: ``weakdep=`` values of .modinfo (read only for kmod 34's index)

    @property
    def dep_path(self) -> str:
        """How modules.dep names the file: relative to the tree when inside it."""
        return self.relpath if self.relpath is not None else self.path


@dataclass(frozen=True)
class SymbolIssue:
    """An undefined or mismatched symbol, as ``depmod -e`` reports it."""

    module: str  #: path of the module that needs the symbol
    symbol: str  #: the symbol's name
    mismatch: bool  #: True when the symbol exists but its CRC differs (-E only)

    def __str__(self) -> str:
        if self.mismatch:
            return f"{self.module} disagrees about version of symbol {self.symbol}"
        return f"{self.module} needs unknown symbol {self.symbol}"


@dataclass
class DepmodResult:
    """The computed model: what the output files are made from."""

    dirname: str  #: the tree, ``BASEDIR/lib/modules/KVER``
    modules: list[Module]  #: in output order
    symbols: dict[bytes, Module | None]  #: symbol -> owner (None: the kernel itself)
    issues: list[SymbolIssue]  #: unknown / mismatched symbols (filled only with -E/-F and errsyms)
    failures: list[ItemError]  #: module files that could not be read, one record each
    symbol_hashes: dict[bytes, int] = field(default_factory=dict)  #: kmod hash of each symbol name
    walk: TreeWalk | None = None  #: the files the model was built from
    records: dict[str, bytes] = field(default_factory=dict)  #: path -> marshalled record, for the cache
    read_count: int = 0  #: how many module files were read (the rest came from the cache)
    compat: KmodCompat = KmodCompat.KMOD30  #: whose depmod the files are rendered as


class DependencyCycleError(KmodkitError):
    """Modules depend on each other in a loop; depmod writes nothing then and exits 1."""

    exit_status = 1  # what depmod exits with: the tree was checked and failed

    def __init__(self, dirname: str, cycles: list[list[str]], count: int) -> None:
        #: each cycle as depmod reports it: module names, the first repeated at the end
        self.cycles = cycles
        #: how many modules are in cycles (depmod's "Found N modules in dependency cycles!")
        self.count = count
        super().__init__(dirname, "; ".join(self.lines()),
                         "remove the symbol use that closes the loop from one of these modules")

    def lines(self) -> list[str]:
        """depmod's messages, one per line, in its order."""
        return [f"Cycle detected: {' -> '.join(c)}" for c in self.cycles] + [
            f"Found {self.count} modules in dependency cycles!"]


class Depmod:
    """depmod for the tree ``BASEDIR/lib/modules/KVER``; validated when built.

    ``symvers`` (-E) or ``system_map`` (-F) name the kernel's own symbols;
    ``errsyms`` (-e) collects unknown symbols in :attr:`DepmodResult.issues`.
    ``inputs`` may be given already built (the other arguments then only
    set ``errsyms`` and ``jobs``).
    """

    def __init__(self, kver: str, basedir: str | None = None, *, config_paths: list[str] | None = None,
                 symvers: str | None = None, system_map: str | None = None, errsyms: bool = False,
                 jobs: int = 2, inputs: TreeInputs | None = None, compat: KmodCompat | None = None) -> None:
        if inputs is None:
            inputs = TreeInputs(kver, basedir, config_paths=config_paths, symvers=symvers, system_map=system_map,
                                compat=compat)
        #: the tree, its depmod.d rules and kernel symbol files
        self.inputs = inputs
        self.kver = inputs.kver
        #: the tree's directory
        self.dirname = inputs.dirname
        self.config = inputs.config
        self.symvers = inputs.symvers
        self.system_map = inputs.system_map
        self.errsyms = errsyms and (self.symvers is not None or self.system_map is not None)
        self.jobs = jobs

    def find_files(self) -> tuple[dict[str, str], list[str]]:
        """``modname -> path`` of the files that win, and the directories that could not be read."""
        walk = self.inputs.walk()
        return walk.chosen, walk.errors

    # --- the model ----------------------------------------------------------------

    def compute(self, walk: TreeWalk | None = None, cache: IndexCache | None = None,
                pool: Executor | None = None,
                read: Callable[[], dict[str, bytes | str]] | None = None) -> DepmodResult:
        """Scan the tree and resolve every dependency; raises :class:`DependencyCycleError` on a loop.

        ``walk`` is a walk of the tree already made (default: walk now);
        ``cache`` gives the records of files whose stat is unchanged;
        ``pool`` (see :func:`~kmodkit.index.scan.worker_pool`) reads the files;
        ``read`` returns files being read already (:meth:`~kmodkit.index.scan.Prefetch.results`),
        called once the module order is known.
        """
        if walk is None:
            walk = self.inputs.walk(cache.listings if cache is not None else None)
        failures = [ItemError(d.split(": ", 1)[0], "directory could not be read") for d in walk.errors]
        failures += [ItemError(path, why) for path, why in walk.vanished]
        # the order needs only the names: it is settled while the files are still being read
        empty = ModuleRecord((), (), ())
        base = self.dirname + "/"
        modules: list[Module] = []
        for name, path in walk.chosen.items():
            rel = path[len(base):] if path.startswith(base) else None
            modules.append(Module(name, path, rel, empty))
        # the walk of depmod's module-name hash table (512 buckets, strcmp within one)
        modules.sort(key=lambda m: (superfast(m.name.encode()) & (MODULE_BUCKETS - 1), m.name.encode()))
        self._apply_order(modules)
        for i, m in enumerate(modules):
            m.idx = i
        blobs: dict[str, bytes] = {}
        done = read() if read is not None else {}
        todo: list[str] = []
        for path, key in walk.stats.items():
            if path in done:
                continue
            blob = cache.record_bytes(path, key) if cache is not None else None
            if blob is None:
                todo.append(path)
            else:
                blobs[path] = blob
        fresh = [(path, done[path]) for path in walk.stats if path in done]
        fresh += zip(todo, scan_paths(todo, self.jobs, pool))
        for path, result in fresh:
            if isinstance(result, str):
                # the reader's message names the file: the failure names it once, in ``path``
                failures.append(ItemError(path, result.removeprefix(f"{path}: ")))
            else:
                blobs[path] = result
        log.debug("read %d module files, %d from the cache", len(fresh), len(walk.stats) - len(fresh))
        for m in modules:
            blob = blobs.get(m.path)
            if blob is not None:
                m.record = ModuleRecord.from_bytes(blob)
        symbols: dict[bytes, Module | None] = {}
        crcs: dict[bytes, int] = {}
        hashes: dict[bytes, int] = {}
        if self.symvers is not None:
            self._load_symvers(symbols, crcs)
        elif self.system_map is not None:
            self._load_system_map(symbols, crcs)
        for m in modules:
            for sym, crc, h in m.record.exports:
                symbols[sym] = m
                crcs[sym] = crc
                hashes[sym] = h
        if self.inputs.compat.weakdep:
            for m in modules:
                if m.path in blobs:
                    m.weakdeps = read_weakdeps(m.path)
        issues = self._resolve(modules, symbols, crcs)
        self._toposort(modules)
        return DepmodResult(self.dirname, modules, symbols, issues, failures, hashes, walk, blobs, len(fresh),
                            self.inputs.compat)

    def _apply_order(self, modules: list[Module]) -> None:
        try:
            with open(os.path.join(self.dirname, "modules.order"), "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return
        if lines[-1] != b"":
            log.error("%s/modules.order:%d corrupted line misses '\\n'", self.dirname, len(lines))
            return
        lines.pop()
        total = len(lines) + 1
        by_unc: dict[bytes, Module] = {}
        for m in modules:
            if m.relpath is None:
                continue
            d = os.path.dirname(m.relpath)
            # "uncompressed relpath": the directory, then as many characters of the
            # file name as the module name has, then three more (".ko")
            cut = len(d) + 1 + len(m.name) + 3 if d else len(m.name) + 3
            by_unc[m.relpath[:cut].encode()] = m
        for idx, line in enumerate(lines, 1):
            hit = by_unc.get(line)
            if hit is not None:
                hit.sort_idx = idx - total
        modules.sort(key=lambda m: m.sort_idx)

    def _load_symvers(self, symbols: dict[bytes, Module | None], crcs: dict[bytes, int]) -> None:
        assert self.symvers is not None
        with open(self.symvers, "rb") as f:
            for lineno, line in enumerate(f, 1):
                parts = [p for p in re.split(rb"[ \t]", line) if p]
                if len(parts) < 3 or parts[2] != b"vmlinux":
                    continue
                try:
                    crc = int(parts[0], 16)
                except ValueError:
                    log.error("%s:%d Invalid symbol version %s", self.symvers, lineno, parts[0].decode("latin-1"))
                    continue
                symbols[parts[1]] = None
                crcs[parts[1]] = crc
        self._fake(symbols, crcs)

    def _load_system_map(self, symbols: dict[bytes, Module | None], crcs: dict[bytes, int]) -> None:
        assert self.system_map is not None
        with open(self.system_map, "rb") as f:
            for lineno, line in enumerate(f, 1):
                first = line.find(b" ")
                second = line.find(b" ", first + 1) if first >= 0 else -1
                if second < 0:
                    raise ConfigError(f"{self.system_map}:{lineno}", "invalid line: expected ADDRESS TYPE NAME")
                name = line[second + 1:].rstrip(b"\n")
                if name.startswith(b"__ksymtab_"):
                    symbols[name[10:]] = None
                    crcs[name[10:]] = 0
        self._fake(symbols, crcs)

    @staticmethod
    def _fake(symbols: dict[bytes, Module | None], crcs: dict[bytes, int]) -> None:
        for name in _FAKE_SYMBOLS:
            if name == b"TOC." and name in symbols:
                continue
            symbols[name] = None
            crcs[name] = 0

    def _resolve(self, modules: list[Module], symbols: dict[bytes, Module | None],
                 crcs: dict[bytes, int]) -> list[SymbolIssue]:
        issues: list[SymbolIssue] = []
        report = self.errsyms
        if not report:
            self._link(modules, symbols)
            return issues
        check = self.symvers is not None
        get = symbols.get
        for m in modules:
            seen: set[int] = set()
            deps = m.deps
            rec = m.record
            names = rec.need_list()
            if not names:
                continue
            crc_words = array("Q")
            if check:
                crc_words.frombytes(rec.need_crcs)
            weak = rec.need_weak
            for k, name in enumerate(names):
                key = name[1:] if name[:1] == b"." else name
                if key not in symbols:
                    if report and not weak[k]:
                        issues.append(SymbolIssue(m.path, key.decode("latin-1"), False))
                    continue
                owner = get(key)
                if check and report and crcs.get(key) != crc_words[k] and not weak[k]:
                    issues.append(SymbolIssue(m.path, key.decode("latin-1"), True))
                if owner is None or id(owner) in seen:
                    continue
                seen.add(id(owner))
                deps.append(owner)
                owner.users += 1
        return issues

    @staticmethod
    def _link(modules: list[Module], symbols: dict[bytes, Module | None]) -> None:
        # _resolve without the reports: each module's dependencies are the distinct
        # owners of its symbols in order of first use, found with C-level map and
        # dict.fromkeys (~190,000 symbol uses a tree); -1 is the kernel, None unknown
        owner_of = {sym: -1 if owner is None else owner.idx for sym, owner in symbols.items()}
        get = owner_of.get
        for m in modules:
            blob = m.record.need_names
            if not blob:
                continue
            names = blob.split(b"\0")
            if b"\0." in b"\0" + blob:  # ".name" symbols (ppc64 ELFv1 function descriptors)
                names = [n[1:] if n[:1] == b"." else n for n in names]
            deps = m.deps
            for i in dict.fromkeys(map(get, names)):
                if i is not None and i >= 0:
                    owner = modules[i]
                    deps.append(owner)
                    owner.users += 1

    def _toposort(self, modules: list[Module]) -> None:
        users = [m.users for m in modules]
        stack = [i for i, u in enumerate(users) if u == 0]
        n_sorted = 0
        while stack:
            src = modules[stack.pop()]
            src.dep_sort_idx = n_sorted
            n_sorted += 1
            for dst in src.deps:
                users[dst.idx] -= 1
                if users[dst.idx] == 0:
                    stack.append(dst.idx)
        if n_sorted < len(modules):
            cycles, count = _report_cycles([m for m, u in zip(modules, users) if u > 0])
            raise DependencyCycleError(self.dirname, cycles, count)


def read_weakdeps(path: str) -> tuple[bytes, ...]:
    """The ``weakdep=`` values of a module file's .modinfo, in file order; ``()`` when none or unreadable.

    kmod 33 added them (kmod commit 05828b4a, "libkmod: add weak dependecies").
    """
    from kmodkit.errors import KmodkitError
    from kmodkit.modfile.module import ModuleFile

    try:
        if path.endswith(".ko"):
            # the common case: no module says weakdep, and a byte search of the file says so at once
            with open(path, "rb") as f:
                if b"weakdep=" not in f.read():
                    return ()
        with ModuleFile.open(path) as mf:
            return tuple(item[8:] for item in mf.modinfo_raw if item.startswith(b"weakdep="))
    except (OSError, KmodkitError):
        return ()  # the scan reports the file


class _Vertex(NamedTuple):
    mod: Module
    parent: _Vertex | None


def _report_cycles(roots: list[Module]) -> tuple[list[list[str]], int]:
    """The cycles depmod reports among the modules the sort could not number, and how many modules are in them.

    kmod's depmod_report_cycles, step by step (its order is the messages'
    order): from each remaining module in turn, a depth-first walk that
    reports a path each time it comes back to its start; the modules of a
    reported path are no longer starts.  Every cycle through a start is
    reported, so two cycles sharing a module are both named.
    """
    visited: set[int] = set()
    in_loops: set[str] = set()
    cycles: list[list[str]] = []
    roots = list(roots)
    budget = 64 * (len(roots) + 1) ** 2  # depmod's own stack holds as many entries as there are starts
    while roots:
        root = roots.pop(0)
        stack = [_Vertex(root, None)]
        while stack:
            budget -= 1
            if budget < 0:  # a walk depmod would abort on: what was found is reported
                return cycles, len(in_loops)
            vertex = stack.pop()
            m = vertex.mod
            if id(m) in visited and m is root:
                chain: list[Module] = []
                v = vertex.parent
                while v is not None:
                    chain.append(v.mod)
                    in_loops.add(v.mod.name)
                    v = v.parent
                for c in chain:
                    _remove_first(roots, c)
                cycles.append([c.name for c in reversed(chain)] + [m.name])
                continue
            visited.add(id(m))
            if not m.deps:
                _remove_first(roots, m)
                continue
            stack.extend(_Vertex(dep, vertex) for dep in m.deps)
    return cycles, len(in_loops)


def _remove_first(mods: list[Module], m: Module) -> None:
    for i, x in enumerate(mods):
        if x is m:
            del mods[i]
            return

"""What depmod reads from each module file, read the way libkmod reads it.

:func:`read_module` returns a :class:`ModuleRecord`: the ``alias`` and
``softdep`` values of ``.modinfo``, the symbols the module exports and the
symbols it needs, each in the order libkmod lists them (the order decides
tie-breaks in depmod's output, so it is kept exactly):

* exports: the ``__crc_*`` symbols of ``.symtab`` (modversions), else the
  strings of ``__ksymtab_strings`` (libkmod-elf.c ``kmod_elf_get_symbols``);
* needs: undefined ``.symtab`` symbols in table order, then the
  ``__versions`` entries no symbol named (``module_layout``).

:func:`scan_paths` reads many files over worker processes and hands records
back marshalled, the form :mod:`kmodkit.index.cache` stores them in.
"""

from __future__ import annotations

import marshal
import re
import struct
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

from kmodkit.errors import KmodkitError
from kmodkit.index.khash import superfast
from kmodkit.modfile.elf import SHN_ABS, SHN_UNDEF, ElfImage, SymbolTable
from kmodkit.modfile.opener import load_module, release

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


# A NamedTuple (not a dataclass) so that checking one changed module on the
# quick path of ``kmodkit index`` does not import dataclasses.
class ModuleRecord(NamedTuple):
    """What the index needs from one module file.

    The needed symbols are kept packed (one NUL-joined name blob, CRCs as
    64-bit words, weak flags as bytes): a tree holds ~190,000 of them, and
    the cache stores them as three objects per module.
    """

    aliases: tuple[bytes, ...]  #: ``alias=`` values of .modinfo, in file order
    softdeps: tuple[bytes, ...]  #: ``softdep=`` values of .modinfo, in file order
    exports: tuple[tuple[bytes, int, int], ...]  #: (symbol, crc, kmod hash) the module exports, libkmod's order
    need_names: bytes = b""  #: symbols the module uses, NUL-joined, libkmod's order
    need_crcs: bytes = b""  #: their CRCs from __versions (0 when absent), native 64-bit words
    need_weak: bytes = b""  #: 1 for a weak reference, else 0, one byte per symbol

    @property
    def needs(self) -> list[tuple[bytes, int, bool]]:
        """``(symbol, crc, weak)`` for each symbol the module uses, libkmod's order; [] when none."""
        if not self.need_names:
            return []
        crcs = array("Q")
        crcs.frombytes(self.need_crcs)
        return [(n, c, bool(w)) for n, c, w in zip(self.need_names.split(b"\0"), crcs, self.need_weak)]

    def need_list(self) -> list[bytes]:
        """Just the names of :attr:`needs` (fast)."""
        return self.need_names.split(b"\0") if self.need_names else []

    def to_bytes(self) -> bytes:
        """The record marshalled (see :meth:`from_bytes`)."""
        return marshal.dumps(tuple(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> ModuleRecord:
        """The record :meth:`to_bytes` produced; ValueError / TypeError when it is not one."""
        return cls(*marshal.loads(data))


def read_module_bytes(path: str) -> bytes:
    """:func:`read_module`, marshalled."""
    return read_module(path).to_bytes()


def read_module_data(data: bytes, path: str = "<memory>") -> ModuleRecord:
    """:func:`read_module` of a (decompressed) module already in memory."""
    return _extract(ElfImage(data, path))


def read_module(path: str) -> ModuleRecord:
    """Read ``path`` (any kmod compression); raises :class:`KmodkitError` for a file kmod cannot read either.

    The file is opened and validated by the one module reader
    (:mod:`kmodkit.modfile.opener`, :class:`~kmodkit.modfile.elf.ElfImage`), so
    ``kmodkit info`` and the index agree on which files are modules.  Like
    libkmod, the ELF is read over the whole file, signature included.
    """
    held, _st, _kind = load_module(path)
    try:
        return _extract(ElfImage(held, path))
    finally:
        release(held)


# The reader below runs ~4,000 times per tree, so it avoids a Python object per
# symbol: ElfImage hands out whole columns of the ELF tables and only the
# undefined symbols, found with bytes.find, are looked at one by one.

# .modinfo strings that start with alias= / softdep=, searched for in NUL + the section
_ALIAS = re.compile(rb"\0alias=([^\0]*)")
_SOFTDEP = re.compile(rb"\0softdep=([^\0]*)")


def _extract(img: ElfImage) -> ModuleRecord:
    aliases: tuple[bytes, ...] = ()
    softdeps: tuple[bytes, ...] = ()
    modinfo = img.section_bytes(".modinfo")
    if modinfo is not None:
        info = b"\0" + modinfo
        if b"alias=" in info:
            aliases = tuple(_ALIAS.findall(info))
        if b"softdep=" in info:
            softdeps = tuple(_SOFTDEP.findall(info))
    syms = img.symbol_table()
    if syms is None:
        return ModuleRecord(aliases, softdeps, _ksymtab_strings(img))
    exports = _exports(img, syms)
    names, crcs, weak = _needs(img, syms)
    return ModuleRecord(aliases, softdeps, exports, b"\0".join(names), array("Q", crcs).tobytes(), bytes(weak))


def _ksymtab_strings(img: ElfImage) -> tuple[tuple[bytes, int, int], ...]:
    # no modversions: every string of __ksymtab_strings (namespaces included, as libkmod does)
    strings = img.section_bytes("__ksymtab_strings")
    if strings is None:
        return ()
    return tuple((s, 0, superfast(s)) for s in strings.split(b"\0") if s)


def _exports(img: ElfImage, syms: SymbolTable) -> tuple[tuple[bytes, int, int], ...]:
    """libkmod's ``kmod_elf_get_symbols``: the ``__crc_*`` symbols, else ``__ksymtab_strings``."""
    strtab = syms.strings
    pos = strtab.find(b"__crc_")
    if pos < 0 or not syms.count:
        return _ksymtab_strings(img)
    names = syms.names if isinstance(syms.names, list) else syms.names.tolist()  # type: ignore[attr-defined]
    if max(names) >= len(strtab):
        return _ksymtab_strings(img)  # libkmod falls back when a name lies outside .strtab
    starts = set()
    while pos >= 0:
        starts.add(pos)
        pos = strtab.find(b"__crc_", pos + 1)
    hits = starts.intersection(names)
    if not hits:
        return _ksymtab_strings(img)
    # a few exports: list.index per name; many: one pass over every symbol is cheaper
    found = _positions(names, hits) if len(hits) <= 64 else [k for k, n in enumerate(names) if n in hits]
    out = []
    for k in found:
        end = strtab.find(b"\0", names[k])
        name = strtab[names[k] + 6:end if end >= 0 else None]
        out.append((name, _resolve_crc(img, syms.values[k], syms.shndx[k]), superfast(name)))
    return tuple(out)


def _positions(names: list[int], hits: set[int]) -> list[int]:
    # indexes of the symbols named by ``hits``, with list.index (C) instead of a loop over all
    out = []
    for p in hits:
        k = names.index(p)
        while k >= 0:
            out.append(k)
            try:
                k = names.index(p, k + 1)
            except ValueError:
                k = -1
    out.sort()
    return out


def _resolve_crc(img: ElfImage, value: int, shndx: int) -> int:
    # libkmod's kmod_elf_resolve_crc: absolute symbols hold the CRC, others point into a section
    if shndx in (SHN_ABS, SHN_UNDEF):
        return value
    if shndx >= len(img.offsets) or value > img.sizes[shndx] - 4:
        return 0  # a CRC libkmod could not read either: no check possible
    off = img.offsets[shndx] + value
    if off + 4 > img.size:
        return 0
    (crc,) = struct.unpack_from("<I" if img.little else ">I", img.data, off)
    return int(crc)


def _needs(img: ElfImage, syms: SymbolTable) -> tuple[list[bytes], list[int], list[int]]:
    """libkmod's ``kmod_elf_get_dependency_symbols``: names, CRCs and weak flags of the needed symbols."""
    # map() over C methods instead of comprehensions: ~190,000 symbols a tree
    undef = syms.undefined()
    names = syms.names_of(undef)
    weak = list(map(syms.weak.__getitem__, undef)) if 1 in syms.weak else [0] * len(undef)
    if b"" in names:  # libkmod skips symbols with an empty name
        weak = [w for n, w in zip(names, weak) if n]
        names = [n for n in names if n]
    vnames, vcrcs = img.modversions()
    if not vnames:
        return names, [0] * len(names), weak
    # the first __versions entry of each name gives its CRC (index -1: none, CRC 0);
    # the entries no symbol named (module_layout) follow
    first = dict(zip(reversed(vnames), range(len(vnames) - 1, -1, -1)))
    hit = list(map(first.get, names, repeat(-1)))
    crcs = list(map((vcrcs + [0]).__getitem__, hit))
    visited = set(hit)
    if len(visited) - (-1 in visited) < len(vnames):
        for i, n in enumerate(vnames):
            if i not in visited:
                names.append(n[1:] if n[:1] == b"." else n)
                crcs.append(vcrcs[i])
                weak.append(0)
    return names, crcs, weak


def _read_batch(paths: list[str]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for path in paths:
        try:
            out.append(read_module(path).to_bytes())
        except KmodkitError as exc:  # the reason alone: the caller names the file
            if exc.subject != path:
                out.append(str(exc))
            else:
                out.append(f"{exc.problem}; {exc.fix}" if exc.fix else exc.problem)
        except OSError as exc:
            out.append(str(exc.strerror or exc))
    return out


@contextmanager
def worker_pool(jobs: int) -> Iterator[Executor | None]:
    """Worker processes for :func:`scan_paths` and the index renderers; None when ``jobs`` <= 1.

    The processes start at the first task, so a run that reads nothing pays nothing.
    """
    from kmodkit._util.pool import worker_pool as _pool

    with _pool(jobs) as pool:
        yield pool


class Prefetch:
    """Module files read by a pool's workers while the tree is still being walked.

    Pass :meth:`add` as the walk's ``found`` callback; :meth:`results` waits for
    every batch.
    """

    def __init__(self, pool: Executor, batch: int = 256) -> None:
        self._pool = pool
        self._size = batch
        self._batch: list[str] = []
        self._pending: list[tuple[list[str], Future[list[bytes | str]]]] = []

    def add(self, path: str) -> None:
        """Queue ``path``; a full batch goes to a worker at once."""
        self._batch.append(path)
        if len(self._batch) >= self._size:
            self._submit()

    def _submit(self) -> None:
        if self._batch:
            self._pending.append((self._batch, self._pool.submit(_read_batch, self._batch)))
            self._batch = []

    def results(self) -> dict[str, bytes | str]:
        """path -> marshalled record, or why it could not be read, for every path added."""
        self._submit()
        out: dict[str, bytes | str] = {}
        for paths, future in self._pending:
            out.update(zip(paths, future.result()))
        return out


def scan_paths(paths: list[str], jobs: int = 2, pool: Executor | None = None) -> list[bytes | str]:
    """For each path its marshalled record, or the one-line reason it could not be read.

    Large batches are split over ``jobs`` worker processes (those of ``pool`` when given).
    """
    from kmodkit._util.pool import Cost, chunks as _chunks, jobs_for

    jobs = jobs_for(len(paths), Cost.SCAN, jobs)
    if not jobs:
        return _read_batch(paths)
    chunks = _chunks(paths, jobs)
    if pool is not None:
        return [r for chunk in pool.map(_read_batch, chunks) for r in chunk]
    with worker_pool(jobs) as own:
        assert own is not None
        return [r for chunk in own.map(_read_batch, chunks) for r in chunk]

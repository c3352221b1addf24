"""What depmod reads from each module file, read the way libkmod reads it, with a cache.

:func:`read_module` returns a :class:`ModuleRecord`: the ``alias`` and
``softdep`` values of ``.modinfo``, the symbols the module exports and the
symbols it needs, each in the order libkmod lists them (the order decides
tie-breaks in depmod's output, so it is kept exactly):

* exports: the ``__crc_*`` symbols of ``.symtab`` (modversions), else the
  strings of ``__ksymtab_strings`` (libkmod-elf.c ``kmod_elf_get_symbols``);
* needs: undefined ``.symtab`` symbols in table order, then the
  ``__versions`` entries no symbol named (``module_layout``).

:class:`ScanCache` keeps records keyed on (size, mtime, inode) in a file
beside the index so a second run re-reads only the modules that changed.
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from kmodkit.errors import KmodkitError, ModuleFormatError
from kmodkit.index.khash import superfast
from kmodkit.modfile.elf import SHN_ABS, SHN_UNDEF
from kmodkit.modfile.module import ModuleFile, split_modinfo

log = logging.getLogger(__name__)

#: the cache file kmodkit keeps beside the index it writes
CACHE_NAME = "modules.kmodkit-cache"
_CACHE_VERSION = 3
_STB_WEAK = 2


@dataclass(frozen=True)
class ModuleRecord:
    """What the index needs from one module file.

    The needed symbols are kept packed (one NUL-joined name blob, CRCs as
    64-bit words, weak flags as bytes): a tree holds ~800,000 of them, and
    the cache loads them as three objects per module.
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

    def to_tuple(self) -> tuple[object, ...]:
        """A marshal-friendly form (see :meth:`from_tuple`)."""
        return (self.aliases, self.softdeps, self.exports, self.need_names, self.need_crcs, self.need_weak)

    @classmethod
    def from_tuple(cls, t: tuple[object, ...]) -> ModuleRecord:
        """The record :meth:`to_tuple` produced."""
        return cls(*t)  # type: ignore[arg-type]

    @classmethod
    def packed(cls, aliases: tuple[bytes, ...], softdeps: tuple[bytes, ...],
               exports: tuple[tuple[bytes, int, int], ...], needs: list[tuple[bytes, int, bool]]) -> ModuleRecord:
        """A record from unpacked needs."""
        return cls(aliases, softdeps, exports, b"\0".join(n for n, _c, _w in needs),
                   array("Q", [c & 0xFFFFFFFFFFFFFFFF for _n, c, _w in needs]).tobytes(),
                   bytes(1 if w else 0 for _n, _c, w in needs))


def read_module(path: str) -> ModuleRecord:
    """Read ``path`` (any kmod compression); raises :class:`ModuleFormatError` for a bad file."""
    with ModuleFile.open(path) as mf:
        return _extract(mf)


_SECTIONS = (".modinfo", ".symtab", ".strtab", "__versions", "__ksymtab_strings", "__kcrctab", "__kcrctab_gpl")


def _extract(mf: ModuleFile) -> ModuleRecord:
    data = mf.content
    secs = mf.find_sections(*_SECTIONS)
    is64, little = data[4] == 2, data[5] == 1
    size = len(data)

    def raw(name: str) -> memoryview | None:
        hit = secs.get(name)
        if hit is None or hit[3] == 8:  # SHT_NOBITS
            return None
        _idx, off, length, _t = hit
        if off + length > size:
            raise ModuleFormatError(mf.path, f"section {name} lies past the end of the file")
        return data[off:off + length]

    aliases: list[bytes] = []
    softdeps: list[bytes] = []
    modinfo = raw(".modinfo")
    if modinfo is not None:
        for item in split_modinfo(bytes(modinfo)):
            if item.startswith(b"alias="):
                aliases.append(item[6:])
            elif item.startswith(b"softdep="):
                softdeps.append(item[8:])
    symtab, strtab_v = raw(".symtab"), raw(".strtab")
    strtab = bytes(strtab_v) if strtab_v is not None else b""
    symlen = 24 if is64 else 16
    names: list[int] = []
    shndx: list[int] = []
    info: list[int] = []
    values: list[int] = []
    has_symtab = symtab is not None and strtab_v is not None and len(symtab) % symlen == 0
    if has_symtab:
        assert symtab is not None
        body = symtab[symlen:]
        if is64 and little:
            names = body.cast("I")[0::6].tolist()
            shndx = body.cast("H")[3::12].tolist()
            info = body.cast("B")[4::24].tolist()
            values = body.cast("Q")[1::3].tolist()
        else:
            e = "<" if little else ">"
            if is64:
                rows = [(n, i, x, v) for n, i, _o, x, v, _s in struct.iter_unpack(e + "IBBHQQ", body)]
            else:
                rows = [(n, i, x, v) for n, v, _s, i, _o, x in struct.iter_unpack(e + "IIIBBH", body)]
            names = [r[0] for r in rows]
            info = [r[1] for r in rows]
            shndx = [r[2] for r in rows]
            values = [r[3] for r in rows]
    exports = _exports(mf, secs, raw, strtab, names, shndx, values, little)
    needs = _needs(mf, raw, strtab, names, shndx, info, is64, little) if has_symtab else []
    return ModuleRecord.packed(tuple(aliases), tuple(softdeps), exports, needs)


def _cstr(table: bytes, off: int) -> bytes:
    end = table.find(b"\0", off)
    return table[off:end] if end >= 0 else table[off:]


def _exports(mf: ModuleFile, secs: dict[str, tuple[int, int, int, int]], raw: Callable[[str], memoryview | None],
             strtab: bytes, names: list[int], shndx: list[int], values: list[int], little: bool
             ) -> tuple[tuple[bytes, int, int], ...]:
    out: list[tuple[bytes, int, int]] = []
    if strtab and names and max(names) < len(strtab):
        starts = set()
        pos = strtab.find(b"__crc_")
        while pos >= 0:
            starts.add(pos)
            pos = strtab.find(b"__crc_", pos + 1)
        hits = starts.intersection(names)
        if hits:
            by_index = {idx: (off, size) for idx, off, size, _t in secs.values()}
            for k in [k for k, n in enumerate(names) if n in hits]:
                name = _cstr(strtab, names[k] + 6)
                out.append((name, _resolve_crc(mf, by_index, values[k], shndx[k], little), superfast(name)))
    if out:
        return tuple(out)
    # no modversions: every string of __ksymtab_strings (namespaces included, as libkmod does)
    strings = raw("__ksymtab_strings")
    if strings is None:
        return ()
    return tuple((s, 0, superfast(s)) for s in bytes(strings).split(b"\0") if s)


def _resolve_crc(mf: ModuleFile, by_index: dict[int, tuple[int, int]], value: int, shndx: int, little: bool) -> int:
    if shndx in (SHN_ABS, SHN_UNDEF):
        return value
    sec = by_index.get(shndx)
    if sec is None or value > sec[1] - 4:
        return 0  # the CRC table is not one libkmod would find either: no check possible
    (crc,) = struct.unpack_from("<I" if little else ">I", mf.content, sec[0] + value)
    return int(crc)


def _needs(mf: ModuleFile, raw: Callable[[str], memoryview | None], strtab: bytes, names: list[int],
           shndx: list[int], info: list[int], is64: bool, little: bool) -> list[tuple[bytes, int, bool]]:
    versions: list[tuple[bytes, int]] = []
    ver = raw("__versions")
    if ver is not None and len(ver) % 64 == 0:
        crcfmt = ("<" if little else ">") + ("Q56s" if is64 else "I60s")
        versions = [(name.split(b"\0", 1)[0], crc) for crc, name in struct.iter_unpack(crcfmt, ver)]
    undef = [k for k, x in enumerate(shndx) if x == 0]
    if not undef:
        used: list[bytes] = []
        weak: list[bool] = []
    else:
        limit = len(strtab)
        if max(names[k] for k in undef) >= limit:
            raise ModuleFormatError(mf.path, "a symbol name lies outside the string table")
        find = strtab.find
        pairs = [(strtab[names[k]:find(b"\0", names[k])], info[k] >> 4 == _STB_WEAK) for k in undef]
        used = [nm for nm, _w in pairs if nm]
        weak = [w for nm, w in pairs if nm]
    first: dict[bytes, tuple[int, int]] = {}
    for idx, (name, crc) in enumerate(versions):
        first.setdefault(name, (idx, crc))
    out = [(nm, first.get(nm, (0, 0))[1], w) for nm, w in zip(used, weak)]
    if versions:
        seen = set(used)
        out += [(nm[1:] if nm.startswith(b".") else nm, crc, False) for idx, (nm, crc) in enumerate(versions)
                if not (nm in seen and first[nm][0] == idx)]
    return out


@dataclass(frozen=True)
class ScanFailure:
    """A module file that could not be read."""

    path: str  #: the file
    reason: str  #: why, as one line


def _read_batch(paths: list[str]) -> list[tuple[object, ...] | str]:
    out: list[tuple[object, ...] | str] = []
    for path in paths:
        try:
            out.append(read_module(path).to_tuple())
        except KmodkitError as exc:
            out.append(str(exc))
        except OSError as exc:
            out.append(f"{path}: {exc.strerror or exc}")
    return out


class ScanCache:
    """Module records from an earlier run, keyed on path and (size, mtime, inode)."""

    def __init__(self, entries: dict[str, tuple[int, int, int, tuple[object, ...], bytes]] | None = None,
                 meta: dict[str, object] | None = None) -> None:
        self._entries = entries or {}
        self._fresh: dict[str, tuple[int, int, int, tuple[object, ...], bytes]] = {}
        #: what the last run wrote: ``fingerprint`` of its model and ``outputs`` name -> (size, mtime_ns)
        self.meta: dict[str, object] = meta or {}
        #: path -> digest of its record, for the records of the last scan
        self.digests: dict[str, bytes] = {}
        #: how many records the last :meth:`scan` read from files (the rest came from the cache)
        self.read_count = 0

    @classmethod
    def load(cls, path: str) -> ScanCache:
        """The cache stored at ``path``; an empty cache when it is missing or unreadable."""
        try:
            with open(path, "rb") as f:
                version, entries, meta = marshal.load(f)
            if version != _CACHE_VERSION or not isinstance(entries, dict) or not isinstance(meta, dict):
                return cls()
            return cls(entries, meta)
        except (OSError, EOFError, ValueError, TypeError):
            return cls()

    def scan(self, stats: dict[str, os.stat_result], jobs: int = 2
             ) -> tuple[dict[str, ModuleRecord], list[ScanFailure]]:
        """Records for every path of ``stats`` (cached when size, mtime and inode agree)."""
        records: dict[str, ModuleRecord] = {}
        todo: list[str] = []
        for path, st in stats.items():
            hit = self._entries.get(path)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns and hit[2] == st.st_ino:
                records[path] = ModuleRecord.from_tuple(hit[3])
                self._fresh[path] = hit
                self.digests[path] = hit[4]
            else:
                todo.append(path)
        self.read_count = len(todo)
        failures: list[ScanFailure] = []
        if not todo:
            return records, failures
        if jobs > 1 and len(todo) >= 400:
            from concurrent.futures import ProcessPoolExecutor

            size = (len(todo) + jobs * 4 - 1) // (jobs * 4)
            chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                results = [r for chunk in pool.map(_read_batch, chunks) for r in chunk]
        else:
            results = _read_batch(todo)
        for path, result in zip(todo, results):
            if isinstance(result, str):
                failures.append(ScanFailure(path, result))
                continue
            st = stats[path]
            records[path] = ModuleRecord.from_tuple(result)
            digest = hashlib.blake2b(marshal.dumps(result), digest_size=16).digest()  # type: ignore[arg-type]
            self._fresh[path] = (st.st_size, st.st_mtime_ns, st.st_ino, result, digest)
            self.digests[path] = digest
        log.debug("read %d module files, %d from the cache", len(todo), len(records) - len(todo))
        return records, failures

    def dump(self) -> bytes:
        """The cache file's bytes: the records of the last scan only."""
        return marshal.dumps((_CACHE_VERSION, self._fresh, self.meta))

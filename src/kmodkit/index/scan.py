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
import mmap
import os
import re
import stat
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add, itemgetter

from kmodkit.errors import KmodkitError, ModuleFormatError
from kmodkit.index.khash import superfast

log = logging.getLogger(__name__)

#: the cache file kmodkit keeps beside the index it writes
CACHE_NAME = "modules.kmodkit-cache"
_CACHE_VERSION = 3


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
    mm = _map_plain_elf(path)
    if mm is None:  # compressed, empty, not a file...: the module reader decompresses or says why
        from kmodkit.modfile.module import ModuleFile

        with ModuleFile.open(path) as mf:
            trailer = mf.trailer
            data = mf.data if trailer is None else mf.data[:trailer.content_len]
            record = _extract(data, path)
            data.release()
            return record
    view = memoryview(mm)
    record = _extract(view[:_content_length(view, path)], path)
    # on an error the mapping is left to the garbage collector: the traceback still holds views of it
    view.release()
    mm.close()
    return record


def _map_plain_elf(path: str) -> mmap.mmap | None:
    # the common case, a plain .ko, mapped without ModuleFile's checks (4,000 files a run)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < 64:
            return None
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
    if mm[:4] != b"\x7fELF":
        mm.close()
        return None
    return mm


_SIG_MAGIC = b"~Module signature appended~\n"


def _content_length(view: memoryview, path: str) -> int:
    """How much of the file is the module: all of it, unless a signature is appended."""
    if view[-len(_SIG_MAGIC):] != _SIG_MAGIC:
        return len(view)
    from kmodkit.modfile.signature import find_trailer

    trailer = find_trailer(view, path)
    return len(view) if trailer is None else trailer.content_len


# The reader below runs ~4,000 times per tree, so it avoids a Python object per
# symbol: whole columns of the ELF tables are read at once (memoryview casts on
# the common 64-bit little-endian image, struct.iter_unpack otherwise) and only
# the undefined symbols, found with bytes.find, are looked at one by one.

_SHT_NOBITS = 8
_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1
# st_info -> 1 when its binding (high nibble) is STB_WEAK, else 0
_WEAK_BIND = bytes(1 if b >> 4 == 2 else 0 for b in range(256))
# .modinfo strings that start with alias= / softdep=, searched for in NUL + the section
_ALIAS = re.compile(rb"\0alias=([^\0]*)")
_SOFTDEP = re.compile(rb"\0softdep=([^\0]*)")


class _Image:
    """Section lookup over one module image (signature excluded)."""

    def __init__(self, data: memoryview, path: str) -> None:
        self.data = data
        self.path = path
        size = len(data)
        if size < 64 or bytes(data[:4]) != b"\x7fELF":
            raise ModuleFormatError(path, "not an ELF file (no \\x7fELF magic)")
        self.is64, self.little = data[4] == 2, data[5] == 1
        e = "<" if self.little else ">"
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(
            e + ("40xQ10xHHH" if self.is64 else "32xI10xHHH"), data)
        if (shentsize != (64 if self.is64 else 40) or shstrndx >= shnum
                or shoff + shnum * shentsize > size):
            raise ModuleFormatError(path, "malformed section table")
        table = data[shoff:shoff + shnum * shentsize]
        if self.is64 and self.little:
            words = table.cast("I")
            quads = table.cast("Q")
            self.names: list[int] = words[0::16].tolist()
            self.types: list[int] = words[1::16].tolist()
            self.offsets: list[int] = quads[3::8].tolist()
            self.sizes: list[int] = quads[4::8].tolist()
        else:
            fmt = e + ("IIQQQQ24x" if self.is64 else "II8xII16x")
            rows = list(struct.iter_unpack(fmt, table))
            self.names = [r[0] for r in rows]
            self.types = [r[1] for r in rows]
            self.offsets = [r[-2] for r in rows]
            self.sizes = [r[-1] for r in rows]
        start = self.offsets[shstrndx]
        self.shstrtab = bytes(data[start:start + self.sizes[shstrndx]])

    def index(self, name: bytes) -> int:
        """The index of the first section called ``name``; -1 when there is none."""
        key = name + b"\0"
        best = -1
        pos = self.shstrtab.find(key)
        while pos >= 0:  # every place the name's string starts (a longer name may end with it)
            try:
                i = self.names.index(pos)
            except ValueError:
                i = -1
            if i >= 0 and (best < 0 or i < best):
                best = i
            pos = self.shstrtab.find(key, pos + 1)
        return best

    def section(self, name: bytes) -> memoryview | None:
        """The bytes of the first section called ``name``; None when absent or without file data."""
        i = self.index(name)
        if i < 0 or self.types[i] == _SHT_NOBITS:
            return None
        off, length = self.offsets[i], self.sizes[i]
        if off + length > len(self.data):
            raise ModuleFormatError(self.path, f"section {name.decode()} lies past the end of the file")
        return self.data[off:off + length]


def _extract(data: memoryview, path: str) -> ModuleRecord:
    img = _Image(data, path)
    aliases: tuple[bytes, ...] = ()
    softdeps: tuple[bytes, ...] = ()
    modinfo = img.section(b".modinfo")
    if modinfo is not None:
        info = b"\0" + modinfo
        if b"alias=" in info:
            aliases = tuple(_ALIAS.findall(info))
        if b"softdep=" in info:
            softdeps = tuple(_SOFTDEP.findall(info))
    symtab, strtab_v = img.section(b".symtab"), img.section(b".strtab")
    strtab = bytes(strtab_v) if strtab_v is not None else b""
    symlen = 24 if img.is64 else 16
    if symtab is None or strtab_v is None or len(symtab) % symlen:
        return ModuleRecord(aliases, softdeps, _ksymtab_strings(img))
    syms = _Symbols(img, symtab[symlen:])
    exports = _exports(img, syms, strtab)
    names, crcs, weak = _needs(img, syms, strtab)
    return ModuleRecord(aliases, softdeps, exports, b"\0".join(names), array("Q", crcs).tobytes(), bytes(weak))


class _Symbols:
    """Columns of ``.symtab`` (entry 0 left out), read without one object per symbol."""

    def __init__(self, img: _Image, body: memoryview) -> None:
        self.count = len(body) // (24 if img.is64 else 16)
        if img.is64 and img.little:
            self.names: Sequence[int] = body.cast("I")[0::6]
            self.values: Sequence[int] = body.cast("Q")[1::3]
            info: bytes | memoryview = body[4::24]
            shndx_lo: bytes | memoryview = body[6::24]
            shndx_hi: bytes | memoryview = body[7::24]
            self.shndx: Sequence[int] = body.cast("H")[3::12]
        else:
            e = "<" if img.little else ">"
            if img.is64:
                rows = [(n, v, i, x) for n, i, _o, x, v, _s in struct.iter_unpack(e + "IBBHQQ", body)]
            else:
                rows = [(n, v, i, x) for n, v, _s, i, _o, x in struct.iter_unpack(e + "IIIBBH", body)]
            self.names = [r[0] for r in rows]
            self.values = [r[1] for r in rows]
            info = bytes(r[2] for r in rows)
            self.shndx = [r[3] for r in rows]
            shndx_lo = bytes(x & 0xFF for x in self.shndx)
            shndx_hi = bytes(x >> 8 for x in self.shndx)
        #: one byte per symbol: 1 where the binding is STB_WEAK
        self.weak = bytes(info).translate(_WEAK_BIND)
        # one byte per symbol, zero exactly where st_shndx is SHN_UNDEF
        either = int.from_bytes(shndx_lo, "little") | int.from_bytes(shndx_hi, "little")
        self._defined = either.to_bytes(self.count, "little")

    def undefined(self) -> list[int]:
        """Indexes of the undefined symbols, in table order."""
        # The zero bytes of _defined, found without a Python loop: split at them;
        # the k-th zero sits at -1 + the sum of (length + 1) of the pieces before it.
        pieces = self._defined.split(b"\0")
        pieces.pop()
        return list(accumulate(map(add, map(len, pieces), repeat(1)), initial=-1))[1:]


def _ksymtab_strings(img: _Image) -> tuple[tuple[bytes, int, int], ...]:
    # no modversions: every string of __ksymtab_strings (namespaces included, as libkmod does)
    strings = img.section(b"__ksymtab_strings")
    if strings is None:
        return ()
    return tuple((s, 0, superfast(s)) for s in bytes(strings).split(b"\0") if s)


def _exports(img: _Image, syms: _Symbols, strtab: bytes) -> tuple[tuple[bytes, int, int], ...]:
    """libkmod's ``kmod_elf_get_symbols``: the ``__crc_*`` symbols, else ``__ksymtab_strings``."""
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
    out = []
    for k in sorted(k for k, n in enumerate(names) if n in hits) if len(hits) > 64 else _positions(names, hits):
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


def _resolve_crc(img: _Image, value: int, shndx: int) -> int:
    # libkmod's kmod_elf_resolve_crc: absolute symbols hold the CRC, others point into a section
    if shndx in (_SHN_ABS, _SHN_UNDEF):
        return value
    if shndx >= len(img.offsets) or value > img.sizes[shndx] - 4:
        return 0  # a CRC libkmod could not read either: no check possible
    off = img.offsets[shndx] + value
    if off + 4 > len(img.data):
        return 0
    (crc,) = struct.unpack_from("<I" if img.little else ">I", img.data, off)
    return int(crc)


def _needs(img: _Image, syms: _Symbols, strtab: bytes) -> tuple[list[bytes], list[int], list[int]]:
    """libkmod's ``kmod_elf_get_dependency_symbols``: names, CRCs and weak flags of the needed symbols."""
    # map() over C methods instead of comprehensions: ~190,000 symbols a tree
    undef = syms.undefined()
    offsets = list(map(syms.names.__getitem__, undef))
    if offsets and max(offsets) >= len(strtab):
        raise ModuleFormatError(img.path, "a symbol name lies outside the string table")
    ends = map(strtab.find, repeat(b"\0"), offsets)
    names = list(map(strtab.__getitem__, map(slice, offsets, ends)))
    weak = list(map(syms.weak.__getitem__, undef)) if 1 in syms.weak else [0] * len(undef)
    if b"" in names:  # libkmod skips symbols with an empty name
        weak = [w for n, w in zip(names, weak) if n]
        names = [n for n in names if n]
    vnames, vcrcs = _versions(img)
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


def _versions(img: _Image) -> tuple[list[bytes], list[int]]:
    """Names and CRCs of ``__versions`` (64-bit CRC then the name on 64-bit images); empty when absent."""
    ver = img.section(b"__versions")
    if ver is None or len(ver) % 64 or not len(ver):
        return [], []
    e = "<" if img.little else ">"
    if img.is64 and img.little:
        crcs: list[int] = ver.cast("Q")[0::8].tolist()
    else:
        crcs = [c for (c,) in struct.iter_unpack(e + ("Q56x" if img.is64 else "I60x"), ver)]
    fields = map(itemgetter(0), struct.iter_unpack("8x56s" if img.is64 else "4x60s", ver))
    names = list(map(bytes.rstrip, fields, repeat(b"\0")))
    if b"\0" in b"".join(names):  # bytes after a name's NUL: cut at the NUL, as C reads it
        names = [n.split(b"\0", 1)[0] for n in names]
    return names, crcs


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

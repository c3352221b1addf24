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
import mmap
import os
import re
import stat
import struct
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate, repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, NamedTuple

from kmodkit.errors import KmodkitError, ModuleFormatError
from kmodkit.index.khash import superfast

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


class ScanFailure(NamedTuple):
    """A module file that could not be read."""

    path: str  #: the file
    reason: str  #: why, as one line


def read_module_bytes(path: str) -> bytes:
    """:func:`read_module`, marshalled."""
    return read_module(path).to_bytes()


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
# struct module_signature (include/linux/module_signature.h), just before the magic:
# algo, hash, id_type, signer_len, key_id_len, 3 bytes of padding, big-endian sig_len
_SIG_INFO = struct.Struct(">BBBBB3xI")


def _content_length(view: memoryview, path: str) -> int:
    """How much of the file is the module: all of it, unless a signature is appended.

    The same rule as kmodkit.modfile.signature.find_trailer, read here so the
    index's quick path does not import the whole module reader.
    """
    size = len(view)
    tail = size - len(_SIG_MAGIC)
    if tail < _SIG_INFO.size or view[tail:] != _SIG_MAGIC:
        return size
    _algo, _hash, _id, signer_len, key_id_len, sig_len = _SIG_INFO.unpack_from(view, tail - _SIG_INFO.size)
    if sig_len == 0:
        raise ModuleFormatError(path, "signature trailer says the signature is 0 bytes long")
    content = tail - _SIG_INFO.size - sig_len - key_id_len - signer_len
    if content < 0:
        raise ModuleFormatError(path, "signature trailer claims more signature data than the file holds")
    return int(content)


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


def _read_batch(paths: list[str]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for path in paths:
        try:
            out.append(read_module(path).to_bytes())
        except KmodkitError as exc:
            out.append(str(exc))
        except OSError as exc:
            out.append(f"{path}: {exc.strerror or exc}")
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

"""One kernel module file, read lazily: ``.modinfo``, symbols, versions, signature.

:class:`ModuleFile` is the object every other domain builds on: the index
reads its symbols and ``.modinfo``, signing its content and trailer, the
loader its parameters, oops decoding its sections.  It is a context manager;
an uncompressed file is mmapped, a compressed one decompressed in memory.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from kmodkit.errors import ModuleFormatError, UserError, from_oserror
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.compress import Compression
from kmodkit.modfile.elf import SHN_UNDEF, ElfImage, Section
from kmodkit.modfile.signature import Pkcs7Signer, Trailer, find_trailer, parse_pkcs7

#: file-name endings kmod takes for module files (shared/util.c: kmod_exts)
MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


def module_name(path: str) -> str:
    """The module name kmod derives from a path: basename up to the first dot, ``-`` as ``_``."""
    base = os.path.basename(path)
    return base.split(".", 1)[0].replace("-", "_")


def normalize_name(name: str) -> str:
    """A module name with ``-`` written as ``_``, as the kernel and kmod compare names."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class ExportedSymbol:
    """A symbol the module exports with EXPORT_SYMBOL*."""

    name: str  #: the symbol's name
    gpl_only: bool  #: True for EXPORT_SYMBOL_GPL
    namespace: str | None  #: the symbol namespace (EXPORT_SYMBOL_NS*), None when global


class SymbolVersion(NamedTuple):
    """One entry of ``__versions``: the CRC the module expects for a symbol it uses."""

    name: str  #: the symbol's name
    crc: int  #: the modversions CRC (32 bits in practice)


@dataclass(frozen=True)
class Parameter:
    """A module parameter as ``parm`` and ``parmtype`` describe it."""

    name: str  #: the parameter's name
    type: str | None  #: ``parmtype`` (int, charp, bool, array of int...), None when not declared
    description: str | None  #: ``parm`` text (MODULE_PARM_DESC), None when absent


class ModuleFile:
    """A kernel module file (``.ko``, ``.ko.xz``, ``.ko.zst``, ``.ko.gz``) opened for reading.

    Use :meth:`open` for a path or :meth:`from_bytes` for data in memory.
    Raises :class:`ModuleFormatError` for anything that is not a well-formed
    module, :class:`NotFoundError` / :class:`UserError` for a bad path.
    """

    def __init__(self, data: bytes | mmap.mmap, path: str, compression: Compression, file_size: int) -> None:
        #: the path as given (or a label for data in memory)
        self.path = path
        #: how the file was compressed
        self.compression = compression
        #: the size of the file on disk (compressed size for compressed modules)
        self.file_size = file_size
        self._data = data
        #: the decompressed module, signature included
        self.data: memoryview = memoryview(data)

    @classmethod
    def open(cls, path: str | os.PathLike[str], limit: int = _compress.MAX_DECOMPRESSED) -> ModuleFile:
        """Open the module at ``path``; compressed files are decompressed (up to ``limit`` bytes)."""
        spath = os.fspath(path)
        try:
            fd = os.open(spath, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise from_oserror(exc, spath) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise UserError(spath, "is a directory, expected a module file")
            if not stat.S_ISREG(st.st_mode):
                raise UserError(spath, "is not a regular file")
            if st.st_size == 0:
                raise ModuleFormatError(spath, "file is empty")
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except OSError as exc:
            raise from_oserror(exc, spath) from None
        finally:
            os.close(fd)
        kind = _compress.detect(mm[:6])
        if kind is Compression.NONE:
            return cls(mm, spath, kind, st.st_size)
        try:
            with memoryview(mm) as view:
                data = _compress.decompress(view, kind, spath, limit)
        finally:
            mm.close()
        return cls(data, spath, kind, st.st_size)

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<memory>", limit: int = _compress.MAX_DECOMPRESSED) -> ModuleFile:
        """A module from bytes in memory (compressed or not)."""
        kind = _compress.detect(data[:6])
        plain = _compress.decompress(data, kind, path, limit) if kind is not Compression.NONE else data
        return cls(plain, path, kind, len(data))

    def close(self) -> None:
        """Release the mapping; the object must not be used afterwards."""
        self.__dict__.pop("elf", None)
        self.data.release()
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self) -> ModuleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The module name derived from the file name, as kmod derives it."""
        return module_name(self.path)

    @cached_property
    def elf(self) -> ElfImage:
        """The validated ELF view of the module (signature excluded)."""
        return ElfImage(self.content, self.path)

    # --- signature ----------------------------------------------------------------

    @cached_property
    def trailer(self) -> Trailer | None:
        """The signature trailer, or None when the module is unsigned."""
        return find_trailer(self.data, self.path)

    @property
    def is_signed(self) -> bool:
        """Whether the module carries a signature trailer."""
        return self.trailer is not None

    @property
    def content(self) -> memoryview:
        """The module proper: the bytes a signature covers (everything before the trailer)."""
        t = self.trailer
        return self.data if t is None else self.data[: t.content_len]

    def signature_blob(self) -> bytes | None:
        """The raw signature bytes (PKCS#7 DER for current kernels), or None when unsigned."""
        t = self.trailer
        if t is None:
            return None
        start = t.content_len + t.signer_len + t.key_id_len
        return bytes(self.data[start:start + t.sig_len])

    @cached_property
    def pkcs7(self) -> Pkcs7Signer | None:
        """The parsed PKCS#7 signer; None when unsigned or not a PKCS#7 signature.

        Raises :class:`ModuleFormatError` when the PKCS#7 does not parse.
        """
        t = self.trailer
        if t is None or t.id_type != 2:
            return None
        blob = self.signature_blob()
        assert blob is not None
        return parse_pkcs7(blob, self.path)

    # --- .modinfo -------------------------------------------------------------------

    @cached_property
    def modinfo_raw(self) -> list[bytes]:
        """The ``.modinfo`` strings, split as kmod splits them; ``[]`` when absent or empty."""
        sec = self.elf.get_section_by_name(".modinfo")
        if sec is None:
            return []
        raw = bytes(self.elf.section_data(sec))
        if raw and raw[-1] != 0:
            raise ModuleFormatError(self.path, ".modinfo does not end with a NUL byte: the last string is cut off")
        return split_modinfo(raw)

    @cached_property
    def modinfo(self) -> list[tuple[str, str]]:
        """``(key, value)`` pairs of ``.modinfo`` in file order (values may repeat per key)."""
        out = []
        for item in self.modinfo_raw:
            key, _, value = item.partition(b"=")
            out.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
        return out

    def has_modinfo(self) -> bool:
        """Whether the module has a ``.modinfo`` section at all."""
        return self.elf.has_section(".modinfo")

    def get(self, key: str) -> str | None:
        """The first ``.modinfo`` value for ``key``, or None."""
        for k, v in self.modinfo:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        """Every ``.modinfo`` value for ``key`` in file order (``[]`` when none)."""
        return [v for k, v in self.modinfo if k == key]

    @property
    def vermagic(self) -> str | None:
        """The ``vermagic`` string, or None."""
        return self.get("vermagic")

    @property
    def depends(self) -> list[str]:
        """Module names from ``depends=`` (``[]`` when none)."""
        value = self.get("depends")
        return [d for d in value.split(",") if d] if value else []

    @property
    def parameters(self) -> list[Parameter]:
        """The declared parameters, in order of first mention."""
        order: dict[str, list[str | None]] = {}
        for k, v in self.modinfo:
            if k not in ("parm", "parmtype"):
                continue
            pname, sep, rest = v.partition(":")
            if not sep:
                continue
            slot = order.setdefault(pname, [None, None])
            slot[0 if k == "parmtype" else 1] = rest
        return [Parameter(n, t, d) for n, (t, d) in order.items()]

    # --- symbols --------------------------------------------------------------------

    def undefined_symbols(self) -> list[str]:
        """Names of the symbols the module uses but does not define (sorted, unique)."""
        return sorted({n for n, _ in self.elf.symbol_names_in(_UNDEF)})

    def versions(self) -> list[SymbolVersion]:
        """The ``__versions`` table (modversions CRCs); ``[]`` without CONFIG_MODVERSIONS."""
        sec = self.elf.get_section_by_name("__versions")
        if sec is None:
            return []
        data = self.elf.section_data(sec)
        fmt = self.elf.endian + ("Q56s" if self.elf.is64 else "I60s")
        step = 64
        usable = len(data) - len(data) % step
        return [
            SymbolVersion(raw.split(b"\0", 1)[0].decode("utf-8", "replace"), crc)
            for crc, raw in struct.iter_unpack(fmt, data[:usable])
        ]

    def exported_symbols(self) -> list[ExportedSymbol]:
        """Symbols exported with EXPORT_SYMBOL*, with GPL-only flag and namespace, sorted by name."""
        elf = self.elf
        secs = {}
        for sec_name in ("__ksymtab", "__ksymtab_gpl"):
            found = elf.get_section_by_name(sec_name)
            if found is not None:
                secs[found.number] = sec_name
        if not secs:
            return []
        namespaces = self._export_namespaces()
        out = []
        for name, shndx in elf.symbol_names_in(set(secs)):
            if name.startswith("__ksymtab_"):
                sym = name[len("__ksymtab_"):]
                out.append(ExportedSymbol(sym, secs[shndx] == "__ksymtab_gpl", namespaces.get(sym)))
        out.sort(key=lambda e: e.name)
        return out

    def _export_namespaces(self) -> dict[str, str]:
        # A ksymtab entry (struct kernel_symbol, PREL32 form) is three s32 offsets:
        # value, name, namespace.  In a .ko they are relocations against
        # __ksymtab_strings; read name and namespace strings from there.
        elf = self.elf
        strings_sec = elf.get_section_by_name("__ksymtab_strings")
        if strings_sec is None:
            return {}
        strings = bytes(elf.section_data(strings_sec))
        values = elf.symbol_values()
        result: dict[str, str] = {}
        for rela_name in (".rela__ksymtab", ".rela__ksymtab_gpl"):
            rela = elf.get_section_by_name(rela_name)
            if rela is None or rela.type != 4:
                continue
            refs: dict[int, dict[int, int]] = {}
            fmt = elf.endian + ("QQq" if elf.is64 else "IIi")
            data = elf.section_data(rela)
            step = struct.calcsize(fmt)
            for r_offset, r_info, addend in struct.iter_unpack(fmt, data[: len(data) - len(data) % step]):
                entry, field = divmod(r_offset, 12)
                if field == 0:  # the value offset points at code, not at a string
                    continue
                symidx = r_info >> 32 if elf.is64 else r_info >> 8
                if symidx >= len(values) or values[symidx][1] != strings_sec.number:
                    continue
                off = values[symidx][0] + addend
                refs.setdefault(entry, {})[field] = off
            for fields in refs.values():
                if 4 in fields and 8 in fields:
                    nm = _cstr(strings, fields[4])
                    ns = _cstr(strings, fields[8])
                    if nm and ns:
                        result[nm] = ns
        return result

    @property
    def build_id(self) -> str | None:
        """The GNU build id as hex, or None when the module has none."""
        sec = self.elf.get_section_by_name(".note.gnu.build-id")
        if sec is None:
            return None
        data = bytes(self.elf.section_data(sec))
        if len(data) < 16:
            return None
        namesz, descsz, ntype = struct.unpack_from(self.elf.endian + "III", data)
        start = 12 + ((namesz + 3) & ~3)
        if ntype != 3 or start + descsz > len(data):
            return None
        return data[start:start + descsz].hex()

    def iter_sections(self) -> Iterator[Section]:
        """The section table after the null entry."""
        return iter(self.elf.sections[1:])

    def find_sections(self, *names: str) -> dict[str, tuple[int, int, int, int]]:
        """``name -> (index, offset, size, type)`` of the first section with each name, for hot loops.

        Reads only the section headers, without :attr:`elf`'s validation;
        names the file lacks are absent, bounds are checked by the caller.
        The index reads thousands of modules through this.
        """
        data = self.content
        if len(data) < 64 or bytes(data[:4]) != b"\x7fELF":
            raise ModuleFormatError(self.path, "not an ELF file (no \\x7fELF magic)")
        is64, e = data[4] == 2, "<" if data[5] == 1 else ">"
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(e + ("40xQ10xHHH" if is64 else "32xI10xHHH"), data)
        fmt = e + ("IIQQQQ24x" if is64 else "II8xII16x")
        if shentsize != struct.calcsize(fmt) or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
            raise ModuleFormatError(self.path, "malformed section table")
        table = list(struct.iter_unpack(fmt, data[shoff:shoff + shnum * shentsize]))
        if is64:
            table = [(n, t, off, size) for n, t, _f, _a, off, size in table]
        nstart, nsize = table[shstrndx][2], table[shstrndx][3]
        strings = bytes(data[nstart:nstart + nsize])
        wanted = {}
        for name in names:
            key = name.encode() + b"\0"
            pos = strings.find(key)
            while pos >= 0:
                wanted[pos] = name
                pos = strings.find(key, pos + 1)
        out: dict[str, tuple[int, int, int, int]] = {}
        for i, (n, t, off, size) in enumerate(table):
            hit = wanted.get(n)
            if hit is not None and hit not in out:
                out[hit] = (i, off, size, t)
        return out


_UNDEF = frozenset({SHN_UNDEF})


def _cstr(table: bytes, offset: int) -> str:
    if offset < 0 or offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else None].decode("utf-8", "replace")


def split_modinfo(buf: bytes) -> list[bytes]:
    """Split ``.modinfo`` contents as kmod does: runs of NULs separate strings, leading NULs are padding."""
    i = 0
    while i < len(buf) - 1 and buf[i] == 0:
        i += 1
    rest = buf[i:]
    if len(rest) <= 1:  # kmod_elf_get_strings: one byte left is no string
        return []
    return [s for s in rest.split(b"\0") if s]

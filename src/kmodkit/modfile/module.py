"""One kernel module file, read lazily: ``.modinfo``, symbols, versions, signature.

:class:`ModuleFile` is the object every other domain builds on: the index
reads its symbols and ``.modinfo``, signing its content and trailer, the
loader its parameters, oops decoding its sections.  It is a context manager;
an uncompressed file is mmapped, a compressed one decompressed in memory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from kmodkit.errors import ModuleFormatError
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.compress import Compression
from kmodkit.modfile.elf import SHT_RELA, ElfImage, Section
# the module-name rule lives in modname.py (import-free, for the index's walk); its names stay importable here
from kmodkit.modfile.modname import MODULE_SUFFIXES as MODULE_SUFFIXES
from kmodkit.modfile.modname import module_name as module_name
from kmodkit.modfile.modname import normalize_name as normalize_name
from kmodkit.modfile.opener import Held, load_module, release
from kmodkit.modfile.signature import PKEY_ID_PKCS7, Pkcs7Signer, Trailer, find_trailer, parse_pkcs7

# functools.cached_property takes a lock on every first read (Python 3.11), which shows in
# runs over whole trees: the hot parts are cached by hand in these slots, reset by close()
_UNSET: object = object()



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
    Raises :class:`ModuleFormatError` for anything kmod could not read as a
    module either, :class:`NotFoundError` / :class:`UserError` for a bad path
    (a directory, a FIFO, a device: refused before anything is read).
    """

    def __init__(self, data: Held, path: str, compression: Compression, file_size: int) -> None:
        #: the path as given (or a label for data in memory)
        self.path = path
        #: how the file was compressed
        self.compression = compression
        #: the size of the file on disk (compressed size for compressed modules)
        self.file_size = file_size
        self._data = data
        #: the decompressed module, signature included
        self.data: memoryview = memoryview(data)
        self._elf: ElfImage | None = None
        self._trailer: Trailer | None | object = _UNSET
        self._pkcs7: Pkcs7Signer | None | object = _UNSET
        self._modinfo_raw: list[bytes] | None = None
        self._modinfo: list[tuple[str, str]] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], limit: int = _compress.MAX_DECOMPRESSED) -> ModuleFile:
        """Open the module at ``path``; compressed files are decompressed (up to ``limit`` bytes)."""
        spath = os.fspath(path)
        held, st, kind = load_module(spath, limit)
        return cls(held, spath, kind or Compression.NONE, st.st_size)

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<memory>", limit: int = _compress.MAX_DECOMPRESSED) -> ModuleFile:
        """A module from bytes in memory (compressed or not)."""
        kind = _compress.detect(data[:6])
        plain = _compress.decompress(data, kind, path, limit) if kind is not Compression.NONE else data
        return cls(plain, path, kind, len(data))

    def close(self) -> None:
        """Release the mapping; the object must not be used afterwards.

        Never raises: a mapping that a caller still views is unmapped with the last view.
        """
        self._elf = self._modinfo_raw = self._modinfo = None
        self._trailer = self._pkcs7 = _UNSET
        try:
            self.data.release()
        except BufferError:  # a memoryview made from this one still lives
            pass
        release(self._data)

    def __enter__(self) -> ModuleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The module name derived from the file name, as kmod derives it."""
        return module_name(self.path)

    @property
    def elf(self) -> ElfImage:
        """The ELF view of the module, validated as kmod validates it.

        Like kmod it reads the whole file: the section table ends before the
        signature of any sound module, and a malformed trailer does not hide it.
        """
        if self._elf is None:
            self._elf = ElfImage(self._data, self.path)
        return self._elf

    # --- signature ----------------------------------------------------------------

    @property
    def trailer(self) -> Trailer | None:
        """The signature trailer, or None when the module is unsigned.

        Raises :class:`ModuleFormatError` when it is malformed (see :attr:`signature_problem`).
        """
        if self._trailer is _UNSET:
            self._trailer = find_trailer(self._data, self.path)
        return self._trailer  # type: ignore[return-value]

    @property
    def signature_problem(self) -> str | None:
        """Why the signature trailer is malformed, or None when it is sound or absent.

        kmod shows such a module as unsigned; every signature check calls it malformed.
        """
        try:
            self.trailer
        except ModuleFormatError as exc:
            return exc.problem
        return None

    @property
    def is_signed(self) -> bool:
        """Whether the module carries a signature trailer (raises when it is malformed)."""
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

    @property
    def pkcs7(self) -> Pkcs7Signer | None:
        """The parsed PKCS#7 signer; None when unsigned or not a PKCS#7 signature.

        Raises :class:`ModuleFormatError` when the PKCS#7 does not parse.
        """
        if self._pkcs7 is _UNSET:
            t = self.trailer
            if t is None or t.id_type != PKEY_ID_PKCS7:
                self._pkcs7 = None
            else:
                blob = self.signature_blob()
                assert blob is not None
                self._pkcs7 = parse_pkcs7(blob, self.path)
        return self._pkcs7  # type: ignore[return-value]

    # --- .modinfo -------------------------------------------------------------------

    @property
    def modinfo_raw(self) -> list[bytes]:
        """The ``.modinfo`` strings, split as kmod splits them (``[]`` when empty).

        Raises :class:`ModuleFormatError` when kmod finds no ``.modinfo``
        section, as its modinfo fails then (see :meth:`has_modinfo`).
        """
        if self._modinfo_raw is not None:
            return self._modinfo_raw
        raw = self.elf.section_bytes(".modinfo")
        if raw is None:
            # a section kmod skips (data past the end, a bad name offset) is one of the load problems
            why = "; ".join(self.elf.load_problems())
            raise ModuleFormatError(
                self.path, f"no readable .modinfo section{': ' + why if why else ''} (kmod's modinfo cannot read it "
                "either)")
        self._modinfo_raw = split_modinfo(raw)
        return self._modinfo_raw

    @property
    def modinfo(self) -> list[tuple[str, str]]:
        """``(key, value)`` pairs of ``.modinfo`` in file order (values may repeat per key)."""
        if self._modinfo is None:
            out = []
            for item in self.modinfo_raw:
                key, _, value = item.partition(b"=")
                out.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
            self._modinfo = out
        return self._modinfo

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
        table = self.elf.symbol_table()
        if table is None:
            return []
        names = set(table.names_of(table.undefined()))
        names.discard(b"")
        return sorted({n.decode("utf-8", "replace") for n in names})

    def versions(self) -> list[SymbolVersion]:
        """The ``__versions`` table (modversions CRCs) as kmod lists it; ``[]`` without CONFIG_MODVERSIONS."""
        names, crcs = self.elf.modversions()
        return [
            SymbolVersion((n[1:] if n[:1] == b"." else n).decode("utf-8", "replace"), crc)
            for n, crc in zip(names, crcs)
        ]

    def exported_symbols(self) -> list[ExportedSymbol]:
        """Symbols exported with EXPORT_SYMBOL*, with GPL-only flag and namespace, sorted by name."""
        elf = self.elf
        secs = {}
        for sec_name in ("__ksymtab", "__ksymtab_gpl"):
            i = elf.index(sec_name)
            if i >= 0:
                secs[i] = sec_name
        table = elf.symbol_table()
        if not secs or table is None:
            return []
        namespaces = self._export_namespaces()
        out = []
        positions = table.in_sections(set(secs))
        for k, raw in zip(positions, table.names_of(positions)):
            if raw.startswith(b"__ksymtab_"):
                sym = raw[len(b"__ksymtab_"):].decode("utf-8", "replace")
                out.append(ExportedSymbol(sym, secs[table.shndx[k]] == "__ksymtab_gpl", namespaces.get(sym)))
        out.sort(key=lambda e: e.name)
        return out

    def _export_namespaces(self) -> dict[str, str]:
        # A ksymtab entry (struct kernel_symbol, PREL32 form) is three s32 offsets:
        # value, name, namespace.  In a .ko they are relocations against
        # __ksymtab_strings; read name and namespace strings from there.
        elf = self.elf
        strings_idx = elf.index("__ksymtab_strings")
        table = elf.symbol_table()
        if strings_idx < 0 or table is None:
            return {}
        strings = elf.section_bytes("__ksymtab_strings") or b""
        result: dict[str, str] = {}
        for rela_name in (".rela__ksymtab", ".rela__ksymtab_gpl"):
            rela = elf.get_section_by_name(rela_name)
            if rela is None or rela.type != SHT_RELA:
                continue
            refs: dict[int, dict[int, int]] = {}
            fmt = elf.endian + ("QQq" if elf.is64 else "IIi")
            data = elf.section_data(rela)
            step = struct.calcsize(fmt)
            for r_offset, r_info, addend in struct.iter_unpack(fmt, data[: len(data) - len(data) % step]):
                entry, field = divmod(r_offset, 12)
                if field == 0:  # the value offset points at code, not at a string
                    continue
                # symbol k of the table is ELF symbol k + 1 (the null one is left out)
                k = (r_info >> 32 if elf.is64 else r_info >> 8) - 1
                if not 0 <= k < table.count or table.shndx[k] != strings_idx:
                    continue
                refs.setdefault(entry, {})[field] = table.values[k] + addend
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
        data = self.elf.section_bytes(".note.gnu.build-id")
        if data is None or len(data) < 16:
            return None
        namesz, descsz, ntype = struct.unpack_from(self.elf.endian + "III", data)
        start = 12 + ((namesz + 3) & ~3)
        if ntype != 3 or start + descsz > len(data):
            return None
        return data[start:start + descsz].hex()

    def iter_sections(self) -> Iterator[Section]:
        """The section table after the null entry."""
        return iter(self.elf.sections[1:])


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

"""The one reader of ELF relocatable objects (kernel modules), for every domain and its hot paths.

:class:`ElfImage` reads the ELF header and the section table with :mod:`struct`
over a buffer (bytes or an mmap) and builds nothing else until asked.  ``kmodkit
info``, the index's scan and signing all read modules through it, so they agree
on which files are modules.

The verdict is libkmod's (libkmod-elf.c ``kmod_elf_new``), no stricter: the
magic, class and byte order, a header and a section table that fit in the
file, ``e_shentsize`` of the class, a section-name table that exists, fits and
ends with a NUL.  kmod reads everything else, and so does this reader: a
lookup by name skips a section whose data lies past the end of the file or
whose name lies outside the name table, as libkmod's ``kmod_elf_get_section``
does.  What the kernel would refuse when loading (not ``ET_REL``, ``EM_NONE``,
overlapping sections) is listed by :meth:`ElfImage.load_problems`, not raised.

The image never keeps a view of the buffer: what it returns is copied out, so
an error raised while reading cannot pin an mmap that its owner wants to close.
The module-specific tables (``__versions``, the symbol table as columns) are
read here too, once, for every consumer.

DWARF and everything else slow is left to pyelftools; this module stays small and fast.
"""

from __future__ import annotations

import mmap
import struct
import sys
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from operator import add, itemgetter
from typing import NamedTuple, Union

from kmodkit.errors import ModuleFormatError

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_REL = 1
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_NOTE, SHT_NOBITS, SHT_REL = 7, 8, 9
STB_WEAK = 2

#: e_machine values we name in messages and JSON (the rest show as numbers)
MACHINES: dict[int, str] = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}

# the C-level column reads (memoryview.cast) use the host's byte order
_LITTLE_HOST = sys.byteorder == "little"
# st_info -> 1 when its binding (high nibble) is STB_WEAK, else 0
_WEAK_BIND = bytes(1 if b >> 4 == STB_WEAK else 0 for b in range(256))
# the ELF header after e_ident, by (is64, little)
_EHDR = {(is64, little): struct.Struct(("<" if little else ">") + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"))
         for is64 in (False, True) for little in (False, True)}
# struct kmod_modversion{32,64}: a CRC, then the name, 64 bytes in all
_MODVERSION_SIZE = 64


class Section(NamedTuple):
    """One entry of the section table."""

    number: int  #: position in the section table (its index)
    name: str  #: from the section-name string table ("" when it has none or its offset is outside the table)
    type: int  #: sh_type (SHT_*)
    flags: int  #: sh_flags
    offset: int  #: file offset of the contents
    size: int  #: size in bytes (of the contents, or of the memory for NOBITS)
    link: int  #: sh_link
    info: int  #: sh_info
    addralign: int  #: sh_addralign
    entsize: int  #: size of one entry for tables, else 0


class Symbol(NamedTuple):
    """One entry of a symbol table."""

    name: str  #: the symbol's name ("" for unnamed)
    value: int  #: st_value: an offset into its section, for relocatable objects
    size: int  #: st_size
    bind: int  #: STB_* (0 local, 1 global, 2 weak)
    type: int  #: STT_* (0 notype, 1 object, 2 func, 3 section)
    shndx: int  #: index of its section, SHN_UNDEF for undefined symbols


class ElfImage:
    """A view of one ELF relocatable object held in memory, validated as libkmod validates it.

    ``data`` is the whole file (bytes or an mmap; a signature trailer may
    follow the object, as kmod reads it); ``name`` is used in error messages.
    Raises :class:`ModuleFormatError` when kmod could not read the file either.
    """

    def __init__(self, data: Buffer, name: str = "<memory>") -> None:
        self.name = name
        self.data = data
        self.size = size = len(data)
        if size < 4 or bytes(data[:4]) != ELFMAG:
            raise ModuleFormatError(name, "not an ELF file (no \\x7fELF magic)")
        if size <= 16:
            raise ModuleFormatError(name, f"truncated ELF header ({size} bytes)")
        cls, endian = data[4], data[5]
        if cls not in (ELFCLASS32, ELFCLASS64):
            raise ModuleFormatError(name, f"invalid ELF class {cls} (expected 1 for 32-bit or 2 for 64-bit)")
        if endian not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ModuleFormatError(name, f"invalid ELF data encoding {endian}")
        #: True for ELFCLASS64
        self.is64 = is64 = cls == ELFCLASS64
        #: True for little-endian objects
        self.little = endian == ELFDATA2LSB
        #: struct byte-order prefix, "<" or ">"
        self.endian = "<" if self.little else ">"
        ehdr = _EHDR[is64, self.little]
        if size <= 16 + ehdr.size:  # libkmod wants more than the header
            raise ModuleFormatError(name, f"truncated ELF header ({size} bytes)")
        (e_type, e_machine, _ver, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
         shentsize, shnum, shstrndx) = ehdr.unpack_from(data, 16)
        #: e_type (1 = ET_REL for every kernel module; see :meth:`load_problems`)
        self.type = e_type
        #: e_machine
        self.machine = e_machine
        entry = 64 if is64 else 40
        if shentsize != entry:
            raise ModuleFormatError(name, f"section header size {shentsize}, expected {entry}")
        end = shoff + shnum * entry
        if end > size:
            raise ModuleFormatError(
                name, f"section table ends at byte {end}, past the end of the file ({size} bytes): truncated?"
            )
        if shnum == 0:
            raise ModuleFormatError(name, "no section table")
        if shstrndx == SHN_UNDEF or shstrndx >= shnum:
            raise ModuleFormatError(name, f"section-name table index {shstrndx} is out of range (1..{shnum - 1})")
        self._read_table(bytes(data[shoff:end]), shnum)
        start, length = self.offsets[shstrndx], self.sizes[shstrndx]
        if start + length > size:
            raise ModuleFormatError(name, "section-name table lies outside the file")
        if length == 0 or data[start + length - 1] != 0:
            raise ModuleFormatError(name, "section-name table does not end with a NUL byte")
        #: the section-name string table
        self.shstrtab = bytes(data[start:start + length])
        self._found: dict[str | bytes, int] = {}
        self._sections: list[Section] | None = None
        self._symbols: SymbolTable | None | bool = False

    def _read_table(self, table: bytes, count: int) -> None:
        # the columns every reader needs (name, type, offset, size), one list per field, read in C;
        # the others are read when a whole Section is asked for (see _rest)
        self._table = table
        self._rest_columns: tuple[list[int], ...] | None = None
        if self.is64 and self.little and _LITTLE_HOST:
            with memoryview(table) as view, view.cast("I") as words, view.cast("Q") as quads:
                self.names: list[int] = words[0::16].tolist()
                self.types: list[int] = words[1::16].tolist()
                self.offsets: list[int] = quads[3::8].tolist()
                self.sizes: list[int] = quads[4::8].tolist()
            return
        fmt = self.endian + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")
        cols = list(zip(*struct.iter_unpack(fmt, table)))
        self.names, self.types, self.offsets, self.sizes = list(cols[0]), list(cols[1]), list(cols[4]), list(cols[5])

    def _rest(self) -> tuple[list[int], ...]:
        # sh_flags, sh_link, sh_info, sh_addralign, sh_entsize as columns
        if self._rest_columns is None:
            fmt = self.endian + ("8xQ16x8xIIQQ" if self.is64 else "8xI12xIIII")
            cols = list(zip(*struct.iter_unpack(fmt, self._table)))
            self._rest_columns = tuple(list(c) for c in cols)
        return self._rest_columns

    @property
    def flags(self) -> list[int]:
        """sh_flags of every section."""
        return self._rest()[0]

    # --- sections -----------------------------------------------------------------

    def num_sections(self) -> int:
        """How many entries the section table has (the null one included)."""
        return len(self.names)

    def section_name(self, i: int) -> str:
        """The name of section ``i`` ("" when its name offset lies outside the name table)."""
        off = self.names[i]
        strings = self.shstrtab
        if off >= len(strings):
            return ""
        # section names are ASCII in practice; latin-1 keeps every byte
        return strings[off:strings.index(b"\0", off)].decode("latin-1")

    def index(self, name: str | bytes) -> int:
        """The number of the section libkmod finds for ``name``; -1 when there is none.

        libkmod's rule: the first section after the null one whose name is
        ``name`` and whose data lies within the file.
        """
        found = self._found.get(name)
        if found is None:
            found = self._found[name] = self._index(name.encode() if isinstance(name, str) else name)
        return found

    def _index(self, key: bytes) -> int:
        # every place the name's string starts (a longer name may end with it), then the
        # first section naming one of them: list.index in C instead of a loop over sections
        names, offsets, sizes, size = self.names, self.offsets, self.sizes, self.size
        pattern = key + b"\0"
        best = -1
        pos = self.shstrtab.find(pattern)
        while pos >= 0:
            start = 1
            while True:
                try:
                    i = names.index(pos, start)
                except ValueError:
                    break
                if 0 <= best < i:
                    break
                if offsets[i] + sizes[i] <= size:
                    best = i
                    break
                start = i + 1
            pos = self.shstrtab.find(pattern, pos + 1)
        return best

    def has_section(self, name: str) -> bool:
        """Whether a readable section called ``name`` exists."""
        return self.index(name) >= 0

    def get_section_by_name(self, name: str) -> Section | None:
        """The section libkmod finds for ``name`` (see :meth:`index`), or None."""
        i = self.index(name)
        return None if i < 0 else self.section(i)

    def section_bytes(self, name: str | bytes) -> bytes | None:
        """The file bytes of the section libkmod finds for ``name``; None when there is none.

        As libkmod, the bytes at the section's offset, whatever its type.
        """
        i = self.index(name)
        if i < 0:
            return None
        off = self.offsets[i]
        return bytes(self.data[off:off + self.sizes[i]])

    def section(self, i: int) -> Section:
        """Section ``i`` of the table (IndexError when there is none)."""
        flags, links, infos, aligns, entsizes = self._rest()
        return Section(i, self.section_name(i), self.types[i], flags[i], self.offsets[i], self.sizes[i],
                       links[i], infos[i], aligns[i], entsizes[i])

    @property
    def sections(self) -> list[Section]:
        """The section table, in file order (built on first use)."""
        if self._sections is None:
            self._sections = [self.section(i) for i in range(len(self.names))]
        return self._sections

    def section_rows(self) -> list[tuple[str, int, int, int, int]]:
        """``(name, type, flags, offset, size)`` of every section after the null one, cheaply."""
        flags = self.flags
        return [(self.section_name(i), self.types[i], flags[i], self.offsets[i], self.sizes[i])
                for i in range(1, len(self.names))]

    def section_data(self, section: Section) -> bytes:
        """The bytes of ``section`` (empty for NOBITS); raises when they lie past the end of the file."""
        if section.type == SHT_NOBITS:
            return b""
        if section.offset + section.size > self.size:
            raise ModuleFormatError(
                self.name, f"section {section.number} ({section.name}) ends at byte {section.offset + section.size}, "
                f"past the end of the file ({self.size} bytes)")
        return bytes(self.data[section.offset:section.offset + section.size])

    @property
    def machine_name(self) -> str:
        """The architecture's name (``x86_64``), or ``machine-N`` for unknown numbers."""
        return MACHINES.get(self.machine, f"machine-{self.machine}")

    def load_problems(self) -> list[str]:
        """What the kernel's loader would refuse that kmod reads anyway; ``[]`` for a sound module."""
        out = []
        if self.type != ET_REL:
            out.append(f"ELF type {self.type} is not a relocatable object (kernel modules are ET_REL)")
        if self.machine == 0:
            out.append("ELF machine is EM_NONE (0): not built for any architecture")
        spans = []
        for i in range(1, len(self.names)):
            if self.names[i] >= len(self.shstrtab):
                out.append(f"section {i} has name offset {self.names[i]}, past the section-name table "
                           f"({len(self.shstrtab)} bytes)")
            if self.types[i] in (SHT_NULL, SHT_NOBITS) or not self.sizes[i]:
                continue
            stop = self.offsets[i] + self.sizes[i]
            if stop > self.size:
                out.append(f"section {i} ({self.section_name(i)}) ends at byte {stop}, past the end of the file "
                           f"({self.size} bytes)")
            spans.append((self.offsets[i], stop, i))
        spans.sort()
        for (_a_start, a_end, a), (b_start, _b_end, b) in zip(spans, spans[1:]):
            if b_start < a_end:
                out.append(f"sections {a} ({self.section_name(a)}) and {b} ({self.section_name(b)}) "
                           "overlap in the file")
        return out

    # --- symbols ------------------------------------------------------------------

    def symbol_table(self) -> SymbolTable | None:
        """``.symtab`` and ``.strtab`` as libkmod finds them, as columns; None when either is missing
        or ``.symtab`` is not a whole number of entries (where libkmod falls back to ``__ksymtab_strings``)."""
        if self._symbols is False:
            self._symbols = self._symbol_table()
        return self._symbols  # type: ignore[return-value]

    def _symbol_table(self) -> SymbolTable | None:
        strtab = self.section_bytes(".strtab")
        i = self.index(".symtab")
        step = 24 if self.is64 else 16
        if strtab is None or i < 0 or self.sizes[i] % step:
            return None
        off = self.offsets[i]
        # entry 0 (the null symbol) is left out, as libkmod leaves it out
        return SymbolTable(self, bytes(self.data[off + step:off + self.sizes[i]]), strtab)

    def symtab(self) -> tuple[Section, bytes] | None:
        """The ``.symtab`` section and the ``.strtab`` bytes (see :meth:`symbol_table`), or None when stripped."""
        table = self.symbol_table()
        return None if table is None else (self.section(self.index(".symtab")), table.strings)

    def iter_symbols(self) -> Iterator[Symbol]:
        """Every entry of ``.symtab`` after the null one; nothing when stripped."""
        table = self.symbol_table()
        if table is None:
            return
        fmt = struct.Struct(self.endian + ("IBBHQQ" if self.is64 else "IIIBBH"))
        for entry in fmt.iter_unpack(table.raw):
            if self.is64:
                st_name, info, _other, shndx, value, size = entry
            else:
                st_name, value, size, info, _other, shndx = entry
            yield Symbol(table.name(st_name).decode("utf-8", "replace"), value, size, info >> 4, info & 0xF, shndx)

    # --- __versions ---------------------------------------------------------------

    def modversions(self) -> tuple[list[bytes], list[int]]:
        """Names and CRCs of ``__versions`` in table order, as libkmod reads them; ``([], [])`` when
        it is absent, empty or not a whole number of 64-byte entries.

        Names are raw (a leading ``.`` kept) and run to their NUL, as C's strlen reads them.
        """
        i = self.index("__versions")
        if i < 0 or not self.sizes[i] or self.sizes[i] % _MODVERSION_SIZE:
            return [], []
        off, length = self.offsets[i], self.sizes[i]
        ver = bytes(self.data[off:off + length])
        if self.is64 and self.little and _LITTLE_HOST:
            with memoryview(ver) as view, view.cast("Q") as quads:
                crcs: list[int] = quads[0::8].tolist()
        else:
            crcs = [c for (c,) in struct.iter_unpack(self.endian + ("Q56x" if self.is64 else "I60x"), ver)]
        crclen = 8 if self.is64 else 4
        fields = map(itemgetter(0), struct.iter_unpack(f"{crclen}x{_MODVERSION_SIZE - crclen}s", ver))
        names = list(map(bytes.rstrip, fields, repeat(b"\0")))
        # a NUL inside a name, or a name that fills its field: read each as C does
        if b"\0" in b"".join(names) or ver[_MODVERSION_SIZE - 1::_MODVERSION_SIZE].strip(b"\0"):
            names = [self._cstring(off + k * _MODVERSION_SIZE + crclen) for k in range(len(names))]
        return names, crcs

    def _cstring(self, start: int) -> bytes:
        # a C string in the file: up to its NUL, or to the end of the file
        data = self.data
        if isinstance(data, memoryview):
            tail = bytes(data[start:])
            cut = tail.find(b"\0")
            return tail if cut < 0 else tail[:cut]
        end = data.find(b"\0", start)
        return bytes(data[start:end if end >= 0 else self.size])


class SymbolTable:
    """``.symtab`` (the null entry left out) and ``.strtab`` as columns, without one object per symbol.

    Symbol ``k`` here is entry ``k + 1`` of the ELF table.  Columns are read in
    C (memoryview casts on 64-bit little-endian images, :func:`struct.iter_unpack`
    otherwise); the index reads ~190,000 symbols per tree through them.
    """

    def __init__(self, elf: ElfImage, raw: bytes, strings: bytes) -> None:
        self._file = elf.name
        #: the entries' bytes
        self.raw = raw
        #: the ``.strtab`` bytes
        self.strings = strings
        step = 24 if elf.is64 else 16
        #: how many symbols (the null one not counted)
        self.count = len(raw) // step
        if elf.is64 and elf.little and _LITTLE_HOST:
            view = memoryview(raw)
            #: st_name of each symbol
            self.names: Sequence[int] = view.cast("I")[0::6]
            #: st_value of each symbol
            self.values: Sequence[int] = view.cast("Q")[1::3]
            #: st_shndx of each symbol
            self.shndx: Sequence[int] = view.cast("H")[3::12]
            info = raw[4::24]
            shndx_lo, shndx_hi = raw[6::24], raw[7::24]
        else:
            if elf.is64:
                rows = [(n, v, i, x) for n, i, _o, x, v, _s in struct.iter_unpack(elf.endian + "IBBHQQ", raw)]
            else:
                rows = [(n, v, i, x) for n, v, _s, i, _o, x in struct.iter_unpack(elf.endian + "IIIBBH", raw)]
            self.names = [r[0] for r in rows]
            self.values = [r[1] for r in rows]
            info = bytes(r[2] for r in rows)
            self.shndx = [r[3] for r in rows]
            shndx_lo = bytes(x & 0xFF for x in self.shndx)
            shndx_hi = bytes(x >> 8 for x in self.shndx)
        #: st_info of each symbol, one byte each
        self.info = info
        #: one byte per symbol: 1 where the binding is STB_WEAK
        self.weak = info.translate(_WEAK_BIND)
        # one byte per symbol, zero exactly where st_shndx is SHN_UNDEF
        either = int.from_bytes(shndx_lo, "little") | int.from_bytes(shndx_hi, "little")
        self._defined = either.to_bytes(self.count, "little")

    def undefined(self) -> list[int]:
        """Positions of the undefined symbols (st_shndx SHN_UNDEF), in table order."""
        # The zero bytes of _defined, found without a Python loop: split at them;
        # the k-th zero sits at -1 + the sum of (length + 1) of the pieces before it.
        pieces = self._defined.split(b"\0")
        pieces.pop()
        return list(accumulate(map(add, map(len, pieces), repeat(1)), initial=-1))[1:]

    def in_sections(self, sections: frozenset[int] | set[int]) -> list[int]:
        """Positions of the symbols whose st_shndx is in ``sections``, in table order."""
        shndx = self.shndx
        return [k for k in range(self.count) if shndx[k] in sections]

    def name(self, offset: int) -> bytes:
        """The string at ``offset`` of ``.strtab``; raises when it lies outside the table."""
        strings = self.strings
        if offset >= len(strings):
            raise ModuleFormatError(self._file, f"symbol name offset {offset} is outside the string table "
                                    f"({len(strings)} bytes)")
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else None]

    def names_of(self, positions: list[int]) -> list[bytes]:
        """The names of the symbols at ``positions`` (C-level slicing); raises when one lies outside ``.strtab``."""
        strings = self.strings
        offsets = list(map(self.names.__getitem__, positions))
        if offsets and max(offsets) >= len(strings):
            raise ModuleFormatError(self._file, "a symbol name lies outside the string table")
        if strings.endswith(b"\0"):  # every name has its NUL: map over C methods, ~190,000 names a tree
            return list(map(strings.__getitem__, map(slice, offsets, map(strings.find, repeat(b"\0"), offsets))))
        return [self.name(o) for o in offsets]

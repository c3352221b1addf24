"""A lean reader of ELF relocatable objects, made for kernel modules on hot paths.

It reads the ELF header and section table with :mod:`struct` over a buffer
(bytes or mmap) and builds nothing else until asked.  It validates what a
corrupt module could get wrong (truncation, a section table past the end,
name offsets outside the string table, overlapping sections) and raises
:class:`~kmodkit.errors.ModuleFormatError` naming the file.

DWARF and everything else slow is left to pyelftools (see
:mod:`kmodkit.klog`); this module stays small and fast.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple, Union

from kmodkit.errors import ModuleFormatError

Buffer = Union[bytes, bytearray, memoryview]

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


class Section(NamedTuple):
    """One entry of the section table."""

    number: int  #: position in the section table (its index)
    name: str  #: from the section-name string table ("" when it has none)
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
    """A validated view of one ELF relocatable object held in memory.

    ``data`` is the whole object (bytes or an mmap); ``name`` is used in error
    messages.  Raises :class:`ModuleFormatError` when the header or the
    section table is malformed.
    """

    def __init__(self, data: Buffer, name: str = "<memory>") -> None:
        self.name = name
        self.data = data
        size = len(data)
        if size < 16 or bytes(data[:4]) != ELFMAG:
            raise ModuleFormatError(name, "not an ELF file (no \\x7fELF magic)")
        cls, endian = data[4], data[5]
        if cls not in (ELFCLASS32, ELFCLASS64):
            raise ModuleFormatError(name, f"invalid ELF class {cls} (expected 1 for 32-bit or 2 for 64-bit)")
        if endian not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ModuleFormatError(name, f"invalid ELF data encoding {endian}")
        #: True for ELFCLASS64
        self.is64 = cls == ELFCLASS64
        #: struct byte-order prefix, "<" or ">"
        self.endian = "<" if endian == ELFDATA2LSB else ">"
        e = self.endian
        ehdr = struct.Struct(e + ("HHIQQQIHHHHHH" if self.is64 else "HHIIIIIHHHHHH"))
        if size < 16 + ehdr.size:
            raise ModuleFormatError(name, f"truncated ELF header ({size} bytes)")
        (e_type, e_machine, _ver, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
         shentsize, shnum, shstrndx) = ehdr.unpack_from(data, 16)
        #: e_type (1 = ET_REL for every kernel module)
        self.type = e_type
        #: e_machine
        self.machine = e_machine
        if e_type != ET_REL:
            raise ModuleFormatError(name, f"ELF type {e_type} is not a relocatable object (kernel modules are ET_REL)")
        if e_machine == 0:
            raise ModuleFormatError(name, "ELF machine is EM_NONE (0): not built for any architecture")
        shdr = struct.Struct(e + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII"))
        if shentsize != shdr.size:
            raise ModuleFormatError(name, f"section header size {shentsize}, expected {shdr.size}")
        if shnum == 0 or shoff == 0:
            raise ModuleFormatError(name, "no section table")
        end = shoff + shnum * shentsize
        if end > size:
            raise ModuleFormatError(
                name, f"section table ends at byte {end}, past the end of the file ({size} bytes): truncated?"
            )
        raw = list(shdr.iter_unpack(data[shoff:end]))
        if shstrndx == SHN_UNDEF or shstrndx >= shnum:
            raise ModuleFormatError(name, f"section-name table index {shstrndx} is out of range (0..{shnum - 1})")
        names_off, names_size, names_type = raw[shstrndx][4], raw[shstrndx][5], raw[shstrndx][1]
        if names_type == SHT_NOBITS or names_off + names_size > size or names_size == 0:
            raise ModuleFormatError(name, "section-name table lies outside the file")
        names = bytes(data[names_off:names_off + names_size])
        if names[-1] != 0:
            raise ModuleFormatError(name, "section-name table does not end with a NUL byte")
        # section names are ASCII in practice; latin-1 maps bytes 1:1 so offsets stay valid
        text = names.decode("latin-1")
        bad = [i for i, r in enumerate(raw) if r[0] >= names_size]
        if bad:
            raise ModuleFormatError(
                name, f"section {bad[0]} has name offset {raw[bad[0]][0]}, past the section-name table "
                f"({names_size} bytes)"
            )
        snames = [text[r[0]:text.index("\0", r[0])] for r in raw]
        spans = sorted(
            (r[4], r[4] + r[5], i) for i, r in enumerate(raw) if r[1] != SHT_NOBITS and r[1] != SHT_NULL and r[5]
        )
        for start, stop, i in spans:
            if stop > size:
                raise ModuleFormatError(
                    name, f"section {i} ({snames[i]}) ends at byte {stop}, past the end of the file ({size} bytes)"
                )
        for (_a_start, a_end, a), (b_start, _b_end, b) in zip(spans, spans[1:]):
            if b_start < a_end:
                raise ModuleFormatError(name, f"sections {a} ({snames[a]}) and {b} ({snames[b]}) overlap in the file")
        self._raw = raw
        self._names = snames
        self._by_name = {n: i for i, n in reversed(list(enumerate(snames))) if i}
        self._sections: list[Section] | None = None
        self._symtab: tuple[Section, bytes] | None | bool = False

    @property
    def sections(self) -> list[Section]:
        """The section table, in file order (built on first use)."""
        if self._sections is None:
            self._sections = [self._section(i) for i in range(len(self._raw))]
        return self._sections

    def section_rows(self) -> list[tuple[str, int, int, int, int]]:
        """``(name, type, flags, offset, size)`` of every section after the null one, cheaply."""
        return [(n, r[1], r[2], r[4], r[5]) for n, r in zip(self._names[1:], self._raw[1:])]

    def _section(self, i: int) -> Section:
        r = self._raw[i]
        return Section(i, self._names[i], r[1], r[2], r[4], r[5], r[6], r[7], r[8], r[9])

    @property
    def machine_name(self) -> str:
        """The architecture's name (``x86_64``), or ``machine-N`` for unknown numbers."""
        return MACHINES.get(self.machine, f"machine-{self.machine}")

    def get_section_by_name(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        i = self._by_name.get(name)
        return None if i is None else self._section(i)

    def num_sections(self) -> int:
        """How many entries the section table has (the null one included)."""
        return len(self._raw)

    def has_section(self, name: str) -> bool:
        """Whether a section called ``name`` exists."""
        return name in self._by_name

    def section_data(self, section: Section) -> memoryview:
        """The bytes of ``section`` (empty for NOBITS)."""
        if section.type == SHT_NOBITS:
            return memoryview(b"")
        return memoryview(self.data)[section.offset:section.offset + section.size]

    def symtab(self) -> tuple[Section, bytes] | None:
        """The ``.symtab`` section and its string table bytes, or None when stripped."""
        if self._symtab is not False:
            return self._symtab  # type: ignore[return-value]
        sym = self.get_section_by_name(".symtab")
        if sym is None or sym.type != SHT_SYMTAB:
            self._symtab = None
            return None
        if sym.link >= len(self._raw):
            raise ModuleFormatError(self.name, f".symtab links to section {sym.link}, which does not exist")
        self._symtab = (sym, bytes(self.section_data(self._section(sym.link))))
        return self._symtab

    def iter_symbols(self) -> Iterator[Symbol]:
        """Every entry of ``.symtab`` after the null one; nothing when stripped."""
        found = self.symtab()
        if found is None:
            return
        sym, strings = found
        e = self.endian
        fmt = struct.Struct(e + ("IBBHQQ" if self.is64 else "IIIBBH"))
        data = self.section_data(sym)
        usable = len(data) - len(data) % fmt.size
        first = True
        for entry in fmt.iter_unpack(data[:usable]):
            if first:
                first = False
                continue
            if self.is64:
                st_name, info, _other, shndx, value, size = entry
            else:
                st_name, value, size, info, _other, shndx = entry
            yield Symbol(_cstr(strings, st_name, self.name), value, size, info >> 4, info & 0xF, shndx)

    def _symtab_fields(self, fmt64: str, fmt32: str, skip_null: bool = False
                       ) -> tuple[Iterator[tuple[int, ...]], bytes] | None:
        """Chosen fields of every ``.symtab`` entry, unpacked in C (formats for 64- and 32-bit entries),
        and the string table; None when stripped."""
        found = self.symtab()
        if found is None:
            return None
        sym, strings = found
        step = 24 if self.is64 else 16
        data = self.section_data(sym)
        start = step if skip_null else 0
        fmt = self.endian + (fmt64 if self.is64 else fmt32)
        return struct.iter_unpack(fmt, data[start:len(data) - len(data) % step]), strings

    def symbol_values(self) -> list[tuple[int, int]]:
        """``(st_value, st_shndx)`` of every ``.symtab`` entry, the null one included (index = symbol number).

        Unpacked in C without decoding names: for hot loops that follow relocations.
        """
        found = self._symtab_fields("6xHQ8x", "4xI4x2xH")
        if found is None:
            return []
        # the 64-bit entry holds st_shndx before st_value
        return [(r[1], r[0]) for r in found[0]] if self.is64 else [(r[0], r[1]) for r in found[0]]

    def symbol_names_in(self, sections: frozenset[int] | set[int]) -> list[tuple[str, int]]:
        """``(name, shndx)`` of the named symbols whose section number is in ``sections``.

        Cheap on purpose: the table is unpacked in C and only the chosen
        symbols' names are decoded (``{SHN_UNDEF}`` gives the undefined ones).
        """
        found = self._symtab_fields("I2xH16x", "I8x2xH", skip_null=True)
        if found is None:
            return []
        rows, strings = found
        # one decode of the table, then slicing: symbol names are ASCII in practice and
        # latin-1 keeps byte offsets valid; non-ASCII bytes are re-decoded as UTF-8 below
        text = strings.decode("latin-1")
        try:
            out = [
                (text[st_name:text.index("\0", st_name)], shndx)
                for st_name, shndx in rows
                if shndx in sections and st_name
            ]
        except ValueError:
            raise ModuleFormatError(self.name, "a symbol name lies outside the symbol string table") from None
        if not strings.isascii():
            out = [(n.encode("latin-1").decode("utf-8", "replace"), i) for n, i in out]
        return out


def _cstr(table: bytes, offset: int, name: str) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise ModuleFormatError(name, f"symbol name offset {offset} is outside the string table ({len(table)} bytes)")
    return table[offset:end].decode("utf-8", "replace")

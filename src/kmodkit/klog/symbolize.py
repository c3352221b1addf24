"""Module frames to source lines: DWARF line tables and inline chains of a .ko, through pyelftools.

A module is a relocatable object: its sections all start at address 0 and its DWARF only makes
sense once the ``.rela.debug_*`` relocations are applied.  We give ``.text`` address 0 (the
section-relative address addr2line uses) and every other allocated section its own base, patch the
symbol table to match, and let pyelftools apply the relocations: a frame's address is then
``base(section of symbol) + symbol value + offset``, unambiguous across .text, .init.text, ....
Each module's DWARF is read once and cached in the process.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any

from kmodkit.errors import ModuleFormatError

log = logging.getLogger(__name__)

SHF_ALLOC = 0x2
STT_FUNC = 2
#: the base address of each allocated section but .text: far apart, within 32 bits for R_*_32 relocations
_SECTION_STRIDE = 0x1000000


@dataclass(frozen=True)
class Location:
    """One level of a source location: a function and the line in it."""

    function: str | None  #: the function (an inlined one for all but the last level), None when unknown
    file: str  #: the source file, as the compiler recorded it
    line: int  #: the line (0 when the compiler gave none)
    column: int  #: the column (0 when not recorded)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def to_json(self) -> dict[str, object]:
        """The location as a JSON object."""
        return {"function": self.function, "file": self.file, "line": self.line, "column": self.column}


class ModuleDebugInfo:
    """The symbols and DWARF of one module file, for address lookups.

    Raises :class:`ModuleFormatError` when the file is not a module; :attr:`has_dwarf` is False
    when it carries no debug info (lookups then return nothing).
    """

    def __init__(self, path: str) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        from kmodkit.modfile.module import ModuleFile

        #: the module file
        self.path = path
        with ModuleFile.open(path) as opened:
            raw = bytes(opened.data)
        # parse a copy in memory: views into a closed mmap would pin it (BufferError at close)
        mf = ModuleFile.from_bytes(raw, path)
        if True:
            #: the module's build id, None when it has none
            self.build_id = mf.build_id
            data = bytearray(raw)
            elf = mf.elf
            self._bases: dict[int, int] = {}
            n = 0
            for sec in elf.sections:
                if sec.flags & SHF_ALLOC and sec.number:
                    self._bases[sec.number] = 0 if sec.name == ".text" else (n + 1) * _SECTION_STRIDE
                    n += 1
            self._functions: dict[str, tuple[int, int]] = {}  # name -> (address, size)
            self._patch_symbols(elf, data)
        try:
            self._elf = ELFFile(io.BytesIO(bytes(data)))
            #: whether the file has DWARF line tables
            self.has_dwarf = self._elf.has_dwarf_info() and self._elf.get_section_by_name(".debug_line") is not None
            self._dwarf = self._elf.get_dwarf_info(relocate_dwarf_sections=True) if self.has_dwarf else None
        except (ELFError, ValueError, KeyError, struct.error) as exc:
            raise ModuleFormatError(path, f"unreadable debug info: {exc}") from None
        self._cus: list[_CompileUnit] | None = None

    def _patch_symbols(self, elf: Any, data: bytearray) -> None:
        found = elf.symtab()
        if found is None:
            return
        sym, _strings = found
        fmt = "<" if elf.endian == "<" else ">"
        entsize, value_at, value_fmt = (24, 8, "Q") if elf.is64 else (16, 4, "I")
        for i, s in enumerate(elf.iter_symbols(), start=1):
            base = self._bases.get(s.shndx)
            if base is None:
                continue
            if base:
                struct.pack_into(fmt + value_fmt, data, sym.offset + i * entsize + value_at, s.value + base)
            if s.type == STT_FUNC and s.name:
                self._functions.setdefault(s.name, (base + s.value, s.size))

    def address(self, symbol: str, offset: int) -> int | None:
        """The address of ``symbol+offset`` in our layout, None when the module has no such function."""
        found = self._functions.get(symbol)
        return None if found is None else found[0] + offset

    def section_address(self, address: int) -> tuple[str, int]:
        """``(section name, offset in it)`` of an address of our layout (for addr2line -j)."""
        for number, base in self._bases.items():
            sec = self._elf.get_section(number)
            if base <= address < base + sec["sh_size"]:
                return sec.name, address - base
        return ".text", address

    def locate(self, address: int) -> list[Location]:
        """The source of ``address``, innermost inlined function first; [] when unknown."""
        if self._dwarf is None:
            return []
        for cu in self._units():
            if cu.covers(address):
                return cu.locate(address)
        return []

    def _units(self) -> list[_CompileUnit]:
        if self._cus is None:
            assert self._dwarf is not None
            self._cus = [_CompileUnit(self._dwarf, cu) for cu in self._dwarf.iter_CUs()]
        return self._cus


class _CompileUnit:
    """One compile unit's line table and function scopes, sorted for bisection (built lazily)."""

    def __init__(self, dwarf: Any, cu: Any) -> None:
        self._dwarf = dwarf
        self._cu = cu
        self._rows: list[tuple[int, int, int, int, bool]] | None = None  # (address, file, line, column, end)
        self._starts: list[int] = []
        self._scopes: list[tuple[int, int, int, Any]] | None = None  # (low, high, depth, die)
        self._files: list[str] = []
        self._version = cu["version"]

    def covers(self, address: int) -> bool:
        self._load_lines()
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and not self._rows[i][4]  # type: ignore[index]

    def _load_lines(self) -> None:
        if self._rows is not None:
            return
        prog = self._dwarf.line_program_for_CU(self._cu)
        rows: list[tuple[int, int, int, int, bool]] = []
        if prog is not None:
            self._files = self._file_names(prog)
            for entry in prog.get_entries():
                st = entry.state
                if st is None:
                    continue
                rows.append((st.address, st.file, st.line, st.column, bool(st.end_sequence)))
        # stable sort by address; at one address an end_sequence comes before the next sequence's row
        rows.sort(key=lambda r: (r[0], not r[4]))
        self._rows = rows
        self._starts = [r[0] for r in rows]

    def _file_names(self, prog: Any) -> list[str]:
        header = prog.header
        dirs = [_s(d) for d in header["include_directory"]]
        top = self._cu.get_top_DIE()
        comp_dir = _s(top.attributes["DW_AT_comp_dir"].value) if "DW_AT_comp_dir" in top.attributes else ""
        names = []
        for fe in header["file_entry"]:
            name = _s(fe.name)
            d = fe.dir_index
            if self._version >= 5:
                base = dirs[d] if d < len(dirs) else ""
            else:
                base = comp_dir if d == 0 else (dirs[d - 1] if d - 1 < len(dirs) else "")
            if base and not name.startswith("/"):
                if not base.startswith("/") and comp_dir:
                    base = os.path.join(comp_dir, base)
                name = os.path.join(base, name)
            names.append(name)
        return names

    def _file(self, index: int) -> str:
        i = index if self._version >= 5 else index - 1
        return self._files[i] if 0 <= i < len(self._files) else "??"

    def _line_at(self, address: int) -> tuple[str, int, int] | None:
        self._load_lines()
        assert self._rows is not None
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or self._rows[i][4]:
            return None
        _a, f, line, col, _e = self._rows[i]
        return self._file(f), line, col

    def _load_scopes(self) -> list[tuple[int, int, int, Any]]:
        if self._scopes is None:
            scopes: list[tuple[int, int, int, Any]] = []
            self._walk(self._cu.get_top_DIE(), 0, scopes)
            self._scopes = scopes
        return self._scopes

    def _walk(self, die: Any, depth: int, out: list[tuple[int, int, int, Any]]) -> None:
        for child in die.iter_children():
            if child.tag in ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine"):
                for low, high in self._ranges(child):
                    out.append((low, high, depth, child))
            if child.has_children:
                self._walk(child, depth + 1, out)

    def _ranges(self, die: Any) -> list[tuple[int, int]]:
        attrs = die.attributes
        if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
            low = attrs["DW_AT_low_pc"].value
            high = attrs["DW_AT_high_pc"]
            end = high.value if high.form == "DW_FORM_addr" else low + high.value
            return [(low, end)]
        if "DW_AT_ranges" in attrs:
            try:
                if self._version >= 5:
                    rl = self._dwarf.range_lists().get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=self._cu)
                else:
                    rl = self._dwarf.range_lists().get_range_list_at_offset(attrs["DW_AT_ranges"].value)
            except Exception as exc:  # pyelftools raises bare exceptions on odd range lists
                log.debug("range list of %s: %s", die.offset, exc)
                return []
            top = self._cu.get_top_DIE().attributes
            base = top["DW_AT_low_pc"].value if "DW_AT_low_pc" in top else 0
            out = []
            for e in rl:
                if hasattr(e, "begin_offset"):
                    absolute = getattr(e, "is_absolute", False)
                    b = e.begin_offset if absolute else base + e.begin_offset
                    n = e.end_offset if absolute else base + e.end_offset
                    out.append((b, n))
                elif hasattr(e, "base_address"):
                    base = e.base_address
            return out
        return []

    def locate(self, address: int) -> list[Location]:
        here = self._line_at(address)
        if here is None:
            return []
        chain = sorted((s for s in self._load_scopes() if s[0] <= address < s[1]), key=lambda s: s[2])
        if not chain:
            return [Location(None, *here)]
        out: list[Location] = []
        file, line, col = here
        for _low, _high, _depth, die in reversed(chain):  # innermost first
            out.append(Location(_name(die), file, line, col))
            if die.tag == "DW_TAG_inlined_subroutine":
                a = die.attributes
                file = self._file(a["DW_AT_call_file"].value) if "DW_AT_call_file" in a else "??"
                line = a["DW_AT_call_line"].value if "DW_AT_call_line" in a else 0
                col = a["DW_AT_call_column"].value if "DW_AT_call_column" in a else 0
            else:
                break
        return out

    def __repr__(self) -> str:
        return f"<CU at {self._cu.cu_offset}>"


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _name(die: Any) -> str | None:
    for _ in range(4):
        a = die.attributes
        if "DW_AT_name" in a:
            return _s(a["DW_AT_name"].value)
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in a:
                die = die.get_DIE_from_attribute(ref)
                break
        else:
            return None
    return None

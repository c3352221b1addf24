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
        #: the module's build id, None when it has none
        self.build_id = mf.build_id
        elf = mf.elf
        self._bases: dict[int, int] = {}
        self._sections: dict[int, tuple[str, int]] = {}  # allocated section -> (name, size)
        n = 0
        for sec in elf.sections:
            if sec.flags & SHF_ALLOC and sec.number:
                self._bases[sec.number] = 0 if sec.name == ".text" else (n + 1) * _SECTION_STRIDE
                self._sections[sec.number] = (sec.name, sec.size)
                n += 1
        self._functions: dict[str, tuple[int, int]] = {}  # name -> (address, size)
        values = self._symbol_values(elf)
        data = bytearray(raw)
        _relocate_debug_sections(elf, data, values, path)
        try:
            self._elf = ELFFile(io.BytesIO(bytes(data)))
            #: whether the file has DWARF line tables
            self.has_dwarf = self._elf.has_dwarf_info() and self._elf.get_section_by_name(".debug_line") is not None
            self._dwarf = self._elf.get_dwarf_info(relocate_dwarf_sections=False) if self.has_dwarf else None
        except (ELFError, ValueError, KeyError, struct.error) as exc:
            raise ModuleFormatError(path, f"unreadable debug info: {exc}") from None
        self._cus: list[_CompileUnit] | None = None
        self._cache: dict[int, list[Location]] = {}

    def _symbol_values(self, elf: Any) -> list[int]:
        """Each symbol's value in our layout, by index (0 for the null symbol and undefined ones)."""
        values = [0]
        for s in elf.iter_symbols():
            base = self._bases.get(s.shndx, 0)
            values.append(s.value + base)
            if s.type == STT_FUNC and s.name and s.shndx in self._bases:
                self._functions.setdefault(s.name, (base + s.value, s.size))
        return values

    def address(self, symbol: str, offset: int) -> int | None:
        """The address of ``symbol+offset`` in our layout, None when the module has no such function."""
        found = self._functions.get(symbol)
        return None if found is None else found[0] + offset

    def section_address(self, address: int) -> tuple[str, int]:
        """``(section name, offset in it)`` of an address of our layout (for addr2line -j)."""
        for number, base in self._bases.items():
            name, size = self._sections[number]
            if base <= address < base + size:
                return name, address - base
        return ".text", address

    def locate(self, address: int) -> list[Location]:
        """The source of ``address``, innermost inlined function first; [] when unknown."""
        if address not in self._cache:
            found = [] if self._dwarf is None else \
                next((cu.locate(address) for cu in self._units() if cu.covers(address)), [])
            if self._dwarf is not None and (not found or found[-1].function is None):
                # no line or no function for it (padding before a function, a stub): name the function
                # from the symbol table, as addr2line does
                name = self._function_at(address)
                if not found:
                    found = [Location(name, "??", 0, 0)] if name else []
                else:
                    found[-1] = Location(name, found[-1].file, found[-1].line, found[-1].column)
            self._cache[address] = found
        return self._cache[address]

    def _function_at(self, address: int) -> str | None:
        best = None
        for name, (start, size) in self._functions.items():
            if start <= address < start + max(size, 1) and (best is None or start > best[1]):
                best = (name, start)
        return best[0] if best else None

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

    def _top_functions(self) -> list[tuple[int, int, Any]]:
        """The compile unit's functions (and their other children holding code), with their ranges."""
        if self._scopes is None:
            scopes: list[tuple[int, int, int, Any]] = []
            for child in self._cu.get_top_DIE().iter_children():
                if child.tag == "DW_TAG_subprogram":
                    for low, high in self._ranges(child):
                        scopes.append((low, high, 0, child))
            self._scopes = scopes
        return [(low, high, die) for low, high, _d, die in self._scopes]

    def _chain(self, address: int) -> list[Any]:
        """The DIEs of code containing ``address``, outermost (a function) first; only the functions
        that contain it are descended into (a module's type DIEs are never parsed twice)."""
        chain: list[Any] = []
        todo = [die for low, high, die in self._top_functions() if low <= address < high][:1]
        while todo:
            die = todo.pop()
            chain.append(die)
            nxt = None
            for child in die.iter_children():
                if child.tag in ("DW_TAG_inlined_subroutine", "DW_TAG_lexical_block", "DW_TAG_subprogram"):
                    ranges = self._ranges(child)
                    if any(low <= address < high for low, high in ranges):
                        nxt = child
                        break
            if nxt is not None:
                todo.append(nxt)
        return [d for d in chain if d.tag != "DW_TAG_lexical_block"]

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
        chain = self._chain(address)
        if not chain:
            return [Location(None, *here)]
        out: list[Location] = []
        file, line, col = here
        for die in reversed(chain):  # innermost first
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


#: (e_machine, relocation type) -> (bytes written, whether the addend is in the section (REL) or the entry)
_RELOCATIONS: dict[tuple[int, int], int] = {
    (62, 1): 8, (62, 10): 4, (62, 11): 4,  # x86_64: R_X86_64_64, _32, _32S
    (183, 257): 8, (183, 258): 4,  # aarch64: R_AARCH64_ABS64, _ABS32
    (3, 1): 4,  # i386: R_386_32
    (40, 2): 4,  # arm: R_ARM_ABS32
    (243, 2): 4, (243, 1): 8,  # riscv: R_RISCV_32, _64
    (22, 4): 4, (22, 22): 8,  # s390: R_390_32, _64
    (21, 1): 4, (21, 38): 8,  # ppc64: R_PPC64_ADDR32, _ADDR64
}
_SHT_RELA, _SHT_REL = 4, 9


def _relocate_debug_sections(elf: Any, data: bytearray, values: list[int], path: str) -> None:
    """Apply the ``.rela.debug_*`` (or ``.rel.debug_*``) relocations of a module to ``data`` in place,
    with the symbol values of our layout.  (pyelftools can do it too, ~50 times slower.)"""
    e = elf.endian
    machine = elf.machine
    secs = elf.sections
    for rel in secs:
        if rel.type not in (_SHT_RELA, _SHT_REL) or not rel.info or rel.info >= len(secs):
            continue
        target = secs[rel.info]
        if not target.name.startswith(".debug_"):
            continue
        rela = rel.type == _SHT_RELA
        if elf.is64:
            entry = struct.Struct(e + ("QQq" if rela else "QQ"))
        else:
            entry = struct.Struct(e + ("IIi" if rela else "II"))
        body = elf.section_data(rel)
        usable = len(body) - len(body) % entry.size
        for fields in entry.iter_unpack(body[:usable]):
            r_offset, r_info = fields[0], fields[1]
            sym, rtype = (r_info >> 32, r_info & 0xFFFFFFFF) if elf.is64 else (r_info >> 8, r_info & 0xFF)
            size = _RELOCATIONS.get((machine, rtype))
            if size is None or sym >= len(values) or r_offset + size > target.size:
                continue
            at = target.offset + r_offset
            fmt = e + ("Q" if size == 8 else "I")
            addend = fields[2] if rela else struct.unpack_from(fmt, data, at)[0]
            struct.pack_into(fmt, data, at, (values[sym] + addend) & ((1 << (8 * size)) - 1))

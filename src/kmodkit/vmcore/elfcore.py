"""The ELF core of a crash dump: its PT_LOAD segments (physical memory) and its notes.

A vmcore is an ET_CORE ELF file: notes (CPU registers, VMCOREINFO) in PT_NOTE segments and the
machine's memory in PT_LOAD segments whose ``p_paddr`` is the physical address (QEMU's
``dump-guest-memory`` leaves ``p_vaddr`` 0 without paging; kdump's /proc/vmcore fills both).  A
segment's bytes past ``p_filesz`` up to ``p_memsz`` are zeros (makedumpfile -E leaves them out).

Modules (ET_REL, read through sections) have their reader in :mod:`kmodkit.modfile.elf`; a core is
read through its program headers, which that reader does not parse, so it is read here with the same
constants.  The file is mapped, never read whole.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

from kmodkit.errors import UserError, from_oserror
from kmodkit.modfile.elf import ELFCLASS64, ELFDATA2LSB, ELFMAG
from kmodkit.modfile.opener import open_regular

ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
EHDR_SIZE, PHDR_SIZE = 64, 56
#: the ELF header after e_ident (64-bit, little-endian)
_EHDR = struct.Struct("<HHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")


class Segment(NamedTuple):
    """One PT_LOAD segment: physical memory held in the file."""

    paddr: int  #: the physical address it starts at
    offset: int  #: where its bytes start in the file
    filesz: int  #: bytes held in the file
    memsz: int  #: bytes of memory it stands for (the rest are zeros)


class Note(NamedTuple):
    """One ELF note."""

    name: str  #: its owner ("CORE", "VMCOREINFO", "QEMU")
    type: int  #: its type number
    desc: bytes  #: its payload


class CoreFile:
    """A 64-bit little-endian ELF core file, mapped; a context manager that unmaps it.

    Raises :class:`UserError` when the file is not such a core or its headers do not fit in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd, st = open_regular(path, "a vmcore")  # a FIFO or device is refused, never waited on
        try:
            size = st.st_size
            if size < EHDR_SIZE:
                raise UserError(path, f"not a vmcore: {size} bytes, too short for an ELF header")
            self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except OSError as exc:
            raise from_oserror(exc, path) from exc
        finally:
            os.close(fd)
        #: the file's size in bytes
        self.size = size
        try:
            self._parse()
        except BaseException:
            self._map.close()
            raise

    def __enter__(self) -> CoreFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the file."""
        self._map.close()

    def _parse(self) -> None:
        m, path = self._map, self.path
        if m[:4] != ELFMAG:
            raise UserError(path, "not a vmcore: no ELF magic",
                            "give an ELF core (vm run --dump-on-panic writes one; makedumpfile -E converts kdump's)")
        if m[4] != ELFCLASS64 or m[5] != ELFDATA2LSB:
            raise UserError(path, "not a 64-bit little-endian ELF file: only x86_64 vmcores are read")
        e_type, _machine, _v, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = _EHDR.unpack_from(m, 16)
        if e_type != ET_CORE:
            raise UserError(path, f"not a vmcore: ELF type {e_type}, expected {ET_CORE} (ET_CORE)")
        if phentsize != PHDR_SIZE or phnum == 0:
            raise UserError(path, f"not a vmcore: {phnum} program headers of {phentsize} bytes")
        if phoff + phnum * PHDR_SIZE > self.size:
            raise UserError(path, f"truncated vmcore: its program headers end past the end of the file "
                                  f"({self.size} bytes)")
        segments: list[Segment] = []
        notes: list[tuple[int, int]] = []
        for i in range(phnum):
            p_type, _fl, offset, _vaddr, paddr, filesz, memsz, _al = _PHDR.unpack_from(m, phoff + i * PHDR_SIZE)
            if p_type == PT_LOAD:
                segments.append(Segment(paddr, offset, filesz, memsz))
            elif p_type == PT_NOTE:
                if offset + filesz > self.size:
                    raise UserError(path, f"truncated vmcore: its notes end at byte {offset + filesz}, past the end "
                                          f"of the file ({self.size} bytes)")
                notes.append((offset, filesz))
        if not segments:
            raise UserError(path, "not a vmcore: no PT_LOAD segment (no memory in it)")
        segments.sort()
        #: the memory segments, by physical address
        self.segments = segments
        self._starts = [s.paddr for s in segments]
        self._notes = notes

    def notes(self) -> Iterator[Note]:
        """Every note of every PT_NOTE segment, in order (a malformed note ends its segment)."""
        m = self._map
        for offset, size in self._notes:
            pos, end = offset, offset + size
            while pos + _NHDR.size <= end:
                namesz, descsz, ntype = _NHDR.unpack_from(m, pos)
                name_at = pos + _NHDR.size
                desc_at = name_at + (namesz + 3 & ~3)
                nxt = desc_at + (descsz + 3 & ~3)
                if desc_at + descsz > end:
                    break
                name = bytes(m[name_at:name_at + namesz]).rstrip(b"\0").decode("ascii", "replace")
                yield Note(name, ntype, bytes(m[desc_at:desc_at + descsz]))
                pos = nxt

    def read_phys(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of physical memory at ``paddr``; UserError when the dump does not hold them."""
        out = bytearray()
        while size > 0:
            i = bisect.bisect_right(self._starts, paddr) - 1
            seg = self.segments[i] if i >= 0 else None
            if seg is None or paddr >= seg.paddr + seg.memsz:
                raise UserError(self.path, f"physical address {paddr:#x} is not in the dump")
            rel = paddr - seg.paddr
            n = min(size, seg.memsz - rel)
            have = max(0, min(n, seg.filesz - rel))
            if have:
                start = seg.offset + rel
                if start + have > self.size:
                    raise UserError(self.path, f"truncated vmcore: physical address {paddr:#x} lies at byte "
                                               f"{start + have - 1}, past the end of the file ({self.size} bytes)")
                out += self._map[start:start + have]
            out += bytes(n - have)
            paddr += n
            size -= n
        return bytes(out)


def fix_qemu_header(path: str) -> bool:
    """Move the program headers of a QEMU 7.2 ELF dump to right after the ELF header, in place.

    QEMU 7.2 (Debian 12's) writes its section headers at byte 64 and the program headers after them, and
    an ``e_ehsize`` of 8; makedumpfile (1.7.2 and its master) reads program headers at byte 64 whatever
    ``e_phoff`` says, and fails with "Can't get the number of PT_LOAD".  The program headers fit at 64
    (they only move up), the section headers (a name table only) are dropped.  Returns True when the
    file was changed, False when its layout was already the usual one."""
    with open(path, "r+b") as f:
        head = f.read(EHDR_SIZE)
        if len(head) < EHDR_SIZE or head[:4] != ELFMAG or head[4] != ELFCLASS64 or head[5] != ELFDATA2LSB:
            return False
        fields = list(_EHDR.unpack_from(head, 16))
        phoff, phentsize, phnum = fields[4], fields[8], fields[9]
        if phoff <= EHDR_SIZE or phentsize != PHDR_SIZE:
            return False
        f.seek(phoff)
        table = f.read(phnum * PHDR_SIZE)
        if len(table) != phnum * PHDR_SIZE:
            return False
        fields[4], fields[5], fields[7] = EHDR_SIZE, 0, EHDR_SIZE  # e_phoff, e_shoff, e_ehsize
        fields[10], fields[11], fields[12] = 0, 0, 0  # e_shentsize, e_shnum, e_shstrndx
        f.seek(16)
        f.write(_EHDR.pack(*fields))
        f.write(table)
    return True

"""A small ELF64 relocatable-object writer, for module files the tests corrupt on purpose.

Real modules cannot show a section table past the end of the file or a
``.modinfo`` with no final NUL; tests build such files here and say so in
their names.  The writer makes a minimal but valid module: ``.modinfo``,
``.symtab``/``.strtab``, ``.shstrtab`` and any extra sections asked for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 1, 2, 3, 8


@dataclass
class Sec:
    """A section to write."""

    name: str  #: section name
    data: bytes  #: contents
    type: int = SHT_PROGBITS  #: sh_type
    link: int = 0  #: sh_link
    info: int = 0  #: sh_info
    entsize: int = 0  #: sh_entsize
    offset: int | None = None  #: force sh_offset (to corrupt), else laid out in order
    size: int | None = None  #: force sh_size (to corrupt), else len(data)
    name_offset: int | None = None  #: force sh_name (to corrupt)


@dataclass
class ElfSpec:
    """A whole object: header fields and sections (the null section and .shstrtab are added)."""

    sections: list[Sec] = field(default_factory=list)
    ei_class: int = 2  #: 1 = 32-bit (the writer still writes 64-bit structures), 2 = 64-bit
    ei_data: int = 1  #: 1 = little-endian
    e_type: int = 1  #: ET_REL
    e_machine: int = 62  #: x86_64
    e_shentsize: int = 64  #: size of a section header
    shoff: int | None = None  #: force e_shoff
    shnum: int | None = None  #: force e_shnum
    shstrndx: int | None = None  #: force e_shstrndx


def modinfo_bytes(*pairs: tuple[str, str]) -> bytes:
    """``.modinfo`` contents for ``key=value`` pairs, each NUL-terminated."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def simple_module(modinfo: bytes | None = None, symbols: list[tuple[str, int]] | None = None) -> ElfSpec:
    """A well-formed minimal module; ``symbols`` are (name, shndx) pairs (0 = undefined)."""
    modinfo = modinfo if modinfo is not None else modinfo_bytes(
        ("license", "GPL"), ("name", "tiny"), ("vermagic", "6.1.0-test SMP mod_unload modversions ")
    )
    strtab = b"\0"
    syms = struct.pack("<IBBHQQ", 0, 0, 0, 0, 0, 0)
    for name, shndx in symbols or [("printk", 0)]:
        syms += struct.pack("<IBBHQQ", len(strtab), 0x10, 0, shndx, 0, 0)
        strtab += name.encode() + b"\0"
    return ElfSpec(sections=[
        Sec(".text", b"\xc3" * 16),
        Sec(".modinfo", modinfo),
        Sec(".symtab", syms, type=SHT_SYMTAB, link=4, info=1, entsize=24),
        Sec(".strtab", strtab, type=SHT_STRTAB),
    ])


def build(spec: ElfSpec) -> bytes:
    """The bytes of the object ``spec`` describes (corruptions included)."""
    sections = list(spec.sections)
    names = b"\0"
    name_offs = []
    for s in sections:
        name_offs.append(len(names))
        names += s.name.encode() + b"\0"
    shstr_off = len(names)
    names += b".shstrtab\0"
    body = bytearray(b"\0" * 64)
    offsets = []
    for s in sections:
        while len(body) % 8:
            body.append(0)
        offsets.append(len(body))
        if s.type != SHT_NOBITS:
            body += s.data
    while len(body) % 8:
        body.append(0)
    shstr_data_off = len(body)
    body += names
    while len(body) % 8:
        body.append(0)
    shoff = len(body)
    headers = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for s, off, noff in zip(sections, offsets, name_offs):
        headers.append(struct.pack(
            "<IIQQQQIIQQ",
            s.name_offset if s.name_offset is not None else noff, s.type, 2, 0,
            s.offset if s.offset is not None else off,
            s.size if s.size is not None else len(s.data),
            s.link, s.info, 8, s.entsize,
        ))
    headers.append(struct.pack("<IIQQQQIIQQ", shstr_off, SHT_STRTAB, 0, 0, shstr_data_off, len(names), 0, 0, 1, 0))
    body += b"".join(headers)
    shnum = spec.shnum if spec.shnum is not None else len(headers)
    shstrndx = spec.shstrndx if spec.shstrndx is not None else len(headers) - 1
    ident = b"\x7fELF" + bytes([spec.ei_class, spec.ei_data, 1, 0]) + b"\0" * 8
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", spec.e_type, spec.e_machine, 1, 0, 0,
        spec.shoff if spec.shoff is not None else shoff, 0, 64, 0, 0, spec.e_shentsize, shnum, shstrndx,
    )
    body[:64] = ehdr
    return bytes(body)

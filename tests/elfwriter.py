"""A small ELF relocatable-object writer (32/64-bit, either byte order), for module files the tests corrupt on purpose.

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
    """A whole object: header fields and sections (the null section and .shstrtab are added).

    The structures are written in the class and byte order ``ei_class``/``ei_data`` name;
    ``layout_class``/``layout_data`` write them otherwise (a header that lies about its class).
    """

    sections: list[Sec] = field(default_factory=list)
    ei_class: int = 2  #: 1 = 32-bit, 2 = 64-bit (anything else is written with 64-bit structures)
    ei_data: int = 1  #: 1 = little-endian, 2 = big-endian (anything else is written little-endian)
    e_type: int = 1  #: ET_REL
    e_machine: int = 62  #: x86_64
    e_shentsize: int | None = None  #: size of a section header (default: the layout's, 40 or 64)
    shoff: int | None = None  #: force e_shoff
    shnum: int | None = None  #: force e_shnum
    shstrndx: int | None = None  #: force e_shstrndx
    layout_class: int | None = None  #: write 32-bit (1) or 64-bit (2) structures whatever ei_class says
    layout_data: int | None = None  #: write little- (1) or big-endian (2) structures whatever ei_data says

    @property
    def is32(self) -> bool:
        """Whether the structures are written 32-bit."""
        return (self.layout_class if self.layout_class is not None else self.ei_class) == 1

    @property
    def order(self) -> str:
        """The struct byte-order character the structures are written in."""
        return ">" if (self.layout_data if self.layout_data is not None else self.ei_data) == 2 else "<"


#: (e_machine, EI_CLASS, EI_DATA) of the architectures Debian ships, for :func:`simple_module`
ARCHES: dict[str, tuple[int, int, int]] = {
    "x86_64": (62, 2, 1),
    "i386": (3, 1, 1),
    "arm": (40, 1, 1),
    "aarch64": (183, 2, 1),
    "s390": (22, 2, 2),
    "ppc64": (21, 2, 2),  #: big-endian ELF64 (ppc64el is little-endian)
    "mips": (8, 1, 2),  #: big-endian ELF32
}


def modinfo_bytes(*pairs: tuple[str, str]) -> bytes:
    """``.modinfo`` contents for ``key=value`` pairs, each NUL-terminated."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def pack_sym(spec: ElfSpec, name: int, info: int, shndx: int, value: int = 0, size: int = 0) -> bytes:
    """One symbol-table entry in ``spec``'s class and byte order."""
    if spec.is32:
        return struct.pack(spec.order + "IIIBBH", name, value, size, info, 0, shndx)
    return struct.pack(spec.order + "IBBHQQ", name, info, 0, shndx, value, size)


def simple_module(modinfo: bytes | None = None, symbols: list[tuple[str, int]] | None = None,
                  arch: str = "x86_64") -> ElfSpec:
    """A well-formed minimal module; ``symbols`` are (name, shndx) pairs (0 = undefined); ``arch``
    (a key of :data:`ARCHES`) picks the machine, class and byte order."""
    modinfo = modinfo if modinfo is not None else modinfo_bytes(
        ("license", "GPL"), ("name", "tiny"), ("vermagic", "6.1.0-test SMP mod_unload modversions ")
    )
    machine, ei_class, ei_data = ARCHES[arch]
    spec = ElfSpec(ei_class=ei_class, ei_data=ei_data, e_machine=machine)
    strtab = b"\0"
    syms = pack_sym(spec, 0, 0, 0)
    for name, shndx in symbols or [("printk", 0)]:
        syms += pack_sym(spec, len(strtab), 0x10, shndx)
        strtab += name.encode() + b"\0"
    spec.sections = [
        Sec(".text", b"\xc3" * 16),
        Sec(".modinfo", modinfo),
        Sec(".symtab", syms, type=SHT_SYMTAB, link=4, info=1, entsize=16 if spec.is32 else 24),
        Sec(".strtab", strtab, type=SHT_STRTAB),
    ]
    return spec


def build(spec: ElfSpec) -> bytes:
    """The bytes of the object ``spec`` describes (corruptions included)."""
    o, is32 = spec.order, spec.is32
    ehsize = 52 if is32 else 64
    shdr = o + ("IIIIIIIIII" if is32 else "IIQQQQIIQQ")
    sections = list(spec.sections)
    names = b"\0"
    name_offs = []
    for s in sections:
        name_offs.append(len(names))
        names += s.name.encode() + b"\0"
    shstr_off = len(names)
    names += b".shstrtab\0"
    body = bytearray(b"\0" * ehsize)
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
    headers = [struct.pack(shdr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for s, off, noff in zip(sections, offsets, name_offs):
        headers.append(struct.pack(
            shdr,
            s.name_offset if s.name_offset is not None else noff, s.type, 2, 0,
            s.offset if s.offset is not None else off,
            s.size if s.size is not None else len(s.data),
            s.link, s.info, 4 if is32 else 8, s.entsize,
        ))
    headers.append(struct.pack(shdr, shstr_off, SHT_STRTAB, 0, 0, shstr_data_off, len(names), 0, 0, 1, 0))
    body += b"".join(headers)
    shnum = spec.shnum if spec.shnum is not None else len(headers)
    shstrndx = spec.shstrndx if spec.shstrndx is not None else len(headers) - 1
    shentsize = spec.e_shentsize if spec.e_shentsize is not None else struct.calcsize(shdr)
    ident = b"\x7fELF" + bytes([spec.ei_class, spec.ei_data, 1, 0]) + b"\0" * 8
    ehdr = ident + struct.pack(
        o + ("HHIIIIIHHHHHH" if is32 else "HHIQQQIHHHHHH"), spec.e_type, spec.e_machine, 1, 0, 0,
        spec.shoff if spec.shoff is not None else shoff, 0, ehsize, 0, 0, shentsize, shnum, shstrndx,
    )
    body[:ehsize] = ehdr
    return bytes(body)

"""The kernel's own ELF checks on a module image, in its order and with its log lines.

This is not a reader: :class:`kmodkit.modfile.elf.ElfImage` reads modules (as leniently as kmod).
Here the bytes are seen as ``load_module()`` sees them: always as the target's native
``Elf64_Ehdr``/``Elf64_Shdr`` whatever EI_CLASS says (the kernel does not look at it), checked in
the order of 6.1's ``elf_validity_check()`` + ``setup_load_info()`` or of v6.11+'s
``elf_validity_cache_copy()``, each failure being the first line the kernel logs and ENOEXEC.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from kmodkit.check.verdict import LogLine

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_ET_REL = 1
_SHT_NULL, _SHT_SYMTAB, _SHT_STRTAB, _SHT_NOBITS = 0, 2, 3, 8
_SHF_ALLOC = 0x2
#: offsetof(struct module, name) on 64-bit: enum module_state state; struct list_head list;
_MODULE_NAME_OFFSET = 24
_MODULE_NAME_LEN = 56
_NO_NAME = "(missing .modinfo section or name field)"


@dataclass(frozen=True)
class ElfFacts:
    """What the kernel took from the headers once they passed."""

    name: str  #: N: .modinfo ``name=``, else struct module's name (the name in most log lines)
    mod_name: str  #: M: struct module's name (``.gnu.linkonce.this_module``)
    versions_index: int  #: index of an SHF_ALLOC ``__versions`` section, 0 when none (no CRCs to check)
    sections: tuple[tuple[str, int, int, int, int], ...]  #: (name, type, flags, offset, size) of each section


@dataclass(frozen=True)
class ElfRefusal:
    """The first ELF check the image fails."""

    line: LogLine  #: what the kernel logs
    errno: int = errno.ENOEXEC  #: what finit_module returns
    struct_module: bool = False  #: the size of struct module differs (the module was built for another kernel)


def kernel_elf_check(data: bytes | memoryview, machine: int | None, new_checks: bool,
                     struct_module_size: int | None) -> ElfFacts | ElfRefusal:
    """Check ``data`` (the module without its signature) as the kernel would.

    ``machine``: the e_machine the kernel accepts (None: not checked); ``new_checks``: v6.11+'s
    order and extra checks; ``struct_module_size``: sizeof(struct module) for v6.11+'s size check
    (None: not checked).
    """
    n = len(data)
    if n < _EHDR.size:
        return _err(3, f"Invalid ELF header len {n}")
    (ident, e_type, e_machine, _v, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
     shentsize, shnum, shstrndx) = _EHDR.unpack_from(data, 0)
    if ident[:4] != b"\x7fELF":
        # /dev/kmsg escapes the 0x7f byte of ELFMAG
        return _err(3, "Invalid ELF header magic: != \\x7fELF")
    if e_type != _ET_REL:
        return _err(3, f"Invalid ELF header type: {e_type} != {_ET_REL}")
    if machine is not None and e_machine != machine:
        return _err(3, f"Invalid architecture in ELF header: {e_machine}")
    if shentsize != _SHDR.size:
        return _err(3, "Invalid ELF section header size")
    if shoff >= n or shnum * _SHDR.size > n - shoff:
        return _err(3, "Invalid ELF section header overflow")
    shdrs = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
    # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
    if new_checks:
        found = _new_order(data, shdrs, shstrndx, struct_module_size)
    else:
        found = _old_order(data, shdrs, shstrndx)
    return found


def _outside(s: tuple[int, ...], n: int) -> bool:
    end = s[4] + s[5]
    return end > n or end >= 1 << 64


def _section_zero_bad(shdrs: list[tuple[int, ...]]) -> ElfRefusal | None:
    s0 = shdrs[0] if shdrs else (0,) * 10
    if s0[1] != _SHT_NULL or s0[5] != 0 or s0[3] != 0:
        return _err(3, f"ELF Spec violation: section 0 type({s0[1]})!=SH_NULL or non-zero len or addr")
    return None


def _shstrndx_bad(shstrndx: int, shnum: int) -> ElfRefusal | None:
    if shstrndx == 0 or shstrndx >= shnum:
        return _err(3, f"Invalid ELF section name index: {shstrndx} || e_shstrndx ({shstrndx}) >= e_shnum ({shnum})")
    return None


def _strings_bad(data: bytes | memoryview, strhdr: tuple[int, ...]) -> ElfRefusal | None:
    if strhdr[5] == 0:
        return _err(3, "empty section name table")
    if data[strhdr[4] + strhdr[5] - 1] != 0:
        return _err(3, "ELF Spec violation: section name table isn't null terminated")
    return None


def _names(data: bytes | memoryview, strhdr: tuple[int, ...], shdrs: list[tuple[int, ...]]) -> list[str]:
    table = bytes(data[strhdr[4]:strhdr[4] + strhdr[5]])
    out = []
    for s in shdrs:
        off = s[0]
        out.append(table[off:table.index(b"\0", off)].decode("latin-1") if off < len(table) else "")
    return out


def _old_order(data: bytes | memoryview, shdrs: list[tuple[int, ...]], shstrndx: int) -> ElfFacts | ElfRefusal:
    # 6.1: kernel/module/main.c elf_validity_check(), then setup_load_info()
    n, shnum = len(data), len(shdrs)
    bad = _shstrndx_bad(shstrndx, shnum)
    if bad:
        return bad
    strhdr = shdrs[shstrndx]
    if _outside(strhdr, n):
        return _err(3, f"Invalid ELF section hdr(type {strhdr[1]})")
    bad = _strings_bad(data, strhdr) or _section_zero_bad(shdrs)
    if bad:
        return bad
    for i in range(1, shnum):
        s = shdrs[i]
        if s[1] in (_SHT_NULL, _SHT_NOBITS):
            continue
        if s[1] == _SHT_SYMTAB and (s[6] == 0 or s[6] >= shnum):
            return _err(3, f"Invalid ELF sh_link!=SHN_UNDEF({s[6]}) or (sh_link({s[6]}) >= hdr->e_shnum({shnum})")
        if _outside(s, n):
            return _err(3, f"Invalid ELF section in module (section {i} type {s[1]})")
        if s[2] & _SHF_ALLOC and s[0] >= strhdr[5]:
            return _err(3, f"Invalid ELF section name in module (section {i} type {s[1]})")
    names = _names(data, strhdr, shdrs)
    alloc = [i for i in range(1, shnum) if shdrs[i][2] & _SHF_ALLOC]
    info_idx = next((i for i in alloc if names[i] == ".modinfo"), 0)
    name = _modinfo_name(data, shdrs[info_idx]) if info_idx else None
    if not any(shdrs[i][1] == _SHT_SYMTAB for i in range(1, shnum)):
        return _err(4, f"{name or _NO_NAME}: module has no symbols (stripped?)")
    mod_idx = next((i for i in alloc if names[i] == ".gnu.linkonce.this_module"), 0)
    if not mod_idx:
        return _err(4, f"{name or _NO_NAME}: No module found in object")
    return _facts(data, shdrs, names, name, mod_idx)


def _new_order(data: bytes | memoryview, shdrs: list[tuple[int, ...]], shstrndx: int,
               struct_module_size: int | None) -> ElfFacts | ElfRefusal:
    # v6.11+: elf_validity_cache_copy(): sechdrs, secstrings, index_info, index_mod, index_sym, index_str
    n, shnum = len(data), len(shdrs)
    bad = _section_zero_bad(shdrs)
    if bad:
        return bad
    for i in range(1, shnum):
        s = shdrs[i]
        if s[1] not in (_SHT_NULL, _SHT_NOBITS) and _outside(s, n):
            return _err(3, f"Invalid ELF section in module (section {i} type {s[1]})")
    bad = _shstrndx_bad(shstrndx, shnum)
    if bad:
        return bad
    strhdr = shdrs[shstrndx]
    if strhdr[1] != _SHT_STRTAB:
        return _err(3, f"Invalid ELF section name table type: {strhdr[1]}")
    bad = _strings_bad(data, strhdr)
    if bad:
        return bad
    for i in range(shnum):
        s = shdrs[i]
        if s[1] != _SHT_NULL and s[0] >= strhdr[5]:
            return _err(3, f"Invalid ELF section name in module (section {i} type {s[1]})")
    names = _names(data, strhdr, shdrs)
    infos = [i for i in range(1, shnum) if names[i] == ".modinfo"]
    if len(infos) > 1:
        return _err(3, "Only one .modinfo section must exist.")
    name = _modinfo_name(data, shdrs[infos[0]]) if infos else None
    shown = name or _NO_NAME
    mods = [i for i in range(1, shnum) if names[i] == ".gnu.linkonce.this_module"]
    if len(mods) != 1:
        return _err(3, f"module {shown}: Exactly one .gnu.linkonce.this_module section must exist.")
    m = shdrs[mods[0]]
    if m[1] == _SHT_NOBITS:
        return _err(3, f"module {shown}: .gnu.linkonce.this_module section must have a size set")
    if not m[2] & _SHF_ALLOC:
        return _err(3, f"module {shown}: .gnu.linkonce.this_module must occupy memory during process execution")
    if struct_module_size is not None and m[5] != struct_module_size:
        return ElfRefusal(LogLine(3, f"module {shown}: .gnu.linkonce.this_module section size must match the "
                                     "kernel's built struct module size at run time"), struct_module=True)
    syms = [i for i in range(1, shnum) if shdrs[i][1] == _SHT_SYMTAB]
    if len(syms) != 1:
        return _err(4, f"{shown}: module has no symbols (stripped?)")
    link = shdrs[syms[0]][6]
    if link == 0 or link >= shnum:
        return _err(3, f"Invalid ELF sh_link!=SHN_UNDEF({link}) or (sh_link({link}) >= hdr->e_shnum({shnum})")
    if shdrs[link][1] != _SHT_STRTAB:
        return _err(3, f"Invalid ELF symbol string table type: {shdrs[link][1]}")
    return _facts(data, shdrs, names, name, mods[0])


def _facts(data: bytes | memoryview, shdrs: list[tuple[int, ...]], names: list[str], name: str | None,
           mod_idx: int) -> ElfFacts:
    m = shdrs[mod_idx]
    start = m[4] + _MODULE_NAME_OFFSET
    raw = bytes(data[start:min(start + _MODULE_NAME_LEN, m[4] + m[5])])
    mod_name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    vers = next((i for i in range(1, len(shdrs)) if shdrs[i][2] & _SHF_ALLOC and names[i] == "__versions"), 0)
    sections = tuple((names[i], s[1], s[2], s[4], s[5]) for i, s in enumerate(shdrs))
    return ElfFacts(name or mod_name, mod_name, vers, sections)


def _modinfo_name(data: bytes | memoryview, s: tuple[int, ...]) -> str | None:
    if s[1] == _SHT_NOBITS:
        return None
    for item in bytes(data[s[4]:s[4] + s[5]]).split(b"\0"):
        if item.startswith(b"name="):
            return item[5:].decode("utf-8", "replace")
    return None


def _err(level: int, text: str) -> ElfRefusal:
    return ElfRefusal(LogLine(level, text))

"""Reading vmcores without a VM: bad and truncated dumps are one error line each, QEMU 7.2's header is
fixed in place, and the printk ring's corner cases that a short boot rarely shows (a text block
wrapped to the ring's start, a text_len longer than its block, a reserved record, bytes makedumpfile
escapes) are read as makedumpfile reads them.

Every dump here is fake, made in the test (reality does not wrap a 256-byte ring on demand): an ELF
core whose one PT_LOAD holds a small "kernel image" with the ring, described by a VMCOREINFO note
with the layout of Debian's 6.1 kernel.  Where makedumpfile is installed it reads the same fake dump
and must print the same text."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

#: the fake memory: one segment at 16 MiB, the kernel image's start (phys_base 0)
PHYS, VIRT, MEMSIZE = 0x100_0000, 0xFFFF_FFFF_8100_0000, 0x8000
#: the direct map (PAGE_OFFSET without KASLR): the text data ring is reached through it, as a ring
#: allocated at boot (log_buf_len=) is, so that the page tables are walked
DIRECT = 0xFFFF_8880_0000_0000
#: page tables: the top level, the image's PUD and PMD (a 2 MiB page), the direct map's PUD (1 GiB pages)
PGD, PUD_IMAGE, PMD_IMAGE, PUD_DIRECT = 0x4000, 0x5000, 0x6000, 0x7000
PRB, RING, DESCS, INFOS, DATA, UTS = 0x0, 0x100, 0x1000, 0x2000, 0x3000, 0x3900
COUNT_BITS, SIZE_BITS = 2, 8

VMCOREINFO = f"""OSRELEASE=6.1.0-57-cloud-amd64
PAGESIZE=4096
SYMBOL(prb)={VIRT + PRB:x}
SYMBOL(init_top_pgt)={VIRT + PGD:x}
SYMBOL(init_uts_ns)={VIRT + UTS:x}
OFFSET(uts_namespace.name)=0
SYMBOL(mem_map)={VIRT + 0x3A00:x}
SIZE(page)=64
OFFSET(page.flags)=0
OFFSET(page._refcount)=52
OFFSET(page.mapping)=24
SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
NUMBER(phys_base)=0
NUMBER(pgtable_l5_enabled)=0
KERNELOFFSET=0
NUMBER(KERNEL_IMAGE_SIZE)=1073741824
"""

#: (id, state, begin lpos, next lpos, text_len, ts_nsec, text in the block)
RECORDS = [
    (5, 2, 256 + 100, 256 + 116, 5, 1_000_000_000, b"hello"),
    (6, 1, 256 + 116, 256 + 136, 8, 2_500_000_000, b"a\nb\xc3\x01\tc\x7f"),
    (7, 0, 256 + 136, 256 + 150, 5, 3_000_000_000, b"nope!"),  # reserved: not read
    (8, 2, 256 + 240, 512 + 20, 15, 12_000_001_000, b"wrapped!ok.."),  # wrapped; text_len past its block
]

EXPECTED = (b"[    1.000000] hello\n"
            b"[    2.500000] a\n               b\\xffffffc3\\x01\tc\\x7f\n"
            b"[   12.000001] wrapped!ok..\n")


def _memory(phys: int) -> bytes:
    """The fake memory when it lies at physical address ``phys``."""
    mem = bytearray(MEMSIZE)
    for i, name in enumerate((b"Linux", b"guest", b"6.1.0-57-cloud-amd64")):  # struct new_utsname, for makedumpfile
        mem[UTS + 65 * i:UTS + 65 * i + len(name)] = name
    struct.pack_into("<Q", mem, PRB, VIRT + RING)
    struct.pack_into("<IxxxxQQQQ", mem, RING, COUNT_BITS, VIRT + DESCS, VIRT + INFOS, 8, 5)
    struct.pack_into("<IxxxxQ", mem, RING + 48, SIZE_BITS, DIRECT + phys + DATA)
    struct.pack_into("<Q", mem, 0x3A00, VIRT + 0x3C00)  # mem_map, for makedumpfile's memory model
    present, huge = 0x3, 0x80
    struct.pack_into("<Q", mem, PGD + 511 * 8, phys + PUD_IMAGE | present)
    struct.pack_into("<Q", mem, PUD_IMAGE + 510 * 8, phys + PMD_IMAGE | present)
    struct.pack_into("<Q", mem, PMD_IMAGE + 8 * 8, phys | present | huge)
    struct.pack_into("<Q", mem, PGD + (DIRECT >> 39 & 511) * 8, phys + PUD_DIRECT | present)
    struct.pack_into("<Q", mem, PUD_DIRECT, 0 | present | huge)
    count, size = 1 << COUNT_BITS, 1 << SIZE_BITS
    for ident, state, begin, nxt, text_len, ts, text in RECORDS:
        slot = ident % count
        struct.pack_into("<QQQ", mem, DESCS + slot * 24, ident | state << 62, begin, nxt)
        struct.pack_into("<QQHxxI", mem, INFOS + slot * 88, ident - 5, ts, text_len, 100 + ident)
        at = 0 if begin % size > nxt % size else begin % size
        struct.pack_into("<Q", mem, DATA + at, ident)
        mem[DATA + at + 8:DATA + at + 8 + len(text)] = text
    return bytes(mem)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def fake_vmcore(path: Path, info: str | None = VMCOREINFO, qemu72: bool = False, cut: int | None = None,
                phys_base: int = 0) -> Path:
    """Write a fake ELF core: a NOTE segment (VMCOREINFO unless None) and one LOAD of :func:`_memory`.
    ``qemu72`` lays it out as QEMU 7.2 does (two section headers first, e_ehsize 8); ``cut`` truncates it;
    ``phys_base`` moves the kernel image in physical memory (as a relocated or KASLR'd kernel is)."""
    if info is not None:
        info = info.replace("NUMBER(phys_base)=0", f"NUMBER(phys_base)={phys_base}")
    notes = _note(b"CORE", 1, bytes(336)) + (_note(b"VMCOREINFO", 0, info.encode()) if info is not None else b"")
    shdrs = bytes(128) if qemu72 else b""
    phoff = 64 + len(shdrs)
    note_at = phoff + 2 * 56
    load_at = note_at + len(notes)
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 64 if qemu72 else 0, 0, 8 if qemu72 else 64, 56, 2, 64,
        2 if qemu72 else 0, 1 if qemu72 else 0)
    phdrs = (struct.pack("<IIQQQQQQ", 4, 0, note_at, 0, 0, len(notes), len(notes), 0)
             + struct.pack("<IIQQQQQQ", 1, 0, load_at, 0, PHYS + phys_base, MEMSIZE, MEMSIZE, 0))
    data = ehdr + shdrs + phdrs + notes + _memory(PHYS + phys_base)
    path.write_bytes(data[:cut])
    return path


def _oops(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kmodkit", "oops", *args], capture_output=True)


@pytest.mark.parametrize("phys_base", [0, 0x3E00_0000])
def test_the_rings_corner_cases_in_a_fake_dump_are_read_as_makedumpfile_reads_them(tmp_path: Path,
                                                                                   phys_base: int) -> None:
    core = fake_vmcore(tmp_path / "vmcore", phys_base=phys_base)
    done = _oops("--vmcore", str(core), "--dmesg")
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED


@pytest.mark.parametrize("phys_base", [0, 0x3E00_0000])
def test_makedumpfile_agrees_on_the_fake_dump(tmp_path: Path, phys_base: int) -> None:
    if shutil.which("makedumpfile") is None:
        need("makedumpfile")
    core = fake_vmcore(tmp_path / "vmcore", phys_base=phys_base)
    oracle = subprocess.run(["makedumpfile", "--dump-dmesg", str(core), str(tmp_path / "dmesg")],
                            capture_output=True, text=True)
    assert oracle.returncode == 0, oracle.stdout + oracle.stderr
    assert (tmp_path / "dmesg").read_bytes() == EXPECTED


def test_records_carry_sequence_and_caller(tmp_path: Path) -> None:
    from kmodkit.vmcore.dump import Vmcore

    with Vmcore(str(fake_vmcore(tmp_path / "vmcore"))) as core:
        records = list(core.records())
        assert core.info.release == "6.1.0-57-cloud-amd64"
    assert [(r.seq, r.caller) for r in records] == [(0, "T105"), (1, "T106"), (3, "T108")]


def test_qemu72s_layout_made_in_the_test_is_fixed_in_place_and_read_either_way(tmp_path: Path) -> None:
    from kmodkit.vmcore.elfcore import CoreFile, fix_qemu_header

    core = fake_vmcore(tmp_path / "vmcore", qemu72=True)
    assert _oops("--vmcore", str(core), "--dmesg").stdout == EXPECTED  # our reader follows e_phoff
    with CoreFile(str(core)) as before:
        segments, notes = before.segments, list(before.notes())
    assert fix_qemu_header(str(core)) is True
    head = core.read_bytes()[:64]
    assert struct.unpack_from("<QQ", head, 32) == (64, 0) and struct.unpack_from("<H", head, 52) == (64,)
    with CoreFile(str(core)) as after:
        assert after.segments == segments and list(after.notes()) == notes
    assert fix_qemu_header(str(core)) is False  # already the usual layout
    assert _oops("--vmcore", str(core), "--dmesg").stdout == EXPECTED


@pytest.mark.parametrize(("case", "expected"), [
    ("not_elf", "not a vmcore: no ELF magic"),
    ("empty", "not a vmcore: 0 bytes, too short for an ELF header"),
    ("module", "not a vmcore: ELF type 1, expected 4 (ET_CORE)"),
    ("truncated_headers", "truncated vmcore: its program headers end past the end of the file"),
    ("truncated_notes", "truncated vmcore: its notes end at byte"),
    ("truncated_memory", "truncated vmcore: physical address 0x1000000 lies at byte"),
    ("no_vmcoreinfo", "the vmcore carries no VMCOREINFO note; dump with QEMU's -device vmcoreinfo"),
    ("before_5_10", "its VMCOREINFO has no SYMBOL(prb)"),
    ("huge_ring", "its printk ring is implausibly large"),
    ("directory", "is a directory"),
    ("fifo", "is a FIFO, not a regular file"),  # refused at once: opening it for reading would wait for a writer
])
def test_a_bad_dump_made_in_the_test_is_one_error_line(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "vmcore"
    if case == "not_elf":
        path.write_bytes(b"Linux version 6.1\n" * 10)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "module":
        data = bytearray(fake_vmcore(path).read_bytes())
        data[16] = 1
        path.write_bytes(data)
    elif case == "truncated_headers":
        fake_vmcore(path, cut=100)
    elif case == "truncated_notes":
        fake_vmcore(path, cut=64 + 112 + 20)
    elif case == "truncated_memory":
        fake_vmcore(path, cut=len(fake_vmcore(path).read_bytes()) - MEMSIZE + 4)
    elif case == "no_vmcoreinfo":
        fake_vmcore(path, info=None)
    elif case == "before_5_10":
        fake_vmcore(path, info=VMCOREINFO.replace("SYMBOL(prb)", "SYMBOL(log_buf)"))
    elif case == "huge_ring":
        fake_vmcore(path, info=VMCOREINFO.replace("OFFSET(prb_data_ring.size_bits)=0",
                                                  "OFFSET(prb_data_ring.size_bits)=12"))
    elif case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    done = _oops("--vmcore", str(path), "--dmesg")
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith(f"error: {path}: {expected}") and err.count("\n") == 1, err
    done = _oops("--vmcore", str(path), "--json")  # with --json: the dump's record in oops's list, on stdout
    assert done.returncode == 2 and done.stderr == b"", done.stderr
    [record] = json.loads(done.stdout)
    error = record["error"]
    assert error["what"] == str(path) and error["exit"] == 2, error
    assert f"{error['why']}; {error['fix']}".startswith(expected), error  # the text line is "why; fix"

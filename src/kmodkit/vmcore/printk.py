"""The kernel log of a vmcore: the lockless printk ring buffer (5.10 and later) walked through VMCOREINFO.

The ring (kernel/printk/printk_ringbuffer.[ch], since 896fbe20b4e2 "printk: use the lockless
ringbuffer", 5.10) is a descriptor ring and a text data ring.  A descriptor's ``state_var`` holds its
id (low bits) and state (top two bits); its ``text_blk_lpos`` the logical begin/next positions of its
text block in the data ring, a block being the descriptor's id (one unsigned long) then the text; a
block that would cross the ring's end is put at its start.  Records run from the ring's ``tail_id`` to
its ``head_id``, both included; only committed and finalized records are read, as the kernel's
readers and makedumpfile do.

Every layout comes from VMCOREINFO's SIZE()/OFFSET() entries.  printk_info's ``flags`` (LOG_CONT,
LOG_NEWLINE) and ``level`` are bitfields VMCOREINFO does not describe, so they are not read:
continuations need no flag, since f5f022e53b87 ("printk: reimplement log_cont using record extension",
5.10) appends a continuation to its record in the ring.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from kmodkit.errors import UserError
from kmodkit.vmcore.memory import KernelMemory

DESC_SV_BITS = 64
DESC_FLAGS_SHIFT = DESC_SV_BITS - 2
DESC_ID_MASK = (1 << DESC_FLAGS_SHIFT) - 1
#: desc_committed and desc_finalized (enum desc_state): the states a reader may read
READABLE_STATES = (1, 2)
#: the largest rings we believe in (log_buf_len is at most 2 GiB; a ring this big is a corrupt dump)
MAX_COUNT_BITS, MAX_SIZE_BITS = 28, 31

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


@dataclass(frozen=True)
class PrintkRecord:
    """One record of the kernel log."""

    seq: int  #: its sequence number
    ts_nsec: int  #: its timestamp, nanoseconds since boot (local_clock)
    caller_id: int  #: the task (pid) or, with the top bit set, the CPU that printed it
    text: bytes  #: its text, lines of a multi-line record separated by newlines

    @property
    def caller(self) -> str:
        """The caller as CONFIG_PRINTK_CALLER prints it: T<pid> or C<cpu>."""
        return f"C{self.caller_id & 0x7FFFFFFF}" if self.caller_id & 0x80000000 else f"T{self.caller_id}"


def _field(buf: bytes, at: int, st: struct.Struct, what: str, source: str) -> int:
    if at < 0 or at + st.size > len(buf):
        raise UserError(source, f"its VMCOREINFO places {what} outside its structure")
    return int(st.unpack_from(buf, at)[0])


def printk_records(mem: KernelMemory) -> Iterator[PrintkRecord]:
    """The records of the crashed kernel's log, oldest first.

    Raises :class:`UserError` when VMCOREINFO lacks the ring's description (a kernel before 5.10) or
    the ring cannot be read from the dump."""
    info, src = mem.info, mem.core.path
    off, size = info.offset, info.size
    ring_addr = mem.u64(info.symbol("prb"))
    rb = mem.read(ring_addr, size("printk_ringbuffer"))
    desc_ring = off("printk_ringbuffer.desc_ring")
    data_ring = off("printk_ringbuffer.text_data_ring")
    counter = off("atomic_long_t.counter")
    count_bits = _field(rb, desc_ring + off("prb_desc_ring.count_bits"), _U32, "count_bits", src)
    size_bits = _field(rb, data_ring + off("prb_data_ring.size_bits"), _U32, "size_bits", src)
    if count_bits > MAX_COUNT_BITS or size_bits > MAX_SIZE_BITS:
        raise UserError(src, f"its printk ring is implausibly large (2^{count_bits} records, 2^{size_bits} bytes): "
                             "a corrupt dump?")
    count, data_size = 1 << count_bits, 1 << size_bits
    desc_size, info_size = size("prb_desc"), size("printk_info")
    descs = mem.read(_field(rb, desc_ring + off("prb_desc_ring.descs"), _U64, "descs", src), desc_size * count)
    infos = mem.read(_field(rb, desc_ring + off("prb_desc_ring.infos"), _U64, "infos", src), info_size * count)
    data = mem.read(_field(rb, data_ring + off("prb_data_ring.data"), _U64, "data", src), data_size)
    tail = _field(rb, desc_ring + off("prb_desc_ring.tail_id") + counter, _U64, "tail_id", src)
    head = _field(rb, desc_ring + off("prb_desc_ring.head_id") + counter, _U64, "head_id", src)
    sv_at = off("prb_desc.state_var") + counter
    lpos = off("prb_desc.text_blk_lpos")
    begin_at, next_at = lpos + off("prb_data_blk_lpos.begin"), lpos + off("prb_data_blk_lpos.next")
    seq_at, ts_at = off("printk_info.seq"), off("printk_info.ts_nsec")
    len_at, caller_at = off("printk_info.text_len"), off("printk_info.caller_id")

    ident = tail & DESC_ID_MASK
    for _ in range(count + 1):  # head included; a ring never holds more
        d = (ident % count) * desc_size
        sv = _U64.unpack_from(descs, d + sv_at)[0]
        if sv & DESC_ID_MASK == ident and sv >> DESC_FLAGS_SHIFT in READABLE_STATES:
            begin = _U64.unpack_from(descs, d + begin_at)[0] % data_size
            nxt = _U64.unpack_from(descs, d + next_at)[0] % data_size
            if begin != nxt:  # a data-less record has no text
                i = (ident % count) * info_size
                text_len = _U16.unpack_from(infos, i + len_at)[0]
                if begin > nxt:  # the block wrapped: it lies at the start of the ring
                    begin = 0
                begin += 8  # the block's id
                text_len = max(0, min(text_len, nxt - begin))
                yield PrintkRecord(_U64.unpack_from(infos, i + seq_at)[0], _U64.unpack_from(infos, i + ts_at)[0],
                                   _U32.unpack_from(infos, i + caller_at)[0], data[begin:begin + text_len])
        if ident == head & DESC_ID_MASK:
            break
        ident = (ident + 1) & DESC_ID_MASK


#: bytes makedumpfile writes as they are: C's isprint() or isspace() in the C locale
_PLAIN = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\v\f\r")
#: a byte that is not written as it is (or a newline, which is indented): most records have none
_SPECIAL = re.compile(rb"[^\x20-\x7e\t\v\f\r]")


def dmesg_line(rec: PrintkRecord) -> bytes:
    """The record as ``makedumpfile --dump-dmesg`` writes it: ``[%5d.%06d] `` and the text, its further
    lines indented under the text, other bytes as \\xNN, a newline at the end.

    makedumpfile formats a byte of a signed char with "%02x", so a byte >= 0x80 comes out as
    \\xffffffNN; that is kept, so that the two outputs stay equal byte for byte."""
    secs, nsec = divmod(rec.ts_nsec, 1_000_000_000)
    prefix = b"[%5d.%06d] " % (secs, nsec // 1000)
    if _SPECIAL.search(rec.text) is None:
        return prefix + rec.text + b"\n"
    out = bytearray(prefix)
    indent = b"\n" + b" " * len(prefix)
    for b in rec.text:
        if b == 0x0A:
            out += indent
        elif b in _PLAIN:
            out.append(b)
        else:
            out += b"\\x%02x" % (b if b < 0x80 else b | 0xFFFFFF00)
    out += b"\n"
    return bytes(out)

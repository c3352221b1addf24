"""Reading kernel logs in every shape they come in: prefixes, junk, several and truncated reports,
chunked streams, and fuzzed input (hypothesis).  The report below is made here in the shape 6.1 prints
(reality's own reports are in test_oops_corpus.py and, decoded, in test_oops_decode.py)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kmodkit.errors import KmodkitError
from kmodkit.klog.kinds import Kind, table
from kmodkit.klog.logread import LogScanner, scan_bytes, strip_prefix

OOPS_61 = """\
BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
PGD 0 P4D 0
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 97 Comm: insmod Tainted: G           OE      6.1.0-57-amd64 #1  Debian 6.1.158-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:crashy_walk+0x5/0x20 [crashy 3f1e0c5ad1b2f1d2a0e4c1a0d5f6e7b8c9d0e1f2]
Code: 90 90 90 90 90 90 90 90 90 90 90 0f 1f 44 00 00 <8b> 07 c3 cc cc cc cc 66 0f 1f 44 00 00
RSP: 0018:ffffb3e8c02bfd88 EFLAGS: 00010246
RAX: 0000000000000000 RBX: 0000000000000000 RCX: 0000000000000000
Call Trace:
 <TASK>
 crashy_init+0x1a/0x1000 [crashy 3f1e0c5ad1b2f1d2a0e4c1a0d5f6e7b8c9d0e1f2]
 ? 0xffffffffc0a05000
 do_one_initcall+0x56/0x220
 ? kmalloc_trace+0x26/0x90
 do_init_module+0x4a/0x1f0
 __do_sys_finit_module+0xac/0x120
 do_syscall_64+0x55/0xb0
 entry_SYSCALL_64_after_hwframe+0x6e/0xd8
RIP: 0033:0x7f0c2b1a2f29
 </TASK>
Modules linked in: crashy(OE+) binfmt_misc virtio_net
CR2: 0000000000000000
---[ end trace 0000000000000000 ]---
RIP: 0010:crashy_walk+0x5/0x20 [crashy 3f1e0c5ad1b2f1d2a0e4c1a0d5f6e7b8c9d0e1f2]
RSP: 0018:ffffb3e8c02bfd88 EFLAGS: 00010246
note: insmod[97] exited with irqs disabled
"""

WARN_61 = """\
------------[ cut here ]------------
WARNING: CPU: 1 PID: 98 at /tmp/crashy/crashy.c:20 crashy_warn+0x9/0x10 [crashy]
Modules linked in: crashy(OE+)
CPU: 1 PID: 98 Comm: insmod Tainted: G      D    OE      6.1.0-57-amd64 #1  Debian 6.1.158-1
RIP: 0010:crashy_warn+0x9/0x10 [crashy]
Call Trace:
 <TASK>
 crashy_init+0x1a/0x1000 [crashy]
 do_one_initcall+0x56/0x220
 </TASK>
---[ end trace 0000000000000000 ]---
"""

PANIC = """\
Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)
CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 mount_block_root+0x1d3/0x1e6
 </TASK>
---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---
"""

JUNK = "systemd[1]: Started foo.service.\nusb 1-1: new high-speed USB device number 2 using xhci_hcd\n"


def _prefixed(text: str, style: str) -> str:
    out = []
    for i, line in enumerate(text.splitlines()):
        ts = f"[{12 + i * 0.001:12.6f}]"
        out.append({
            "dmesg": f"{ts} {line}",
            "dmesg-caller": f"{ts}[    T97] {line}",
            "dmesg-T": f"[Mon Nov 30 12:00:0{i % 10} 2026] {line}",
            "dmesg-r": f"<4>{ts} {line}",
            "syslog": f"Nov 30 12:00:00 cloud-1 kernel: {ts} {line}",
            "journal": f"Nov 30 12:00:00 cloud-1 kernel: {line}",
            "iso": f"2026-11-30T12:00:00.123456+00:00 cloud-1 kernel: {line}",
            "kmsg": f"4,{300 + i},{12000000 + i},-;{line}",
            "serial": f"{ts} {line}\r",
            "bare": line,
        }[style])
    return "\n".join(out) + "\n"


STYLES = ("dmesg", "dmesg-caller", "dmesg-T", "dmesg-r", "syslog", "journal", "iso", "kmsg", "serial", "bare")


def test_strip_prefix_keeps_the_leading_space_of_frames() -> None:
    assert strip_prefix("[   12.000001]  crashy_init+0x1a/0x1000 [crashy]")[0] == " crashy_init+0x1a/0x1000 [crashy]"
    assert strip_prefix("[   12.000001][  T97]  ? foo+0x1/0x2") == (" ? foo+0x1/0x2", "12.000001")
    assert strip_prefix("Nov 30 12:00:00 h kernel: [ 1.5] x") == ("x", "1.5")


def test_every_log_style_gives_the_same_reports() -> None:
    for style in STYLES:
        log = _prefixed(JUNK + OOPS_61 + JUNK + WARN_61 + JUNK + PANIC + JUNK, style)
        reports = scan_bytes(log.encode(), style)
        assert [r.kind for r in reports] == [Kind.NULL_DEREF, Kind.WARNING, Kind.PANIC], style
        oops, warn, panic = reports
        assert oops.title == "BUG: kernel NULL pointer dereference in crashy_walk", style
        assert oops.rip is not None and oops.rip.build_id == "3f1e0c5ad1b2f1d2a0e4c1a0d5f6e7b8c9d0e1f2"
        assert [f.symbol for f in oops.frames] == ["crashy_init", None, "do_one_initcall", "kmalloc_trace",
                                                   "do_init_module", "__do_sys_finit_module", "do_syscall_64",
                                                   "entry_SYSCALL_64_after_hwframe"], style
        assert [f.reliable for f in oops.frames][:4] == [True, False, True, False]
        assert (oops.cpu, oops.pid, oops.comm, oops.release) == (0, 97, "insmod", "6.1.0-57-amd64")
        assert [f.letter for f in oops.taint_flags] == ["O", "E"]
        assert [(m.name, m.taint) for m in oops.modules] == [("crashy", "OE+"), ("binfmt_misc", ""),
                                                             ("virtio_net", "")]
        assert oops.code is not None and oops.code.data[oops.code.fault or 0] == 0x8B
        assert oops.complete and oops.registers["RAX"] == 0
        assert warn.title == "WARNING in crashy_warn" and warn.details["where"] == "/tmp/crashy/crashy.c:20"
        assert [f.letter for f in warn.taint_flags] == ["D", "O", "E"]
        assert panic.title == "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
        assert panic.guilty is not None and panic.guilty.symbol == "mount_block_root"
        if style not in ("bare", "journal", "iso", "kmsg"):  # those carry no printk timestamp
            assert oops.timestamp is not None


def test_a_fatal_oops_carries_its_panic() -> None:
    log = OOPS_61 + "Kernel panic - not syncing: Fatal exception\nKernel Offset: 0x1000000 from 0xffffffff81000000\n" \
        "---[ end Kernel panic - not syncing: Fatal exception ]---\n" + JUNK
    (r,) = scan_bytes(log.encode())
    assert r.kind is Kind.NULL_DEREF and r.panic == "Fatal exception"


def test_truncated_report_is_reported_incomplete() -> None:
    cut = OOPS_61[:OOPS_61.index(" do_init_module")]
    (r,) = scan_bytes(cut.encode())
    assert r.kind is Kind.NULL_DEREF and not r.complete and len(r.frames) == 4


def test_chunks_of_any_size_give_the_same_reports() -> None:
    log = _prefixed(JUNK * 50 + OOPS_61 + JUNK * 3 + WARN_61 + JUNK, "dmesg").encode()
    whole = [r.to_json() for r in scan_bytes(log)]
    for size in (1, 7, 64, 4096):
        sc = LogScanner("<memory>")
        got = []
        for i in range(0, len(log), size):
            got += sc.feed(log[i:i + size])
        got += sc.close()
        assert [r.to_json() for r in got] == whole, size


def test_idle_completes_an_ended_report_for_follow() -> None:
    sc = LogScanner()
    assert sc.feed(WARN_61.encode()) == []  # the trace ended, but x86 may reprint registers: wait
    (r,) = sc.idle()
    assert r.kind is Kind.WARNING
    assert sc.close() == []


def test_every_table_example_matches_its_own_row() -> None:
    from kmodkit.klog.kinds import match_starter

    for s in table().starters:
        found = match_starter(s.example)
        assert found is not None and found[0].kind is s.kind, s.example
        assert any(lit in s.example for lit in s.literals)
        # the pre-filter: every example holds an anchor, but refcount_t's, always after __warn's "cut here"
        assert any(a in s.example for a in table().anchors) or s.kind is Kind.REFCOUNT, s.example


def test_a_report_that_never_ends_is_cut_at_the_cap() -> None:
    from kmodkit.klog.logread import MAX_REPORT_LINES

    endless = OOPS_61.split("Call Trace:")[0] + "Call Trace:\n" + " foo+0x1/0x2\n" * (3 * MAX_REPORT_LINES)
    reports = scan_bytes((endless + WARN_61).encode())
    assert [r.kind for r in reports] == [Kind.NULL_DEREF, Kind.WARNING]
    assert len(reports[0].lines) == MAX_REPORT_LINES and not reports[0].complete


def test_a_line_longer_than_any_kernel_line_is_cut_not_kept() -> None:
    reports = scan_bytes(b"x" * 10_000_000 + b"\n" + OOPS_61.encode())
    assert [r.kind for r in reports] == [Kind.NULL_DEREF]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=len(OOPS_61)), st.integers(1, 64))
def test_fuzzed_logs_raise_nothing(garbage: bytes, cut: int, chunk: int) -> None:
    log = garbage + OOPS_61[:cut].encode() + garbage[::-1] + WARN_61.encode()[: cut % len(WARN_61)]
    try:
        sc = LogScanner()
        for i in range(0, len(log), chunk):
            for r in sc.feed(log[i:i + chunk]):
                r.to_json()
        for r in sc.close():
            r.to_json()
    except KmodkitError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(OOPS_61.splitlines() + WARN_61.splitlines() + PANIC.splitlines()
                                + ["", " ? 0x", "Code: <zz>", "RIP: 0010:", "Call Trace:", "Modules linked in:"]),
                max_size=80))
def test_shuffled_report_lines_raise_nothing(lines: list[str]) -> None:
    for r in scan_bytes("\n".join(lines).encode()):
        assert r.title and not re.search(r"\{\w*\}", r.title)
        r.to_json()

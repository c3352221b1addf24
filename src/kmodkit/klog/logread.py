"""Reading kernel logs: line prefixes, and cutting a stream of lines into reports.

No library parses kernel reports (satyr is C and ABRT-specific, syzkaller's parser is Go), and their
format is a loose convention of printk lines, so this is hand-written line parsing.  Speed comes from
never looking at a line outside a report with a regex: :class:`LogScanner` searches whole chunks for
the table's few anchors (``bytes.find``, see kinds.toml) and only decodes the lines where one occurs;
it does not even count lines there (reports carry byte offsets; the file reader numbers them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kmodkit.klog import kinds
from kmodkit.klog.report import Report, parse_report

#: the prefixes a log line may carry before the kernel's text, in the order they appear: dmesg -r's
#: priority, a /dev/kmsg record header, a syslog or journal date with host and "kernel:", printk's
#: timestamp (dmesg) or dmesg -T's wall time, and the CONFIG_PRINTK_CALLER id ([T123] or [C1])
_PREFIX = re.compile(
    r"(?:<\d{1,3}>)?"
    r"(?:\d+,\d+,\d+,[^;]*;)?"
    r"(?:(?:[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r" \S+ kernel: ?)?"
    r"(?:<\d{1,3}>)?"
    r"(?:\[ *(?P<ts>\d+\.\d+)\] ?|\[(?P<wall>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\] ?)?"
    r"(?:\S+ kernel: ?)?"
    r"(?:\[ *(?P<caller>[TC]\d+)\] ?)?"
)

#: a longer line is cut: kernel lines are at most 1 KiB (PRINTK_MESSAGE_MAX), junk may be anything
MAX_LINE = 4096
#: a report is closed after this many lines (a runaway or interleaved report cannot grow memory)
MAX_REPORT_LINES = 1500
#: lines of free text (lockdep's explanations, a hung task's header) allowed before the call trace
MAX_PREAMBLE_LINES = 400
#: lines after "---[ end trace" that may still belong to the report (x86 reprints RIP and registers)
MAX_TRAILER_LINES = 40
#: lines in a row that are no part of a report (other CPUs' messages, lockdep's text between its
#: traces) after which a report that has a trace is closed
MAX_FOREIGN_LINES = 8

#: a line that may be a frame of a call trace (report.parse_frame decides)
_FRAME_START = re.compile(r"\s*(?:<\w+>\s*|<<\w+>>\s*)*(?:\(?\[<?[0-9a-f]{6,16}>?\]|\? |[\w.$]+\+0x[0-9a-f]+/0x|0x[0-9a-f]+$)")
#: the start of a line that belongs to a report after its call trace began: indented text, registers
#: (x86, arm64, ppc, s390), context markers, the end markers and what x86 reprints after them
_TRACE_LINE = re.compile(
    r"(?:\s|\[<|\(\[<|RIP|EIP|NIP|Code:|RSP|ESP|R[A-DS-Z0-9]{1,2}\b|EFLAGS|FS:|CS:|DS:|CR\d|DR\d|PKRU|ORIG_RAX|"
    r"Call [Tt]race|Backtrace|Stack:|<\w+>|</\w+>|---\[|Kernel panic|Kernel Offset|note:|Modules linked in|"
    r"Last Breaking|Exception stack|irq event stamp|hardirqs last|softirqs last|pc :|lr :|sp :|x\d+\s*:|"
    r"Krnl|Hardware name|Workqueue|Mem abort|ESR|Data abort|CPU:|Pid:|Process |Rebooting|Dumping ftrace|"
    r"SMP:|PANIC|LR |CTR|MSR|TRAP|GPR|REGS|Instruction dump|CFAR|IRQMASK|DAR|DSISR|SOFTE|---)"
)


def strip_prefix(line: str) -> tuple[str, str | None]:
    """The kernel's text of a log line, and printk's timestamp (or dmesg -T's time) or None."""
    m = _PREFIX.match(line)
    if m is None or not m.end():
        return line, None
    return line[m.end():], m.group("ts") or m.group("wall")


@dataclass
class _Open:
    """The report being collected."""

    offset: int  #: byte offset in the source of its first line
    lines: list[tuple[str, str | None]] = field(default_factory=list)  #: (text, timestamp)
    traced: bool = False  #: a call trace or frame has been seen
    foreign: int = 0  #: lines in a row, after the trace started, that look like no part of a report
    ended: int = 0  #: lines seen since "---[ end trace" (0: not ended)


class LogScanner:
    """Finds and parses every report in a kernel log fed to it in chunks of bytes.

    ``feed`` returns the reports completed by a chunk, ``close`` those still open at the end;
    ``idle`` closes a report that has ended and waits only for trailing lines (for ``--follow``).
    Memory stays bounded: one partial line and one open report, each capped.
    """

    def __init__(self, source: str = "<stdin>") -> None:
        #: the name of the log, for reports and messages
        self.source = source
        self._pending = b""
        self._base = 0  # offset in the log of the buffer being scanned
        self._line_at = 0  # offset of the line being handled
        self._open: _Open | None = None
        self._literals = tuple(lit.encode() for lit in kinds.table().anchors)
        #: bytes scanned so far
        self.bytes = 0

    # --- public --------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Report]:
        """Scan ``data`` (any slice of the log); return the reports it completes."""
        self._base = self.bytes - len(self._pending)
        self.bytes += len(data)
        buf = self._pending + data if self._pending else data
        end = buf.rfind(b"\n") + 1
        if end == 0:
            self._pending = buf if len(buf) <= MAX_LINE else b""
            if len(buf) > MAX_LINE:
                return self._lines(buf + b"\n", 0, len(buf) + 1)
            return []
        self._pending = buf[end:]
        if len(self._pending) > MAX_LINE:
            self._pending = self._pending[-MAX_LINE:]
        return self._lines(buf, 0, end)

    def close(self) -> list[Report]:
        """End of the log: the reports still open (possibly truncated)."""
        out: list[Report] = []
        if self._pending:
            pending, self._pending = self._pending, b""
            self._base = self.bytes - len(pending)
            out += self._lines(pending + b"\n", 0, len(pending) + 1)
        out += self._finish(truncated=True)
        return out

    def idle(self) -> list[Report]:
        """Nothing came for a while: a report that has ended is complete now; otherwise nothing."""
        if self._open is not None and self._open.ended:
            return self._finish()
        return []

    # --- scanning ------------------------------------------------------------------------

    def _lines(self, buf: bytes, pos: int, end: int) -> list[Report]:
        out: list[Report] = []
        # the next position of each anchor (-2: not searched yet); lines are not counted here: counting
        # newlines costs more than all the searches (Report.line is filled by who reads a file)
        nxt = [-2] * len(self._literals)
        while pos < end:
            if self._open is None:
                # the fast path: jump to the first line holding a literal
                best = end
                for i, lit in enumerate(self._literals):
                    p = nxt[i]
                    if p != -1 and p < pos:
                        p = nxt[i] = buf.find(lit, pos, end)
                    if p != -1 and p < best:
                        best = p
                if best == end:
                    break
                start = buf.rfind(b"\n", pos, best) + 1 or pos
                if start < pos:
                    start = pos
                pos = start
            stop = buf.find(b"\n", pos, end)
            if stop == -1:
                stop = end
            raw = buf[pos:stop] if stop - pos <= MAX_LINE else buf[pos:pos + MAX_LINE]
            self._line_at = self._base + pos
            pos = stop + 1
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            out += self._line(line)
        return out

    def _line(self, line: str) -> list[Report]:
        text, ts = strip_prefix(line)
        text = text.rstrip()
        cur = self._open
        out: list[Report] = []
        starter = "cut here" in text or kinds.match_starter(text) is not None
        if cur is not None:
            if starter and cur.traced and not text.startswith("Kernel panic") and "end Kernel panic" not in text:
                out += self._finish()
                cur = None
            elif not starter and not self._belongs(cur, text):
                if cur.foreign >= MAX_FOREIGN_LINES or cur.ended:
                    return self._finish()
                cur.foreign += 1
                cur.lines.append((text, ts))
                return out
            else:
                cur.foreign = 0
                self._add(cur, text, ts)
                if len(cur.lines) >= MAX_REPORT_LINES or cur.ended > MAX_TRAILER_LINES \
                        or text.startswith("---[ end Kernel panic"):
                    out += self._finish(truncated=len(cur.lines) >= MAX_REPORT_LINES)
                return out
        if starter:
            self._open = _Open(self._line_at)
            self._add(self._open, text, ts)
        return out

    def _belongs(self, cur: _Open, text: str) -> bool:
        if not cur.traced:
            return len(cur.lines) < MAX_PREAMBLE_LINES or bool(_TRACE_LINE.match(text))
        if not text:
            return False
        return bool(_TRACE_LINE.match(text) or _FRAME_START.match(text))

    @staticmethod
    def _add(cur: _Open, text: str, ts: str | None) -> None:
        cur.lines.append((text, ts))
        if cur.ended:
            cur.ended += 1
        elif text.startswith("---[ end trace"):
            cur.ended = 1
        if not cur.traced and (text.startswith(("Call Trace", "Call trace", "Backtrace", "stack backtrace"))
                               or "<TASK>" in text or _is_frame_line(text)):
            cur.traced = True

    def _finish(self, truncated: bool = False) -> list[Report]:
        """Close the open report; ``truncated``: the input (or the cap) ended it, not its own end or
        the next report."""
        cur, self._open = self._open, None
        if cur is None or not cur.lines:
            return []
        if cur.foreign:
            del cur.lines[-cur.foreign:]  # the foreign lines after its last own line are not part of it
        return [parse_report(cur.lines, self.source, cur.offset, truncated)]


def _is_frame_line(text: str) -> bool:
    return bool(_FRAME_START.match(text)) and "+0x" in text and "at: [<" not in text and "at: " not in text


def scan_bytes(data: bytes, source: str = "<memory>") -> list[Report]:
    """Every report in a whole log held in memory."""
    sc = LogScanner(source)
    return sc.feed(data) + sc.close()


def scan_chunks(chunks: Iterable[bytes], source: str) -> Iterator[Report]:
    """Every report in a log read in chunks, each yielded as soon as it is complete."""
    sc = LogScanner(source)
    for chunk in chunks:
        yield from sc.feed(chunk)
    yield from sc.close()

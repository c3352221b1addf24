"""One kernel report (oops, WARNING, lockup, ...) as a record, and the parser of its lines."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kmodkit.klog import kinds
from kmodkit.klog.kinds import Kind

if TYPE_CHECKING:
    from kmodkit.runtime.taint import TaintFlag


@dataclass(frozen=True)
class Frame:
    """One frame of a call trace (or the faulting instruction's location)."""

    symbol: str | None  #: the function, None for an address the kernel could not name
    offset: int | None  #: bytes from the function's start (the +0x... part), None when not printed
    size: int | None  #: the function's size (the /0x... part), None when not printed
    module: str | None  #: the module in brackets, None for the kernel itself
    build_id: str | None  #: the module's build id when the kernel printed it (CONFIG_STACKTRACE_BUILD_ID)
    address: int | None  #: the address in [<...>] when printed (kernels before 4.x, arm, s390)
    reliable: bool  #: False for "?" frames (a stale return address found on the stack)
    index: int  #: the line of the report it was read from

    @property
    def where(self) -> str:
        """``symbol+0xOFF/0xSIZE [module]`` as the kernel prints it (the address when unnamed)."""
        if self.symbol is None:
            return f"0x{self.address or 0:x}"
        text = self.symbol if self.offset is None else f"{self.symbol}+0x{self.offset:x}/0x{self.size or 0:x}"
        return f"{text} [{self.module}]" if self.module else text

    def to_json(self) -> dict[str, object]:
        """The frame as a JSON object."""
        return {"symbol": self.symbol, "offset": self.offset, "size": self.size, "module": self.module,
                "build_id": self.build_id, "address": None if self.address is None else f"0x{self.address:x}",
                "reliable": self.reliable}


@dataclass(frozen=True)
class LinkedModule:
    """One entry of "Modules linked in"."""

    name: str  #: the module's name
    taint: str  #: its taint letters in parentheses ("" for none), e.g. "OE" or "PO+"


@dataclass(frozen=True)
class Code:
    """The ``Code:`` line: the instruction bytes around the faulting one."""

    data: bytes  #: the bytes (or words, for arm) as printed
    fault: int | None  #: offset in ``data`` of the faulting instruction (<..> or (..)), None when unmarked
    unit: int  #: bytes per printed token: 1 on x86, 2 or 4 on arm

    def to_json(self) -> dict[str, object]:
        """The code as a JSON object."""
        return {"bytes": self.data.hex(), "fault_offset": self.fault, "unit": self.unit}


@dataclass(frozen=True)
class Report:
    """One report found in a kernel log."""

    kind: Kind  #: what happened
    title: str  #: a one-line title in the style of kernel developers
    source: str  #: the log it was read from
    offset: int  #: the byte offset of its first line in that log
    lines: tuple[str, ...]  #: its lines, prefixes stripped
    timestamp: str | None  #: printk's timestamp (or wall time) of its first line
    frames: tuple[Frame, ...]  #: the call trace(s), in order
    rip: Frame | None  #: where it faulted or warned (RIP/pc), None when not printed
    guilty: Frame | None  #: the frame to blame (see :func:`guilty_frame`)
    registers: dict[str, int]  #: the first register dump, name -> value
    cpu: int | None  #: the CPU it ran on
    pid: int | None  #: the task's pid
    comm: str | None  #: the task's name
    release: str | None  #: the kernel release
    taint: str | None  #: the taint letters as printed ("" when "Not tainted", None when not printed)
    taint_flags: tuple[TaintFlag, ...]  #: the taint letters decoded
    modules: tuple[LinkedModule, ...]  #: "Modules linked in", in order
    code: Code | None  #: the Code: line
    panic: str | None  #: the message when the report ends in "Kernel panic - not syncing"
    complete: bool  #: False when the log ended (or the line cap was reached) inside it, before an end marker
    details: dict[str, str] = field(default_factory=dict)  #: named parts of the start line (where, what)
    line: int | None = None  #: its first line's number in the log (1-based), None when not counted

    def to_json(self) -> dict[str, object]:
        """The report as a JSON object (without its raw lines)."""
        return {
            "kind": self.kind.value, "title": self.title, "source": self.source, "line": self.line,
            "offset": self.offset,
            "timestamp": self.timestamp, "cpu": self.cpu, "pid": self.pid, "comm": self.comm,
            "release": self.release, "taint": self.taint, "taint_flags": [f.to_json() for f in self.taint_flags],
            "rip": self.rip.to_json() if self.rip else None,
            "guilty": self.guilty.to_json() if self.guilty else None,
            "frames": [f.to_json() for f in self.frames],
            "registers": {k: f"0x{v:x}" for k, v in self.registers.items()},
            "modules": [{"name": m.name, "taint": m.taint} for m in self.modules],
            "code": self.code.to_json() if self.code else None, "panic": self.panic, "complete": self.complete,
            "details": self.details,
        }


_FRAME = re.compile(
    r"\s*(?:<<?/?\w+>>?\s*)*"
    r"(?P<paren>\()?"
    r"(?:\[<?(?P<addr>[0-9a-f]{6,16})>?\]\s*)?"
    r"(?:\[<?(?P<addr2>[0-9a-f]{6,16})>?\]\s*)?"
    r"(?P<q>\?\s+)?\(?"
    r"(?:(?P<sym>[\w.$]+)\+0x(?P<off>[0-9a-f]+)/0x(?P<size>[0-9a-f]+)"
    r"(?:\s*\[(?P<mod>[\w-]+)(?:\s+(?P<bid>[0-9a-f]{16,}))?\])?"
    r"|(?P<raw>0x[0-9a-f]+)(?=\)|\s|$)"
    r"|(?P<bare>[\w.$]+)\)(?= from|\s*$))"
)
_RIP = re.compile(r"(?:RIP: [0-9a-f]{4}:|EIP: (?:[0-9a-f]{4}:)?|EIP is at |PC is at |pc : |NIP:? |"
                  r"Krnl PSW : [0-9a-f]+ [0-9a-f]+ )")
_REGISTER_LINE = re.compile(r"\s*(?:[A-Z][A-Z0-9]{1,5}|[a-z][a-z0-9]{0,3})\s?:\s*(?:[0-9a-f]{4}:)?[0-9a-f]{8,16}\b")
_REGISTER = re.compile(r"\b([A-Za-z][A-Za-z0-9]{1,5}|[a-z][a-z0-9]{0,3})\s?:\s*(?:[0-9a-f]{4}:)?([0-9a-f]{8,16})\b")
_CPU = re.compile(r"CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>\S+)")
_PID_OLD = re.compile(r"Pid: (?P<pid>\d+), comm: (?P<comm>\S+)")
_CPU_OLD = re.compile(r"CPU (?P<cpu>\d+)\s*$")
_TAINT = re.compile(r"(?:Not tainted|Tainted: (?P<t>[A-Z][A-Z \-]*?))\s*(?P<rel>\d+\.\d+[^\s#]*)?\s*(?:#|$)")
_RELEASE = re.compile(r"(?:^|\s)(?P<rel>\d+\.\d+\.\d+[^\s#]*|\d+\.\d+-[^\s#]+) #\d+")
_MODULE_TOKEN = re.compile(r"([\w-]+)(?:\(([A-Z+\-]+)\))?")
_MODULES_CONT = re.compile(r"\s*[\w-]+(?:\([A-Z+\-]+\))?(?:\s+[\w-]+(?:\([A-Z+\-]+\))?)*\s*(?:\[last unloaded: [^\]]*\])?\s*$")
_HEX_WORD = re.compile(r"[0-9a-f]{8}|[0-9a-f]{16}")
_NOTHING = re.compile("")
_CODE_TOKEN = re.compile(r"[<(]?[0-9a-f]+[>)]?")


def parse_frame(text: str, index: int) -> Frame | None:
    """The frame a trace line shows, or None when the line is not a frame."""
    m = _FRAME.match(text)
    if m is None:
        return None
    if m.group("raw") is None and m.group("sym") is None and m.group("bare") is None:
        return None
    addr_hex = m.group("addr2") or m.group("addr")
    unreliable = bool(m.group("q")) or "(unreliable)" in text or (m.group("paren") is not None and bool(addr_hex))
    if m.group("raw"):
        if addr_hex is None:
            if not re.fullmatch(r"\s*(?:\?\s+)?0x[0-9a-f]+\s*", text):
                return None  # "0x..." amid other words is a value, not a frame
            addr_hex = m.group("raw")[2:]
        return Frame(None, None, None, None, None, int(addr_hex, 16), not unreliable, index)
    sym = m.group("sym") or m.group("bare")
    if sym.startswith(".") and len(sym) > 1:
        sym = sym[1:]  # ppc64 ELFv1 names a function's code ".name" (its descriptor is "name")
    off = int(m.group("off"), 16) if m.group("off") else None
    size = int(m.group("size"), 16) if m.group("size") else None
    return Frame(sym, off, size, m.group("mod"), m.group("bid"), int(addr_hex, 16) if addr_hex else None,
                 not unreliable, index)


def _parse_code(rest: str) -> Code | None:
    data = bytearray()
    fault = None
    unit = 0
    for tok in rest.split():
        if not _CODE_TOKEN.fullmatch(tok):
            return None if not data else Code(bytes(data), fault, unit or 1)
        marked = tok[0] in "<("
        hexpart = tok.strip("<>()")
        if len(hexpart) % 2:
            return None
        size = len(hexpart) // 2
        unit = unit or size
        if marked:
            fault = len(data)
        raw = bytes.fromhex(hexpart)
        data += raw if size == 1 else raw[::-1]  # arm prints words in host order: store little-endian bytes
    return Code(bytes(data), fault, unit or 1) if data else None


def guilty_frame(rip: Frame | None, frames: tuple[Frame, ...]) -> Frame | None:
    """The frame to blame: the first reliable one in a module, else the first that is not generic
    reporting code (dump_stack, warn_slowpath_*, ...), RIP first; None without frames."""
    generic = kinds.table().generic
    candidates = ([rip] if rip is not None and rip.symbol else []) + [f for f in frames if f.reliable and f.symbol]
    for f in candidates:
        if f.module:
            return f
    for f in candidates:
        if f.symbol not in generic and not (f.symbol or "").startswith(("asm_exc_", "exc_", "__sanitizer", "__ubsan")):
            return f
    return candidates[0] if candidates else None


def _decode_taint(letters: str) -> tuple[TaintFlag, ...]:
    from kmodkit.runtime import taint

    by_letter = {f.letter: f for f in taint.flags()}
    return tuple(by_letter[c] for c in letters if c in by_letter)


def parse_report(lines: list[tuple[str, str | None]], source: str, offset: int, truncated: bool = False) -> Report:
    """Structure the lines of one report (prefixes already stripped); ``truncated``: the log ended
    inside it (it is complete when it has an end marker or is followed by something else)."""
    best: tuple[kinds.Starter, re.Match[str]] | None = None
    frames: list[Frame] = []
    rip: Frame | None = None
    registers: dict[str, int] = {}
    cpu = pid = None
    comm = release = taint = panic = None
    modules: list[LinkedModule] = []
    code: Code | None = None
    code_seen = False
    in_modules = False
    no_frames = False  # after s390's "Last Breaking-Event-Address:" the frame is not part of the trace
    ended = False
    eip = None  # i386 prints the address ("EIP: 0060:[<...>]") and the symbol ("EIP is at") apart
    texts = tuple(t for t, _ in lines)
    for i, text in enumerate(texts):
        stripped = text.strip()
        if in_modules:
            if _MODULES_CONT.match(text) and not _HEX_WORD.fullmatch(stripped.split()[0]) \
                    and not stripped.startswith(("CPU", "Pid:", "Hardware")):
                modules += _modules(stripped)
                continue
            in_modules = False
        found = kinds.match_starter(text) if not stripped.startswith(("[<", "(")) else None
        if found is not None:
            starter, m = found
            if starter.kind is Kind.PANIC:
                panic = panic or m.group("what")
            if best is None or starter.rank > best[0].rank:
                best = found
        if stripped.startswith("Modules linked in:"):
            modules += _modules(stripped[len("Modules linked in:"):])
            in_modules = True
            continue
        if stripped.startswith("---[ end"):
            ended = True
            continue
        if stripped.startswith("Last Breaking-Event-Address"):
            no_frames = True
            continue
        at = _RIP.match(stripped)
        if at is not None:
            if rip is None:
                rest = stripped[at.end():]
                if stripped.startswith("Krnl PSW"):
                    rest = rest.strip("()")
                rip = parse_frame(rest, i)
                if rip is not None and rip.address is None and eip is not None:
                    rip = dataclasses.replace(rip, address=eip)
                if rip is None and stripped.startswith("EIP: "):
                    bracket = re.search(r"\[<([0-9a-f]+)>\]", rest)
                    eip = int(bracket.group(1), 16) if bracket else None
            continue
        if stripped.startswith("RIP  [<") or stripped.startswith("RIP ["):
            continue  # old x86 repeats RIP at the end of the report
        if stripped.startswith("Code:"):
            if not code_seen:  # the first one is the faulting RIP's; later ones are user space's
                code = _parse_code(stripped[5:])
                code_seen = True
            continue
        if cpu is None or pid is None or release is None or taint is None:
            _who = _CPU.search(text) or _PID_OLD.search(text)
            if _who is not None and pid is None:
                pid = int(_who.group("pid"))
                comm = _who.group("comm")
                if "cpu" in _who.groupdict() and cpu is None:
                    cpu = int(_who.group("cpu"))
            old_cpu = _CPU_OLD.match(stripped)
            if old_cpu and cpu is None:
                cpu = int(old_cpu.group("cpu"))
            t = _TAINT.search(text)
            if t is not None and taint is None:
                taint = (t.group("t") or "").replace("-", " ").rstrip()
                release = release or t.group("rel")
            r = _RELEASE.search(text)
            if r is not None and release is None:
                release = r.group("rel")
        frame = None
        if "at: [<" not in text and not re.match(r"\s*#\d+:", text) and "at: " not in text:
            frame = parse_frame(text, i)
        if frame is not None:
            if not no_frames:
                frames.append(frame)
            continue
        no_frames = False
        if not registers or not frames:
            if _REGISTER_LINE.match(text):
                for name, value in _REGISTER.findall(text):
                    registers.setdefault(name, int(value, 16))
    if best is None:  # "cut here" alone (the WARN_ON or BUG line was lost): what follows it is a WARNING or BUG
        warn = next(s for s in kinds.table().starters if s.kind is Kind.WARNING)
        nothing = _NOTHING.match("")
        assert nothing is not None
        best = (warn, nothing)
    starter, m = best
    frames_t = tuple(frames)
    guilty = guilty_frame(rip, frames_t)
    details = {k: v for k, v in m.groupdict().items() if v}
    kind = starter.kind
    title = _title(starter.title, guilty, details)
    return Report(kind, title, source, offset, texts, lines[0][1], frames_t, rip, guilty, registers, cpu, pid,
                  comm, release, taint, _decode_taint(taint or ""), tuple(modules), code, panic, ended or not truncated,
                  details)


def _title(template: str, guilty: Frame | None, details: dict[str, str]) -> str:
    func = guilty.symbol if guilty is not None and guilty.symbol else ""
    values = {k: v.strip() for k, v in details.items()}
    if "where" in values and "{where}" in template:
        values["where"] = values["where"].split("+0x")[0]
    if not func:
        template = template.replace(" in {func}", "")
    try:
        return template.format(func=func, **{k: values.get(k, "") for k in ("what", "where", "comm")})
    except (KeyError, IndexError, ValueError):
        return template


def _modules(text: str) -> list[LinkedModule]:
    text = text.split("[last unloaded", 1)[0]
    return [LinkedModule(m.group(1), m.group(2) or "") for m in _MODULE_TOKEN.finditer(text)]

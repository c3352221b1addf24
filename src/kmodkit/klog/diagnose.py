"""The one object ``kmodkit oops`` drives: read logs, find reports, decode their module frames."""

from __future__ import annotations

import dataclasses
import logging
import os
import select
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from kmodkit.errors import KmodkitError, UserError, from_oserror
from kmodkit.klog.disasm import Instruction, disassemble
from kmodkit.klog.logread import LogScanner
from kmodkit.klog.locate import ModuleFinder
from kmodkit.klog.report import Frame, Report
from kmodkit.klog.symbolize import Location, ModuleDebugInfo

log = logging.getLogger(__name__)

CHUNK = 1 << 20
STDIN = "-"


@dataclass(frozen=True)
class DecodedFrame:
    """A frame with the source it came from."""

    frame: Frame  #: the frame as the report printed it
    module_file: str | None  #: the module file used, None for the kernel or when not found
    locations: tuple[Location, ...]  #: innermost (inlined) first; () when unknown

    def to_json(self) -> dict[str, object]:
        """The decoded frame as a JSON object."""
        return {**self.frame.to_json(), "module_file": self.module_file,
                "source": [loc.to_json() for loc in self.locations]}


@dataclass(frozen=True)
class Diagnosis:
    """A report and what could be decoded of it."""

    report: Report  #: the report
    frames: dict[int, DecodedFrame]  #: report line index -> its decoded frame (module frames found on disk)
    code: tuple[Instruction, ...]  #: the Code: line disassembled, () when it cannot be

    def to_json(self) -> dict[str, object]:
        """The diagnosis as a JSON object."""
        doc = self.report.to_json()
        decoded = {f.frame.index: f.to_json() for f in self.frames.values()}

        def frame(f: Frame) -> dict[str, object]:
            return decoded.get(f.index) or {**f.to_json(), "module_file": None, "source": []}

        doc["frames"] = [frame(f) for f in self.report.frames]
        doc["rip"] = frame(self.report.rip) if self.report.rip is not None else None
        doc["guilty"] = frame(self.report.guilty) if self.report.guilty is not None else None
        doc["code_disassembly"] = [i.to_json() for i in self.code]
        return doc


@dataclass
class Decoder:
    """Decodes module frames with the module files a :class:`ModuleFinder` finds (DWARF cached per file)."""

    finder: ModuleFinder  #: where module files are looked for
    _info: dict[str, ModuleDebugInfo | None] = field(default_factory=dict)
    _files: dict[tuple[str, str | None, str | None], str | None] = field(default_factory=dict)

    def debug_info(self, path: str) -> ModuleDebugInfo | None:
        """The (cached) debug info of a module file, None when it cannot be read."""
        if path not in self._info:
            try:
                self._info[path] = ModuleDebugInfo(path)
            except KmodkitError as exc:
                log.warning("%s", exc)
                self._info[path] = None
        return self._info[path]

    def frame(self, frame: Frame, faulting: bool, kver: str | None) -> DecodedFrame | None:
        """The source of a module frame; None for kernel frames, unnamed ones or modules not found.

        A return address is looked up at pc-1 (the call), the faulting RIP at pc."""
        if frame.module is None or frame.symbol is None or frame.offset is None:
            return None
        key = (frame.module, frame.build_id, kver)
        if key not in self._files:
            self._files[key] = self.finder.find(frame.module, frame.build_id, kver)
        path = self._files[key]
        if path is None:
            return None
        info = self.debug_info(path)
        if info is None:
            return DecodedFrame(frame, path, ())
        addr = info.address(frame.symbol, frame.offset)
        if addr is None:
            return DecodedFrame(frame, path, ())
        pc = addr if faulting or frame.offset == 0 else addr - 1
        return DecodedFrame(frame, path, tuple(info.locate(pc)))

    def diagnose(self, report: Report, kver: str | None = None) -> Diagnosis:
        """Decode every module frame of ``report`` and its Code: line."""
        k = kver or report.release
        decoded: dict[int, DecodedFrame] = {}
        if report.rip is not None:
            d = self.frame(report.rip, True, k)
            if d is not None:
                decoded[report.rip.index] = d
        for f in report.frames:
            d = self.frame(f, False, k)
            if d is not None:
                decoded[f.index] = d
        code = tuple(disassemble(report.code)) if report.code is not None and report.registers.get("RAX") is not None \
            else ()
        return Diagnosis(report, decoded, code)


@dataclass(frozen=True)
class OopsQuery:
    """What ``kmodkit oops`` was asked: which logs, where modules are, which kernel.

    Raises :class:`UserError` on construction for a missing log or module directory."""

    logs: tuple[str, ...] = (STDIN,)  #: log files, "-" for standard input
    module_paths: tuple[str, ...] = ()  #: directories searched first for module files
    kver: str | None = None  #: the kernel release (default: the one each report names)
    project: str = "."  #: where kmodkit build's out/KVER/ is looked for
    vmcores: tuple[str, ...] = ()  #: crash dumps whose kernel log is read too (after the logs)

    def __post_init__(self) -> None:
        for d in self.module_paths:
            if not os.path.isdir(d):
                raise UserError(d, "no such directory", "pass a directory holding the module files to --module-path")
        if list(self.logs).count(STDIN) > 1:
            raise UserError("-", "standard input given twice")

    def decoder(self) -> Decoder:
        """A decoder for this query's modules."""
        return Decoder(ModuleFinder(self.module_paths, self.kver, self.project))

    def diagnose(self) -> Iterator[Diagnosis | KmodkitError]:
        """Every report of every log, decoded, in order; a log that cannot be read yields its error
        (the others are still read)."""
        dec = self.decoder()
        sources = [(p, read_reports) for p in self.logs] + [(p, vmcore_reports) for p in self.vmcores]
        for path, reader in sources:
            try:
                for report in reader(path):
                    yield dec.diagnose(report, self.kver)
            except OSError as exc:
                yield from_oserror(exc, path)
            except KmodkitError as exc:
                yield exc

    def follow(self, fd: int, idle_seconds: float = 1.0) -> Iterator[Diagnosis]:
        """Reports from a stream (``dmesg -w``), each as soon as it is complete; memory stays bounded."""
        dec = self.decoder()
        scanner = LogScanner("<stdin>")
        while True:
            ready, _, _ = select.select([fd], [], [], idle_seconds)
            if not ready:
                for r in scanner.idle():
                    yield dec.diagnose(r, self.kver)
                continue
            data = os.read(fd, CHUNK)
            if not data:
                break
            for r in scanner.feed(data):
                yield dec.diagnose(r, self.kver)
        for r in scanner.close():
            yield dec.diagnose(r, self.kver)


def read_reports(path: str) -> Iterator[Report]:
    """The reports of one log file ("-": standard input), read in chunks."""
    import sys

    scanner = LogScanner(path if path != STDIN else "<stdin>")
    if path == STDIN:
        stream = sys.stdin.buffer
        while chunk := stream.read(CHUNK):
            yield from scanner.feed(chunk)
    else:
        if os.path.isdir(path):
            raise UserError(path, "is a directory, expected a kernel log")
        with open(path, "rb") as f, _LineCounter(path) as lines:
            while chunk := f.read(CHUNK):
                for r in scanner.feed(chunk):
                    yield dataclasses.replace(r, line=lines.line_at(r.offset))
            for r in scanner.close():
                yield dataclasses.replace(r, line=lines.line_at(r.offset))
        return
    yield from scanner.close()


def vmcore_reports(path: str) -> Iterator[Report]:
    """The reports of a vmcore's kernel log (read from its printk ring through VMCOREINFO)."""
    from kmodkit.vmcore.dump import Vmcore

    with Vmcore(path) as core:
        text = core.dmesg()
    scanner = LogScanner(path)
    yield from scanner.feed(text)
    yield from scanner.close()


class _LineCounter:
    """Line numbers of byte offsets of a file, counted forward on a second handle: only a log that
    holds reports pays for counting its lines."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._f: BinaryIO | None = None
        self._pos = 0
        self._line = 1

    def __enter__(self) -> _LineCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()

    def line_at(self, offset: int) -> int:
        """The 1-based number of the line starting at ``offset`` (offsets must not go backwards)."""
        if self._f is None:
            self._f = open(self._path, "rb")
        while self._pos < offset:
            chunk = self._f.read(min(CHUNK, offset - self._pos))
            if not chunk:
                break
            self._line += chunk.count(b"\n")
            self._pos += len(chunk)
        return self._line


def render_text(d: Diagnosis, paths: Sequence[str] = ()) -> str:
    """The report as scripts/decode_stacktrace.sh prints it: each decoded frame followed by its
    file:line, inlined callers on their own lines, the Code: line disassembled."""
    r = d.report
    where = f"{r.source}:{r.line}" if r.line is not None else f"{r.source}, byte {r.offset}"
    out = [f"== {r.title}  [{r.kind.value}, {where}{'' if r.complete else ', truncated'}]"]
    for i, text in enumerate(r.lines):
        dec = d.frames.get(i)
        if dec is not None and dec.locations:
            first, *outer = dec.locations
            out.append(f"{text} {first}" + (f" ({first.function})" if outer and first.function else ""))
            for loc in outer:
                out.append(f"{' ' * (len(text) - len(text.lstrip()))} (inlined by) {loc.function or '??'} {loc}")
        else:
            out.append(text)
        if text.lstrip().startswith("Code:") and d.code:
            for ins in d.code:
                out.append(f"  {'=>' if ins.faulting else '  '} {ins.offset:3d}: {ins.text}")
    return "\n".join(out) + "\n"

"""Is what a manifest expects loaded and healthy?  The answer monitoring systems and probes use.

The manifest is a kmodkit.toml, read by the one manifest reader
(:func:`kmodkit.kbuild.manifest.load_expectations`): its ``[module]`` table (name, version) is one
expectation; ``[[health.modules]]`` entries add more (name, and optionally version, srcversion,
allow_taint); ``[health] allow_taint`` sets the taint letters that are expected (default "OE":
out-of-tree, unsigned).

A module is also unhealthy when the kernel died (taint D) or warned (W; a lockup: L) in its code: the
kernel log (``/dev/kmsg``, or a log file) is read with :mod:`kmodkit.klog`, and a report whose guilty
frame is in the module names the problem.  The kernel's taint gates it: a report whose letter the
running kernel does not carry comes from another boot (taints are never cleared until reboot, so a
report since boot counts, not only since the module was last loaded: the kernel does not log loads).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kmodkit.kbuild.manifest import DEFAULT_ALLOWED_TAINT, Expectation, load_expectations
from kmodkit.modfile.module import normalize_name
from kmodkit.runtime.modules import KernelModules, ModuleState, ModuleStatus

if TYPE_CHECKING:
    from kmodkit.klog.report import Report

__all__ = ["DEFAULT_ALLOWED_TAINT", "Expectation", "HealthResult", "check", "crash_problems", "kernel_reports",
           "read_manifest"]

log = logging.getLogger(__name__)

#: the kernel log read when no log file is named
KMSG = "/dev/kmsg"
#: kernel logs already said to be unreadable
_WARNED: set[str] = set()


@dataclass(frozen=True)
class HealthResult:
    """The verdict on one expectation."""

    expectation: Expectation  #: what was expected
    problems: tuple[str, ...]  #: what is wrong, ``()`` when healthy
    status: ModuleStatus | None  #: what the kernel shows, None when not loaded

    @property
    def healthy(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        e = self.expectation
        return {"module": e.name, "healthy": self.healthy, "problems": list(self.problems),
                "expected": {"version": e.version, "srcversion": e.srcversion, "allow_taint": e.allow_taint},
                "status": self.status.to_json() if self.status else None}


def read_manifest(path: str | Path) -> list[Expectation]:
    """The expectations of the manifest at ``path`` (a file or a project directory).

    Raises NotFoundError when absent, ConfigError when malformed or expecting nothing.
    """
    return load_expectations(path)


def kernel_reports(path: str = KMSG) -> list[Report]:
    """The kernel's reports (oops, WARNING, panic...) in its log: ``/dev/kmsg`` (read without waiting;
    ``[]`` with a warning when it cannot be read, e.g. under dmesg_restrict), or a log file.

    Raises NotFoundError (and the like) when a log file cannot be read.
    """
    from kmodkit.errors import from_oserror
    from kmodkit.klog.logread import LogScanner
    from kmodkit.loader.kmsg import parse_record

    scanner = LogScanner(path)
    out: list[Report] = []
    if path != KMSG:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    out += scanner.feed(chunk)
        except OSError as exc:
            raise from_oserror(exc, path) from None
        return out + scanner.close()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if path not in _WARNED:  # once per process: the exporter asks on every scrape
            _WARNED.add(path)
            log.warning("%s: cannot read the kernel log (%s): crashes are not looked for", path,
                        (exc.strerror or str(exc)).lower())
        return []
    try:
        while True:
            try:
                record = os.read(fd, 8192)  # one record per read: "PRI,SEQ,USEC,FLAGS;TEXT\n KEY=VALUE..."
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: go on with the next one
                    continue
                break  # EAGAIN: nothing more
            if not record:
                break
            rec = parse_record(record)
            if rec is not None:  # as dmesg prints it, printk's timestamp included
                sec, usec = divmod(rec.usec, 1_000_000)
                out += scanner.feed(f"[{sec:5d}.{usec:06d}] {rec.message}\n".encode())
    finally:
        os.close(fd)
    return out + scanner.close()


#: the taint letter a report of each kind sets (WARN() and the checks built on it: W; lockups: L); the
#: default, D, is the kernel dying (an oops, BUG)
_KIND_TAINT = {"warning": "W", "refcount": "W", "atomic-sleep": "W", "soft-lockup": "L", "hard-lockup": "L"}


def crash_problems(name: str, reports: Sequence[Report], kernel_taint: str) -> list[str]:
    """The reports blaming module ``name`` (their guilty frame is in it) that the running kernel's taint
    letters ``kernel_taint`` confirm, as problems: "the kernel warned in its code: WARNING in foo_bar..."."""
    want = normalize_name(name)
    out = []
    for r in reports:
        g = r.guilty
        if g is None or g.module is None or normalize_name(g.module) != want:
            continue
        letter = _KIND_TAINT.get(r.kind.value, "D")
        if letter not in kernel_taint:
            continue
        verb = {"W": "warned", "L": "locked up"}.get(letter, "died")
        when = f" at {r.timestamp} s" if r.timestamp else ""
        out.append(f"the kernel {verb} in its code (taint {letter}){when}: {r.title}")
    return out


def check(expectations: list[Expectation], kernel: KernelModules,
          reports: Sequence[Report] | None = None) -> list[HealthResult]:
    """The verdict on every expectation against the running kernel; with ``reports`` (the kernel log's,
    :func:`kernel_reports`), a module the kernel died or warned in is unhealthy."""
    from kmodkit.runtime.taint import mask_letters

    loaded = {m.name: m for m in kernel.status()}
    letters = mask_letters(kernel.kernel_taint() or 0) if reports else ""
    out = []
    for e in expectations:
        st = loaded.get(normalize_name(e.name))
        if st is None:
            out.append(HealthResult(e, ("not loaded",), None))
            continue
        problems = []
        if st.state is not ModuleState.LIVE:
            problems.append(f"state is {st.state.value}, not Live")
        if e.version is not None and st.version != e.version:
            problems.append(f"version is {st.version or 'none'}, expected {e.version}")
        if e.srcversion is not None and st.srcversion != e.srcversion:
            problems.append(f"srcversion is {st.srcversion or 'none'}, expected {e.srcversion}")
        bad = [f for f in st.taint_flags if f.letter not in e.allow_taint]
        problems += [f"unexpected taint {f.letter}: {f.meaning}" for f in bad]
        if reports:
            problems += crash_problems(e.name, reports, letters)
        out.append(HealthResult(e, tuple(problems), st))
    return out

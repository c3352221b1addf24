"""tracefs: where it is mounted, its files, and every setting a run changes, restored afterwards.

:class:`TraceFs` reads and writes the control files and turns the kernel's
refusals into errors with their fix (tracefs not mounted, lockdown).
:class:`SavedSettings` remembers the values of the files a run changes and puts
them back, also after an error or Ctrl-C (``with fs.saved(...)``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, KmodkitError, NotFoundError, SyscallError

log = logging.getLogger(__name__)

#: where tracefs is mounted since Linux 4.1; the debugfs path is the older one, kept for old setups
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

#: the fix when tracefs is not mounted
MOUNT_FIX = "mount it: mount -t tracefs nodev /sys/kernel/tracing"

#: the filter files whose content is a list of functions (restored line by line, not as one value)
FILTER_FILES = ("set_ftrace_filter", "set_graph_function", "set_ftrace_notrace", "set_graph_notrace")

#: the files that hold a list of process ids ("no pid" when empty)
PID_FILES = ("set_ftrace_pid", "set_ftrace_notrace_pid", "set_event_pid", "set_event_notrace_pid")

#: what a filter file says when it holds no function
_EMPTY_FILTER = "#### all functions enabled ####"


def lockdown_mode(securityfs: str = "/sys/kernel/security") -> str | None:
    """The kernel lockdown mode ("none", "integrity", "confidentiality"), or None when it cannot be read."""
    try:
        with open(os.path.join(securityfs, "lockdown"), encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _mounted_tracefs(mounts: str) -> list[str]:
    # /proc/mounts: device, mount point (octal escapes), type, ...
    points = []
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "tracefs":
                    points.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    return points


class TraceFs:
    """The tracefs of the running kernel (or of ``root``, a directory standing in for it)."""

    def __init__(self, root: str) -> None:
        #: the directory with the tracing control files
        self.root = root
        #: True when this object mounted tracefs and should unmount it at the end
        self.mounted_here = False

    @classmethod
    def find(cls, mount: bool = True, mounts: str = "/proc/mounts") -> TraceFs:
        """The running kernel's tracefs; mounted at /sys/kernel/tracing when ``mount`` and it is not.

        Raises EnvironmentNotReady with the mount command when it is not
        mounted (and could not be), or when lockdown hides it.
        """
        for point in (*_mounted_tracefs(mounts), *TRACEFS_CANDIDATES):
            if os.path.exists(os.path.join(point, "current_tracer")):
                return cls(point)
        target = TRACEFS_CANDIDATES[0]
        if mount and os.path.isdir(target) and os.geteuid() == 0:
            from kmodkit.trace import _mount

            err = _mount.mount_tracefs(target)
            if err == 0 and os.path.exists(os.path.join(target, "current_tracer")):
                fs = cls(target)
                fs.mounted_here = True
                log.info("mounted tracefs at %s (unmounted at the end)", target)
                return fs
            if err == errno.EPERM and lockdown_mode() == "confidentiality":
                raise _lockdown_error(target)
        if not os.path.isdir(target):
            raise EnvironmentNotReady(target, "this kernel has no tracefs (CONFIG_TRACING is off)",
                                      "boot a kernel built with CONFIG_FUNCTION_GRAPH_TRACER, e.g. with kmodkit vm run")
        raise EnvironmentNotReady(target, "tracefs is not mounted", MOUNT_FIX + " (as root)")

    def unmount(self) -> None:
        """Unmount tracefs when :meth:`find` mounted it; nothing otherwise."""
        if self.mounted_here:
            from kmodkit.trace import _mount

            _mount.umount(self.root)
            self.mounted_here = False

    def path(self, name: str) -> str:
        """The path of the control file ``name``."""
        return os.path.join(self.root, name)

    def has(self, name: str) -> bool:
        """Whether the control file ``name`` exists (a tracer or option this kernel has)."""
        return os.path.exists(self.path(name))

    def read(self, name: str) -> str:
        """The text of the control file ``name``; NotFoundError when this kernel has no such file."""
        try:
            with open(self.path(name), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError as exc:
            raise self._error(name, exc) from None

    def write(self, name: str, value: str, append: bool = False) -> None:
        """Write ``value`` to the control file ``name`` (truncating, unless ``append``), in one write."""
        flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
        try:
            fd = os.open(self.path(name), flags)
            try:
                # the filter files take one function per write(2) and say so with a short count:
                # write the rest until all is taken (0.1's single write set only the first function)
                data = memoryview(value.encode())
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(name, exc, value) from None

    def _error(self, name: str, exc: OSError, value: str | None = None) -> KmodkitError:
        path = self.path(name)
        if exc.errno == errno.ENOENT:
            return NotFoundError(path, "this kernel has no such tracing file",
                                 "boot a kernel built with CONFIG_FUNCTION_GRAPH_TRACER")
        if exc.errno == errno.EPERM and lockdown_mode() == "confidentiality":
            return _lockdown_error(path)
        if exc.errno in (errno.EPERM, errno.EACCES):
            return SyscallError(path, exc.errno or 0, fix="run as root")
        what = f"writing {value.strip()!r}" if value is not None else "reading"
        return SyscallError(path, exc.errno or 0, f"{what}: {exc.strerror}")

    def tracers(self) -> list[str]:
        """The tracers this kernel offers (available_tracers)."""
        return self.read("available_tracers").split()

    def saved(self, names: list[str]) -> _Saver:
        """A context manager that restores the files ``names`` (and options/NAME) as they were at its start."""
        return _Saver(self, names)

    def snapshot(self, names: list[str]) -> dict[str, str]:
        """The current text of each control file in ``names`` (those this kernel has)."""
        return {n: self.read(n) for n in names if self.has(n)}


def _lockdown_error(path: str) -> EnvironmentNotReady:
    # security/lockdown: LOCKDOWN_TRACEFS is in the confidentiality set (kernel commit 9d1f8be5cf42)
    return EnvironmentNotReady(path, "the kernel is locked down (confidentiality): tracing is forbidden",
                               "boot with lockdown=integrity or none (or without Secure Boot's lockdown), "
                               "e.g. kmodkit vm run --append lockdown=none")


@dataclass(frozen=True)
class SavedSettings:
    """The values of the control files a run changes, as found before it."""

    values: tuple[tuple[str, str], ...]  #: (file name, text) in the order they are restored


def _filter_lines(text: str, commands: bool = True) -> list[str]:
    # set_ftrace_filter prints "func [mod]" for module functions and reads it back as func:mod:MOD;
    # set_graph_function knows no such command: the name alone
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == _EMPTY_FILTER:
            continue
        if line.endswith("]") and " [" in line:
            func, mod = line[:-1].split(" [", 1)
            line = f"{func}:mod:{mod}" if commands else func
        out.append(line)
    return out


class _Saver:
    def __init__(self, fs: TraceFs, names: list[str]) -> None:
        self.fs = fs
        self.names = [n for n in names if fs.has(n)]
        self.saved = SavedSettings(())

    def __enter__(self) -> SavedSettings:
        self.saved = SavedSettings(tuple((n, self.fs.read(n)) for n in self.names))
        return self.saved

    def __exit__(self, *exc: object) -> None:
        restore(self.fs, self.saved)


def restore(fs: TraceFs, saved: SavedSettings) -> None:
    """Put every saved control file back; the first failure is raised after all were tried."""
    first: Exception | None = None
    # tracing off first, so that nothing is recorded while the filters change
    for name, text in sorted(saved.values, key=lambda nv: nv[0] != "tracing_on"):
        try:
            if name == "tracing_on":
                fs.write(name, "0")
            elif name in PID_FILES:
                pids = [w for w in text.split() if w.isdigit()]  # "no pid" when empty
                fs.write(name, "")
                if pids:
                    fs.write(name, " ".join(pids) + "\n", append=True)
            elif name in FILTER_FILES:
                fs.write(name, "")
                lines = _filter_lines(text, commands=name in ("set_ftrace_filter", "set_ftrace_notrace"))
                if lines:
                    fs.write(name, "\n".join(lines) + "\n", append=True)
            elif name == "current_tracer":
                fs.write(name, text.strip() or "nop")
            elif name == "buffer_size_kb":
                # "7 (expanded: 1410)" before any tracer ran: the buffer is not allocated yet and grows to the
                # expanded size on first use.  That state cannot be written back, and writing "7" left a 7 KiB
                # buffer that dropped most of the next tool's events (trace-cmd saw 3 of 7 writes on 6.12):
                # the size the kernel would have given it is the one to restore
                expanded = re.search(r"expanded: (\d+)", text)
                fs.write(name, expanded.group(1) if expanded else text.split()[0])
            elif name.startswith("options/") or name in ("max_graph_depth", "tracing_thresh"):
                fs.write(name, text.strip())
            else:
                fs.write(name, text)
        except Exception as exc:  # every file is tried; the first failure is reported
            log.warning("could not restore %s: %s", fs.path(name), exc)
            first = first or exc
    on = dict(saved.values).get("tracing_on", "").strip()
    if on:
        fs.write("tracing_on", on)
    if first is not None:
        raise first


@contextmanager
def session(mount: bool = True) -> Iterator[TraceFs]:
    """The running kernel's tracefs for the time of a ``with`` block; unmounted at the end when mounted here."""
    fs = TraceFs.find(mount)
    try:
        yield fs
    finally:
        fs.unmount()

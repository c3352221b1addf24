"""Dumping a panicked guest: seeing its panic end on the console, and QEMU's machine protocol (QMP).

:func:`dump_guest` writes RUN_DIR/vmcore with ``dump-guest-memory`` (ELF); why the guest waits at panic
and how VMCOREINFO gets in is told in :mod:`kmodkit.vm.machine`.  QMP is JSON lines over a unix
socket: a greeting, ``qmp_capabilities``, then commands answered by ``{"return": ...}`` or
``{"error": ...}``, with ``{"event": ...}`` lines in between that are skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from kmodkit.errors import EnvironmentNotReady

log = logging.getLogger(__name__)

#: the line panic() prints last, after the replay of the log, before it waits (panic=0) or reboots
PANIC_END_LINE = b"---[ end Kernel panic - not syncing"

#: the vmcore's name in the run directory
VMCORE = "vmcore"


class Qmp:
    """A connection to one QEMU's QMP socket; a context manager that closes it."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:  # qemu makes the socket a moment after it starts
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    sock.close()
                    raise EnvironmentNotReady(path, f"qemu's QMP socket did not answer ({exc.strerror})") from exc
                time.sleep(0.1)
        self._sock = sock
        self._buf = b""
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _read(self, timeout: float = 30.0) -> dict[str, object]:
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise EnvironmentNotReady("qemu", f"no answer on QMP within {timeout:g} s") from exc
            if not chunk:
                raise EnvironmentNotReady("qemu", "closed its QMP socket")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise EnvironmentNotReady("qemu", f"unexpected QMP message {line[:200]!r}")
        return msg

    def execute(self, command: str, timeout: float = 30.0, **arguments: object) -> object:
        """Run one command and return its ``return`` value; EnvironmentNotReady on a QMP error."""
        msg: dict[str, object] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            answer = self._read(timeout)
            if "event" in answer:
                log.debug("qmp event %s", answer["event"])
                continue
            if "error" in answer:
                err = answer["error"]
                desc = err.get("desc", err) if isinstance(err, dict) else err
                raise EnvironmentNotReady(f"qemu {command}", str(desc))
            return answer.get("return")


class PanicWatch:
    """Reads a growing console log and tells when the kernel's panic has ended."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._pos = 0
        self._tail = b""

    def ended(self) -> bool:
        """True once the console shows the panic's last line."""
        try:
            with open(self._path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return False
        self._pos += len(data)
        text = self._tail + data
        self._tail = text[-len(PANIC_END_LINE):]
        return PANIC_END_LINE in text


def dump_guest(qmp_path: str, run_dir: str, deadline: float) -> str | None:
    """Dump the stopped guest's memory to RUN_DIR/vmcore (ELF, through a temporary name) and quit qemu;
    the reason when it could not be done, else None."""
    part = os.path.join(run_dir, VMCORE + ".part")
    try:
        with Qmp(qmp_path) as q:
            q.execute("stop")
            log.info("the guest panicked: dumping its memory to %s", os.path.join(run_dir, VMCORE))
            q.execute("dump-guest-memory", timeout=max(30.0, deadline - time.monotonic()), paging=False,
                      protocol=f"file:{part}", format="elf")
            with contextlib.suppress(EnvironmentNotReady):  # qemu may close the socket before it answers
                q.execute("quit")
        from kmodkit.vmcore.elfcore import fix_qemu_header

        os.chmod(part, 0o600)  # qemu makes it 0400; it stays private (the guest's whole memory)
        fix_qemu_header(part)  # so that makedumpfile reads it
        os.chmod(part, 0o400)
        os.rename(part, os.path.join(run_dir, VMCORE))
    except (EnvironmentNotReady, OSError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(part)
        log.warning("could not dump the guest: %s", exc)
        return str(exc)
    return _check_vmcoreinfo(os.path.join(run_dir, VMCORE))


def _check_vmcoreinfo(path: str) -> str | None:
    """None when the dump carries the kernel's VMCOREINFO note, else what is wrong with it."""
    from kmodkit.errors import KmodkitError
    from kmodkit.vmcore.elfcore import CoreFile
    from kmodkit.vmcore.vmcoreinfo import NOTE_NAME

    try:
        with CoreFile(path) as core:
            if any(n.name == NOTE_NAME for n in core.notes()):
                return None
    except KmodkitError as exc:
        return str(exc)
    # the guest's kernel hands VMCOREINFO over when its qemu_fw_cfg driver probes (see machine.py)
    return ("the dump carries no VMCOREINFO note (the guest kernel has no qemu_fw_cfg driver?): "
            "oops --vmcore cannot read it")

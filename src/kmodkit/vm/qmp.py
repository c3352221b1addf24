"""A minimal client of QEMU's machine protocol (QMP): enough to dump a guest's memory and stop it.

QMP is JSON lines over a unix socket: a greeting, ``qmp_capabilities``, then commands answered by
``{"return": ...}`` or ``{"error": ...}``, with ``{"event": ...}`` lines in between that we skip.
"""

from __future__ import annotations

import json
import logging
import socket
import time

from kmodkit.errors import EnvironmentNotReady

log = logging.getLogger(__name__)


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

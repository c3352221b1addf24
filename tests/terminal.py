"""Running kmodkit on a real pseudo-terminal (python's pty module), for what it does only on a terminal:
the live build table, colour.  The one copy of the read loop the tests share."""

from __future__ import annotations

import os
import pty
import subprocess
import sys


def on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``kmodkit ARGV`` with stdout and stderr on a new pseudo-terminal; its exit status and all it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kmodkit", *argv], stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")

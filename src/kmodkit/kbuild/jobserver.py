"""One GNU make jobserver shared by every kernel's make, so a slot one build leaves idle goes to another.

GNU make's jobserver is a pipe holding one byte (a token) per free job slot.  A make started with both
ends open and ``MAKEFLAGS=-jN --jobserver-auth=R,W`` runs its first job on the slot its parent holds for
it and takes a token from the pipe for each further job, writing it back when the job ends (GNU make
manual, "Sharing Job Slots with GNU make").  kmodkit plays the parent: it takes a token before starting a
make and writes it back when that make exits, so over all kernels at most ``slots`` jobs run at once, and
when one kernel's build is in a serial step (Kbuild parsing its Makefiles, modpost, the link) the others'
compiles take the free slots.  A make killed while holding tokens loses them: the run then has fewer
slots, never a deadlock, since the tokens kmodkit itself takes are always written back.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from contextlib import contextmanager

#: the byte GNU make itself puts in the pipe
TOKEN = b"+"


class Jobserver:
    """A pipe holding ``slots`` job tokens; a context manager that closes it."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a jobserver needs at least one slot, not {slots}")
        self.slots = slots
        self._read, self._write = os.pipe()
        # a pipe buffer holds at least 4 KiB on every system make runs on, far more tokens than CPUs
        os.write(self._write, TOKEN * slots)

    @property
    def fds(self) -> tuple[int, int]:
        """The pipe's read and write descriptors, to keep open in a make (``pass_fds``)."""
        return self._read, self._write

    def makeflags(self) -> str:
        """MAKEFLAGS that make a GNU make (4.2 or later) a client of this jobserver.

        ``-jN`` is what a make without jobserver support would fall back to: at most ``slots`` jobs.
        """
        return f"-j{self.slots} --jobserver-auth={self._read},{self._write}"

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one token while the body runs (blocks until one is free); write it back afterwards."""
        token = self._take()
        try:
            yield
        finally:
            os.write(self._write, token)

    def _take(self) -> bytes:
        # GNU make 4.3 makes the read end non-blocking (one open file, so for us too) and other makes
        # race us for each token: wait until the pipe is readable, then try
        while True:
            try:
                token = os.read(self._read, 1)
            except BlockingIOError:
                token = b""
            if token:
                return token
            select.select([self._read], [], [])

    def close(self) -> None:
        """Close both ends of the pipe."""
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Jobserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

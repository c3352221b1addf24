"""Reading the kernel's own lines from ``/dev/kmsg``: what it said while we loaded a module."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class KmsgRecord:
    """One record of the kernel log."""

    priority: int  #: syslog level 0 (emerg) .. 7 (debug)
    seq: int  #: the record's sequence number
    usec: int  #: microseconds since boot
    message: str  #: the text, without the continuation lines' key=value dictionary

    def to_json(self) -> dict[str, object]:
        """The record as a JSON object."""
        return {"priority": self.priority, "seq": self.seq, "usec": self.usec, "message": self.message}


def parse_record(raw: bytes) -> KmsgRecord | None:
    """One ``/dev/kmsg`` record (``PRI,SEQ,USEC,FLAGS;TEXT``), or None when it does not parse."""
    head, sep, text = raw.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        prefix, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    message = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    return KmsgRecord(prefix & 7, seq, usec, message)


class KmsgWatcher:
    """Records the kernel logs after the moment the watcher was opened.

    Where ``/dev/kmsg`` cannot be read, :meth:`new_records` returns ``[]``.
    """

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self._fd: int | None
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = None

    def new_records(self) -> list[KmsgRecord]:
        """Records logged since the last call (or since opening); ``[]`` when none or unreadable."""
        out: list[KmsgRecord] = []
        if self._fd is None:
            return out
        while True:
            try:
                raw = os.read(self._fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records were overwritten before we read them: go on
                    continue
                break
            if not raw:
                break
            rec = parse_record(raw)
            if rec is not None:
                out.append(rec)
        return out

    def close(self) -> None:
        """Stop watching."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> KmsgWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

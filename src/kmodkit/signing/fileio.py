"""Writing files so that a crash leaves either the old file or the whole new one."""

from __future__ import annotations

import os
import secrets

from kmodkit.errors import from_oserror


def write_atomic(path: str, data: bytes | memoryview, mode: int, exclusive: bool = False,
                 sync_dir: bool = True, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory: fsync, chmod ``mode``, rename.

    The temp file is created with ``mode`` already set (``os.open``), so a
    private key is never readable by others, not even for an instant.  With
    ``exclusive``, an existing ``path`` is left alone and FileExistsError raised.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise from_oserror(exc, tmp) from None
    try:
        try:
            if owner is not None and (owner[0] != os.geteuid() or owner[1] != os.getegid()):
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widens past ``mode``
            view = memoryview(data)
            while view:
                done = os.write(fd, view)
                view = view[done:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails with EEXIST rather than replacing
            os.unlink(tmp)
        else:
            os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make renames in ``directory`` durable (errors are ignored: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

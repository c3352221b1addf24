"""The one way a module file is opened: regular files only, refused at once otherwise; mapped; decompressed.

A FIFO named ``x.ko`` blocks open(2) until a writer comes, and a symlink to
``/dev/zero`` reads forever; kmod's modinfo looks at neither.  So the file is
opened with ``O_NONBLOCK`` (which a regular file ignores) and checked with
fstat before a byte of it is read.  :func:`load_module` is what
:class:`~kmodkit.modfile.module.ModuleFile` and the index's scan read through;
:func:`open_regular` is for callers that read a module file their own way.

This module imports nothing heavy: the index's quick path reads modules through it.
"""

from __future__ import annotations

import mmap
import os
import stat
from typing import TYPE_CHECKING, Union

from kmodkit.errors import ModuleFormatError, UserError, from_oserror

if TYPE_CHECKING:
    from kmodkit.modfile.compress import Compression

#: what a module file's bytes are held in: a read-only mapping, or bytes (decompressed)
Held = Union[mmap.mmap, bytes]

_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: str, what: str = "a module file") -> tuple[int, os.stat_result]:
    """A blocking read-only descriptor of the regular file at ``path``, and its stat; the caller closes it.

    ``what`` names the kind of file expected, in messages ("a kernel image").

    Never blocks and never reads: raises :class:`~kmodkit.errors.NotFoundError`
    for a missing file and :class:`~kmodkit.errors.UserError` for a directory,
    FIFO, device or socket.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise from_oserror(exc, path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            os.set_blocking(fd, True)
            return fd, st
    except OSError as exc:
        os.close(fd)
        raise from_oserror(exc, path) from None
    os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise UserError(path, f"is a directory, expected {what}")
    kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
    raise UserError(path, f"is {kind}, not a regular file ({what}): refused without reading it")


def load_module(path: str, limit: int | None = None) -> tuple[Held, os.stat_result, Compression | None]:
    """The bytes of the module file at ``path``, its stat, and its compression (None when plain).

    A plain file comes back mapped (release it with :func:`release`), a
    compressed one decompressed in memory, up to ``limit`` bytes (default:
    :data:`~kmodkit.modfile.compress.MAX_DECOMPRESSED`).  Raises
    :class:`ModuleFormatError` for an empty file or a corrupt stream, and what
    :func:`open_regular` raises.
    """
    fd, st = open_regular(path)
    try:
        if st.st_size == 0:
            raise ModuleFormatError(path, "file is empty")
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    except OSError as exc:
        raise from_oserror(exc, path) from None
    finally:
        os.close(fd)
    if mm[:4] == b"\x7fELF":
        return mm, st, None
    # not ELF: compressed, or garbage for the ELF reader to name
    from kmodkit.modfile import compress as _compress

    kind = _compress.detect(mm[:6])
    if kind is _compress.Compression.NONE:
        return mm, st, None
    try:
        with memoryview(mm) as view:
            data = _compress.decompress(view, kind, path, _compress.MAX_DECOMPRESSED if limit is None else limit)
    finally:
        release(mm)
    return data, st, kind


def release(held: Held) -> None:
    """Unmap what :func:`load_module` mapped (bytes need nothing).

    A mapping something still views (a caller's slice) cannot be closed; it is
    left to the garbage collector, which unmaps it with the last view.
    """
    if isinstance(held, mmap.mmap):
        try:
            held.close()
        except BufferError:
            pass

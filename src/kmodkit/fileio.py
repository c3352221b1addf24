"""Writing files so that a crash leaves either the old file or the whole new one.

Every domain writes through here: signed modules and keys (durable, mode and
owner kept), the index and its cache, build records, cached kernel images.
A temp file in the target's directory is written, then renamed over it.
"""

from __future__ import annotations

import itertools
import os

from kmodkit.errors import from_oserror

_serial = itertools.count()


def _temp_name(path: str) -> str:
    # O_EXCL makes a clash an error, never a shared file; pid + counter keep clashes away
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{next(_serial)}.tmp")


def write_atomic(path: str | os.PathLike[str], data: bytes | memoryview, mode: int = 0o644,
                 exclusive: bool = False, durable: bool = True, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory: chmod ``mode``, rename.

    The temp file is created with ``mode`` already set (``os.open``), so a
    private key is never readable by others, not even for an instant.  With
    ``durable`` the file and the directory are fsynced (a crash then keeps the
    new file, not only a whole one).  With ``exclusive``, an existing ``path``
    is left alone and FileExistsError raised.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _temp_name(path)
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
            if durable:
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
    if durable:
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


def write_temp(path: str, data: bytes | memoryview, mode: int, owner: tuple[int, int] | None = None) -> str:
    """Write ``data`` to a new temp file beside ``path`` (mode and owner set, not yet synced); return its name.

    Pair with :func:`commit_temps`, which makes a batch of them durable with
    one filesystem sync and then renames each over its target.
    """
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if owner is not None and (owner[0] != os.geteuid() or owner[1] != os.getegid()):
            os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def commit_temps(pairs: list[tuple[str, str]]) -> list[OSError | None]:
    """Make every ``(temp, target)`` durable, then rename each temp over its target.

    Every temp is fsynced before any rename, so a crash leaves each target
    either as it was or complete.  The fsyncs run side by side in threads:
    the filesystem folds concurrent fsyncs into a few journal commits
    instead of one per file.  Returns, per pair, None or the error that
    stopped it (its temp is removed then).
    """
    from concurrent.futures import ThreadPoolExecutor

    def sync(tmp: str) -> OSError | None:
        try:
            _fsync_path(tmp)
        except OSError as exc:
            return exc
        return None

    if len(pairs) > 1:
        with ThreadPoolExecutor(max_workers=min(32, len(pairs))) as pool:
            synced = list(pool.map(sync, [tmp for tmp, _ in pairs]))
    else:
        synced = [sync(tmp) for tmp, _ in pairs]
    errors: list[OSError | None] = []
    for (tmp, target), err in zip(pairs, synced):
        try:
            if err is not None:
                raise err
            os.rename(tmp, target)
            errors.append(None)
        except OSError as exc:
            _unlink_quietly(tmp)
            errors.append(exc)
    for directory in {os.path.dirname(os.path.abspath(t)) for _, t in pairs}:
        fsync_dir(directory)
    return errors


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

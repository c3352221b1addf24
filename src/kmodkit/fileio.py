"""Writing files so that a crash leaves either the old file or the whole new one.

Every domain writes through here: signed modules and keys (durable, mode and
owner kept), the index and its cache, build records, cached kernel images.
A temp file in the target's directory is written, then renamed over it.

A killed run may leave its temp files behind.  Their names say whose they
are (``.NAME.kmodkit-PID-N.tmp``, :func:`is_temp_name`): the first write of
a later run into a directory removes those of dead processes, and the tree
walkers skip them.  A set of files that must change together (the ten index
files) goes through :func:`commit_files`, whose journal lets a later run
finish a commit a kill interrupted (:func:`finish_commit`).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from collections.abc import Mapping

from kmodkit.errors import EnvironmentNotReady, UserError, from_oserror

_serial = itertools.count()
#: the marker in every temp name; with the pid it makes a temp recognisable and owned
_MARKER = "kmodkit"
_TEMP_RE = re.compile(r"\..+\.kmodkit-([0-9]+)-[0-9]+\.tmp")
#: the journal of an unfinished :func:`commit_files` (one per directory)
JOURNAL_NAME = ".kmodkit-commit"
_JOURNAL_HEAD = b"kmodkit commit 1\n"
# directories this process has swept for stale temps already
_swept: set[str] = set()
# in a worker process: the pid of the parent that forked it (renames stop when it is gone)
_parent: int | None = None


def is_temp_name(name: str) -> bool:
    """Whether the file name (or path) ``name`` is one of kmodkit's temp files, never a module or index file.

    Temp names end in ``.tmp``, so walkers that take only kmod's module
    suffixes (.ko, .ko.xz, ...) skip them already; use this where a walker
    takes other names.
    """
    return _TEMP_RE.fullmatch(os.path.basename(name)) is not None


def _temp_name(path: str) -> str:
    # O_EXCL makes a clash an error, never a shared file; pid + counter keep clashes away
    directory = os.path.dirname(os.path.abspath(path))
    _sweep_once(directory)
    name = f".{os.path.basename(path)}.{_MARKER}-{os.getpid()}-{next(_serial)}.tmp"
    return os.path.join(directory, name)


def temp_name(path: str) -> str:
    """A temp name beside ``path`` (file or directory) that :func:`is_stale_temp` knows once its process is dead."""
    return _temp_name(path)


def is_stale_temp(name: str) -> bool:
    """Whether ``name`` (file or directory) is a kmodkit temp name whose process is dead (safe to remove)."""
    m = _TEMP_RE.fullmatch(os.path.basename(name))
    return m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))


def bind_to_parent(parent: int) -> None:
    """Make this (worker) process stop renaming files into place once ``parent`` is no longer its parent.

    Called by :mod:`kmodkit._util.pool` in every worker it forks.
    """
    global _parent
    _parent = parent


def _orphaned() -> bool:
    return _parent is not None and os.getppid() != _parent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it exists, owned by someone else
    # a killed worker stays a zombie until its new parent reaps it (some container inits are slow
    # to): it will never write again
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(directory: str) -> list[str]:
    """Remove the temp files in ``directory`` left by kmodkit processes that are dead; the names removed.

    Only names of exactly the temp pattern whose pid is not a live process
    are touched, and none while an unfinished commit's journal names them
    (:func:`finish_commit` runs first).  Unreadable directories give ``[]``.
    """
    try:
        if os.path.lexists(os.path.join(directory, JOURNAL_NAME)):
            finish_commit(directory)
        names = [e.name for e in os.scandir(directory) if e.name[:1] == "." and e.is_file(follow_symlinks=False)]
    except (OSError, UserError):
        return []
    removed: list[str] = []
    live: dict[int, bool] = {}
    for name in names:
        m = _TEMP_RE.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or live.setdefault(pid, _pid_alive(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _sweep_once(directory: str) -> None:
    if directory not in _swept:
        _swept.add(directory)
        remove_stale_temps(directory)


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
    synced = _sync_all([tmp for tmp, _ in pairs])
    errors: list[OSError | None] = []
    for (tmp, target), err in zip(pairs, synced):
        try:
            if err is not None:
                raise err
            if _orphaned():
                # a worker whose parent is gone: nobody waits for this rename, and the user may
                # already have started another run over these files
                raise OSError(errno.ESRCH, "not renamed into place: the kmodkit process that asked for it is gone")
            os.rename(tmp, target)
            errors.append(None)
        except OSError as exc:
            _unlink_quietly(tmp)
            errors.append(exc)
    for directory in {os.path.dirname(os.path.abspath(t)) for _, t in pairs}:
        fsync_dir(directory)
    return errors


def _sync_all(temps: list[str]) -> list[OSError | None]:
    # fsync side by side in threads: the filesystem folds concurrent fsyncs into a few journal commits
    def sync(tmp: str) -> OSError | None:
        try:
            _fsync_path(tmp)
        except OSError as exc:
            return exc
        return None

    if len(temps) <= 1:
        return [sync(tmp) for tmp in temps]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, len(temps))) as pool:
        return list(pool.map(sync, temps))


def commit_files(directory: str, files: Mapping[str, bytes], mode: int | Mapping[str, int] = 0o644) -> None:
    """Replace the files ``files`` names (names in ``directory`` -> bytes) together.

    ``mode`` is one mode for all, or name -> mode (0o644 for a name it lacks):
    a private key's temp is created 0600, never readable by others.

    Each is written to a temp name and fsynced; then a journal naming the
    set is made durable, each temp renamed over its target, the directory
    synced and the journal removed.  A kill before the journal leaves every
    file old; after it, :func:`finish_commit` (run by any later write into
    the directory, and by readers of the set) makes every file new.  Raises
    :class:`UserError` while another live process commits into ``directory``,
    OSError when a file cannot be written (every temp is removed then).
    """
    directory = os.path.abspath(directory)
    _sweep_once(directory)
    finish_commit(directory)
    temps: list[tuple[str, str]] = []
    try:
        for name, data in files.items():
            target = os.path.join(directory, name)
            temps.append((write_temp(target, data, mode if isinstance(mode, int) else mode.get(name, 0o644)), target))
        for err in _sync_all([tmp for tmp, _ in temps]):
            if err is not None:
                raise err
        lines = b"".join(os.fsencode(os.path.basename(t)) + b"\0" + os.fsencode(os.path.basename(f)) + b"\0"
                         for t, f in temps)
        journal = _JOURNAL_HEAD + b"%d\n" % os.getpid() + lines
        try:
            write_atomic(os.path.join(directory, JOURNAL_NAME), journal, 0o644, exclusive=True)
        except FileExistsError:
            raise UserError(directory, "another kmodkit process is replacing files here right now",
                            "wait for it to finish and run again") from None
    except BaseException:
        for tmp, _ in temps:
            _unlink_quietly(tmp)
        raise
    _roll_forward(directory, temps)


def _roll_forward(directory: str, temps: list[tuple[str, str]]) -> None:
    # every temp in the journal is durable: renaming is all that is left; a temp already gone was renamed
    for tmp, target in temps:
        try:
            os.rename(tmp, target)
        except FileNotFoundError:
            pass
    fsync_dir(directory)
    _unlink_quietly(os.path.join(directory, JOURNAL_NAME))
    fsync_dir(directory)


def finish_commit(directory: str) -> bool:
    """Finish a :func:`commit_files` into ``directory`` that a killed process left half done.

    Returns False when there is none, or when its process is still alive (it
    is finishing it).  Raises :class:`UserError` when the journal is not one
    kmodkit wrote, and :class:`EnvironmentNotReady` when it cannot be
    finished (a directory this user may not write): the set of files is then
    a mix of old and new, and readers must not trust it.
    """
    path = os.path.join(directory, JOURNAL_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise from_oserror(exc, path) from None
    head, _, rest = data.partition(b"\n")
    pid_line, _, body = rest.partition(b"\n")
    fields = body.split(b"\0")
    if head + b"\n" != _JOURNAL_HEAD or not pid_line.isdigit() or len(fields) % 2 != 1 or fields[-1]:
        raise UserError(path, "is not a commit journal kmodkit wrote", "remove it if you know where it came from")
    if int(pid_line) != os.getpid() and _pid_alive(int(pid_line)):
        return False
    pairs = [(os.fsdecode(t), os.fsdecode(n)) for t, n in zip(fields[0:-1:2], fields[1:-1:2])]
    if any(os.sep in t or os.sep in n or not is_temp_name(t) for t, n in pairs):
        raise UserError(path, "names files outside its directory or that are not temp files",
                        "remove it if you know where it came from")
    try:
        _roll_forward(directory, [(os.path.join(directory, t), os.path.join(directory, n)) for t, n in pairs])
    except OSError as exc:
        raise EnvironmentNotReady(directory, "a killed kmodkit run left its files half replaced, and they cannot "
                                  f"be completed now ({(exc.strerror or str(exc)).lower()})",
                                  "run the command that writes them again, as a user that may write there") from None
    return True


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

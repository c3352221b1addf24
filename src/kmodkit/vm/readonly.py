"""A read-only view of the host's root for virtiofsd, enforced by the host kernel.

The guest mounts the share with ``-o ro``, but that flag is the guest's own:
root in the guest (or a module under test) can remount it read-write.  Debian
12's virtiofsd (the C one of qemu 7.2) has no read-only option, so virtiofsd is
started in a mount namespace of its own in which it exports a recursive bind
of ``/`` whose every mount is read-only (mount_setattr(2) with
MOUNT_ATTR_RDONLY and AT_RECURSIVE, Linux 5.12).  A write through the share
then fails with EROFS in the host kernel, whatever the guest does.  Outside
that namespace the view's directory stays an empty directory, and nothing
propagates back to the host's mounts.

:func:`readonly_command` wraps the daemon's command line; the wrapper runs
this module as a program (``python -m kmodkit.vm.readonly DIR -- ARGV...``),
which makes the view at DIR and then executes ARGV.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

from kmodkit.errors import EnvironmentNotReady, KmodkitError, SyscallError

_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
#: mount_setattr's number in the unified syscall table every architecture shares since Linux 5.12
_SYS_MOUNT_SETATTR = 442


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def readonly_command(view: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` with a read-only view of ``/`` at ``view`` (an empty directory)."""
    return [sys.executable, "-m", "kmodkit.vm.readonly", view, "--", *argv]


def make_readonly_view(view: str) -> None:
    """Move this process into a new private mount namespace and bind ``/`` at ``view``, every mount read-only.

    Raises :class:`SyscallError` when a step is refused (not root, no mount
    namespaces), :class:`EnvironmentNotReady` when the host kernel lacks
    mount_setattr (before 5.12) or a mount stays writable.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(view)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # private first: the bind below must not propagate into the host's mount namespace
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    _check(libc.mount(b"/", target, None, _MS_BIND | _MS_REC, None), f"binding / at {view}")
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(target),
                      ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise EnvironmentNotReady("virtiofs", "the host kernel cannot make the share read-only "
                                      "(mount_setattr needs Linux 5.12)", "use --share 9p")
        raise SyscallError(f"mount_setattr {view}", err)
    writable = [m for m in _mounts_under(view) if "ro" not in m[1].split(",")]
    if writable:
        raise EnvironmentNotReady(writable[0][0], "stays writable in the read-only view of /",
                                  "use --share 9p")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SyscallError(what, ctypes.get_errno())


def _mounts_under(view: str) -> list[tuple[str, str]]:
    # /proc/self/mountinfo: field 5 is the mount point (octal escapes), field 6 the per-mount options
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = os.fsdecode(_unescape(fields[4]))
            if point == view or point.startswith(view.rstrip("/") + "/"):
                out.append((point, fields[5].decode()))
    return out


def _unescape(field: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m kmodkit.vm.readonly DIR -- COMMAND [ARG...]\n")
        return 2
    try:
        make_readonly_view(os.path.realpath(argv[0]))
        os.execv(argv[2], argv[2:])
    except KmodkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_status
    except OSError as exc:
        sys.stderr.write(f"error: {argv[2]}: {exc.strerror}\n")
        return 3
    return 0  # not reached: execv does not return


if __name__ == "__main__":  # the wrapper process of readonly_command(), not a user command
    sys.exit(_main(sys.argv[1:]))

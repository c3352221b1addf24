"""The three module syscalls through ctypes: finit_module, init_module, delete_module.

Nothing here decides anything: each call either succeeds or raises
:class:`SyscallError` with the kernel's errno.  :func:`require_module_support`
is the guard every caller runs first.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os

from kmodkit.errors import EnvironmentNotReady, SyscallError

#: syscall numbers per machine (arch/*/entry/syscalls tables): init_module, delete_module, finit_module
SYSCALL_NUMBERS: dict[str, tuple[int, int, int]] = {
    "x86_64": (175, 176, 313),   # arch/x86/entry/syscalls/syscall_64.tbl
    "aarch64": (105, 106, 273),  # include/uapi/asm-generic/unistd.h
    "riscv64": (105, 106, 273),  # asm-generic
}


class InitFlags(enum.IntFlag):
    """Flags of finit_module (include/uapi/linux/module.h)."""

    NONE = 0
    IGNORE_MODVERSIONS = 1  #: MODULE_INIT_IGNORE_MODVERSIONS
    IGNORE_VERMAGIC = 2  #: MODULE_INIT_IGNORE_VERMAGIC
    #: MODULE_INIT_COMPRESSED_FILE: the kernel decompresses (kernel commit b1ae6dc41eaa, 5.17)
    COMPRESSED_FILE = 4


class DeleteFlags(enum.IntFlag):
    """Flags of delete_module (O_NONBLOCK is what rmmod passes)."""

    NONBLOCK = os.O_NONBLOCK  #: fail with EWOULDBLOCK instead of waiting for the refcount to drop
    TRUNC = os.O_TRUNC  #: force removal (needs CONFIG_MODULE_FORCE_UNLOAD); never used by default


def require_module_support(proc_modules: str = "/proc/modules") -> None:
    """Raise EnvironmentNotReady when the running kernel has no module support (no /proc/modules)."""
    if not os.path.exists(proc_modules):
        raise EnvironmentNotReady(
            proc_modules, "missing: the running kernel has no loadable module support",
            "load modules inside a booted kernel instead: kmodkit vm run -k KVER -- kmodkit load ...")


def _numbers() -> tuple[int, int, int]:
    machine = os.uname().machine
    try:
        return SYSCALL_NUMBERS[machine]
    except KeyError:
        raise EnvironmentNotReady(machine, "no module syscall numbers known for this machine",
                                  "add them to kmodkit.loader.syscalls.SYSCALL_NUMBERS") from None


_libc: ctypes.CDLL | None = None


def _syscall(number: int, *args: object) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    ret = _libc.syscall(ctypes.c_long(number), *args)
    if ret != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def finit_module(fd: int, params: str, flags: InitFlags, subject: str) -> None:
    """Load the module open at ``fd`` with the parameter string ``params``; SyscallError on failure."""
    try:
        _syscall(_numbers()[2], ctypes.c_int(fd), ctypes.c_char_p(params.encode()), ctypes.c_int(int(flags)))
    except OSError as exc:
        raise SyscallError(subject, exc.errno or errno.EIO) from None


def init_module(image: bytes, params: str, subject: str) -> None:
    """Load the module image ``image`` (uncompressed bytes) with ``params``; SyscallError on failure."""
    buf = ctypes.create_string_buffer(image, len(image))
    try:
        _syscall(_numbers()[0], buf, ctypes.c_ulong(len(image)), ctypes.c_char_p(params.encode()))
    except OSError as exc:
        raise SyscallError(subject, exc.errno or errno.EIO) from None


def delete_module(name: str, flags: DeleteFlags = DeleteFlags.NONBLOCK) -> None:
    """Unload the module called ``name``; SyscallError on failure (EWOULDBLOCK/EBUSY when in use)."""
    try:
        _syscall(_numbers()[1], ctypes.c_char_p(name.encode()), ctypes.c_uint(int(flags)))
    except OSError as exc:
        raise SyscallError(name, exc.errno or errno.EIO) from None

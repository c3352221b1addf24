"""mount(2) and umount2(2) of tracefs through ctypes: no shell, and the errno kept."""

from __future__ import annotations

import ctypes
import os

_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def mount_tracefs(target: str) -> int:
    """Mount tracefs at ``target``; 0 on success, else the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"nodev", os.fsencode(target), b"tracefs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    return 0 if rc == 0 else ctypes.get_errno()


def umount(target: str) -> int:
    """Detach the mount at ``target``; 0 on success, else the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.umount2(os.fsencode(target), _MNT_DETACH)
    return 0 if rc == 0 else ctypes.get_errno()

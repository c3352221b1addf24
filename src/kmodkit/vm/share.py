"""Sharing the host's root with the guest: virtiofs (virtiofsd) or qemu's 9p."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import IO

from kmodkit.errors import EnvironmentNotReady
from kmodkit.index.lookup import ModuleTree
from kmodkit.vm.initramfs import SHARE_RECIPES, Share

#: where distributions install virtiofsd (Debian 12: qemu-system-common; later: the virtiofsd package)
VIRTIOFSD_CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd")


def find_virtiofsd() -> str | None:
    """The virtiofsd binary, or None when none is installed."""
    for path in (shutil.which("virtiofsd") or "", *VIRTIOFSD_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    return None


def kernel_has(moddir: str, share: Share) -> bool:
    """Whether the kernel of ``moddir`` has every module (or built-in) ``share`` needs."""
    tree = ModuleTree(moddir)
    return all(tree.path_of(m) is not None or tree.is_builtin(m) for m in SHARE_RECIPES[share].modules)


def choose_share(moddir: str) -> Share:
    """virtiofs when virtiofsd can run here (as root) and the kernel has it, else 9p when the kernel has it.

    Raises EnvironmentNotReady when neither works, with what to install.
    """
    if os.geteuid() == 0 and find_virtiofsd() is not None and kernel_has(moddir, Share.VIRTIOFS):
        return Share.VIRTIOFS
    if kernel_has(moddir, Share.NINEP):
        return Share.NINEP
    if os.geteuid() != 0:
        raise EnvironmentNotReady(moddir, "this kernel has no 9p, and virtiofs needs virtiofsd run as root",
                                  "run kmodkit vm as root")
    raise EnvironmentNotReady("virtiofsd", "not installed and the kernel has no 9p",
                              "install it: apt-get install qemu-system-common (Debian 12) or virtiofsd")


def start_virtiofsd(socket_path: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start virtiofsd exporting / read-only-for-the-guest at ``socket_path``; waits until it listens."""
    binary = find_virtiofsd()
    if binary is None:
        raise EnvironmentNotReady("virtiofsd", "not installed", "install it: apt-get install qemu-system-common")
    help_text = subprocess.run([binary, "--help"], capture_output=True, timeout=10).stdout
    if b"--shared-dir" in help_text:  # the Rust virtiofsd
        args = [binary, f"--socket-path={socket_path}", "--shared-dir=/", "--sandbox=chroot", "--cache=auto"]
    else:  # the C virtiofsd of qemu <= 7
        args = [binary, f"--socket-path={socket_path}", "-o", "source=/", "-o", "sandbox=chroot",
                "-o", "cache=auto"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not os.path.exists(socket_path):
        if proc.poll() is not None:
            raise EnvironmentNotReady("virtiofsd", f"exited with status {proc.returncode} before listening",
                                      "read qemu.log in the run directory")
        if time.monotonic() > deadline:
            proc.kill()
            raise EnvironmentNotReady("virtiofsd", "did not listen within 10 s")
        time.sleep(0.02)
    return proc

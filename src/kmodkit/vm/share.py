"""Sharing the host's root with the guest: virtiofs (virtiofsd) or qemu's 9p, read-only on the host's side.

The guest's ``-o ro`` is the guest's to undo, so the host enforces it too: qemu's
9p server is started with ``readonly=on`` (:mod:`kmodkit.vm.machine`), and
virtiofsd exports a view of ``/`` whose mounts are all read-only
(:mod:`kmodkit.vm.readonly`), plus ``--readonly`` where the Rust virtiofsd has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import IO

from kmodkit.errors import EnvironmentNotReady
from kmodkit.index.lookup import ModuleTree
from kmodkit.vm.initramfs import SHARE_RECIPES, Share
from kmodkit.vm.readonly import readonly_command

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


def start_virtiofsd(socket_path: str, log: IO[bytes], writable: str | None = None) -> subprocess.Popen[bytes]:
    """Start virtiofsd exporting / read-only (on the host's side) at ``socket_path``; waits until it listens.

    The read-only view of / is made in the directory ``root`` beside the
    socket, which must not exist yet.  With ``writable``, that one directory
    is exported instead, writable (``vm run --out``), chrooted to it.
    """
    binary = find_virtiofsd()
    if binary is None:
        raise EnvironmentNotReady("virtiofsd", "not installed", "install it: apt-get install qemu-system-common")
    if writable is None:
        view = os.path.join(os.path.dirname(socket_path), "root")
        os.mkdir(view, 0o700)
    else:
        view = writable
    help_text = subprocess.run([binary, "--help"], capture_output=True, timeout=10).stdout
    if b"--shared-dir" in help_text:  # the Rust virtiofsd
        args = [binary, f"--socket-path={socket_path}", f"--shared-dir={view}", "--sandbox=chroot", "--cache=auto"]
        if b"--readonly" in help_text and writable is None:
            args.append("--readonly")
    else:  # the C virtiofsd of qemu <= 7: no read-only option at all
        args = [binary, f"--socket-path={socket_path}", "-o", f"source={view}", "-o", "sandbox=chroot",
                "-o", "cache=auto"]
    command = readonly_command(view, args) if writable is None else args
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not os.path.exists(socket_path):
        if proc.poll() is not None:
            raise EnvironmentNotReady("virtiofsd", f"exited with status {proc.returncode} before listening"
                                      f"{_last_line(log)}", "read qemu.log in the run directory")
        if time.monotonic() > deadline:
            proc.kill()
            raise EnvironmentNotReady("virtiofsd", "did not listen within 10 s")
        time.sleep(0.02)
    return proc


def _last_line(log: IO[bytes]) -> str:
    # the wrapper's own "error: ..." line, when it refused to start the daemon
    name = getattr(log, "name", None)
    if not isinstance(name, str):
        return ""
    try:
        with open(name, "rb") as f:
            lines = f.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f" ({lines[-1]})" if lines else ""
